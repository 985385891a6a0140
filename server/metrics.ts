// Prometheus metrics (prom-client), served on the debug address (server/debug-server.ts).
//
// Cost matters: a manifest GET runs at 15-20k requests/s. prom-client's labelled
// `inc`/`observe` build a label hash string on every call, so the request path never calls
// prom-client: it adds to plain numbers in tables made at start-up (one slot per route and
// method, a Map from status to count, a histogram's buckets), and prom-client reads the
// tables when Prometheus scrapes (collect callbacks, and `get()` of the latency histogram).
// Per request: one performance.now() pair, a scan of the path for its route name, a
// few array and Map updates. Labels are a fixed small set: the route is one of ROUTES,
// never the path; methods outside METHODS count as `other`.
import type { IncomingMessage } from 'node:http';
import type { Context } from 'koa';
import type { RequestObserver } from './logger.js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AccessDecision } from '../auth/access.js';
import { PathNotFoundError, StorageUnavailableError } from '../storage/driver.js';
import type { DriverObserver } from '../storage/observed-driver.js';
import type { Mirror } from './mirror-setup.js';

export const ROUTES = ['base', 'blob', 'upload', 'manifest', 'tags', 'catalog', 'referrers', 'token', 'other'] as const;
export type RouteName = (typeof ROUTES)[number];
const R_BASE = 0, R_BLOB = 1, R_UPLOAD = 2, R_MANIFEST = 3, R_TAGS = 4, R_CATALOG = 5, R_REFERRERS = 6, R_TOKEN = 7, R_OTHER = 8;

export const METHODS = ['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'other'] as const;

/** Seconds; registry requests range from sub-millisecond manifest hits to minutes-long blob transfers. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export const AUTH_OUTCOMES = ['allowed', 'unauthorized', 'denied', 'toomanyrequests'] as const;

/**
 * How a storage call ended: `notfound` is an answer (the path does not exist), `unavailable`
 * the backend failing (the 503 case), `error` anything else (a bug, a bad argument).
 */
export const STORAGE_RESULTS = ['ok', 'notfound', 'unavailable', 'error'] as const;

/** Seconds; storage calls range from a cached stat on a local disk to a multi-GiB S3 copy. */
export const STORAGE_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60];

/** One storage driver method's numbers. */
class StorageSlot {
  readonly results = new Float64Array(STORAGE_RESULTS.length);
  readonly buckets = new Float64Array(STORAGE_BUCKETS.length);
  count = 0;
  sum = 0;
}

function storageResult(error: unknown): number {
  if (error === undefined) return 0;
  if (error instanceof PathNotFoundError) return 1;
  if (error instanceof StorageUnavailableError) return 2;
  return 3;
}

function methodIndex(method: string): number {
  switch (method) {
    case 'GET': return 0;
    case 'HEAD': return 1;
    case 'PUT': return 2;
    case 'POST': return 3;
    case 'PATCH': return 4;
    case 'DELETE': return 5;
    case 'OPTIONS': return 6;
    default: return 7;
  }
}

/** `path` has `segment` (no slashes) exactly between `from` and `to`. */
function segmentIs(path: string, from: number, to: number, segment: string): boolean {
  return to - from === segment.length && path.startsWith(segment, from);
}

/**
 * Which API route a path addresses, by its shape, without allocating (the routes' own
 * regular expressions would build capture arrays). `prefix` is http.prefix without its
 * trailing slash. Shapes follow the routers: .../blobs/uploads[/<id>] is an upload, the
 * repository name is everything before the last two segments.
 */
export function routeIndex(path: string, prefix: string): number {
  if (prefix !== '' && !path.startsWith(prefix)) return R_OTHER;
  const start = prefix.length;
  if (path.startsWith('/auth/', start)) {
    const tail = path.length - start;
    return (tail === 11 && path.endsWith('/auth/token')) || (tail === 10 && path.endsWith('/auth/jwks')) ? R_TOKEN : R_OTHER;
  }
  if (!path.startsWith('/v2', start)) return R_OTHER;
  const rest = start + 4; // after /v2/
  if (path.length <= rest) return path.length === rest - 1 || path[rest - 1] === '/' ? R_BASE : R_OTHER;
  if (path[rest - 1] !== '/') return R_OTHER;
  if (path.length === rest + 8 && path.endsWith('_catalog')) return R_CATALOG;
  // /v2/<name>/<kind>/<last>: the repository name is everything before the last two segments.
  const last = path.lastIndexOf('/');
  const kind = path.lastIndexOf('/', last - 1);
  if (kind <= rest) return R_OTHER; // no name
  if (segmentIs(path, kind + 1, last, 'manifests')) return R_MANIFEST;
  if (segmentIs(path, kind + 1, last, 'blobs')) return segmentIs(path, last + 1, path.length, 'uploads') ? R_UPLOAD : R_BLOB;
  if (segmentIs(path, kind + 1, last, 'tags')) return segmentIs(path, last + 1, path.length, 'list') ? R_TAGS : R_OTHER;
  if (segmentIs(path, kind + 1, last, 'referrers')) return R_REFERRERS;
  if (segmentIs(path, kind + 1, last, 'uploads')) {
    // .../blobs/uploads/<id>, and .../blobs/uploads/ (an empty last segment)
    const blobs = path.lastIndexOf('/', kind - 1);
    if (blobs > rest && segmentIs(path, blobs + 1, kind, 'blobs')) return R_UPLOAD;
  }
  return R_OTHER;
}

