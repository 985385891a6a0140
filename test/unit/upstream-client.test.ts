// The mirror's upstream client against real upstreams: Distribution 2.8 with htpasswd (Basic)
// and with token auth (Bearer, a token server run here), and node:http servers for redirects,
// broken answers and the circuit breaker. No mocks of the network layer.
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../../mirror/breaker.js';
import { parseChallenges } from '../../mirror/upstream-auth.js';
import { UpstreamClient, upstreamRepositoryName, type UpstreamClientOptions } from '../../mirror/upstream-client.js';
import { UpstreamDeniedError, UpstreamInvalidResponseError, UpstreamUnavailableError } from '../../mirror/upstream-errors.js';
import { parseDigest } from '../../storage/digest.js';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { Cleanup, freePort, removeTree, sleep, tempDir, waitFor } from '../support/processes.js';
import { requireTools } from '../support/tools.js';
import { makeTokenSigner, pushImage, startHttpServer, startTokenServer, writeHtpasswd, type HttpFixture, type PushedImage, type TokenServer } from '../support/upstream-fixtures.js';

const ACCEPT = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json'];
const USER = 'mirror-user';
const PASSWORD = 'pw-s3cret-Xq9';
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const sha256 = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const MISSING = parseDigest(sha256(Buffer.from('nobody has this')));

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Messages of an error and its causes, to check that no secret leaked into them. */
function messages(err: unknown): string {
  const out: string[] = [];
  for (let e = err as { message?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e) out.push(String(e.message));
  return out.join(' | ');
}

function recordingLogger(): { lines: Array<[string, string, object]>; logger: NonNullable<UpstreamClientOptions['logger']> } {
  const lines: Array<[string, string, object]> = [];
  return { lines, logger: { warn: (fields, message) => lines.push(['warn', message, fields]), info: (fields, message) => lines.push(['info', message, fields]) } };
}

describe('parseChallenges', () => {
  it('reads several challenges, quoted commas and escapes', () => {
    const header = 'Basic realm="x, y", Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push" , Foo  bar=baz';
    expect(parseChallenges(header)).toEqual([
      { scheme: 'basic', params: { realm: 'x, y' } },
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' } },
      { scheme: 'foo', params: { bar: 'baz' } },
    ]);
    expect(parseChallenges(['Bearer REALM="r\\"q"', 'basic'])).toEqual([
      { scheme: 'bearer', params: { realm: 'r"q' } },
      { scheme: 'basic', params: {} },
    ]);
    expect(parseChallenges('Bearer realm="unterminated')).toEqual([{ scheme: 'bearer', params: { realm: 'unterminated' } }]);
    expect(parseChallenges(undefined)).toEqual([]);
    expect(parseChallenges(' ,, @@ ')).toEqual([]);
  });
});

describe('upstreamRepositoryName', () => {
  it('maps single-segment names to library/ on Docker Hub only', () => {
    expect(upstreamRepositoryName('https://registry-1.docker.io', 'busybox')).toBe('library/busybox');
    expect(upstreamRepositoryName('https://registry-1.docker.io/', 'bitnami/redis')).toBe('bitnami/redis');
    expect(upstreamRepositoryName('https://ghcr.io', 'busybox')).toBe('busybox');
  });
});

describe('CircuitBreaker', () => {
  it('fails fast while down, lets one probe through per backoff (1 s doubling to 30 s), reports changes once', () => {
    let now = 0;
    const changes: string[] = [];
    const breaker = new CircuitBreaker({ now: () => now, onStateChange: (state) => changes.push(state) });
    const burst = [breaker.tryAcquire()!, breaker.tryAcquire()!];
    breaker.failed(burst[0]!, 'refused');
    breaker.failed(burst[1]!, 'refused'); // a call from before it went down: no extra backoff
    expect(changes).toEqual(['down']);
    expect(breaker.tryAcquire()).toBeUndefined();
    now = 999;
    expect(breaker.tryAcquire()).toBeUndefined();
    const backoffs: number[] = [];
    for (let i = 0; i < 7; i++) {
      now += breaker.retryInMs();
      const probe = breaker.tryAcquire();
      expect(probe).toBe('probe');
      expect(breaker.tryAcquire()).toBeUndefined(); // one probe at a time
      breaker.failed(probe!, 'still refused');
      backoffs.push(breaker.retryInMs());
    }
    expect(backoffs).toEqual([2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    now += 30_000;
    breaker.succeeded(breaker.tryAcquire()!);
    expect(changes).toEqual(['down', 'up']);
    expect(breaker.tryAcquire()).toBe('call');
  });
});

const haveTools = requireTools([
  [DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE],
  ['htpasswd', 'apache2-utils'],
  ['openssl', 'openssl'],
]);

describe.skipIf(!haveTools)('against Distribution 2.8 with htpasswd (Basic)', () => {
  const cleanup = new Cleanup();
  let registry: DistributionProcess;
  let image: PushedImage;
  const client = (password = PASSWORD, extra: Partial<UpstreamClientOptions> = {}): UpstreamClient => {
    const c = new UpstreamClient({ urls: [registry.url], username: USER, password, ...extra });
    cleanup.add('client', () => c.close());
    return c;
  };

  beforeAll(async () => {
    const dir = await tempDir('wharf-upc-');
    cleanup.add('dir', () => removeTree(dir));
    const htpasswd = await writeHtpasswd(dir, USER, PASSWORD);
    registry = await startDistribution({ root: join(dir, 'root'), auth: { htpasswd: { realm: 'wharf-test', path: htpasswd } } });
    cleanup.add('distribution', () => registry.stop());
    image = await pushImage(registry.url, 'team/app', 'v1', basic(USER, PASSWORD));
  });
  afterAll(() => cleanup.run());

  it('GETs and HEADs manifests (digest verified), blobs whole and from an offset', async () => {
    const upstream = client();
    const got = await upstream.manifest('team/app', 'v1', { method: 'GET', accept: ACCEPT });
    expect(got?.digest.value).toBe(image.manifestDigest);
    expect(got?.mediaType).toBe(image.manifestMediaType);
    expect(got?.content?.equals(image.manifest)).toBe(true);
    const head = await upstream.manifest('team/app', image.manifestDigest, { method: 'HEAD', accept: ACCEPT });
    expect(head).toEqual({ digest: got!.digest, mediaType: image.manifestMediaType, size: image.manifest.length });

    const layer = parseDigest(image.layerDigest);
    expect(await upstream.blobHead('team/app', layer)).toBe(image.layer.length);
    const whole = await upstream.blob('team/app', layer);
    expect(whole).toMatchObject({ length: image.layer.length, total: image.layer.length });
    expect((await readAll(whole!.body)).equals(image.layer)).toBe(true);
    const rest = await upstream.blob('team/app', layer, { offset: 123_456 });
    expect(rest).toMatchObject({ length: image.layer.length - 123_456, total: image.layer.length });
    expect((await readAll(rest!.body)).equals(image.layer.subarray(123_456))).toBe(true);

    expect(await upstream.tags('team/app')).toEqual(['v1']);
    expect(upstream.stats.bytesReceived).toBeGreaterThanOrEqual(2 * image.layer.length - 123_456);
    expect(upstream.stats.errors).toBe(0);
  });

  it('answers undefined for what the upstream does not have', async () => {
    const upstream = client();
    expect(await upstream.manifest('team/app', 'nope', { method: 'GET', accept: ACCEPT })).toBeUndefined();
    expect(await upstream.manifest('team/other', 'v1', { method: 'HEAD', accept: ACCEPT })).toBeUndefined();
    expect(await upstream.blob('team/app', MISSING)).toBeUndefined();
    expect(await upstream.blobHead('team/app', MISSING)).toBeUndefined();
    expect(await upstream.tags('team/other')).toBeUndefined();
    // Distribution 2.8 has no referrers API.
    expect(await upstream.referrers('team/app', parseDigest(image.manifestDigest), 'application/example')).toBeUndefined();
  });

  it('sends Basic credentials up front once the upstream asked for them', async () => {
    const upstream = client();
    await upstream.blobHead('team/app', parseDigest(image.layerDigest));
    expect(upstream.stats.requests).toBe(2); // 401, then with credentials
    await upstream.manifest('team/app', 'v1', { method: 'HEAD', accept: ACCEPT });
    expect(upstream.stats.requests).toBe(3);
  });

  it('refuses wrong or missing credentials with UpstreamDeniedError, naming no secret', async () => {
    const { lines, logger } = recordingLogger();
    const wrong = client('wrong-Zz7-password', { logger });
    const err = await wrong.manifest('team/app', 'v1', { method: 'GET', accept: ACCEPT }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamDeniedError);
    expect((err as UpstreamDeniedError).code).toBe('UPSTREAM_DENIED');
    const anonymous = new UpstreamClient({ urls: [registry.url], logger });
    cleanup.add('client', () => anonymous.close());
    const err2 = await anonymous.blob('team/app', parseDigest(image.layerDigest)).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(UpstreamDeniedError);
    const seen = `${messages(err)} ${messages(err2)} ${JSON.stringify(lines)} ${JSON.stringify(wrong.stats)}`;
    for (const secret of ['wrong-Zz7-password', basic(USER, 'wrong-Zz7-password').slice(6)]) expect(seen).not.toContain(secret);
    expect(wrong.stats.breakers[registry.url]).toBe('up'); // a denial is an answer, not an outage
  });
});

describe.skipIf(!haveTools)('against Distribution 2.8 with token auth (Bearer)', () => {
  const cleanup = new Cleanup();
  let registry: DistributionProcess;
  let tokens: TokenServer;
  let image: PushedImage;
  const client = (extra: Partial<UpstreamClientOptions> = {}): UpstreamClient => {
    const c = new UpstreamClient({ urls: [registry.url], ...extra });
    cleanup.add('client', () => c.close());
    return c;
  };

  beforeAll(async () => {
    const dir = await tempDir('wharf-upc-');
    cleanup.add('dir', () => removeTree(dir));
    const signer = await makeTokenSigner(dir);
    tokens = await startTokenServer({ signer, service: 'wharf-upstream', issuer: 'wharf-test-issuer', credentials: { username: USER, password: PASSWORD } });
    cleanup.add('token server', () => tokens.close());
    registry = await startDistribution({
      root: join(dir, 'root'),
      auth: { token: { realm: tokens.realm, service: 'wharf-upstream', issuer: 'wharf-test-issuer', rootcertbundle: signer.certFile } },
    });
    cleanup.add('distribution', () => registry.stop());
    const res = await fetch(`${tokens.realm}?service=wharf-upstream&scope=repository:team/app:pull,push`, { headers: { authorization: basic(USER, PASSWORD) } });
    const { token } = (await res.json()) as { token: string };
    image = await pushImage(registry.url, 'team/app', 'v1', `Bearer ${token}`);
  });
  afterAll(() => cleanup.run());

  it('anonymous: 401 -> token -> retry, one token per scope, cached across calls', async () => {
    tokens.requests.length = 0;
    const upstream = client();
    const calls = Array.from({ length: 5 }, () => upstream.manifest('team/app', 'v1', { method: 'GET', accept: ACCEPT }));
    for (const got of await Promise.all(calls)) expect(got?.digest.value).toBe(image.manifestDigest);
    const blob = await upstream.blob('team/app', parseDigest(image.layerDigest), { offset: 1000 });
    expect((await readAll(blob!.body)).equals(image.layer.subarray(1000))).toBe(true);
    expect(tokens.requests).toEqual([{ authorization: undefined, scopes: ['repository:team/app:pull'] }]);
    expect(upstream.stats.tokenRequests).toBe(1);
    const before = upstream.stats.requests;
    await upstream.blobHead('team/app', parseDigest(image.layerDigest));
    expect(upstream.stats.requests - before).toBe(1); // the cached token went up front
    expect(await upstream.manifest('team/else', 'v1', { method: 'HEAD', accept: ACCEPT })).toBeUndefined();
    expect(tokens.requests.map((r) => r.scopes)).toEqual([['repository:team/app:pull'], ['repository:team/else:pull']]);
  });

  it('authenticated: Basic credentials go to the realm; wrong ones are denied', async () => {
    tokens.requests.length = 0;
    const upstream = client({ username: USER, password: PASSWORD });
    expect((await upstream.manifest('team/app', 'v1', { method: 'HEAD', accept: ACCEPT }))?.digest.value).toBe(image.manifestDigest);
    expect(tokens.requests.map((r) => r.authorization)).toEqual([basic(USER, PASSWORD)]);
    const { lines, logger } = recordingLogger();
    const wrong = client({ username: USER, password: 'not-the-Pw-4', logger });
    const err = await wrong.manifest('team/app', 'v1', { method: 'GET', accept: ACCEPT }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamDeniedError);
    expect(`${messages(err)} ${JSON.stringify(lines)}`).not.toContain('not-the-Pw-4');
  });

  it('fetches a new token once expires_in (minus a margin) has passed; reads access_token', async () => {
    tokens.requests.length = 0;
    tokens.settings.expiresIn = 1;
    tokens.settings.field = 'access_token';
    try {
      const upstream = client();
      const head = (): Promise<unknown> => upstream.blobHead('team/app', parseDigest(image.layerDigest));
      await head();
      await head();
      expect(tokens.requests).toHaveLength(1);
      await sleep(800); // 1 s lifetime, a quarter of it as margin
      await head();
      expect(tokens.requests).toHaveLength(2);
    } finally {
      tokens.settings.expiresIn = 300;
      tokens.settings.field = 'token';
    }
  });
});

describe('against node:http upstreams: redirects, broken answers, breaker, failover', () => {
  const cleanup = new Cleanup();
  const blob = Buffer.from('0123456789'.repeat(5000));
  const blobDigest = parseDigest(sha256(blob));
  let storage: HttpFixture;
  let storageAuthorizations: Array<string | undefined>;
  let upstream: HttpFixture;
  let upstreamHandler: (req: IncomingMessage, res: ServerResponse) => void;
  const client = (extra: Partial<UpstreamClientOptions> = {}): UpstreamClient => {
    const c = new UpstreamClient({ urls: [upstream.url], username: USER, password: PASSWORD, ...extra });
    cleanup.add('client', () => c.close());
    return c;
  };
  /** Serves `blob` honouring Range, as object storage does. */
  const serveBlob = (req: IncomingMessage, res: ServerResponse, honourRange = true): void => {
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range && honourRange) {
      const start = Number(range[1]);
      res.writeHead(206, { 'content-range': `bytes ${start}-${blob.length - 1}/${blob.length}`, 'content-length': blob.length - start });
      res.end(blob.subarray(start));
    } else res.writeHead(200, { 'content-length': blob.length }).end(req.method === 'HEAD' ? undefined : blob);
  };

  beforeAll(async () => {
    storage = await startHttpServer((req, res) => {
      storageAuthorizations.push(req.headers.authorization);
      serveBlob(req, res);
    });
    cleanup.add('storage', () => storage.close());
    upstream = await startHttpServer((req, res) => {
      if (req.headers.authorization !== basic(USER, PASSWORD)) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"' }).end();
        return;
      }
      upstreamHandler(req, res);
    });
    cleanup.add('upstream', () => upstream.close());
  });
  afterAll(() => cleanup.run());

  it('follows a 307 to another origin without the Authorization, resuming with Range there', async () => {
    storageAuthorizations = [];
    upstreamHandler = (_req, res) => res.writeHead(307, { location: `${storage.url}/bucket/blob?X-Amz-Signature=s3kr1t` }).end();
    const c = client();
    const whole = await c.blob('a/b', blobDigest);
    expect((await readAll(whole!.body)).equals(blob)).toBe(true);
    const rest = await c.blob('a/b', blobDigest, { offset: 49_990 });
    expect(rest).toMatchObject({ length: 10, total: blob.length });
    expect((await readAll(rest!.body)).toString()).toBe('0123456789');
    expect(storageAuthorizations).toEqual([undefined, undefined]);
  });

  it('keeps Authorization on a same-origin redirect, stops after 5 redirects', async () => {
    upstreamHandler = (req, res) => {
      if (req.url!.startsWith('/internal/')) serveBlob(req, res);
      else res.writeHead(302, { location: `/internal${req.url}` }).end();
    };
    expect(await client().blobHead('a/b', blobDigest)).toBe(blob.length);
    upstreamHandler = (req, res) => res.writeHead(302, { location: `${req.url}x` }).end();
    await expect(client().blobHead('a/b', blobDigest)).rejects.toBeInstanceOf(UpstreamInvalidResponseError);
  });

  it('skips the bytes an upstream sends when it ignores Range', async () => {
    upstreamHandler = (req, res) => serveBlob(req, res, false);
    const rest = await client().blob('a/b', blobDigest, { offset: 49_995 });
    expect(rest).toMatchObject({ length: 5, total: blob.length });
    expect((await readAll(rest!.body)).toString()).toBe('56789');
  });

  it('rejects a manifest whose bytes do not match its digest, or larger than 4 MiB', async () => {
    const manifest = Buffer.from('{"schemaVersion":2}');
    upstreamHandler = (_req, res) =>
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': sha256(Buffer.from('other')) }).end(manifest);
    await expect(client().manifest('a/b', 'v1', { method: 'GET', accept: ACCEPT })).rejects.toBeInstanceOf(UpstreamInvalidResponseError);
    upstreamHandler = (_req, res) => res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }).end(manifest);
    await expect(client().manifest('a/b', sha256(Buffer.from('other')), { method: 'GET', accept: ACCEPT })).rejects.toBeInstanceOf(UpstreamInvalidResponseError);
    upstreamHandler = (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(Buffer.alloc(4 * 1024 * 1024 + 1, 32));
    await expect(client().manifest('a/b', 'v1', { method: 'GET', accept: ACCEPT })).rejects.toBeInstanceOf(UpstreamInvalidResponseError);
  });

  it('turns 5xx, 429 and header timeouts into UpstreamUnavailableError', async () => {
    for (const status of [503, 429]) {
      upstreamHandler = (_req, res) => res.writeHead(status).end();
      await expect(client().blobHead('a/b', blobDigest)).rejects.toBeInstanceOf(UpstreamUnavailableError);
    }
    upstreamHandler = () => undefined; // never answers
    const started = Date.now();
    await expect(client({ headersTimeoutMs: 200 }).blobHead('a/b', blobDigest)).rejects.toBeInstanceOf(UpstreamUnavailableError);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('keeps connections alive and caps them at maxConnections', async () => {
    let open = 0;
    let peak = 0;
    let opened = 0;
    const slow = await startHttpServer((req, res) => setTimeout(() => serveBlob(req, res), 50));
    cleanup.add('slow', () => slow.close());
    slow.server.on('connection', (socket) => {
      opened++;
      peak = Math.max(peak, ++open);
      socket.once('close', () => open--);
    });
    const c = new UpstreamClient({ urls: [slow.url], maxConnections: 2 });
    cleanup.add('client', () => c.close());
    const sizes = await Promise.all(Array.from({ length: 8 }, () => c.blobHead('a/b', blobDigest)));
    expect(sizes).toEqual(Array(8).fill(blob.length));
    expect(await c.blobHead('a/b', blobDigest)).toBe(blob.length);
    expect(peak).toBe(2);
    expect(opened).toBe(2);
  });

  it("a caller's abort is no upstream failure", async () => {
    upstreamHandler = () => undefined; // never answers
    const c = client();
    const aborted = new AbortController();
    setTimeout(() => aborted.abort(new Error('client went away')), 100);
    const err = await c.blobHead('a/b', blobDigest, { signal: aborted.signal }).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(UpstreamUnavailableError);
    expect(c.stats.breakers[upstream.url]).toBe('up');
    expect(c.stats.errors).toBe(0);
  });

  it('breaker: refused -> fails fast without network, reported once; back up after the backoff, reported once', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const changes: Array<[string, string]> = [];
    const { lines, logger } = recordingLogger();
    const c = new UpstreamClient({ urls: [url], onStateChange: (u, state) => changes.push([u, state]), logger });
    cleanup.add('client', () => c.close());
    const first = await c.blobHead('a/b', blobDigest).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(UpstreamUnavailableError);
    expect((first as UpstreamUnavailableError).cause).toBeDefined();
    const requests = c.stats.requests;
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      await expect(c.blobHead('a/b', blobDigest)).rejects.toBeInstanceOf(UpstreamUnavailableError);
      expect(performance.now() - started).toBeLessThan(50);
    }
    expect(c.stats.requests).toBe(requests);
    expect(c.stats.fastFailures).toBe(20);
    expect(changes).toEqual([[url, 'down']]);
    expect(lines.map(([level]) => level)).toEqual(['warn']);

    const revived = await startHttpServer(serveBlob, { port });
    cleanup.add('revived', () => revived.close());
    const size = await waitFor(() => c.blobHead('a/b', blobDigest).catch(() => undefined), { intervalMs: 50, timeoutMs: 5000 });
    expect(size).toBe(blob.length);
    expect(changes).toEqual([[url, 'down'], [url, 'up']]);
    expect(lines.map(([level]) => level)).toEqual(['warn', 'info']);
    expect(c.stats.breakers[url]).toBe('up');
  });

  it('fails over to the next URL on refused connections and 5xx', async () => {
    const closed = `http://127.0.0.1:${await freePort()}`;
    const failing = await startHttpServer((_req, res) => res.writeHead(502).end());
    cleanup.add('failing', () => failing.close());
    const healthy = await startHttpServer(serveBlob);
    cleanup.add('healthy', () => healthy.close());
    const changes: string[] = [];
    const c = new UpstreamClient({ urls: [closed, failing.url, healthy.url], onStateChange: (u, state) => changes.push(`${u} ${state}`) });
    cleanup.add('client', () => c.close());
    expect(await c.blobHead('a/b', blobDigest)).toBe(blob.length);
    expect(changes).toEqual([`${closed} down`, `${failing.url} down`]);
    const before = c.stats.requests;
    expect(await c.blobHead('a/b', blobDigest)).toBe(blob.length);
    expect(c.stats.requests - before).toBe(1); // the down URLs were skipped without network
  });
});
