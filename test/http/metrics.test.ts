// The debug address: Prometheus metrics (scraped over HTTP, counters checked by label and
// amount), /debug/health, /healthz and /readyz, with storage made to fail and recover.
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { Writable } from 'node:stream';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { startRegistryServer, type RunningServer } from '../../server/listen.js';
import { Metrics, routeName } from '../../server/metrics.js';
import { createLogger } from '../../server/logger.js';
import type { Logger } from 'pino';
import { StorageHealth } from '../../server/health.js';
import { PathNotFoundError, StorageUnavailableError, type FileInfo, type StorageDriver } from '../../storage/driver.js';
import { randomBlob, RegistryClient, sha256 } from '../support/client.js';
import { startServer, type TestServer } from '../support/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface Started {
  running: RunningServer;
  url: string;
  debug: string;
  root: string;
}

async function start(env: Record<string, string> = {}, logger?: Logger): Promise<Started> {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-metrics-'));
  const root = join(dir, 'data');
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const config = loadConfig({
    env: {
      REGISTRY_HTTP_ADDR: '127.0.0.1:0',
      REGISTRY_LOG_LEVEL: 'silent',
      REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: root,
      REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
      REGISTRY_HTTP_DEBUG_ADDR: '127.0.0.1:0',
      REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED: 'true',
      ...env,
    },
  });
  const running = await startRegistryServer(config, logger);
  cleanups.push(() => running.close(500));
  return { running, url: `http://127.0.0.1:${running.port}`, debug: `http://127.0.0.1:${running.debugPort}`, root };
}

/** Parsed exposition text: one entry per sample. */
type Samples = { name: string; labels: Record<string, string>; value: number }[];

async function scrape(debug: string, path = '/metrics'): Promise<Samples> {
  const res = await fetch(`${debug}${path}`);
  expect(res.status).toBe(200);
  expect(res.headers.get('Content-Type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const samples: Samples = [];
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    expect(m, line).not.toBeNull();
    const labels: Record<string, string> = {};
    for (const [, k, v] of m![2]?.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g) ?? []) labels[k!] = v!;
    samples.push({ name: m![1]!, labels, value: Number(m![3]) });
  }
  return samples;
}

/** The value of the sample with this name and (at least) these labels; 0 if absent. */
function value(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  expect(found.length, `${name} ${JSON.stringify(labels)}`).toBeLessThanOrEqual(1);
  return found[0]?.value ?? 0;
}

/** The sum of every sample with this name and (at least) these labels. */
const total = (samples: Samples, name: string, labels: Record<string, string> = {}): number =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);

const delta = (before: Samples, after: Samples, name: string, labels: Record<string, string> = {}): number =>
  value(after, name, labels) - value(before, name, labels);