export function routeName(path: string, prefix = ''): RouteName {
  return ROUTES[routeIndex(path, prefix)]!;
}

/** Counts of one route and method: answers by status, and the latency histogram. */
class Slot {
  readonly statuses = new Map<number, number>();
  readonly buckets = new Float64Array(DURATION_BUCKETS.length);
  count = 0;
  sum = 0;
}

interface MetricValue {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

/** Bucket counts (not cumulative), their total and sum: one labelled series of a histogram. */
interface BucketCounts {
  readonly buckets: Float64Array;
  readonly count: number;
  readonly sum: number;
}

type TableHistogramValues = Awaited<ReturnType<Histogram<string>['get']>>;

/**
 * A histogram whose numbers live in plain tables (Slot, StorageSlot) the request path adds
 * to; prom-client only formats them at scrape time. `series` lists each labelled series.
 */
class TableHistogram extends Histogram<string> {
  constructor(
    private readonly metricName: string,
    private readonly metricHelp: string,
    labelNames: string[],
    private readonly bucketBounds: number[],
    registry: Registry,
    private readonly series: () => Iterable<[Record<string, string>, BucketCounts]>,
  ) {
    super({ name: metricName, help: metricHelp, labelNames, buckets: bucketBounds, registers: [registry] });
  }

  /** The registry formats this (rather than get()) for the exposition text. */
  getForPromString(): Promise<TableHistogramValues> {
    return this.get();
  }

  /** What the registry formats: the buckets, sum and count of each series seen. */
  override async get(): Promise<TableHistogramValues> {
    const values: MetricValue[] = [];
    const name = this.metricName;
    for (const [labels, counts] of this.series()) {
      if (counts.count === 0) continue;
      let cumulative = 0;
      this.bucketBounds.forEach((le, b) => {
        cumulative += counts.buckets[b]!;
        values.push({ labels: { ...labels, le }, value: cumulative, metricName: `${name}_bucket` });
      });
      values.push({ labels: { ...labels, le: '+Inf' }, value: counts.count, metricName: `${name}_bucket` });
      values.push({ labels, value: counts.sum, metricName: `${name}_sum` });
      values.push({ labels, value: counts.count, metricName: `${name}_count` });
    }
    // `le` is a label prom-client's types do not list for a histogram's values.
    return { name, help: this.metricHelp, type: 'histogram', values, aggregator: 'sum' } as unknown as TableHistogramValues;
  }
}

export interface MetricsOptions {
  /** http.prefix without its trailing slash: route names are read after it. */
  httpPrefix?: string;
  /** process_* and nodejs_* metrics (default true). */
  defaultMetrics?: boolean;
}

const BODY_BYTES = Symbol('wharf body bytes');
type CountedRequest = IncomingMessage & { [BODY_BYTES]?: number };

export class Metrics implements RequestObserver {
  readonly registry = new Registry();
  private readonly prefix: string;
  private readonly slots: Slot[] = [];
  private readonly bytesIn = new Float64Array(ROUTES.length);
  private readonly bytesOut = new Float64Array(ROUTES.length);
  private readonly unavailable = new Float64Array(ROUTES.length);
  private readonly auth = new Float64Array(AUTH_OUTCOMES.length);
  /** Per driver method (a small fixed set: the StorageDriver interface's methods). */
  private readonly storage = new Map<string, StorageSlot>();
  private storageDriver = '';

