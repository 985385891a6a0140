// Upstreams for the mirror's upstream client tests: an htpasswd file, a token server issuing
// JWTs that Distribution 2.8 accepts (ES256, x5c with a self-signed certificate that is also
// its rootcertbundle), a small image pushed with plain fetch, and bare node:http servers.
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { importPKCS8, SignJWT } from 'jose';
import { runOk } from './processes.js';

/** An htpasswd file (bcrypt, as Distribution requires) with one user; returns its path. */
export async function writeHtpasswd(dir: string, username: string, password: string): Promise<string> {
  const { stdout } = await runOk('htpasswd', ['-Bbn', username, password]);
  const file = join(dir, 'htpasswd');
  await writeFile(file, stdout.trim() + '\n');
  return file;
}

export interface TokenSigner {
  certFile: string;
  sign(claims: { service: string; issuer: string; subject: string; access: TokenAccess[]; lifetimeSeconds: number }): Promise<string>;
}

export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

/** An EC P-256 key and a self-signed certificate for it, made with the openssl CLI. */
export async function makeTokenSigner(dir: string): Promise<TokenSigner> {
  const keyFile = join(dir, 'token-key.pem');
  const certFile = join(dir, 'token-cert.pem');
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=wharf-test-token-issuer',
  ]);
  const key = await importPKCS8(await readFile(keyFile, 'utf8'), 'ES256');
  const certPem = await readFile(certFile, 'utf8');
  const x5c = certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');
  return {
    certFile,
    async sign({ service, issuer, subject, access, lifetimeSeconds }) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ access })
        .setProtectedHeader({ alg: 'ES256', typ: 'JWT', x5c: [x5c] })
        .setIssuer(issuer)
        .setSubject(subject)
        .setAudience(service)
        .setIssuedAt(now)
        .setNotBefore(now - 10)
        .setExpirationTime(now + lifetimeSeconds)
        .setJti(randomBytes(8).toString('hex'))
        .sign(key);
    },
  };
}

export interface HttpFixture {
  url: string;
  port: number;
  server: Server;
  close(): Promise<void>;
}

/** A node:http server on loopback (port 0 unless given). */
export async function startHttpServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  opts: { host?: string; port?: number } = {},
): Promise<HttpFixture> {
  const server = createServer(handler);
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface TokenRequestRecord {
  authorization: string | undefined;
  scopes: string[];
}

export interface TokenServer extends HttpFixture {
  realm: string;
  requests: TokenRequestRecord[];
  /** Mutable: what the next tokens say. */
  settings: { expiresIn: number | undefined; field: 'token' | 'access_token' };
}

/**
 * A Docker token server: grants every requested action to anyone anonymous, and to
 * `credentials` when Basic ones are sent (wrong ones get 401). JWTs live 5 minutes whatever
 * `expires_in` claims, so a client refreshing early is seen by counting requests.
 */
export async function startTokenServer(opts: {
  signer: TokenSigner;
  service: string;
  issuer: string;
  credentials: { username: string; password: string };
}): Promise<TokenServer> {
  const requests: TokenRequestRecord[] = [];
  const settings: TokenServer['settings'] = { expiresIn: 300, field: 'token' };
  const expected = `Basic ${Buffer.from(`${opts.credentials.username}:${opts.credentials.password}`).toString('base64')}`;
  const fixture = await startHttpServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const scopes = url.searchParams.getAll('scope');
    requests.push({ authorization: req.headers.authorization, scopes });
    if (url.pathname !== '/token' || url.searchParams.get('service') !== opts.service) {
      res.writeHead(400).end();
      return;
    }
    if (req.headers.authorization !== undefined && req.headers.authorization !== expected) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"bad credentials"}');
      return;
    }
    const access = scopes.map((scope) => {
      const [type = '', name = '', actions = ''] = scope.split(':');
      return { type, name, actions: actions.split(',').filter(Boolean) };
    });
    const subject = req.headers.authorization ? opts.credentials.username : '';
    void opts.signer.sign({ service: opts.service, issuer: opts.issuer, subject, access, lifetimeSeconds: 300 }).then((token) => {
      const body: Record<string, unknown> = { [settings.field]: token };
      if (settings.expiresIn !== undefined) body.expires_in = settings.expiresIn;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    });
  });
  return { ...fixture, realm: `${fixture.url}/token`, requests, settings };
}

export interface PushedImage {
  repo: string;
  tag: string;
  manifest: Buffer;
  manifestDigest: string;
  manifestMediaType: string;
  layer: Buffer;
  layerDigest: string;
}

const sha256 = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

/** Pushes a config, one layer of `layerSize` random bytes and an OCI manifest with plain fetch. */
export async function pushImage(registry: string, repo: string, tag: string, authorization?: string, layerSize = 300_000): Promise<PushedImage> {
  const auth: Record<string, string> = authorization ? { authorization } : {};
  const putBlob = async (data: Buffer): Promise<string> => {
    const digest = sha256(data);
    const start = await fetch(`${registry}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: auth });
    await start.arrayBuffer();
    if (start.status !== 202) throw new Error(`upload start: ${start.status}`);
    const location = new URL(start.headers.get('location')!, registry);
    location.searchParams.set('digest', digest);
    const put = await fetch(location, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/octet-stream' },
      body: new Uint8Array(data),
    });
    await put.arrayBuffer();
    if (put.status !== 201) throw new Error(`blob PUT: ${put.status}`);
    return digest;
  };
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = randomBytes(layerSize);
  const configDigest = await putBlob(config);
  const layerDigest = await putBlob(layer);
  const manifestMediaType = 'application/vnd.oci.image.manifest.v1+json';
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
    }),
  );
  const res = await fetch(`${registry}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': manifestMediaType },
    body: manifest,
  });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`manifest PUT: ${res.status}`);
  return { repo, tag, manifest, manifestDigest: sha256(manifest), manifestMediaType, layer, layerDigest };
}
