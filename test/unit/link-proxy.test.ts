// The slow-link proxy used by the mirror tests and benchmark, checked against plain TCP and
// HTTP servers on loopback: timing within generous bounds, bytes and counters exactly.
import { randomBytes } from 'node:crypto';
import { Agent, createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startLinkProxy, type LinkProxy, type LinkProxyOptions } from '../support/link-proxy.js';
import { freePort, sleep, waitFor } from '../support/processes.js';

const MB = 1_000_000;
const PATTERN = Buffer.from(Array.from({ length: 4 * MB }, (_, i) => (i * 7 + (i >>> 10)) & 0xff));

function listen(server: Server | HttpServer): Promise<number> {
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') reject(new Error('no address'));
      else resolveListen(addr.port);
    });
  });
}

function closeServer(server: Server | HttpServer): Promise<void> {
  return new Promise((resolveClose) => server.close(() => resolveClose()));
}

/**
 * "Source" protocol: the client sends `<n>\n`, the server answers n bytes of PATTERN and ends;
 * `inf\n` streams forever (respecting backpressure), counting what it wrote.
 */
interface SourceServer {
  server: Server;
  port: number;
  accepted: number;
  sockets: Set<Socket>;
}
async function startSource(): Promise<SourceServer> {
  const sockets = new Set<Socket>();
  const source: SourceServer = { server: createServer(), port: 0, accepted: 0, sockets };
  source.server.on('connection', (sock) => {
    source.accepted++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    let line = '';
    const onData = (d: Buffer): void => {
      line += d.toString('latin1');
      const nl = line.indexOf('\n');
      if (nl < 0) return;
      sock.off('data', onData);
      const what = line.slice(0, nl);
      if (what === 'inf') {
        const pump = (): void => {
          while (!sock.destroyed && sock.write(PATTERN.subarray(0, 64 * 1024)));
        };
        sock.on('drain', pump);
        pump();
      } else {
        sock.end(PATTERN.subarray(0, Number(what)));
      }
    };
    sock.on('data', onData);
  });
  source.port = await listen(source.server);
  return source;
}

async function startEcho(): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('error', () => undefined);
    sock.pipe(sock); // ends its side when the client's end arrives
  });
  return { server, port: await listen(server) };
}

interface Received {
  data: Buffer;
  /** Error code the socket closed with, if any. */
  error: string | undefined;
  ms: number;
}

/** Connects, writes `send` (then ends if asked), collects everything until the socket closes. */
function exchange(port: number, send: Buffer | string, opts: { end?: boolean } = {}): Promise<Received> {
  return new Promise((resolveExchange) => {
    const t0 = performance.now();
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const sock = connect({ host: '127.0.0.1', port });
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
    sock.on('close', () => resolveExchange({ data: Buffer.concat(chunks), error, ms: performance.now() - t0 }));
    if (opts.end) sock.end(send);
    else sock.write(send);
  });
}

const fetchBytes = (proxy: LinkProxy, n: number): Promise<Received> => exchange(proxy.port, `${n}\n`);

/** How many bytes `a` and `b` (same length) differ in, and where the first difference is. */
function diff(a: Buffer, b: Buffer): { count: number; first: number } {
  let count = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      count++;
      if (first < 0) first = i;
    }
  }
  return { count, first };
}

let source: SourceServer;
let echo: { server: Server; port: number };
const proxies: LinkProxy[] = [];

async function proxyTo(port: number, extra: Partial<LinkProxyOptions> = {}): Promise<LinkProxy> {
  const proxy = await startLinkProxy({ target: { host: '127.0.0.1', port }, ...extra });
  proxies.push(proxy);
  return proxy;
}

beforeAll(async () => {
  source = await startSource();
  echo = await startEcho();
});
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
  for (const s of source.sockets) s.destroy();
});
afterAll(async () => {
  await closeServer(source.server);
  await closeServer(echo.server);
});