  constructor(options: MetricsOptions = {}) {
    this.prefix = options.httpPrefix ?? '';
    for (let i = 0; i < ROUTES.length * METHODS.length; i++) this.slots.push(new Slot());
    const registers = [this.registry];
    const { slots, bytesIn, bytesOut, unavailable, auth } = this;

    new Counter({
      name: 'wharf_http_requests_total',
      help: 'HTTP requests answered on the registry address, by route name, method and status',
      labelNames: ['route', 'method', 'status'],
      registers,
      collect() {
        this.reset();
        slots.forEach((slot, i) => {
          const route = ROUTES[Math.floor(i / METHODS.length)]!;
          const method = METHODS[i % METHODS.length]!;
          for (const [status, n] of slot.statuses) this.inc({ route, method, status }, n);
        });
      },
    });
    new TableHistogram(
      'wharf_http_request_duration_seconds',
      'Time from the request to its answer (for bodies the handler sends itself, such as blob pulls from storage, until the last byte is handed to the socket)',
      ['route', 'method'],
      DURATION_BUCKETS,
      this.registry,
      function* () {
        for (let i = 0; i < slots.length; i++) yield [{ route: ROUTES[Math.floor(i / METHODS.length)]!, method: METHODS[i % METHODS.length]! }, slots[i]!];
      },
    );
    const perRoute = (name: string, help: string, table: Float64Array): void => {
      new Counter({
        name,
        help,
        labelNames: ['route'],
        registers,
        collect() {
          this.reset();
          table.forEach((n, i) => {
            if (n > 0) this.inc({ route: ROUTES[i]! }, n);
          });
        },
      });
    };
    perRoute('wharf_http_request_bytes_total', 'Request body bytes received, by route name', bytesIn);
    perRoute('wharf_http_response_bytes_total', 'Response body bytes sent (as declared by Content-Length; HEAD answers send none), by route name', bytesOut);
    perRoute(
      'wharf_unavailable_responses_total',
      'Answers 503 UNAVAILABLE: storage failing (or, on a mirror, the upstream down with nothing cached), by route name',
      unavailable,
    );
    new Counter({
      name: 'wharf_auth_decisions_total',
      help: 'Access decisions: allowed, unauthorized (401: no or bad credentials), denied (403), toomanyrequests (429: failed logins rate-limited)',
      labelNames: ['outcome'],
      registers,
      collect() {
        this.reset();
        auth.forEach((n, i) => this.inc({ outcome: AUTH_OUTCOMES[i]! }, n));
      },
    });
    this.registerStorageMetrics();
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * What the storage driver wrapper (storage/observed-driver.ts) reports every call to: counted
   * into plain numbers, like the request metrics. `driver` is the driver's name (a label).
   */
  storageObserver(driver: string): DriverObserver {
    this.storageDriver = driver;
    const slots = this.storage;
    return {
      operation(method: string, seconds: number, error?: unknown): void {
        let slot = slots.get(method);
        if (slot === undefined) slots.set(method, (slot = new StorageSlot()));
        slot.results[storageResult(error)]!++;
        slot.count++;
        slot.sum += seconds;
        for (let b = 0; b < STORAGE_BUCKETS.length; b++) {
          if (seconds <= STORAGE_BUCKETS[b]!) {
            slot.buckets[b]!++;
            break;
          }
        }
      },
    };
  }

  private registerStorageMetrics(): void {
    const slots = this.storage;
    const driver = (): string => this.storageDriver;
    new Counter({
      name: 'wharf_storage_operations_total',
      help: 'Storage driver calls, by driver, operation (driver method) and result: ok, notfound (the path does not exist), unavailable (the backend failing: requests answer 503), error',
      labelNames: ['driver', 'operation', 'result'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [operation, slot] of slots) {
          slot.results.forEach((n, i) => {
            if (n > 0) this.inc({ driver: driver(), operation, result: STORAGE_RESULTS[i]! }, n);
          });
        }
      },
    });
    new TableHistogram(
      'wharf_storage_operation_duration_seconds',
      'Time each storage driver call took (for reads, until the stream is open), by driver and operation',
      ['driver', 'operation'],
      STORAGE_BUCKETS,
      this.registry,
      function* () {
        for (const [operation, slot] of slots) yield [{ driver: driver(), operation }, slot];
      },
    );
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Counts one access decision (server/context.ts checkAccess). */
  authDecision(decision: AccessDecision): void {
    if (decision.allowed) this.auth[0]!++;
    else if (decision.reason === 'UNAUTHORIZED') this.auth[1]!++;
    else if (decision.reason === 'DENIED') this.auth[2]!++;
    else this.auth[3]!++;
  }

  /** Starts counting a request's body bytes (RequestObserver, server/logger.ts). */
  begin(req: IncomingMessage): void {
    const headers = req.headers;
    const declared = headers['content-length'];
    if ((declared !== undefined && declared !== '0') || headers['transfer-encoding'] !== undefined) countBody(req);
  }

  /**
   * Counts one finished request (RequestObserver). Reads the request and response objects
   * themselves (ctx.req, ctx.request, ctx.res), not the context's generic delegating getters.
   */
  end(ctx: Context, ms: number, status: number): void {
    const seconds = ms / 1000;
    const req = ctx.req as CountedRequest;
    const method = req.method ?? '';
    const route = routeIndex(ctx.request.path, this.prefix);
    const slot = this.slots[route * METHODS.length + methodIndex(method)]!;
    slot.statuses.set(status, (slot.statuses.get(status) ?? 0) + 1);
    slot.count++;
    slot.sum += seconds;
    for (let b = 0; b < DURATION_BUCKETS.length; b++) {
      if (seconds <= DURATION_BUCKETS[b]!) {
        slot.buckets[b]!++;
        break;
      }
    }
    const inBytes = req[BODY_BYTES];
    if (inBytes !== undefined && inBytes > 0) this.bytesIn[route]! += inBytes;
    if (status === 503) this.unavailable[route]!++;
    if (method !== 'HEAD' && status !== 204 && status !== 304) {
      const length = responseLength(ctx);
      if (length > 0) this.bytesOut[route]! += length;
    }
  }

  /** The mirror's counters, read from Mirror.stats() when Prometheus scrapes. */
  watchMirror(mirror: Mirror): void {
    const registers = [this.registry];
    // One stats() call per scrape, shared by every mirror metric: the registry runs their
    // collect callbacks in one synchronous pass, and the copy is dropped right after.
    let cached: ReturnType<Mirror['stats']> | undefined;
    const stats = (): ReturnType<Mirror['stats']> => {
      if (cached === undefined) {
        cached = mirror.stats();
        setImmediate(() => (cached = undefined));
      }
      return cached;
    };
    const counter = (name: string, help: string, read: (s: ReturnType<Mirror['stats']>) => number): void => {
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read(stats()));
        },
      });
    };
    counter('wharf_mirror_hits_total', 'Mirror requests answered from the cache', (s) => s.hits);
    counter('wharf_mirror_misses_total', 'Mirror requests that had to ask the upstream', (s) => s.misses);
    counter('wharf_mirror_stale_served_total', 'Cached tags served past proxy.ttl because the upstream could not be asked', (s) => s.staleServed);
    counter('wharf_mirror_upstream_bytes_total', 'Bytes received from upstreams', (s) => s.bytesFromUpstream);
    counter('wharf_mirror_upstream_requests_total', 'Requests sent to upstreams', (s) => s.upstreamRequests);
    counter('wharf_mirror_upstream_errors_total', 'Upstream requests that failed (network errors, 5xx)', (s) => s.upstreamErrors);
    counter('wharf_mirror_downloads_failed_total', 'Blob downloads from upstreams that failed', (s) => s.downloadsFailed);
    new Gauge({
      name: 'wharf_mirror_downloads_running',
      help: 'Blob downloads from upstreams under way',
      registers,
      collect() {
        this.set(stats().downloadsRunning);
      },
    });
    new Gauge({
      name: 'wharf_mirror_cache_bytes',
      help: 'Bytes of cached images (only with proxy.cachesize)',
      registers,
      collect() {
        this.reset();
        const bytes = stats().cacheBytes;
        if (bytes !== undefined) this.set(bytes);
      },
    });
    new Gauge({
      name: 'wharf_mirror_upstream_up',
      help: "Circuit breaker state per upstream URL: 1 up (closed), 0 down (open, calls fail fast)",
      labelNames: ['upstream'],
      registers,
      collect() {
        this.reset();
        for (const [upstream, state] of Object.entries(stats().breakers)) this.set({ upstream }, state === 'up' ? 1 : 0);
      },
    });
  }

  /** Readiness of storage as the health checker last saw it. */
  watchStorage(healthy: () => boolean): void {
    new Gauge({
      name: 'wharf_storage_healthy',
      help: 'Whether the storage check passes (1) or has failed threshold times in a row (0)',
      registers: [this.registry],
      collect() {
        this.set(healthy() ? 1 : 0);
      },
    });
  }
}


/**
 * Counts the request's body bytes as Node's HTTP parser hands them over (bytes read, whether a
 * handler consumed them or they were discarded), chunked bodies included. Installed while the
 * first middleware runs, which is synchronous with the request's headers: no byte is missed.
 */
function countBody(req: CountedRequest): void {
  req[BODY_BYTES] = req.readableLength;
  const push = req.push;
  req.push = function (this: CountedRequest, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk !== null && chunk !== undefined) this[BODY_BYTES]! += (chunk as { length: number }).length;
    return push.call(this, chunk, encoding);
  };
}

function responseLength(ctx: Context): number {
  const declared = ctx.res.getHeader('content-length');
  if (typeof declared === 'number') return declared;
  if (typeof declared === 'string') return +declared || 0;
  const body: unknown = ctx.body;
  if (body === null || body === undefined) return 0;
  if (typeof body === 'string') return Buffer.byteLength(body);
  if (Buffer.isBuffer(body)) return body.length;
  if (typeof (body as { pipe?: unknown }).pipe === 'function') return 0;
  return Buffer.byteLength(JSON.stringify(body)); // JSON answers (errors, listings): small
}
