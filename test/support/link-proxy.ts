// A TCP proxy the tests own, between wharf's mirror and a real upstream registry on loopback,
// that makes the loopback hop behave like a slow, far, unreliable link: shared bandwidth,
// one-way latency, refused or black-holed connections, connections cut after N bytes, a
// flipped byte. Plain TCP (HTTP-agnostic), so keep-alive connections and any upstream work.
//
// Model of the link, per connection and direction:
//   source socket -> [shaper queue: waits for tokens of the direction's shared bucket]
//                 -> [delay line: each chunk released latencyMs after it left the shaper]
//                 -> destination socket
// Downstream faults (flip, cut) are applied where bytes come in from the target, before the
// shaper, so a cut connection still delivers its last N bytes at link speed.
import { connect, createServer, isIPv4, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface LinkSettings {
  /** Downstream (target -> client) bytes/s shared by all connections; null: unlimited. */
  bandwidth: number | null;
  /** Upstream (client -> target) bytes/s shared by all connections; null: unlimited. */
  upBandwidth: number | null;
  /** One-way delay added to data in each direction (and to the end of a stream). */
  latencyMs: number;
  /**
   * A new connection pays TCP's handshake on the far link: the target is connected
   * latencyMs after accept, and the client's first bytes reach it no sooner than 3 × latencyMs
   * after accept (so the first round trip on a fresh connection costs 2 RTT, later ones 1 RTT).
   */
  handshake: boolean;
  /** New connections are reset at once (the client sees ECONNRESET). Live ones go on. */
  refuse: boolean;
  /**
   * New connections are accepted and never forwarded (their bytes are dropped, the target is
   * never connected, the client times out). Live connections stall while it is set: nothing
   * moves in either direction, and they go on when it is cleared, as TCP does over a link
   * that came back.
   */
  blackhole: boolean;
  /**
   * Cut the next connection whose downstream stream goes past this many bytes: it gets exactly
   * that many bytes, then FIN, and the target side is destroyed. Bytes are counted from the
   * connection's start, or for connections already open when this was set, from that moment
   * (so on an idle keep-alive connection: from the start of its next response). One-shot: it
   * resets to null once fired, unless cutRepeat.
   */
  cutAfterBytes: number | null;
  /** Keep cutAfterBytes armed after it fired (every connection going past it is cut). */
  cutRepeat: boolean;
  /**
   * XOR with 0xff the downstream byte at this offset of the next connection to reach it;
   * offsets counted as for cutAfterBytes. One-shot: resets to null once fired.
   */
  flipByteAt: number | null;
}

/** For set(): a key given as null or undefined goes back to its default. */
export type LinkSettingsPatch = { [K in keyof LinkSettings]?: LinkSettings[K] | null | undefined };

export interface LinkStats {
  /** Connections accepted (refused and black-holed ones included). */
  connections: number;
  /** Bytes forwarded from the target to clients (written to client sockets). */
  bytesDown: number;
  /** Bytes forwarded from clients to the target (written to target sockets). */
  bytesUp: number;
}

export interface LinkProxyOptions {
  target: { host: string; port: number };
  listenHost?: string;
  /** Initial settings. */
  settings?: LinkSettingsPatch;
  /**
   * Most bytes held per connection and direction (shaper queue + delay line + socket write
   * buffer) before the source is paused. Like a TCP window it also caps throughput over
   * latency at bufferBytes / latencyMs. Default 4 MiB.
   */
  bufferBytes?: number;
  /** Token bucket tick; default 10 ms. */
  tickMs?: number;
}

export interface LinkProxy {
  /** http://<listenHost>:<port> */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Changes settings; applies to live connections as well as new ones. */
  set(patch: LinkSettingsPatch): void;
  /** All settings back to defaults (a plain, fast, faultless link). */
  reset(): void;
  settings(): LinkSettings;
  /** Cumulative counters since start or resetStats(). */
  stats(): LinkStats;
  resetStats(): void;
  /** Connections currently open through the proxy. */
  readonly activeConnections: number;
  /** Bytes currently held by the proxy in all its queues (for backpressure checks). */
  bufferedBytes(): number;
  /** Resets every live connection (both sides), as a link failure would. */
  dropConnections(): void;
  /** Stops listening and destroys all live connections; resolves when the server closed. */
  close(): Promise<void>;
}

const DEFAULTS: LinkSettings = {
  bandwidth: null,
  upBandwidth: null,
  latencyMs: 0,
  handshake: true,
  refuse: false,
  blackhole: false,
  cutAfterBytes: null,
  cutRepeat: false,
  flipByteAt: null,
};

/** Bucket depth in seconds of the rate: enough to absorb late ticks, small enough to stay smooth. */
const BURST_SECONDS = 0.05;
/** How long a cut connection's client may keep its side open after our FIN. */
const CUT_GRACE_MS = 1000;

const now = (): number => performance.now();

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'));
}

