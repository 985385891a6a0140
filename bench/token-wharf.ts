// A second wharf on the bench's wharf data, with its built-in token server, and a valid token
// for the bench image: the "manifest GET with a token" figure (issue: it must keep at least
// 75% of the open registry's throughput, since a verified token is remembered, not
// re-verified per request).
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { freePort, startWharfVariant, type RunningServer, type ServerOptions } from './servers.js';

export interface TokenWharf {
  server: RunningServer;
  /** `Bearer <token>` granting pull on bench/app. */
  authorization: string;
}

export async function startTokenWharf(workDir: string, dataDir: string, options: Omit<ServerOptions, 'workDir'>): Promise<TokenWharf> {
  const dir = join(workDir, 'token');
  await mkdir(dir, { recursive: true });
  const htpasswd = join(dir, 'htpasswd');
  await writeFile(htpasswd, `bench:${bcrypt.hashSync('bench-pw', 5)}\n`);
  const port = await freePort();
  const realm = `http://127.0.0.1:${port}/auth/token`;
  const server = await startWharfVariant('token', dataDir, { ...options, workDir, label: 'wharf+token', port, authenticated: true }, {
    REGISTRY_AUTH_TOKEN: JSON.stringify({ realm, service: 'bench', issuer: 'bench' }),
    REGISTRY_AUTH_TOKENSERVER: JSON.stringify({
      htpasswd,
      keydir: join(dir, 'keys'),
      expiration: '1h',
      rules: [{ account: 'bench', repositories: ['**'], actions: ['pull'] }],
    }),
  });
  const res = await fetch(`${realm}?service=bench&scope=repository:bench/app:pull`, {
    headers: { Authorization: `Basic ${Buffer.from('bench:bench-pw').toString('base64')}` },
  });
  if (res.status !== 200) throw new Error(`token server answered ${res.status}`);
  const { token } = (await res.json()) as { token: string };
  return { server, authorization: `Bearer ${token}` };
}
