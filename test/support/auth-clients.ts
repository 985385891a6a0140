// Real clients against wharf with authentication on: an htpasswd file made here (bcrypt, as
// `htpasswd -B` writes it), wharf started as a process with either Distribution's htpasswd
// method or the built-in token server (its realm on wharf's own port, fixed before start),
// and wharf's access log with the user each request was allowed as.
import type { AccessRule } from '../../auth/token-policy.js';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hashSync } from 'bcryptjs';
import { ALL_MANIFEST_TYPES } from './images.js';
import { freePort, sleep } from './processes.js';
import { startWharf, type WharfProcess } from './wharf-process.js';

/** A user name and a password nobody guesses. */
export interface User {
  name: string;
  password: string;
}

export function newUser(name: string): User {
  return { name, password: `${name}-${randomBytes(9).toString('base64url')}` };
}

/** Writes an htpasswd file of bcrypt hashes (cost 5, what `htpasswd -B` uses). */
export async function writeHtpasswd(file: string, users: User[]): Promise<void> {
  const lines = users.map((u) => `${u.name}:${hashSync(u.password, 5)}`);
  await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}

/** A token server rule (auth/token-policy.ts's AccessRule). */
export type TokenRule = AccessRule;

export type AuthMode =
  | { method: 'token'; groups?: Record<string, string[]>; rules: TokenRule[] }
  | { method: 'htpasswd' };

export interface AuthWharf {
  wharf: WharfProcess;
  /** The token realm (token mode) or the Basic realm (htpasswd). */
  realm: string;
  service: string;
}

export const TOKEN_SERVICE = 'wharf-e2e';
export const TOKEN_ISSUER = 'wharf-e2e-issuer';
export const BASIC_REALM = 'wharf-e2e-basic';

/**
 * wharf as a process with authentication: htpasswd at `htpasswd`, signing keys (token mode)
 * under `dir`. The token realm is http://127.0.0.1:PORT/auth/token on wharf's own port.
 */
export async function startAuthWharf(mode: AuthMode, htpasswd: string, dir: string, opts: { logLevel?: string } = {}): Promise<AuthWharf> {
  for (let attempt = 1; ; attempt++) {
    // The realm names the port, so it is chosen before wharf starts; taken meanwhile: another.
    const port = await freePort();
    const env: Record<string, string> =
      mode.method === 'htpasswd'
        ? { REGISTRY_AUTH_HTPASSWD: JSON.stringify({ realm: BASIC_REALM, path: htpasswd }) }
        : {
            REGISTRY_AUTH_TOKEN: JSON.stringify({ realm: `http://127.0.0.1:${port}/auth/token`, service: TOKEN_SERVICE, issuer: TOKEN_ISSUER }),
            REGISTRY_AUTH_TOKENSERVER: JSON.stringify({ htpasswd, keydir: join(dir, `keys-${port}`), groups: mode.groups ?? {}, rules: mode.rules }),
          };
    try {
      const wharf = await startWharf({ port, readyStatus: 401, env, logLevel: opts.logLevel });
      const realm = mode.method === 'htpasswd' ? BASIC_REALM : `http://127.0.0.1:${port}/auth/token`;
      return { wharf, realm, service: TOKEN_SERVICE };
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
    }
  }
}

export interface AuthLogLine {
  method: string;
  path: string;
  status: number;
  /** Who the request was allowed as (absent: anonymous or refused). */
  user?: string;
  ua?: string;
  /** Line number in the log, for order. */
  n: number;
}

/** The access-log lines (`"msg":"request"`) in a wharf log file, with the user. */
export function authAccessLog(logFile: string): AuthLogLine[] {
  let text = '';
  try {
    text = readFileSync(logFile, 'utf8');
  } catch {
    return [];
  }
  const out: AuthLogLine[] = [];
  text.split('\n').forEach((line, n) => {
    if (!line.startsWith('{')) return;
    try {
      const e = JSON.parse(line) as { msg?: string; method?: string; path?: string; status?: number; user?: string; ua?: string };
      if (e.msg === 'request' && e.path !== undefined) out.push({ method: e.method ?? '', path: e.path, status: e.status ?? 0, user: e.user, ua: e.ua, n });
    } catch {
      /* not JSON */
    }
  });
  return out;
}

/** Lines after mark `since` (a line count taken with authAccessLog(...).length before). */
export function linesSince(lines: AuthLogLine[], since: number): AuthLogLine[] {
  return lines.slice(since);
}

/** One line per request: `METHOD path status user ua`, for failure messages. */
export function formatLog(lines: AuthLogLine[]): string {
  return lines.map((l) => `${l.method} ${l.path} ${l.status} ${l.user ?? '-'} ${l.ua ?? '-'}`).join('\n');
}

/** The token endpoint's lines (GET/POST /auth/token). */
export const tokenRequests = (lines: AuthLogLine[]): AuthLogLine[] => lines.filter((l) => l.path === '/auth/token');

/** An Authorization header for `user`: Basic (htpasswd), or a Bearer token for `scopes` from the realm. */
export async function authorizationFor(aw: AuthWharf, method: AuthMode['method'], user: User, scopes: string[]): Promise<string> {
  const basic = `Basic ${Buffer.from(`${user.name}:${user.password}`).toString('base64')}`;
  if (method === 'htpasswd') return basic;
  const query = new URLSearchParams({ service: aw.service });
  for (const scope of scopes) query.append('scope', scope);
  const res = await fetch(`${aw.realm}?${query}`, { headers: { Authorization: basic } });
  if (res.status !== 200) throw new Error(`token for ${user.name} (${scopes.join(' ')}): ${res.status} ${await res.text()}`);
  return `Bearer ${((await res.json()) as { token: string }).token}`;
}

/** GET a manifest as `user`: status, digest and body. */
export async function getManifestAs(
  aw: AuthWharf,
  method: AuthMode['method'],
  user: User,
  repo: string,
  ref: string,
): Promise<{ status: number; digest: string | null; body: Buffer }> {
  const authorization = await authorizationFor(aw, method, user, [`repository:${repo}:pull`]);
  const res = await fetch(`${aw.wharf.url}/v2/${repo}/manifests/${ref}`, { headers: { Accept: ALL_MANIFEST_TYPES, Authorization: authorization } });
  return { status: res.status, digest: res.headers.get('Docker-Content-Digest'), body: Buffer.from(await res.arrayBuffer()) };
}

/**
 * The access log once wharf has written it out: a client may see its response before wharf
 * logs the request (the line is written when the response finishes), so wait until the file
 * stops growing (at most `maxMs`).
 */
export async function settledAccessLog(logFile: string, maxMs = 3000): Promise<AuthLogLine[]> {
  const size = (): number => {
    try {
      return statSync(logFile).size;
    } catch {
      return 0;
    }
  };
  const deadline = Date.now() + maxMs;
  let last = size();
  let stable = 0;
  while (stable < 2 && Date.now() < deadline) {
    await sleep(120);
    const now = size();
    stable = now === last ? stable + 1 : 0;
    last = now;
  }
  return authAccessLog(logFile);
}