export async function startLinkProxy(options: LinkProxyOptions): Promise<LinkProxy> {
  const listenHost = options.listenHost ?? '127.0.0.1';
  // Test support must never expose or reach anything beyond this machine.
  if (!isLoopback(listenHost)) throw new Error(`link proxy: listenHost ${listenHost} is not a loopback address`);
  if (!isLoopback(options.target.host)) throw new Error(`link proxy: target ${options.target.host} is not a loopback address`);
  const link = new Link(options);
  if (options.settings) link.set(options.settings);
  const server = createServer({ allowHalfOpen: true }, (client) => link.accept(client));
  link.server = server;
  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(0, listenHost, () => {
      server.off('error', reject);
      resolveListen();
    });
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('link proxy: no address');
  const port = addr.port;
  const urlHost = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
  return {
    url: `http://${urlHost}:${port}`,
    host: listenHost,
    port,
    set: (patch) => link.set(patch),
    reset: () => link.set({ ...DEFAULTS }),
    settings: () => ({ ...link.settings }),
    stats: () => ({ ...link.counters }),
    resetStats: () => {
      link.counters = { connections: 0, bytesDown: 0, bytesUp: 0 };
    },
    get activeConnections() {
      return link.conns.size;
    },
    bufferedBytes: () => link.bufferedBytes(),
    dropConnections: () => link.dropConnections(),
    close: () => link.close(),
  };
}

interface Arming {
  limit: number;
  /** Per connection open when armed: its downstream byte count at that moment. */
  baselines: WeakMap<Connection, number>;
}

interface Live {
  destroy(reset?: boolean): void;
  buffered(): number;
}

class Link {
  settings: LinkSettings = { ...DEFAULTS };
  counters: LinkStats = { connections: 0, bytesDown: 0, bytesUp: 0 };
  readonly conns = new Set<Live>();
  readonly downShaper: Shaper;
  readonly upShaper: Shaper;
  readonly bufferBytes: number;
  readonly target: { host: string; port: number };
  server: Server | undefined;
  cut: Arming | null = null;
  flip: Arming | null = null;
  private closing: Promise<void> | undefined;

  constructor(options: LinkProxyOptions) {
    this.target = options.target;
    this.bufferBytes = options.bufferBytes ?? 4 * 1024 * 1024;
    const tickMs = options.tickMs ?? 10;
    this.downShaper = new Shaper(this, tickMs);
    this.upShaper = new Shaper(this, tickMs);
  }

  get stalled(): boolean {
    return this.settings.blackhole;
  }

  set(patch: LinkSettingsPatch): void {
    const next: LinkSettings = { ...this.settings };
    const given = <K extends keyof LinkSettings>(key: K): boolean => Object.prototype.hasOwnProperty.call(patch, key);
    const value = <K extends keyof LinkSettings>(key: K): LinkSettings[K] => (patch[key] ?? DEFAULTS[key]) as LinkSettings[K];
    for (const key of ['bandwidth', 'upBandwidth'] as const) {
      if (!given(key)) continue;
      const rate = value(key);
      if (rate !== null && !(rate > 0)) throw new RangeError(`link proxy: ${key} must be > 0 bytes/s or null`);
      next[key] = rate === Infinity ? null : rate;
    }
    if (given('latencyMs')) {
      const ms = value('latencyMs');
      if (!(ms >= 0 && Number.isFinite(ms))) throw new RangeError('link proxy: latencyMs must be a finite number >= 0');
      next.latencyMs = ms;
    }
    for (const key of ['handshake', 'refuse', 'blackhole', 'cutRepeat'] as const) if (given(key)) next[key] = Boolean(value(key));
    for (const key of ['cutAfterBytes', 'flipByteAt'] as const) {
      if (!given(key)) continue;
      const n = value(key);
      if (n !== null && !(Number.isSafeInteger(n) && n >= 0)) throw new RangeError(`link proxy: ${key} must be an integer >= 0 or null`);
      next[key] = n;
    }
    const wasStalled = this.stalled;
    this.settings = next;
    // Arming (again) takes a baseline for every live connection: offsets count from now on them.
    if (given('cutAfterBytes')) this.cut = next.cutAfterBytes === null ? null : this.arm(next.cutAfterBytes);
    if (given('flipByteAt')) this.flip = next.flipByteAt === null ? null : this.arm(next.flipByteAt);
    this.downShaper.setRate(next.bandwidth);
    this.upShaper.setRate(next.upBandwidth);
    if (wasStalled && !this.stalled) {
      for (const c of this.conns) if (c instanceof Connection) c.kick();
      this.downShaper.kick();
      this.upShaper.kick();
    }
  }