describe('link proxy: forwarding and counters', () => {
  it('forwards both directions with half-close, counting exactly what it forwarded', async () => {
    const proxy = await proxyTo(echo.port);
    expect(proxy.url).toBe(`http://127.0.0.1:${proxy.port}`);
    const payload = randomBytes(1024 * 1024 + 17);
    const got = await exchange(proxy.port, payload, { end: true });
    expect(got.error).toBeUndefined();
    expect(got.data.equals(payload)).toBe(true);
    expect(proxy.stats()).toEqual({ connections: 1, bytesDown: payload.length, bytesUp: payload.length });
    await waitFor(() => proxy.activeConnections === 0, { timeoutMs: 2000, what: 'connection cleaned up' });

    proxy.resetStats();
    expect(proxy.stats()).toEqual({ connections: 0, bytesDown: 0, bytesUp: 0 });
  });

  it('counts downstream bytes exactly over several connections', async () => {
    const proxy = await proxyTo(source.port);
    const sizes = [1, 65_536, 300_001];
    const results = await Promise.all(sizes.map((n) => fetchBytes(proxy, n)));
    results.forEach((r, i) => expect(r.data.equals(PATTERN.subarray(0, sizes[i]))).toBe(true));
    const requestBytes = sizes.reduce((sum, n) => sum + `${n}\n`.length, 0);
    expect(proxy.stats()).toEqual({ connections: 3, bytesDown: 1 + 65_536 + 300_001, bytesUp: requestBytes });
  });

  it('resets the client quickly when the target refuses', async () => {
    const proxy = await proxyTo(await freePort());
    const got = await fetchBytes(proxy, 10);
    expect(got.data.length).toBe(0);
    expect(got.error).toBe('ECONNRESET');
    expect(got.ms).toBeLessThan(1000);
  });

  it('bounds what it buffers when the client does not read (backpressure)', async () => {
    const bufferBytes = 256 * 1024;
    const proxy = await proxyTo(source.port, { bufferBytes });
    const sock = connect({ host: '127.0.0.1', port: proxy.port });
    sock.on('error', () => undefined);
    sock.pause();
    sock.write('inf\n');
    await sleep(400);
    const held = proxy.bufferedBytes();
    expect(held).toBeGreaterThan(0);
    // Pausing the source stops it within one read (64 KiB).
    expect(held).toBeLessThanOrEqual(bufferBytes + 64 * 1024);
    await sleep(200);
    expect(proxy.bufferedBytes()).toBe(held); // nothing more came in
    // Reading again drains it and the stream flows again.
    let more = 0;
    sock.on('data', (d: Buffer) => (more += d.length));
    sock.resume();
    await waitFor(() => more > 4 * bufferBytes, { timeoutMs: 3000, what: 'flow after resume' });
    sock.destroy();
  });
});

describe('link proxy: bandwidth', () => {
  it('moves 2 MB at 1 MB/s in about 2 s', async () => {
    const proxy = await proxyTo(source.port, { settings: { bandwidth: 1 * MB } });
    const got = await fetchBytes(proxy, 2 * MB);
    expect(got.data.equals(PATTERN.subarray(0, 2 * MB))).toBe(true);
    expect(got.ms).toBeGreaterThan(1600);
    expect(got.ms).toBeLessThan(2400);
  });

  it('shares the bandwidth between concurrent connections', async () => {
    const proxy = await proxyTo(source.port, { settings: { bandwidth: 2 * MB } });
    const [a, b] = await Promise.all([fetchBytes(proxy, 1 * MB), fetchBytes(proxy, 1 * MB)]);
    for (const r of [a!, b!]) {
      expect(r.data.length).toBe(1 * MB);
      // Each alone would take 0.5 s; sharing fairly, both finish at about 1 s.
      expect(r.ms).toBeGreaterThan(800);
      expect(r.ms).toBeLessThan(1250);
    }
    expect(proxy.stats().bytesDown).toBe(2 * MB);
  });

  it('applies a new rate to a live connection', async () => {
    const proxy = await proxyTo(source.port, { settings: { bandwidth: 256 * 1024 } });
    const pending = fetchBytes(proxy, 4 * MB); // 16 s at this rate
    await sleep(300);
    proxy.set({ bandwidth: null });
    const got = await pending;
    expect(got.data.equals(PATTERN.subarray(0, 4 * MB))).toBe(true);
    expect(got.ms).toBeLessThan(1500);
  });

  it('limits the upstream direction when asked', async () => {
    const proxy = await proxyTo(echo.port, { settings: { upBandwidth: 1 * MB } });
    const payload = randomBytes(500_000);
    const got = await exchange(proxy.port, payload, { end: true });
    expect(got.data.equals(payload)).toBe(true);
    expect(got.ms).toBeGreaterThan(400);
    expect(got.ms).toBeLessThan(900);
  });
});

