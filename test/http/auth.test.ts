// Authentication over HTTP, as clients see it: htpasswd (Basic) and the built-in token server
// with token verification (Bearer). Challenges and scopes must be exactly what the Docker
// token spec says, since clients parse them strictly.
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { errorCodes, randomBlob, RegistryClient, sha256 } from '../support/client.js';
import { freePort } from '../support/processes.js';
import { startServer, type TestServer } from '../support/server.js';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const OCI = 'application/vnd.oci.image.manifest.v1+json';

let dir: string;
let htpasswd: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'wharf-auth-'));
  htpasswd = join(dir, 'htpasswd');
  const line = (user: string, password: string) => execFileSync('htpasswd', ['-Bbn', user, password], { encoding: 'utf8' }).trim();
  await writeFile(htpasswd, [line('alice', 'alice-pw'), line('bob', 'bob-pw'), line('ci+bot$1', 'c1-pw'), ''].join('\n'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** A client that sends one Authorization header with every request. */
function clientWith(url: string, authorization?: string): RegistryClient {
  const client = new RegistryClient(url);
  const plain = client.fetch.bind(client);
  client.fetch = (path, init = {}) =>
    plain(path, { ...init, headers: { ...(init.headers as Record<string, string>), ...(authorization ? { Authorization: authorization } : {}) } });
  return client;
}

describe('htpasswd', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startServer({ env: { REGISTRY_AUTH_HTPASSWD_REALM: 'wharf-test', REGISTRY_AUTH_HTPASSWD_PATH: htpasswd } });
  });
  afterAll(() => server.close());

  it('challenges with Basic, refuses wrong passwords, and lets users push and pull', async () => {
    const anonymous = await fetch(`${server.url}/v2/`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('WWW-Authenticate')).toBe('Basic realm="wharf-test",charset="UTF-8"');
    expect(await errorCodes(anonymous)).toEqual(['UNAUTHORIZED']);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('alice', 'wrong') } })).status).toBe(401);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('ci+bot$1', 'c1-pw') } })).status).toBe(200);

    const alice = clientWith(server.url, basic('alice', 'alice-pw'));
    const image = await alice.pushImage('team/app', 'v1', [randomBlob(1000)]);
    const res = await alice.fetch('/v2/team/app/manifests/v1', { headers: { Accept: OCI } });
    expect(res.status).toBe(200);
    expect(res.headers.get('Docker-Content-Digest')).toBe(image.digest);
    const push = await fetch(`${server.url}/v2/team/app/blobs/uploads/`, { method: 'POST' });
    expect(push.status).toBe(401);
  });

  it('rate-limits failed logins per user', async () => {
    let last = 0;
    for (let i = 0; i < 8; i++) last = (await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('bob', `guess-${i}`) } })).status;
    expect(last).toBe(429);
    const limited = await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('bob', 'bob-pw') } });
    expect(limited.status).toBe(429); // even the right password, until the lock passes
    expect(Number(limited.headers.get('Retry-After'))).toBeGreaterThan(0);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('alice', 'alice-pw') } })).status).toBe(200);
  });
});