  private arm(limit: number): Arming {
    const baselines = new WeakMap<Connection, number>();
    for (const c of this.conns) if (c instanceof Connection) baselines.set(c, c.down.ingressBytes);
    return { limit, baselines };
  }

  /** A fault fired: one-shot ones reset to null (a repeating cut stays armed). */
  disarm(kind: 'cut' | 'flip'): void {
    if (kind === 'flip') {
      this.flip = null;
      this.settings = { ...this.settings, flipByteAt: null };
    } else if (!this.settings.cutRepeat) {
      this.cut = null;
      this.settings = { ...this.settings, cutAfterBytes: null };
    }
  }

  accept(client: Socket): void {
    this.counters.connections++;
    client.on('error', () => undefined);
    if (this.closing !== undefined || this.settings.refuse) {
      client.resetAndDestroy();
      return;
    }
    if (this.settings.blackhole) {
      const hole: Live = {
        destroy: () => client.destroy(),
        buffered: () => 0,
      };
      this.conns.add(hole);
      client.on('close', () => this.conns.delete(hole));
      client.on('end', () => client.destroy()); // the client gave up: its timeout fired
      client.resume(); // read and drop: packets into the void
      return;
    }
    this.conns.add(new Connection(this, client));
  }

  bufferedBytes(): number {
    let total = 0;
    for (const c of this.conns) total += c.buffered();
    return total;
  }

  dropConnections(): void {
    for (const c of [...this.conns]) c.destroy(true);
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolveClose) => {
      const server = this.server;
      if (server === undefined) {
        resolveClose();
        return;
      }
      server.close(() => resolveClose());
      for (const c of [...this.conns]) c.destroy();
      this.downShaper.stop();
      this.upShaper.stop();
    });
    return this.closing;
  }
}

/** One token bucket for one direction of the whole link. */
class Shaper {
  rate: number | null = null;
  private tokens = 0;
  private last = now();
  private readonly waiters = new Set<Pipe>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly link: Link,
    private readonly tickMs: number,
  ) {}

  get limited(): boolean {
    return this.rate !== null;
  }

  setRate(rate: number | null): void {
    if (rate === this.rate) return;
    this.refill();
    this.rate = rate;
    if (rate === null) {
      // Unlimited now: whatever waited for tokens goes on at once.
      const waiting = [...this.waiters];
      this.waiters.clear();
      this.stop();
      for (const p of waiting) p.takePending(Infinity);
    } else {
      this.tokens = Math.min(this.tokens, this.burst());
    }
  }

  want(pipe: Pipe): void {
    this.waiters.add(pipe);
    if (this.timer === undefined) {
      this.tick();
      if (this.waiters.size > 0 && this.timer === undefined) this.timer = setInterval(() => this.tick(), this.tickMs);
    }
  }

  forget(pipe: Pipe): void {
    this.waiters.delete(pipe);
    if (this.waiters.size === 0) this.stop();
  }

  kick(): void {
    if (this.waiters.size > 0) this.tick();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private burst(): number {
    return Math.max(1, (this.rate ?? 0) * BURST_SECONDS);
  }

  private refill(): void {
    const t = now();
    if (this.rate !== null) this.tokens = Math.min(this.burst(), this.tokens + (this.rate * (t - this.last)) / 1000);
    this.last = t;
  }

  private tick(): void {
    this.refill();
    if (!this.link.stalled) {
      // Max-min fair share: split what the bucket holds evenly, hand leftovers round again.
      let budget = Math.floor(this.tokens);
      const start = budget;
      while (budget > 0 && this.waiters.size > 0) {
        const share = Math.max(1, Math.floor(budget / this.waiters.size));
        for (const p of [...this.waiters]) {
          if (budget <= 0) break;
          budget -= p.takePending(Math.min(share, budget));
          if (p.pendingBytes === 0) this.waiters.delete(p);
        }
      }
      this.tokens -= start - budget;
    }
    if (this.waiters.size === 0) this.stop();
  }
}