async function until<T>(probe: () => Promise<T>, done: (t: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const t = await probe();
    if (done(t) || Date.now() > deadline) return t;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('metrics on the debug address', () => {
  let s: Started;
  const INTERVAL = 200;
  const THRESHOLD = 3;
  beforeAll(async () => {
    s = await start({
      REGISTRY_HEALTH_STORAGEDRIVER_ENABLED: 'true',
      REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL: `${INTERVAL}ms`,
      REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD: String(THRESHOLD),
    });
  });

  it('counts pushes, pulls and a 404 by route, method and status, with bytes and latency', async () => {
    const client = new RegistryClient(s.url);
    const before = await scrape(s.debug);

    const layer = randomBlob(1000);
    const image = await client.pushImage('team/app', 'v1', [layer]); // 2 monolithic POSTs, 1 manifest PUT
    // A chunked upload without Content-Length (how docker sends layers).
    const chunked = randomBlob(3000);
    const location = await client.startUpload('team/app');
    const patch = await client.fetch(location, {
      method: 'PATCH',
      body: new ReadableStream({
        start(controller) {
          controller.enqueue(chunked.subarray(0, 1000));
          controller.enqueue(chunked.subarray(1000));
          controller.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(patch.status).toBe(202);
    const next = patch.headers.get('Location')!;
    expect((await client.fetch(`${next}${next.includes('?') ? '&' : '?'}digest=${sha256(chunked)}`, { method: 'PUT' })).status).toBe(201);

    const manifest = await client.fetch('/v2/team/app/manifests/v1', { headers: { Accept: OCI } });
    expect(manifest.status).toBe(200);
    await manifest.arrayBuffer();
    const blob = await client.fetch(`/v2/team/app/blobs/${sha256(layer)}`);
    expect(Buffer.from(await blob.arrayBuffer())).toEqual(layer);
    expect((await client.fetch('/v2/team/app/manifests/v9', { method: 'HEAD', headers: { Accept: OCI } })).status).toBe(404);
    const missing = await client.fetch('/v2/team/app/manifests/missing', { headers: { Accept: OCI } });
    expect(missing.status).toBe(404);
    const missingBody = Buffer.from(await missing.arrayBuffer());

    const after = await scrape(s.debug);
    const requests = (route: string, method: string, status: string) =>
      delta(before, after, 'wharf_http_requests_total', { route, method, status });
    expect(requests('upload', 'POST', '201')).toBe(2);
    expect(requests('upload', 'POST', '202')).toBe(1);
    expect(requests('upload', 'PATCH', '202')).toBe(1);
    expect(requests('upload', 'PUT', '201')).toBe(1);
    expect(requests('manifest', 'PUT', '201')).toBe(1);
    expect(requests('manifest', 'GET', '200')).toBe(1);
    expect(requests('manifest', 'GET', '404')).toBe(1);
    expect(requests('manifest', 'HEAD', '404')).toBe(1);
    expect(requests('blob', 'GET', '200')).toBe(1);
    // The route label is a fixed name, never the path.
    expect(after.filter((x) => x.name === 'wharf_http_requests_total').every((x) => !x.labels.route!.includes('/'))).toBe(true);

    // Latency histogram: one observation per request, cumulative buckets ending in +Inf.
    const count = (route: string, method: string) =>
      delta(before, after, 'wharf_http_request_duration_seconds_count', { route, method });
    expect(count('manifest', 'GET')).toBe(2);
    expect(count('upload', 'POST')).toBe(3);
    expect(value(after, 'wharf_http_request_duration_seconds_bucket', { route: 'manifest', method: 'GET', le: '+Inf' })).toBe(
      value(after, 'wharf_http_request_duration_seconds_count', { route: 'manifest', method: 'GET' }),
    );
    expect(value(after, 'wharf_http_request_duration_seconds_sum', { route: 'manifest', method: 'GET' })).toBeGreaterThan(0);
    const buckets = after.filter((x) => x.name === 'wharf_http_request_duration_seconds_bucket' && x.labels.route === 'upload' && x.labels.method === 'POST');
    expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b));

    // Bytes: request bodies as received (the chunked one too), response bodies as sent.
    const configSize = (image.manifest.config as { size: number }).size;
    expect(delta(before, after, 'wharf_http_request_bytes_total', { route: 'upload' })).toBe(configSize + 1000 + 3000);
    expect(delta(before, after, 'wharf_http_request_bytes_total', { route: 'manifest' })).toBe(image.body.length);
    expect(delta(before, after, 'wharf_http_response_bytes_total', { route: 'blob' })).toBe(1000);
    expect(delta(before, after, 'wharf_http_response_bytes_total', { route: 'manifest' })).toBe(image.body.length + missingBody.length);
    expect(delta(before, after, 'wharf_unavailable_responses_total', { route: 'manifest' })).toBe(0);

    // An open registry allows every request it asks about.
    expect(delta(before, after, 'wharf_auth_decisions_total', { outcome: 'allowed' })).toBeGreaterThanOrEqual(10);
    expect(delta(before, after, 'wharf_auth_decisions_total', { outcome: 'unauthorized' })).toBe(0);

    // Process and Node.js metrics.
    expect(value(after, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(after.some((x) => x.name === 'nodejs_heap_size_used_bytes')).toBe(true);
    expect(value(after, 'wharf_storage_healthy')).toBe(1);

    // Storage calls: the push wrote (writer, move, putContent), the pulls read, the missing
    // manifest was a "notfound" answer; nothing failed. Every call is in the histogram too.
    const ops = (labels: Record<string, string>): number => total(after, 'wharf_storage_operations_total', labels) - total(before, 'wharf_storage_operations_total', labels);
    for (const operation of ['writer', 'move', 'putContent', 'getContent', 'reader', 'stat']) {
      expect(ops({ driver: 'filesystem', operation, result: 'ok' }), operation).toBeGreaterThan(0);
    }
    expect(ops({ result: 'notfound' })).toBeGreaterThan(0);
    expect(ops({ result: 'unavailable' }) + ops({ result: 'error' })).toBe(0);
    expect(total(after, 'wharf_storage_operation_duration_seconds_count')).toBe(total(after, 'wharf_storage_operations_total'));
    const writes = value(after, 'wharf_storage_operation_duration_seconds_count', { operation: 'writer' });
    expect(value(after, 'wharf_storage_operation_duration_seconds_bucket', { operation: 'writer', le: '+Inf' })).toBe(writes);
  });

  it('serves health endpoints, and nothing else, on the debug address only', async () => {
    for (const path of ['/debug/health', '/healthz', '/readyz']) {
      const res = await fetch(`${s.debug}${path}`);
      expect(res.status, path).toBe(200);
      expect(await res.json()).toEqual({});
      expect((await fetch(`${s.url}${path}`)).status, `main ${path}`).toBe(404);
    }
    expect((await fetch(`${s.url}/metrics`)).status).toBe(404);
    expect((await fetch(`${s.debug}/debug/health`, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(`${s.debug}/nothing`)).status).toBe(404);
    const post = await fetch(`${s.debug}/readyz`, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('Allow')).toBe('GET, HEAD');
  });

  it(`reports storage unready after ${THRESHOLD} failed checks in a row, and ready again once it answers`, async () => {
    // Root ignores permissions, so storage is broken by putting a file where the root directory was.
    const moved = `${s.root}.moved`;
    await rename(s.root, moved);
    await writeFile(s.root, 'not a directory');
    const broken = Date.now();
    const ready = () => fetch(`${s.debug}/readyz`);
    const failing = await until(ready, (r) => r.status === 503);
    const unreadyAfter = Date.now() - broken;
    expect(failing.status).toBe(503);
    // The first failing check comes at most one interval after the break, the third two intervals later.
    expect(unreadyAfter).toBeGreaterThanOrEqual((THRESHOLD - 1) * INTERVAL - 30);
    expect(await failing.json()).toEqual({ storagedriver_filesystem: 'the storage root is not a directory' });
    const health = await fetch(`${s.debug}/debug/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ storagedriver_filesystem: 'the storage root is not a directory' });
    expect((await fetch(`${s.debug}/healthz`)).status).toBe(200); // alive all the same
    expect(value(await scrape(s.debug), 'wharf_storage_healthy')).toBe(0);

    await rm(s.root);
    await rename(moved, s.root);
    const recovered = await until(ready, (r) => r.status === 200, INTERVAL * 5);
    expect(recovered.status).toBe(200);
    expect((await fetch(`${s.debug}/debug/health`)).status).toBe(200);
    expect(value(await scrape(s.debug), 'wharf_storage_healthy')).toBe(1);
  });
});

describe('auth outcomes', () => {
  let dir: string;
  let s: Started;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-metrics-auth-'));
    const htpasswd = join(dir, 'htpasswd');
    await writeFile(htpasswd, `${execFileSync('htpasswd', ['-Bbn', 'alice', 'alice-pw'], { encoding: 'utf8' }).trim()}\n`);
    s = await start({ REGISTRY_AUTH_HTPASSWD_REALM: 'metrics', REGISTRY_AUTH_HTPASSWD_PATH: htpasswd });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('counts allowed and unauthorized decisions, and the 401 answers', async () => {
    const basic = (user: string, pw: string) => ({ Authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` });
    const before = await scrape(s.debug);
    expect((await fetch(`${s.url}/v2/`)).status).toBe(401);
    expect((await fetch(`${s.url}/v2/`, { headers: basic('alice', 'wrong') })).status).toBe(401);
    expect((await fetch(`${s.url}/v2/`, { headers: basic('alice', 'alice-pw') })).status).toBe(200);
    expect((await fetch(`${s.url}/v2/team/app/tags/list`, { headers: basic('alice', 'alice-pw') })).status).toBe(404);
    const after = await scrape(s.debug);
    expect(delta(before, after, 'wharf_auth_decisions_total', { outcome: 'unauthorized' })).toBe(2);
    expect(delta(before, after, 'wharf_auth_decisions_total', { outcome: 'allowed' })).toBe(2);
    expect(delta(before, after, 'wharf_auth_decisions_total', { outcome: 'denied' })).toBe(0);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'base', method: 'GET', status: '401' })).toBe(2);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'base', method: 'GET', status: '200' })).toBe(1);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'tags', method: 'GET', status: '404' })).toBe(1);
  });

  it('without health.storagedriver, /readyz stats storage when asked and /debug/health has no checks', async () => {
    expect((await fetch(`${s.debug}/readyz`)).status).toBe(200);
    expect(await (await fetch(`${s.debug}/debug/health`)).json()).toEqual({});
    expect(value(await scrape(s.debug), 'wharf_storage_healthy')).toBe(0); // absent: no periodic check
    const moved = `${s.root}.moved`;
    await rename(s.root, moved);
    await writeFile(s.root, 'x');
    try {
      const res = await fetch(`${s.debug}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ storagedriver_filesystem: 'the storage root is not a directory' });
    } finally {
      await rm(s.root);
      await rename(moved, s.root);
    }
    expect((await fetch(`${s.debug}/readyz`)).status).toBe(200);
  });
});

describe('mirror counters', () => {
  let upstream: TestServer;
  beforeAll(async () => {
    upstream = await startServer();
    cleanups.push(() => upstream.close());
  });

  it('reads hits, misses, upstream bytes and breaker state from the mirror at scrape time', async () => {
    const layer = randomBlob(2000);
    const image = await new RegistryClient(upstream.url).pushImage('library/app', 'v1', [layer]);
    const s = await start({ REGISTRY_PROXY_REMOTEURL: upstream.url });
    const mirror = new RegistryClient(s.url);
    const before = await scrape(s.debug);
    expect(value(before, 'wharf_mirror_hits_total')).toBe(0);
    expect(value(before, 'wharf_mirror_upstream_up', { upstream: upstream.url })).toBe(1);

    for (let i = 0; i < 2; i++) {
      const res = await mirror.fetch(`/v2/library/app/manifests/${image.digest}`, { headers: { Accept: OCI } });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    const blob = await mirror.fetch(`/v2/library/app/blobs/${sha256(layer)}`);
    expect(Buffer.from(await blob.arrayBuffer())).toEqual(layer);

    const after = await scrape(s.debug);
    const stats = s.running.mirror!.stats();
    expect(value(after, 'wharf_mirror_hits_total')).toBe(stats.hits);
    expect(value(after, 'wharf_mirror_misses_total')).toBe(stats.misses);
    expect(stats.hits).toBeGreaterThanOrEqual(1);
    expect(stats.misses).toBeGreaterThanOrEqual(2);
    expect(value(after, 'wharf_mirror_upstream_bytes_total')).toBe(stats.bytesFromUpstream);
    expect(stats.bytesFromUpstream).toBeGreaterThanOrEqual(layer.length + image.body.length);
    expect(value(after, 'wharf_mirror_upstream_errors_total')).toBe(0);
    expect(value(after, 'wharf_mirror_upstream_up', { upstream: upstream.url })).toBe(1);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'blob', method: 'GET', status: '200' })).toBe(1);
  });
});

describe('route names', () => {
  it('maps paths to a fixed set of names', () => {
    const cases: [string, string][] = [
      ['/v2/', 'base'],
      ['/v2', 'base'],
      ['/v2/_catalog', 'catalog'],
      ['/v2/a/b/manifests/latest', 'manifest'],
      ['/v2/manifests/manifests/latest', 'manifest'],
      ['/v2/a/blobs/sha256:abc', 'blob'],
      ['/v2/a/blobs/uploads/', 'upload'],
      ['/v2/a/blobs/uploads', 'upload'],
      ['/v2/a/b/blobs/uploads/0b5e-11', 'upload'],
      ['/v2/a/tags/list', 'tags'],
      ['/v2/a/referrers/sha256:abc', 'referrers'],
      ['/auth/token', 'token'],
      ['/auth/jwks', 'token'],
      ['/v2/manifests/latest', 'other'],
      ['/v2/a/tags/other', 'other'],
      ['/v2/a/uploads/x', 'other'],
      ['/v2x', 'other'],
      ['/', 'other'],
      ['/metrics', 'other'],
    ];
    for (const [path, name] of cases) expect(routeName(path), path).toBe(name);
    expect(routeName('/reg/v2/a/manifests/x', '/reg')).toBe('manifest');
    expect(routeName('/v2/a/manifests/x', '/reg')).toBe('other');
  });
});

describe('storage operation metrics', () => {
  it('counts each driver call by operation and result, with its duration', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const observer = metrics.storageObserver('s3');
    observer.operation!('stat', 0.002);
    observer.operation!('stat', 0.0004, new PathNotFoundError('/missing'));
    observer.operation!('putContent', 0.3, new StorageUnavailableError('s3://bucket: ECONNREFUSED'));
    observer.operation!('putContent', 120, new Error('a bug'));
    const text = await metrics.metrics();
    const line = (l: string): void => expect(text.split('\n'), l).toContain(l);
    line('wharf_storage_operations_total{driver="s3",operation="stat",result="ok"} 1');
    line('wharf_storage_operations_total{driver="s3",operation="stat",result="notfound"} 1');
    line('wharf_storage_operations_total{driver="s3",operation="putContent",result="unavailable"} 1');
    line('wharf_storage_operations_total{driver="s3",operation="putContent",result="error"} 1');
    line('wharf_storage_operation_duration_seconds_bucket{driver="s3",operation="stat",le="0.0005"} 1');
    line('wharf_storage_operation_duration_seconds_bucket{driver="s3",operation="stat",le="0.005"} 2');
    line('wharf_storage_operation_duration_seconds_bucket{driver="s3",operation="putContent",le="60"} 1');
    line('wharf_storage_operation_duration_seconds_bucket{driver="s3",operation="putContent",le="+Inf"} 2');
    line('wharf_storage_operation_duration_seconds_sum{driver="s3",operation="putContent"} 120.3');
    line('wharf_storage_operation_duration_seconds_count{driver="s3",operation="stat"} 2');
  });
});

describe('StorageHealth', () => {
  const fakeDriver = (answers: (() => Promise<FileInfo>)[]): StorageDriver =>
    ({ name: 'fake', stat: () => answers.shift()!() }) as unknown as StorageDriver;
  const dirInfo = async (): Promise<FileInfo> => ({ path: '/', size: 0, modTime: new Date(), isDir: true });
  const fail = async (): Promise<FileInfo> => {
    throw Object.assign(new Error('EIO'), { code: 'EIO' });
  };

  it('is unhealthy only after threshold failures in a row; one success resets it', async () => {
    const health = new StorageHealth(fakeDriver([fail, fail, dirInfo, fail, fail, fail, dirInfo]), { interval: 1000, threshold: 3 });
    const seen: boolean[] = [];
    for (let i = 0; i < 7; i++) {
      await health.check();
      seen.push(health.healthy);
    }
    expect(seen).toEqual([true, true, true, true, true, false, true]);
  });

  it('threshold 0 means the first failure counts; a hung stat fails after the timeout', async () => {
    const hung = new StorageHealth(fakeDriver([() => new Promise(() => undefined)]), { interval: 1000, threshold: 0, timeoutMs: 50 });
    await hung.check();
    expect(hung.healthy).toBe(false);
    expect(hung.status()).toEqual({ storagedriver_fake: 'storage did not answer within 50 ms' });
  });
});

describe('the access line and the request metrics', () => {
  const lines: Record<string, unknown>[] = [];
  let s: Started;
  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    s = await start({ REGISTRY_LOG_LEVEL: 'info' }, createLogger('info', {}, sink));
  });
  const requestLines = (): Record<string, unknown>[] => lines.filter((l) => l.msg === 'request');

  it('logs one line per request with the client\'s request id, status and bytes, and counts it once', async () => {
    const before = await scrape(s.debug);
    const res = await fetch(`${s.url}/v2/`, { headers: { 'X-Request-Id': 'trace-4711' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('X-Request-Id')).toBe('trace-4711');
    await res.text();
    const missing = await fetch(`${s.url}/v2/no/such/manifests/latest`);
    expect(missing.status).toBe(404);
    await missing.text();
    await expect.poll(() => requestLines().filter((l) => l.reqId === 'trace-4711').length).toBe(1);
    const line = requestLines().find((l) => l.reqId === 'trace-4711')!;
    expect(line).toMatchObject({ method: 'GET', path: '/v2/', status: 200, bytesOut: 2, aborted: false });
    expect(line.ms).toBeGreaterThan(0);
    await expect.poll(() => requestLines().filter((l) => l.path === '/v2/no/such/manifests/latest' && l.status === 404).length).toBe(1);
    const after = await scrape(s.debug);
    expect(delta(before, after, 'wharf_http_requests_total', { route: routeName('/v2/'), method: 'GET', status: '200' })).toBe(1);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'manifest', method: 'GET', status: '404' })).toBe(1);
  });

  it('a client that leaves before the answer is logged and counted as 499, never as the status nobody received', async () => {
    const client = new RegistryClient(s.url);
    const upload = await client.startUpload('metrics/left');
    const before = await scrape(s.debug);
    // A PATCH that declares 1 MiB, sends 1 KiB and hangs up: wharf is still reading the body.
    const path = new URL(upload, s.url).pathname + new URL(upload, s.url).search;
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(new URL(s.url).port), '127.0.0.1', () => {
        socket.write(`PATCH ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n`);
        socket.write(Buffer.alloc(1024, 7), () => setTimeout(() => (socket.destroy(), resolve()), 100));
      });
      socket.on('error', reject);
    });
    await expect.poll(() => requestLines().filter((l) => l.method === 'PATCH' && l.status === 499).length).toBe(1);
    expect(requestLines().find((l) => l.method === 'PATCH')).toMatchObject({ aborted: true, status: 499 });
    const after = await scrape(s.debug);
    expect(delta(before, after, 'wharf_http_requests_total', { route: 'upload', method: 'PATCH', status: '499' })).toBe(1);
    expect(total(after, 'wharf_http_requests_total', { method: 'PATCH' }) - total(before, 'wharf_http_requests_total', { method: 'PATCH' })).toBe(1);
  });
});

describe('without http.debug', () => {
  it('starts no debug server and collects nothing', async () => {
    const server = await startServer();
    cleanups.push(() => server.close());
    const config = loadConfig({ env: {} });
    expect(config.http.debug).toBeUndefined();
    expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
  });
});