describe('token auth with the built-in token server', () => {
  let server: TestServer;
  let realm: string;
  const service = 'registry.test';

  beforeAll(async () => {
    const port = await freePort();
    realm = `http://127.0.0.1:${port}/auth/token`;
    const tokenserver = {
      htpasswd,
      keydir: join(dir, 'keys'),
      groups: { admins: ['alice'] },
      rules: [
        { group: 'admins', repositories: ['**'], actions: ['*'], catalog: true },
        { account: 'bob', repositories: ['team/**'], actions: ['pull'] },
        { anonymous: true, repositories: ['public/**'], actions: ['pull'] },
      ],
    };
    server = await startServer({
      env: {
        REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`,
        REGISTRY_AUTH_TOKEN: JSON.stringify({ realm, service, issuer: 'wharf-test' }),
        REGISTRY_AUTH_TOKENSERVER: JSON.stringify(tokenserver),
      },
    });
  });
  afterAll(() => server.close());

  const token = async (authorization: string | undefined, scopes: string[], extra = ''): Promise<{ status: number; body: Record<string, unknown> }> => {
    const query = new URLSearchParams({ service });
    for (const scope of scopes) query.append('scope', scope);
    const res = await fetch(`${realm}?${query}${extra}`, { headers: authorization ? { Authorization: authorization } : {} });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const bearer = async (authorization: string | undefined, scopes: string[]) => `Bearer ${(await token(authorization, scopes)).body.token as string}`;

  it('challenges exactly as the token spec says, per endpoint', async () => {
    const digest = `sha256:${'a'.repeat(64)}`;
    const cases: [string, string, string | undefined][] = [
      ['GET', '/v2/', undefined],
      ['GET', '/v2/team/app/manifests/v1', 'repository:team/app:pull'],
      ['HEAD', `/v2/team/app/blobs/${digest}`, 'repository:team/app:pull'],
      ['POST', '/v2/team/app/blobs/uploads/', 'repository:team/app:pull,push'],
      ['PUT', '/v2/team/app/manifests/v1', 'repository:team/app:pull,push'],
      ['DELETE', `/v2/team/app/manifests/${digest}`, 'repository:team/app:delete'],
      ['GET', '/v2/team/app/tags/list', 'repository:team/app:pull'],
      ['GET', '/v2/_catalog', 'registry:catalog:*'],
    ];
    for (const [method, path, scope] of cases) {
      const res = await fetch(`${server.url}${path}`, { method });
      expect(res.status, `${method} ${path}`).toBe(401);
      const expected = `Bearer realm="${realm}",service="${service}"${scope ? `,scope="${scope}"` : ''}`;
      expect(res.headers.get('WWW-Authenticate'), `${method} ${path}`).toBe(expected);
    }
  });

  it('issues tokens for what the rules allow: partial grants, push implies pull, anonymous pull where allowed', async () => {
    const alice = await token(basic('alice', 'alice-pw'), ['repository:team/app:pull,push', 'registry:catalog:*']);
    expect(alice.status).toBe(200);
    expect(alice.body.token).toBe(alice.body.access_token);
    expect(alice.body.expires_in).toBeGreaterThanOrEqual(60);
    expect(Number.isNaN(Date.parse(alice.body.issued_at as string))).toBe(false);

    const login = await token(basic('bob', 'bob-pw'), []); // docker login: no scope at all
    expect(login.status).toBe(200);
    expect((await token(basic('bob', 'nope'), [])).status).toBe(401);
    const anonymous = await token(undefined, ['repository:public/base:pull', 'repository:team/app:pull,push']);
    expect(anonymous.status).toBe(200);
    const payload = JSON.parse(Buffer.from((anonymous.body.token as string).split('.')[1]!, 'base64url').toString()) as { access: unknown[] };
    expect(payload.access).toEqual([{ type: 'repository', name: 'public/base', actions: ['pull'] }]);
  });

  it('lets an admin push, a pull-only user pull but not push or delete, anonymous pull only public', async () => {
    const admin = clientWith(server.url, await bearer(basic('alice', 'alice-pw'), ['repository:team/app:pull,push', 'repository:public/base:pull,push']));
    const image = await admin.pushImage('team/app', 'v1', [randomBlob(500)]);
    await admin.pushImage('public/base', 'v1', [randomBlob(500)]);

    const bob = clientWith(server.url, await bearer(basic('bob', 'bob-pw'), ['repository:team/app:pull,push,delete']));
    const pulled = await bob.fetch('/v2/team/app/manifests/v1', { headers: { Accept: OCI } });
    expect(pulled.status).toBe(200);
    expect(pulled.headers.get('Docker-Content-Digest')).toBe(image.digest);
    const push = await bob.fetch('/v2/team/app/blobs/uploads/', { method: 'POST' });
    expect(push.status).toBe(401);
    expect(push.headers.get('WWW-Authenticate')).toBe(`Bearer realm="${realm}",service="${service}",scope="repository:team/app:pull,push",error="insufficient_scope"`);
    const del = await bob.fetch(`/v2/team/app/manifests/${image.digest}`, { method: 'DELETE' });
    expect(del.status).toBe(401);
    expect((await bob.fetch('/v2/_catalog')).status).toBe(401);

    const anon = clientWith(server.url, await bearer(undefined, ['repository:public/base:pull', 'repository:team/app:pull']));
    expect((await anon.fetch('/v2/public/base/manifests/v1', { headers: { Accept: OCI } })).status).toBe(200);
    expect((await anon.fetch('/v2/team/app/manifests/v1', { headers: { Accept: OCI } })).status).toBe(401);
    expect((await anon.fetch('/v2/public/base/blobs/uploads/', { method: 'POST' })).status).toBe(401);

    const catalog = clientWith(server.url, await bearer(basic('alice', 'alice-pw'), ['registry:catalog:*']));
    expect(await (await catalog.fetch('/v2/_catalog')).json()).toEqual({ repositories: ['public/base', 'team/app'] });
  });

  it('refuses a bad token with error="invalid_token", and a token for another repository', async () => {
    const bad = await fetch(`${server.url}/v2/team/app/tags/list`, { headers: { Authorization: 'Bearer not.a.token' } });
    expect(bad.status).toBe(401);
    expect(bad.headers.get('WWW-Authenticate')).toContain('error="invalid_token"');
    const other = await bearer(basic('alice', 'alice-pw'), ['repository:other/app:pull']);
    const res = await fetch(`${server.url}/v2/team/app/tags/list`, { headers: { Authorization: other } });
    expect(res.status).toBe(401);
    expect(res.headers.get('WWW-Authenticate')).toContain('error="insufficient_scope"');
  });

  it('mounts only from repositories the caller may pull, falling back to an upload (one challenge names both scopes)', async () => {
    const admin = clientWith(server.url, await bearer(basic('alice', 'alice-pw'), ['repository:secret/app:pull,push']));
    const blob = randomBlob(300);
    const digest = await admin.pushBlob('secret/app', blob);
    const unauthenticated = await fetch(`${server.url}/v2/bob/app/blobs/uploads/?mount=${digest}&from=secret/app`, { method: 'POST' });
    expect(unauthenticated.headers.get('WWW-Authenticate')).toBe(
      `Bearer realm="${realm}",service="${service}",scope="repository:bob/app:pull,push repository:secret/app:pull"`,
    );
    // alice may push to team/**? She is admin: mount works.
    const mountToken = await bearer(basic('alice', 'alice-pw'), ['repository:team/copy:pull,push', 'repository:secret/app:pull']);
    const mounted = await fetch(`${server.url}/v2/team/copy/blobs/uploads/?mount=${digest}&from=secret/app`, { method: 'POST', headers: { Authorization: mountToken } });
    expect(mounted.status).toBe(201);
    // A token that may push to team/copy2 but not pull secret/app: a plain upload session.
    const pushOnly = await bearer(basic('alice', 'alice-pw'), ['repository:team/copy2:pull,push']);
    const fallback = await fetch(`${server.url}/v2/team/copy2/blobs/uploads/?mount=${digest}&from=secret/app`, { method: 'POST', headers: { Authorization: pushOnly } });
    expect(fallback.status).toBe(202);
    // Without `from`, nothing is linked: knowing a digest grants nothing.
    const automatic = await fetch(`${server.url}/v2/team/copy2/blobs/uploads/?mount=${digest}`, { method: 'POST', headers: { Authorization: pushOnly } });
    expect(automatic.status).toBe(202);
    expect(sha256(blob)).toBe(digest);
  });

  it('speaks OAuth2 POST: password and refresh_token grants, refresh tokens not rotated', async () => {
    const form = (fields: Record<string, string>, scopes: string[] = []) => {
      const body = new URLSearchParams(fields);
      for (const scope of scopes) body.append('scope', scope);
      return fetch(realm, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8' }, body });
    };
    const login = await form({ grant_type: 'password', username: 'alice', password: 'alice-pw', service, client_id: 'docker', access_type: 'offline' });
    expect(login.status).toBe(200);
    const first = (await login.json()) as { access_token: string; refresh_token: string };
    expect(first.refresh_token).toBeTruthy();
    const refreshed = await form({ grant_type: 'refresh_token', refresh_token: first.refresh_token, service, client_id: 'docker' }, ['repository:team/app:pull']);
    expect(refreshed.status).toBe(200);
    const second = (await refreshed.json()) as { access_token: string; refresh_token: string };
    expect(second.refresh_token).toBe(first.refresh_token);
    expect((await fetch(`${server.url}/v2/team/app/tags/list`, { headers: { Authorization: `Bearer ${second.access_token}` } })).status).toBe(200);
    // An access token is no refresh token.
    expect((await form({ grant_type: 'refresh_token', refresh_token: first.access_token, service })).status).toBe(401);
    expect((await form({ grant_type: 'password', username: 'alice', password: 'nope', service })).status).toBe(401);
    // GET with offline_token=true returns one too.
    const offline = await token(basic('bob', 'bob-pw'), [], '&offline_token=true&client_id=docker&account=bob');
    expect(typeof offline.body.refresh_token).toBe('string');
  });

  it('publishes its public keys as a JWKS', async () => {
    const res = await fetch(`${server.url}/auth/jwks`);
    expect(res.status).toBe(200);
    const jwks = (await res.json()) as { keys: { kty: string; kid: string; d?: string }[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'EC' });
    expect(jwks.keys[0]!.d).toBeUndefined();
  });
});

describe('auth configuration that cannot be enforced stops start-up', () => {
  it('names the key of an unreadable htpasswd file, and of a token method without keys', async () => {
    const missing = loadConfig({ env: { REGISTRY_AUTH_HTPASSWD_REALM: 'r', REGISTRY_AUTH_HTPASSWD_PATH: join(dir, 'nope') } });
    const { startRegistryServer } = await import('../../server/listen.js');
    await expect(startRegistryServer({ ...missing, http: { ...missing.http, addr: '127.0.0.1:0' } })).rejects.toThrow(/auth\.htpasswd\.path: cannot read/);
    expect(() => loadConfig({ env: { REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/token", service: s, issuer: i}' } })).toThrow(/auth\.token: set rootcertbundle or jwks/);
    expect(() => loadConfig({ env: { REGISTRY_AUTH: 'htpasswd' } })).toThrow(/auth\.htpasswd\.realm: required/);
    expect(() => loadConfig({ env: { REGISTRY_AUTH_SILLY_REALM: 'x' } })).toThrow(/auth\.silly \(REGISTRY_AUTH_SILLY_REALM\): the silly authentication method is not supported/);
  });
});

describe('a mirror that requires login', () => {
  it('puts its pulls through the same gate', async () => {
    const upstream = await startServer();
    const mirror = await startServer({
      env: { REGISTRY_PROXY_REMOTEURL: upstream.url, REGISTRY_AUTH_HTPASSWD_REALM: 'mirror', REGISTRY_AUTH_HTPASSWD_PATH: htpasswd },
    });
    try {
      const image = await new RegistryClient(upstream.url).pushImage('library/app', 'v1', [randomBlob(800)]);
      const anonymous = await fetch(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { Accept: OCI } });
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get('WWW-Authenticate')).toBe('Basic realm="mirror",charset="UTF-8"');
      const alice = clientWith(mirror.url, basic('alice', 'alice-pw'));
      const res = await alice.fetch('/v2/library/app/manifests/v1', { headers: { Accept: OCI } });
      expect(res.status).toBe(200);
      expect(res.headers.get('Docker-Content-Digest')).toBe(image.digest);
      const layer = (image.manifest.layers as { digest: string }[])[0]!.digest;
      expect((await fetch(`${mirror.url}/v2/library/app/blobs/${layer}`)).status).toBe(401);
      expect((await alice.fetch(`/v2/library/app/blobs/${layer}`)).status).toBe(200);
    } finally {
      await mirror.close();
      await upstream.close();
    }
  });
});