interface Slot {
  at: number;
  /** null: the end of the stream (FIN), delayed like data. */
  chunk: Buffer | null;
}

/** One direction of one connection. */
class Pipe {
  private pending: Buffer[] = [];
  pendingBytes = 0;
  private line: Slot[] = [];
  private lineBytes = 0;
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Earliest release of anything (the handshake, for the upstream direction). */
  notBefore = 0;
  /** Bytes read from the source, for fault offsets. */
  ingressBytes = 0;
  private sourceEnded = false;
  private endQueued = false;
  private pausedByUs = false;
  /** Drop everything (the other half of a cut connection). */
  discarding = false;

  constructor(
    private readonly link: Link,
    private readonly direction: 'down' | 'up',
    private readonly source: () => Socket | undefined,
    private readonly dest: () => Socket | undefined,
    private readonly shaper: Shaper,
  ) {}

  ingress(chunk: Buffer): void {
    if (this.discarding) return;
    this.ingressBytes += chunk.length;
    if (this.shaper.limited || this.pending.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      this.shaper.want(this);
    } else {
      this.enter(chunk);
      this.release();
    }
    this.checkPressure();
  }

  sourceEnd(): void {
    if (this.discarding) return;
    this.sourceEnded = true;
    if (this.pending.length === 0) this.queueEnd();
  }

  /** Moves up to `max` bytes from the shaper queue into the delay line; returns how many. */
  takePending(max: number): number {
    let taken = 0;
    while (taken < max && this.pending.length > 0) {
      const head = this.pending[0]!;
      const n = Math.min(head.length, max - taken);
      if (n === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(n);
      this.enter(n === head.length ? head : head.subarray(0, n));
      taken += n;
    }
    this.pendingBytes -= taken;
    if (this.pending.length === 0 && this.sourceEnded) this.queueEnd();
    this.release();
    return taken;
  }

  /** Releases what is due; schedules the next release. */
  release(): void {
    if (this.discarding) return;
    const dest = this.dest();
    if (this.link.stalled || dest === undefined || dest.destroyed) return;
    const t = now();
    while (this.line.length > 0 && this.line[0]!.at <= t) {
      const slot = this.line.shift()!;
      if (slot.chunk === null) {
        dest.end();
        continue;
      }
      this.lineBytes -= slot.chunk.length;
      dest.write(slot.chunk);
      if (this.direction === 'down') this.link.counters.bytesDown += slot.chunk.length;
      else this.link.counters.bytesUp += slot.chunk.length;
    }
    if (this.line.length > 0 && this.timer === undefined) {
      this.timer = setTimeout(
        () => {
          this.timer = undefined;
          this.release();
        },
        Math.max(0, this.line[0]!.at - t),
      );
    }
    this.checkPressure();
  }

  checkPressure(): void {
    const held = this.buffered();
    if (!this.pausedByUs && held >= this.link.bufferBytes) {
      this.pausedByUs = true;
      this.source()?.pause();
    } else if (this.pausedByUs && held <= this.link.bufferBytes / 2) {
      this.pausedByUs = false;
      this.source()?.resume();
    }
  }

  buffered(): number {
    const dest = this.dest();
    return this.pendingBytes + this.lineBytes + (dest?.writableLength ?? 0);
  }

  /** Stops forwarding for good and lets the source flow into nothing (so its end is seen). */
  discard(): void {
    this.discarding = true;
    this.clear();
    this.pending = [];
    this.pendingBytes = 0;
    this.line = [];
    this.lineBytes = 0;
    this.pausedByUs = false;
    this.source()?.resume();
  }

  clear(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.shaper.forget(this);
  }

  private enter(chunk: Buffer | null): void {
    // Never earlier than the slot before: latency may be lowered while data is in flight.
    const at = Math.max(now() + this.link.settings.latencyMs, this.lastAt, this.notBefore);
    this.lastAt = at;
    this.line.push({ at, chunk });
    if (chunk !== null) this.lineBytes += chunk.length;
  }

  private queueEnd(): void {
    if (this.endQueued) return;
    this.endQueued = true;
    this.enter(null);
    this.release();
  }
}

/** A client connection and its connection to the target. */
class Connection implements Live {
  readonly down: Pipe;
  readonly up: Pipe;
  private target: Socket | undefined;
  private targetReady = false;
  private connectTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private cutting = false;
  private dead = false;
  private clientClosed = false;
  private targetClosed = false;