describe('link proxy: latency', () => {
  let http: HttpServer;
  let httpPort: number;
  beforeAll(async () => {
    http = createHttpServer((req, res) => {
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    http.keepAliveTimeout = 10_000;
    httpPort = await listen(http);
  });
  afterAll(async () => {
    http.closeAllConnections();
    await closeServer(http);
  });

  function get(proxy: LinkProxy, agent: Agent): Promise<number> {
    return new Promise((resolveGet, reject) => {
      const t0 = performance.now();
      const req = request(`${proxy.url}/`, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolveGet(performance.now() - t0));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('adds one round trip per request on a keep-alive connection, two on a fresh one', async () => {
    const latencyMs = 50;
    const proxy = await proxyTo(httpPort, { settings: { latencyMs } });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const fresh = await get(proxy, agent);
      const reused = await get(proxy, agent);
      expect(proxy.stats().connections).toBe(1);
      expect(fresh).toBeGreaterThanOrEqual(4 * latencyMs - 2); // handshake RTT + request RTT
      expect(reused).toBeGreaterThanOrEqual(2 * latencyMs - 2);
      expect(reused).toBeLessThan(3 * latencyMs);
    } finally {
      agent.destroy();
    }
  });

  it('skips the handshake round trip with handshake: false, and latency changes apply live', async () => {
    const proxy = await proxyTo(httpPort, { settings: { latencyMs: 40, handshake: false } });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const fresh = await get(proxy, agent);
      expect(fresh).toBeGreaterThanOrEqual(2 * 40 - 2);
      expect(fresh).toBeLessThan(3 * 40);
      proxy.set({ latencyMs: 80 });
      expect(await get(proxy, agent)).toBeGreaterThanOrEqual(2 * 80 - 2);
      proxy.set({ latencyMs: 0 });
      expect(await get(proxy, agent)).toBeLessThan(40);
      expect(proxy.stats().connections).toBe(1);
    } finally {
      agent.destroy();
    }
  });
});

describe('link proxy: faults', () => {
  it('cuts the next connection after exactly N downstream bytes, once', async () => {
    const proxy = await proxyTo(source.port);
    proxy.set({ cutAfterBytes: 100_000 });
    const cut = await fetchBytes(proxy, 1 * MB);
    expect(cut.data.length).toBe(100_000);
    expect(cut.data.equals(PATTERN.subarray(0, 100_000))).toBe(true);
    expect(proxy.settings().cutAfterBytes).toBeNull();
    expect(proxy.stats().bytesDown).toBe(100_000);

    const whole = await fetchBytes(proxy, 1 * MB);
    expect(whole.data.length).toBe(1 * MB);
    // A connection that forwards exactly N bytes is not cut.
    proxy.set({ cutAfterBytes: 5000 });
    expect((await fetchBytes(proxy, 5000)).data.length).toBe(5000);
    expect(proxy.settings().cutAfterBytes).toBe(5000);
  });

  it('keeps cutting with cutRepeat, also through latency and a bandwidth limit', async () => {
    const proxy = await proxyTo(source.port, { settings: { cutAfterBytes: 50_000, cutRepeat: true, latencyMs: 20, bandwidth: 2 * MB } });
    const results = await Promise.all([fetchBytes(proxy, 1 * MB), fetchBytes(proxy, 1 * MB)]);
    for (const r of results) expect(r.data.equals(PATTERN.subarray(0, 50_000))).toBe(true);
    expect(proxy.settings().cutAfterBytes).toBe(50_000);
    await waitFor(() => proxy.activeConnections === 0, { timeoutMs: 2000, what: 'cut connections gone' });
  });

  it('counts a cut on a live keep-alive connection from the moment it was set', async () => {
    const proxy = await proxyTo(echo.port);
    const sock = connect({ host: '127.0.0.1', port: proxy.port });
    let received = 0;
    sock.on('data', (d: Buffer) => (received += d.length));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.write(Buffer.alloc(1000, 1));
    await waitFor(() => received === 1000, { timeoutMs: 2000, what: 'first echo' });
    proxy.set({ cutAfterBytes: 300 });
    sock.write(Buffer.alloc(1000, 2));
    await closed;
    expect(received).toBe(1300);
  });

  it('flips exactly one downstream byte, once', async () => {
    const proxy = await proxyTo(source.port, { settings: { flipByteAt: 123_457 } });
    const flipped = await fetchBytes(proxy, 1 * MB);
    const expected = PATTERN.subarray(0, 1 * MB);
    expect(flipped.data.length).toBe(1 * MB);
    expect(diff(flipped.data, expected)).toEqual({ count: 1, first: 123_457 });
    expect(flipped.data[123_457]).toBe(expected[123_457]! ^ 0xff);
    expect(proxy.settings().flipByteAt).toBeNull();
    expect((await fetchBytes(proxy, 1 * MB)).data.equals(expected)).toBe(true);
  });

  it('refuses new connections fast while refuse is set', async () => {
    const proxy = await proxyTo(source.port);
    proxy.set({ refuse: true });
    const before = source.accepted;
    const got = await fetchBytes(proxy, 10);
    expect(got.data.length).toBe(0);
    expect(['ECONNRESET', 'ECONNREFUSED']).toContain(got.error);
    expect(got.ms).toBeLessThan(500);
    expect(source.accepted).toBe(before);
    expect(proxy.stats().connections).toBe(1);
    proxy.set({ refuse: false });
    expect((await fetchBytes(proxy, 10)).data.length).toBe(10);
  });

  it('black-holes new connections and stalls live ones', async () => {
    const proxy = await proxyTo(source.port, { settings: { bandwidth: 1 * MB } });
    // A live transfer stalls while the hole is there and completes after.
    let received = 0;
    const live = connect({ host: '127.0.0.1', port: proxy.port });
    live.on('data', (d: Buffer) => (received += d.length));
    const liveDone = new Promise<void>((r) => live.on('end', () => r()));
    live.write(`${1 * MB}\n`);
    await waitFor(() => received > 100_000, { timeoutMs: 2000, what: 'transfer under way' });
    proxy.set({ blackhole: true });
    await sleep(50);
    const stalledAt = received;

    // A new connection is accepted but never reaches the target.
    const before = source.accepted;
    const dark = connect({ host: '127.0.0.1', port: proxy.port });
    let darkBytes = 0;
    dark.on('data', (d: Buffer) => (darkBytes += d.length));
    dark.write('10\n');
    await sleep(300);
    expect(darkBytes).toBe(0);
    expect(source.accepted).toBe(before);
    expect(received).toBe(stalledAt);
    dark.destroy();

    proxy.set({ blackhole: false });
    await liveDone;
    expect(received).toBe(1 * MB);
    live.destroy();
  });

  it('dropConnections() resets live connections', async () => {
    const proxy = await proxyTo(source.port, { settings: { bandwidth: 200_000 } });
    const pending = fetchBytes(proxy, 1 * MB);
    // The connection must be live first: on a busy machine it may take longer than a tick.
    for (let i = 0; i < 100 && proxy.activeConnections === 0; i++) await sleep(20);
    await sleep(50);
    proxy.dropConnections();
    const got = await pending;
    expect(got.data.length).toBeLessThan(1 * MB);
    expect(got.error).toBe('ECONNRESET');
    expect(proxy.activeConnections).toBe(0);
  });
});

describe('link proxy: close', () => {
  it('destroys live connections and leaves no timers behind', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    await sleep(100); // let timers of earlier tests run out
    const baseline = timers();
    const proxy = await startLinkProxy({ target: { host: '127.0.0.1', port: source.port }, settings: { bandwidth: 100_000, latencyMs: 30 } });
    const pending = fetchBytes(proxy, 1 * MB);
    await sleep(200);
    expect(proxy.activeConnections).toBe(1);
    expect(timers()).toBeGreaterThan(baseline); // the shaper tick and delay line are live
    await proxy.close();
    const got = await pending;
    expect(got.data.length).toBeLessThan(1 * MB);
    expect(proxy.activeConnections).toBe(0);
    // At most: a timer of something else may have run out meanwhile.
    expect(timers()).toBeLessThanOrEqual(baseline);
    await proxy.close(); // idempotent
  });

  it('refuses non-loopback addresses', async () => {
    await expect(startLinkProxy({ target: { host: '10.0.0.1', port: 80 } })).rejects.toThrow(/loopback/);
    await expect(startLinkProxy({ target: { host: '127.0.0.1', port: 80 }, listenHost: '0.0.0.0' })).rejects.toThrow(/loopback/);
  });
});