  constructor(
    private readonly link: Link,
    private readonly client: Socket,
  ) {
    client.setNoDelay(true); // Nagle plus delayed ACKs would add their own 40 ms latency
    this.down = new Pipe(link, 'down', () => this.target, () => client, link.downShaper);
    this.up = new Pipe(link, 'up', () => client, () => (this.targetReady ? this.target : undefined), link.upShaper);
    const latency = link.settings.latencyMs;
    if (link.settings.handshake && latency > 0) this.up.notBefore = now() + 3 * latency;
    client.on('data', (chunk: Buffer) => this.up.ingress(chunk));
    client.on('end', () => this.up.sourceEnd());
    client.on('drain', () => this.down.checkPressure());
    client.on('error', () => this.destroy());
    client.on('finish', () => {
      if (this.cutting) this.graceTimer = setTimeout(() => this.destroy(), CUT_GRACE_MS);
    });
    client.on('close', () => {
      this.clientClosed = true;
      this.settle();
    });
    if (latency > 0) this.connectTimer = setTimeout(() => this.connectTarget(), latency);
    else this.connectTarget();
  }

  private connectTarget(): void {
    this.connectTimer = undefined;
    if (this.dead) return;
    const target = connect({ host: this.link.target.host, port: this.link.target.port, allowHalfOpen: true });
    this.target = target;
    target.setNoDelay(true);
    target.on('connect', () => {
      this.targetReady = true;
      this.up.release();
    });
    target.on('data', (chunk: Buffer) => this.onTargetData(chunk));
    target.on('end', () => {
      if (!this.cutting) this.down.sourceEnd();
    });
    target.on('drain', () => this.up.checkPressure());
    target.on('error', () => {
      // The target refused or reset: the client sees a reset too.
      if (!this.cutting) this.destroy(true);
    });
    target.on('close', () => {
      this.targetClosed = true;
      this.settle();
    });
  }

  private onTargetData(chunk: Buffer): void {
    if (this.cutting || this.dead) return;
    const start = this.down.ingressBytes; // downstream bytes before this chunk
    const flip = this.link.flip;
    if (flip !== null) {
      const offset = flip.limit - (start - (flip.baselines.get(this) ?? 0));
      if (offset >= 0 && offset < chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[offset]! ^= 0xff;
        this.link.disarm('flip');
      }
    }
    const cut = this.link.cut;
    if (cut !== null) {
      const room = cut.limit - (start - (cut.baselines.get(this) ?? 0));
      if (chunk.length > room) {
        this.link.disarm('cut');
        this.startCut(chunk.subarray(0, Math.max(0, room)));
        return;
      }
    }
    this.down.ingress(chunk);
  }

  /** Delivers `last` (at link speed, after what is queued), then FIN; the target goes now. */
  private startCut(last: Buffer): void {
    this.cutting = true;
    this.down.ingress(last);
    this.down.sourceEnd();
    this.up.discard();
    this.target?.destroy();
  }

  /** Resumes both directions after a stall. */
  kick(): void {
    this.down.release();
    this.up.release();
  }

  buffered(): number {
    return this.down.buffered() + this.up.buffered();
  }

  /** Cleans up once both sockets closed by themselves (ends forwarded both ways). */
  private settle(): void {
    if (this.clientClosed && (this.targetClosed || this.target === undefined)) this.destroy();
  }

  destroy(reset = false): void {
    if (this.dead) return;
    this.dead = true;
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    if (this.graceTimer !== undefined) clearTimeout(this.graceTimer);
    this.down.clear();
    this.up.clear();
    if (reset && !this.client.destroyed) this.client.resetAndDestroy();
    else this.client.destroy();
    this.target?.destroy();
    this.link.conns.delete(this);
  }
}
