// npm run bench [-- --quick] [options]: wharf against CNCF Distribution on this machine.
// Both registries run at once, each exercised alone, alternately (A B, then B A, ...)
// figure by figure; the physical limits are measured in the same rounds. See
// bench/README.md for the method and what each figure means.
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDist, inWorkDir, machineText, missedText, npmArgv, parseArgs, reportAbort, runMain, wharfRevision, writeResults, type CommonOptions } from './cli.js';
import { BigBlob, SmallBlobs, type BlobVariant } from './data.js';
import { agent, BenchError, expectStatus, send } from './http.js';
import { abHead, wrk, type LoadResult } from './load.js';
import { diskWrite, hashWrite, MB, seconds, sha256Speed, startTrivialServer, type TrivialServer } from './limits.js';
import { backgroundCores, PhaseMonitor, readMemory, type PhaseUsage } from './proc.js';
import { checkBlob, checkManifest, OCI_MANIFEST, pullVerified, pushChunked, pushImage, pushMonolithic, pushSmall, type PushedImage } from './registry.js';
import { renderFigures, renderLimits, type LimitRow, type Row } from './report.js';
import { distributionVersion, roundOrder, startServer, startWharfVariant, type RunningServer, type ServerKind } from './servers.js';
import { median, Samples, spread } from './stats.js';
import { profileWharf } from './profile.js';
import { startTokenWharf, type TokenWharf } from './token-wharf.js';
import { manifestGets, startMetricsWharf, type MetricsWharf } from './metrics-wharf.js';

const MiB = 1 << 20;

export interface Options extends CommonOptions {
  bigBytes: number;
  chunkBytes: number;
  smallBytes: number;
  smallClients: number;
  smallSeconds: number;
  connections: number;
  loadSeconds: number;
  wrkThreads: number;
  distributionCache: boolean;
  profile?: string;
  wharfEntry?: string;
  wharfEnv: Record<string, string>;
  /** Only the manifest GET figures (plain wharf, its variants, Distribution). */
  onlyGet: boolean;
}

const USAGE = `npm run bench [-- options]

  --quick              256 MiB blob, 2 rounds, 2 s load phases (under a minute)
  --rounds N           rounds (default 6; each round runs every figure for both, order alternating)
  --size MiB           size of the large blob (default 1024)
  --seconds S          length of each wrk/ab and small-blob phase (default 6)
  --wrk-threads N      wrk threads (default 2; with 1, wrk's own thread is the bottleneck and its p99 balloons)
  --log info|warn      info: info level + access logs on both (default); warn: warn level, access logs off on both
  --no-dist-cache      run Distribution without its in-memory blob descriptor cache
  --dir PATH           work directory (default: a new one under /var/tmp, removed at the end)
  --keep               keep the work directory (data, logs, results.json)
  --json PATH          also write the raw samples and summary as JSON to PATH
  --wharf-entry JS     start wharf from this script instead of bin/wharf.js (e.g. a tsc build's server/main.js)
  --wharf-env K=V      extra environment for wharf (repeatable), e.g. MALLOC_ARENA_MAX=2
  --only get           only the manifest GET figures: wharf, wharf+token, wharf+metrics, Distribution
  --profile DIR        instead of comparing: run wharf under --cpu-prof for the push and manifest-GET
                       phases and print the top self-time functions (profiles kept in DIR)
  --s3                 the S3 bench instead: wharf and Distribution on a Ceph RGW (npm run bench:s3;
                       its own options: npm run bench:s3 -- --help)
`;

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): Options {
  const opts: Options = {
    quick: false,
    rounds: 6,
    bigBytes: 1024 * MiB,
    chunkBytes: 16 * MiB,
    smallBytes: MiB,
    smallClients: 32,
    smallSeconds: 6,
    connections: 64,
    loadSeconds: 6,
    wrkThreads: 2,
    logMode: 'info',
    distributionCache: true,
    keep: false,
    wharfEnv: {},
    onlyGet: false,
  };
  // Options given to npm instead of after `--` would be lost, so npmArgv says so.
  const explicit = parseArgs(npmArgv(argv, env, USAGE, 'bench'), opts, USAGE, (arg, value) => {
    switch (arg) {
      case '--size':
        opts.bigBytes = value.int() * MiB;
        return true;
      case '--seconds':
        opts.loadSeconds = opts.smallSeconds = value.int();
        return true;
      case '--wrk-threads':
        opts.wrkThreads = value.int();
        return true;
      case '--no-dist-cache':
        opts.distributionCache = false;
        return true;
      case '--profile':
        opts.profile = value();
        return true;
      case '--only': {
        const what = value();
        if (what !== 'get') throw new BenchError(`--only ${what}: only 'get' (the manifest GET figures) is known`);
        opts.onlyGet = true;
        return true;
      }
      case '--wharf-entry':
        opts.wharfEntry = value();
        return true;
      case '--wharf-env': {
        const v = value();
        const eq = v.indexOf('=');
        if (eq <= 0) throw new BenchError('--wharf-env: NAME=VALUE');
        opts.wharfEnv[v.slice(0, eq)] = v.slice(eq + 1);
        return true;
      }
      default:
        return false;
    }
  });
  // Only the GET figures: the big blob is only the trivial server's file, never pushed.
  if (opts.onlyGet && !explicit.has('--size')) opts.bigBytes = 16 * MiB;
  if (opts.quick) {
    if (!explicit.has('--size') && !opts.onlyGet) opts.bigBytes = 256 * MiB;
    if (!explicit.has('--rounds')) opts.rounds = 2;
    if (!explicit.has('--seconds')) {
      opts.loadSeconds = 2;
      opts.smallSeconds = 1;
    }
  }
  return opts;
}

const say = (text: string): void => {
  process.stderr.write(`${text}\n`);
};

const hr = (): bigint => process.hrtime.bigint();
const benchStarted = Date.now();
const stamp = (): string => `${((Date.now() - benchStarted) / 1000).toFixed(0).padStart(4)}s`;

/** Flushes dirty pages so that no phase pays for the previous one's writes. */
function syncDisk(): void {
  spawnSync('sync');
}

const sizeLabel = (bytes: number): string => (bytes >= 1 << 30 ? `${bytes / (1 << 30)} GiB` : `${bytes / MiB} MiB`);
const mb = (bytes: number): string => `${(bytes / MB).toFixed(0)} MB`;

/**
 * Memory temperature. This kind of VM (Firecracker, free page reporting) hands memory
 * freed in the guest back to the host about 2 s later; touching it again costs a host
 * page fault per page: writing new data into the page cache runs at ~0.3-0.7 GB/s on
 * such "cold" memory and ~3 GB/s on memory freed a moment ago. A phase that happens to
 * follow a deletion would be several times faster than one that does not. So nothing
 * is deleted during a round (each round's blobs, limit files and logs are removed at
 * its end) and each round starts COOL_DOWN after that: every write phase of every
 * contestant meets cold memory, and no phase runs while the host takes memory back.
 */
const COOL_DOWN_NS = 4_000_000_000n;
let lastFree = 0n;

async function coolDown(): Promise<void> {
  const wait = lastFree + COOL_DOWN_NS - hr();
  if (wait > 0n) await new Promise((r) => setTimeout(r, Number(wait / 1_000_000n)));
}

/** Files and blobs a round wrote, removed together at its end. */
class Garbage {
  private readonly paths: string[] = [];
  private readonly blobs: { dataDir: string; digest: string }[] = [];

  file(path: string): void {
    this.paths.push(path);
  }

  blob(server: RunningServer, digest: string): void {
    this.blobs.push({ dataDir: server.dataDir, digest });
  }

  async collect(servers: RunningServer[]): Promise<void> {
    // Blobs are removed behind the servers' backs: their digests are never asked for again.
    const targets = [
      ...this.paths,
      ...this.blobs.map(({ dataDir, digest }) => {
        const hex = digest.slice('sha256:'.length);
        return join(dataDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex);
      }),
    ];
    this.paths.length = 0;
    this.blobs.length = 0;
    for (let i = 0; i < targets.length; i += 64) {
      await Promise.all(targets.slice(i, i + 64).map((t) => rm(t, { recursive: true, force: true })));
    }
    for (const server of servers) server.truncateLog();
    lastFree = hr();
  }
}

interface Context {
  opts: Options;
  workDir: string;
  blob: BigBlob;
  small: SmallBlobs;
  servers: Record<ServerKind, RunningServer>;
  trivial: TrivialServer;
  image: PushedImage;
  samples: Samples;
  /** Usage per phase and server, one entry per round. */
  usage: Map<string, PhaseUsage[]>;
  garbage: Garbage;
  /** wharf with token auth on the same data, for the manifest GET with a token. */
  tokenWharf: TokenWharf;
  /** wharf with Prometheus metrics on, on the same data, for the manifest GET with metrics. */
  metricsWharf: MetricsWharf;
  /** A second plain wharf on the same data: the paired slices' A/A control (their noise floor). */
  twinWharf: RunningServer;
}

const KINDS: ServerKind[] = ['wharf', 'distribution'];
const MANIFEST_PATH = '/v2/bench/app/manifests/latest';

/** Runs `fn` against one server with its memory and CPU watched; records the usage. */
async function phase<T>(ctx: Context, server: RunningServer, name: string, fn: () => Promise<T>): Promise<{ value: T; secs: number; usage: PhaseUsage }> {
  syncDisk();
  const monitor = new PhaseMonitor(server.pid);
  const t0 = hr();
  let value: T;
  try {
    value = await fn();
  } catch (err) {
    monitor.stop();
    throw err;
  }
  const secs = seconds(t0);
  const usage = monitor.stop();
  const key = `${name}/${server.kind}`;
  const list = ctx.usage.get(key);
  if (list) list.push(usage);
  else ctx.usage.set(key, [usage]);
  return { value, secs, usage };
}

function note(round: string, figure: string, who: string, value: string, usage?: PhaseUsage): void {
  const extra = usage ? `   (peak RSS ${mb(usage.peakRss)}, CPU ${usage.cpuSeconds.toFixed(2)} s)` : '';
  say(`${stamp()} ${round} ${figure.padEnd(31)} ${who.padEnd(12)} ${value}${extra}`);
}

const loadFigure = (ctx: Context, figure: 'get' | 'head', base: string, path: string, secs: number): Promise<LoadResult> =>
  figure === 'get'
    ? wrk({ url: `${base}${path}`, threads: ctx.opts.wrkThreads, connections: ctx.opts.connections, durationSeconds: secs, headers: { Accept: OCI_MANIFEST } })
    : abHead({
        url: `${base}${path}`,
        connections: ctx.opts.connections,
        durationSeconds: secs,
        headers: { Accept: OCI_MANIFEST },
        csvPath: join(ctx.workDir, 'ab-percentiles.csv'),
      });

/** Disk write and the in-process hash+write pipeline, on cold memory like the pushes. */
async function writeLimits(ctx: Context, round: number, tag: string): Promise<void> {
  const { blob, samples, garbage } = ctx;
  syncDisk();
  const diskPath = join(ctx.workDir, `disk-write-${round}.bin`);
  garbage.file(diskPath);
  const disk = await diskWrite(diskPath, blob.size);
  samples.add('limit/disk-buffered', disk.buffered);
  samples.add('limit/disk-synced', disk.synced);
  note(tag, 'limit: disk write', 'node', `${disk.buffered.toFixed(0)} MB/s into the page cache, ${disk.synced.toFixed(0)} MB/s incl. fsync`);
  syncDisk();
  const hwPath = join(ctx.workDir, `hash-write-${round}.bin`);
  garbage.file(hwPath);
  const hw = await hashWrite(hwPath, blob);
  samples.add('limit/hash-write', hw);
  note(tag, 'limit: hash+write pipeline', 'node', `${hw.toFixed(0)} MB/s`);
}

/** A server of the manifest GET figure: the two registries and wharf's variants. */
interface GetContestant {
  /** Sample key: get-rps/<key>. */
  key: 'wharf' | 'distribution' | 'wharf-token' | 'wharf-metrics' | 'wharf-twin';
  server: RunningServer;
  headers: Record<string, string>;
  /** Phase name for the usage figures. */
  phase: string;
  figure: string;
}

/** wharf (twin): the base of the variants' paired slices, and the A/A control (not in the 6 s phases). */
function twinContestant(ctx: Context): GetContestant {
  return { key: 'wharf-twin', server: ctx.twinWharf, headers: { Accept: OCI_MANIFEST }, phase: 'get-twin', figure: 'manifest GET by tag, A/A control' };
}

/** wrk's manifest GET load on one contestant, with its headers. */
function manifestLoad(ctx: Context, c: GetContestant, seconds: number): Promise<LoadResult> {
  const { opts } = ctx;
  return wrk({ url: `${c.server.base}${MANIFEST_PATH}`, threads: opts.wrkThreads, connections: opts.connections, durationSeconds: seconds, headers: c.headers });
}

function getContestants(ctx: Context): GetContestant[] {
  const accept = { Accept: OCI_MANIFEST };
  return [
    { key: 'wharf-token', server: ctx.tokenWharf.server, headers: { ...accept, Authorization: ctx.tokenWharf.authorization }, phase: 'get-token', figure: 'manifest GET by tag, with token' },
    { key: 'wharf', server: ctx.servers.wharf, headers: accept, phase: 'get', figure: 'manifest GET by tag' },
    { key: 'wharf-metrics', server: ctx.metricsWharf.server, headers: accept, phase: 'get-metrics', figure: 'manifest GET by tag, metrics' },
    { key: 'distribution', server: ctx.servers.distribution, headers: accept, phase: 'get', figure: 'manifest GET by tag' },
  ];
}

/**
 * Manifest GET by tag on every contestant: wharf+token, wharf, wharf+metrics, Distribution,
 * reversed in odd rounds, so every server's mean position is the same and each variant runs
 * next to the plain wharf. The variants' per-round ratios (variant / plain wharf of the same
 * round) are recorded too: they cancel the drift between rounds that medians alone keep.
 */
async function manifestGetRound(ctx: Context, round: number, tag: string): Promise<void> {
  const { opts, samples } = ctx;
  const contestants = getContestants(ctx);
  if (round % 2 === 1) contestants.reverse();
  const rps = new Map<string, number>();
  for (const c of contestants) {
    await checkManifest(c.server.base, 'bench/app', 'latest', ctx.image, c.headers.Authorization);
    const countedBefore = c.key === 'wharf-metrics' ? await manifestGets(ctx.metricsWharf.metricsUrl) : 0;
    const { value, usage } = await phase(ctx, c.server, c.phase, () => manifestLoad(ctx, c, opts.loadSeconds));
    if (c.key === 'wharf-metrics') {
      // The figure counts only if the metrics were really collected: every request wrk saw answered is counted.
      const counted = (await manifestGets(ctx.metricsWharf.metricsUrl)) - countedBefore;
      if (counted < value.requests) throw new BenchError(`wharf+metrics counted ${counted} manifest GETs, wrk completed ${value.requests}`);
    }
    rps.set(c.key, value.reqPerSec);
    samples.add(`get-rps/${c.key}`, value.reqPerSec);
    samples.add(`get-p99/${c.key}`, value.p99);
    note(tag, c.figure, c.server.label, `${value.reqPerSec.toFixed(0)} req/s, p50 ${value.p50.toFixed(2)} ms, p99 ${value.p99.toFixed(2)} ms`, usage);
  }
  for (const variant of ['wharf-token', 'wharf-metrics']) samples.add(`get-ratio/${variant}`, rps.get(variant)! / rps.get('wharf')!);
  // The variants are measured against the twin, not the plain wharf: the twin is started
  // the way they are (startWharfVariant on the plain wharf's data, after the pushes), so a
  // variant differs from it only by its settings. The twin against the plain wharf is the A/A
  // control: in a quick run all three later processes answered ~9 % fewer requests than the
  // plain wharf that took the pushes, the twin included.
  const plain = contestants.find((c) => c.key === 'wharf')!;
  const twin = twinContestant(ctx);
  const pairs: [GetContestant, GetContestant][] = [
    ...contestants.filter((c) => c.key === 'wharf-token' || c.key === 'wharf-metrics').map((c): [GetContestant, GetContestant] => [twin, c]),
    [plain, twin],
  ];
  for (const [base, variant] of round % 2 === 0 ? pairs : pairs.reverse()) {
    const ratio = await pairedSlices(ctx, base, variant, round);
    samples.add(`get-paired/${variant.key}`, ratio);
    note(tag, `${variant.figure}, paired slices`, variant.server.label, `${ratio.toFixed(3)}x of ${base.server.label} (${PAIRED_SLICES} x 1 s each, ABBA)`);
  }
}

/** 1 s slices per server in a paired comparison. */
const PAIRED_SLICES = 8;

/**
 * A variant's cost is a few percent, while this machine's speed drifts by more than that
 * between two 6 s phases: on a quiet machine the per-round ratios of the 6 s phases spread
 * from 0.64 to 1.52. Here the base (A) and the variant (B) take turns in 1 s slices ordered
 * ABBA ABBA..., so both see the same drift, linear drift cancels, and the ratio is of their
 * summed requests per second.
 */
async function pairedSlices(ctx: Context, base: GetContestant, variant: GetContestant, round: number): Promise<number> {
  const totals = new Map<GetContestant, { requests: number; seconds: number }>([
    [base, { requests: 0, seconds: 0 }],
    [variant, { requests: 0, seconds: 0 }],
  ]);
  // Not recorded: a server idle since its last pair has just collected its heap (server/listen.ts
  // collects when a burst ends) and answers its first second slower; both start warm.
  for (const c of [base, variant]) await manifestLoad(ctx, c, 1);
  for (let i = 0; i < PAIRED_SLICES; i++) {
    const order = i % 2 === round % 2 ? [base, variant] : [variant, base];
    for (const c of order) {
      const r = await manifestLoad(ctx, c, 1);
      const t = totals.get(c)!;
      t.requests += r.requests;
      t.seconds += r.seconds;
    }
  }
  const rate = (c: GetContestant): number => totals.get(c)!.requests / totals.get(c)!.seconds;
  return rate(variant) / rate(base);
}

async function runRound(ctx: Context, round: number): Promise<void> {
  const { opts, blob, samples, servers, trivial, garbage } = ctx;
  const order = roundOrder(round);
  const tag = `[round ${round + 1}/${opts.rounds}]`;
  const label = sizeLabel(blob.size);

  // Quick mode measures the physical limits in its first round only (time).
  const limits = !opts.quick || round === 0;

  // The previous round's frees cool down first: while the host takes back freed memory
  // the machine jitters (the trivial server's p99 went from 2 to 17 ms), which latency
  // figures must not measure; nothing below frees memory until the round ends.
  await coolDown();
  const background = await backgroundCores(opts.quick ? 300 : 1000, cpus().length);
  samples.add('env/background-cores', background);
  note(tag, 'machine: background CPU', 'other', `${background.toFixed(2)} cores busy while the bench idles`);

  // First what writes (almost) nothing.
  // Manifest GET by tag (wrk) and HEAD by tag (ab), 64 keep-alive connections.
  for (const figure of ['get', 'head'] as const) {
    if (figure === 'get') await manifestGetRound(ctx, round, tag);
    else if (!opts.onlyGet) {
      for (const kind of order) {
        const server = servers[kind];
        await checkManifest(server.base, 'bench/app', 'latest', ctx.image);
        const { value, usage } = await phase(ctx, server, figure, () => loadFigure(ctx, figure, server.base, MANIFEST_PATH, opts.loadSeconds));
        samples.add(`${figure}-rps/${kind}`, value.reqPerSec);
        samples.add(`${figure}-p99/${kind}`, value.p99);
        note(tag, `manifest ${figure.toUpperCase()} by tag`, server.label, `${value.reqPerSec.toFixed(0)} req/s, p50 ${value.p50.toFixed(2)} ms, p99 ${value.p99.toFixed(2)} ms`, usage);
      }
    } else continue;
    if (!limits) continue;
    const limit = await loadFigure(ctx, figure, trivial.base, '/json', opts.loadSeconds);
    samples.add(`limit/${figure}-rps`, limit.reqPerSec);
    samples.add(`limit/${figure}-p99`, limit.p99);
    note(tag, `limit: node:http JSON ${figure.toUpperCase()}`, 'trivial', `${limit.reqPerSec.toFixed(0)} req/s, p50 ${limit.p50.toFixed(2)} ms, p99 ${limit.p99.toFixed(2)} ms`);
  }
  if (opts.onlyGet) return;
  if (limits) {
    const sha = sha256Speed(opts.quick ? 256 * MiB : 768 * MiB);
    samples.add('limit/sha256', sha);
    note(tag, 'limit: SHA-256', 'node', `${sha.toFixed(0)} MB/s`);
  }

  // Then everything that writes blobs, on cold memory.
  if (limits) await writeLimits(ctx, round, tag);

  // Push, monolithic: POST then PUT ?digest= with the whole body.
  const pushed = new Map<ServerKind, BlobVariant>();
  for (const kind of order) {
    const server = servers[kind];
    const v = blob.variant();
    garbage.blob(server, v.digest);
    const { secs, usage } = await phase(ctx, server, 'push-mono', () => pushMonolithic(server.base, 'bench/big', v.digest, v.size, blob.body(v)));
    await checkBlob(server.base, 'bench/big', v);
    pushed.set(kind, v);
    samples.add(`push-mono/${kind}`, v.size / MB / secs);
    note(tag, `push ${label} monolithic`, server.label, `${(v.size / MB / secs).toFixed(0)} MB/s`, usage);
  }
  if (limits) {
    syncDisk();
    const v = blob.variant();
    const t0 = hr();
    const reply = await send({ method: 'PUT', base: trivial.base, url: '/upload', headers: { 'Content-Length': v.size }, body: blob.body(v) });
    const secs = seconds(t0);
    expectStatus(reply, 201, 'trivial server PUT /upload');
    garbage.file(String(reply.headers['x-path']));
    if (reply.headers['docker-content-digest'] !== v.digest) throw new BenchError('trivial server: wrong digest');
    samples.add('limit/http-push', v.size / MB / secs);
    note(tag, 'limit: node:http PUT hash+write', 'trivial', `${(v.size / MB / secs).toFixed(0)} MB/s`);
  }

  // Push, chunked: PATCH 16 MiB pieces with Content-Range, then PUT ?digest=.
  for (const kind of order) {
    const server = servers[kind];
    const v = blob.variant();
    garbage.blob(server, v.digest);
    const { secs, usage } = await phase(ctx, server, 'push-chunked', () => pushChunked(server.base, 'bench/big', blob, v, opts.chunkBytes));
    await checkBlob(server.base, 'bench/big', v);
    samples.add(`push-chunked/${kind}`, v.size / MB / secs);
    note(tag, `push ${label} chunked`, server.label, `${(v.size / MB / secs).toFixed(0)} MB/s`, usage);
  }

  // Pull of the monolithic blob, the client hashing every byte.
  for (const kind of order) {
    const server = servers[kind];
    const v = pushed.get(kind)!;
    const { secs, usage } = await phase(ctx, server, 'pull', () => pullVerified(server.base, 'bench/big', v));
    samples.add(`pull/${kind}`, v.size / MB / secs);
    note(tag, `pull ${label} + verify`, server.label, `${(v.size / MB / secs).toFixed(0)} MB/s`, usage);
  }
  if (limits) {
    syncDisk();
    const v = await blob.fileVariant();
    const t0 = hr();
    await pullVerified(trivial.base, '', v, '/file');
    const secs = seconds(t0);
    samples.add('limit/http-pull', v.size / MB / secs);
    note(tag, 'limit: node:http file + verify', 'trivial', `${(v.size / MB / secs).toFixed(0)} MB/s`);
  }

  // Small blobs: 32 clients, each pushing 1 MiB blobs (POST + PUT) for a fixed time.
  for (const kind of order) {
    const server = servers[kind];
    const { value, usage } = await phase(ctx, server, 'small', () => pushSmallFor(server.base, ctx.small, opts.smallClients, opts.smallSeconds));
    for (const d of value.digests) garbage.blob(server, d);
    samples.add(`small/${kind}`, value.perSecond);
    note(tag, `push ${opts.smallClients}x ${sizeLabel(opts.smallBytes)} blobs`, server.label, `${value.perSecond.toFixed(0)} blobs/s (${value.digests.length})`, usage);
  }

  await garbage.collect(Object.values(servers));
}

/** `clients` concurrent clients pushing small blobs until `secs` have passed. */
async function pushSmallFor(base: string, small: SmallBlobs, clients: number, secs: number): Promise<{ perSecond: number; digests: string[] }> {
  const digests: string[] = [];
  const t0 = hr();
  const deadline = t0 + BigInt(Math.round(secs * 1e9));
  const client = async (): Promise<void> => {
    while (hr() < deadline) digests.push(await pushSmall(base, 'bench/small', small));
  };
  await Promise.all(Array.from({ length: clients }, client));
  return { perSecond: digests.length / seconds(t0), digests };
}

/** Not recorded: lets each server (and V8's JIT) reach its steady state before round 1. */
async function warmUp(ctx: Context): Promise<void> {
  const { opts, servers, trivial } = ctx;
  for (const kind of KINDS) {
    const server = servers[kind];
    if (!opts.onlyGet) for (const d of (await pushSmallFor(server.base, ctx.small, opts.smallClients, opts.quick ? 0.5 : 1)).digests) ctx.garbage.blob(server, d);
    // A fresh Node process answers its first seconds of load with a p99 of several hundred ms (JIT
    // warm-up: seen with a tsc build too); 3 s of GET load gets past it.
    await loadFigure(ctx, 'get', server.base, MANIFEST_PATH, opts.quick ? 1 : 3);
    if (!opts.quick && !opts.onlyGet) await loadFigure(ctx, 'head', server.base, MANIFEST_PATH, 1);
    server.truncateLog();
  }
  for (const c of [...getContestants(ctx).filter((c) => c.key === 'wharf-token' || c.key === 'wharf-metrics'), twinContestant(ctx)]) {
    await manifestLoad(ctx, c, opts.quick ? 1 : 3);
    c.server.truncateLog();
  }
  await loadFigure(ctx, 'get', trivial.base, '/json', 1);
  // The warm-up's blobs go with round 1's garbage: deleting them now would make round 1 wait for a cool-down.
}

interface Summary {
  rows: Row[];
  limits: LimitRow[];
  met: number;
  total: number;
  missed: string[];
}

function summarize(ctx: Context, idle: Record<'start' | 'end', Record<ServerKind, number>>): Summary {
  const { samples, opts, blob } = ctx;
  const m = (key: string): number => samples.median(key);
  const both = (figure: string): { wharf: number; distribution: number; spread: number } => ({
    wharf: m(`${figure}/wharf`),
    distribution: m(`${figure}/distribution`),
    spread: Math.max(spread(samples.get(`${figure}/wharf`)), spread(samples.get(`${figure}/distribution`))),
  });
  const ratio = (figure: string): number => m(`${figure}/wharf`) / m(`${figure}/distribution`);
  const atLeast = (figure: string, x: number): { text: string; met: boolean } => ({ text: `>= ${x.toFixed(1)}x`, met: ratio(figure) >= x });
  const atMost = (figure: string, x: number): { text: string; met: boolean } => ({ text: `<= ${x.toFixed(1)}x`, met: ratio(figure) <= x });
  const hashWriteLimit = m('limit/hash-write');
  const pushTarget = (figure: string): { text: string; met: boolean } => ({
    text: '>= 2.0x, >= 60% of hash+write',
    met: ratio(figure) >= 2 && m(`${figure}/wharf`) >= 0.6 * hashWriteLimit,
  });
  const peak = (figure: string, kind: ServerKind): number => Math.max(...(ctx.usage.get(`${figure}/${kind}`) ?? []).map((u) => u.peakRss)) / MB;
  const growth = (figure: string, kind: ServerKind): number =>
    Math.max(...(ctx.usage.get(`${figure}/${kind}`) ?? []).map((u) => u.peakRss - u.startRss)) / MB;
  const cpu = (figure: string, kind: ServerKind): number => median((ctx.usage.get(`${figure}/${kind}`) ?? []).map((u) => u.cpuSeconds));
  const label = sizeLabel(blob.size);
  const mirror = 'see npm run bench:mirror (through a throttled link, against Distribution\'s proxy)';

  const variant = (key: 'wharf-token' | 'wharf-metrics', figure: string, at: number, why: string): Row => ({
    figure,
    unit: 'req/s',
    wharf: m(`get-rps/${key}`),
    spread: spread(samples.get(`get-rps/${key}`)),
    noRatio: true,
    // Judged by the paired slices (pairedSlices); the ratio of the 6 s phases' medians is shown too.
    target: {
      text: `${m(`get-paired/${key}`).toFixed(2)}x of the twin wharf in paired slices (twin / plain wharf ${m('get-paired/wharf-twin').toFixed(2)}x; 6 s phases / plain wharf ${(m(`get-rps/${key}`) / m('get-rps/wharf')).toFixed(2)}x), >= ${at}x (${why})`,
      met: m(`get-paired/${key}`) >= at,
    },
  });
  const getRows: Row[] = [
    { figure: `Manifest GET by tag, ${opts.connections} conns (wrk)`, unit: 'req/s', ...both('get-rps'), limit: m('limit/get-rps'), target: atLeast('get-rps', 5) },
    { figure: 'Manifest GET by tag, p99', unit: 'ms', ...both('get-p99'), limit: m('limit/get-p99'), digits: 2, target: atMost('get-p99', 0.2) },
    variant('wharf-token', 'Manifest GET by tag with a valid token (wharf+token)', 0.75, 'token cost'),
    variant('wharf-metrics', 'Manifest GET by tag with metrics (wharf+metrics)', 0.95, 'metrics cost < 5%'),
  ];
  if (opts.onlyGet) {
    const limits: LimitRow[] = [
      { name: `node:http small JSON, wrk GET, ${opts.connections} conns (req/s limit)`, unit: 'req/s', value: m('limit/get-rps'), spread: spread(samples.get('limit/get-rps')), digits: 0 },
    ];
    const missed = getRows.filter((r) => !r.target!.met).map((r) => r.figure);
    return { rows: getRows, limits, met: getRows.length - missed.length, total: getRows.length, missed };
  }
  const rows: Row[] = [
    { figure: `Push ${label} monolithic (POST+PUT)`, unit: 'MB/s', ...both('push-mono'), limit: hashWriteLimit, target: pushTarget('push-mono') },
    { figure: `Push ${label} chunked (${sizeLabel(opts.chunkBytes)} PATCH)`, unit: 'MB/s', ...both('push-chunked'), limit: hashWriteLimit, target: pushTarget('push-chunked') },
    { figure: `Pull ${label}, client verifies SHA-256`, unit: 'MB/s', ...both('pull'), limit: m('limit/http-pull'), target: atLeast('pull', 1.2) },
    { figure: `Push ${sizeLabel(opts.smallBytes)} blobs, ${opts.smallClients} clients`, unit: 'blobs/s', ...both('small'), target: atLeast('small', 1.5) },
    ...getRows,
    { figure: `Manifest HEAD by tag, ${opts.connections} conns (ab)`, unit: 'req/s', ...both('head-rps'), limit: m('limit/head-rps'), target: atLeast('head-rps', 5) },
    { figure: 'Manifest HEAD by tag, p99', unit: 'ms', ...both('head-p99'), limit: m('limit/head-p99'), digits: 2, target: atMost('head-p99', 0.2) },
  ];
  const phases: [string, string][] = [
    ['push-mono', `push ${label} monolithic`],
    ['push-chunked', `push ${label} chunked`],
    ['pull', `pull ${label}`],
    ['small', `small-blob pushes`],
    ['get', 'manifest GET'],
    ['head', 'manifest HEAD'],
  ];
  for (const [key, name] of phases) {
    const row: Row = { figure: `Peak RSS, ${name}`, unit: 'MB', wharf: peak(key, 'wharf'), distribution: peak(key, 'distribution') };
    if (key === 'push-mono' || key === 'push-chunked') row.target = { text: 'wharf <= 120 MB', met: row.wharf! <= 120 };
    rows.push(row);
    if (key === 'push-mono' || key === 'push-chunked') {
      rows.push({ figure: `  RSS growth in ${name} (peak - start)`, unit: 'MB', wharf: growth(key, 'wharf'), distribution: growth(key, 'distribution'), noRatio: true });
    }
  }
  for (const [key, name] of phases) {
    rows.push({ figure: `CPU seconds, ${name}`, unit: 's', wharf: cpu(key, 'wharf'), distribution: cpu(key, 'distribution'), digits: 2 });
  }
  rows.push(
    { figure: 'Idle RSS after start-up', unit: 'MB', wharf: idle.start.wharf / MB, distribution: idle.start.distribution / MB, target: { text: 'wharf <= 80 MB', met: idle.start.wharf / MB <= 80 } },
    { figure: 'Idle RSS after the run', unit: 'MB', wharf: idle.end.wharf / MB, distribution: idle.end.distribution / MB, target: { text: 'wharf <= 80 MB', met: idle.end.wharf / MB <= 80 } },
    { figure: 'Mirror: cold and warm pulls', unit: '', note: mirror },
  );

  const lim = (name: string, key: string, unit: string, digits = 0): LimitRow => ({ name, unit, value: m(key), spread: spread(samples.get(key)), digits });
  const limits: LimitRow[] = [
    lim('SHA-256, node crypto, 1 MiB updates', 'limit/sha256', 'MB/s'),
    lim(`Disk write ${label}, 16 MiB writes, into page cache`, 'limit/disk-buffered', 'MB/s'),
    lim(`Disk write ${label}, 16 MiB writes, incl. fsync`, 'limit/disk-synced', 'MB/s'),
    lim('Node hash+write limit: file -> sha256 -> file, 1 process', 'limit/hash-write', 'MB/s'),
    lim('node:http PUT: receive -> sha256 -> file', 'limit/http-push', 'MB/s'),
    lim('node:http GET file, client verifies SHA-256 (pull limit)', 'limit/http-pull', 'MB/s'),
    lim(`node:http small JSON, wrk GET, ${opts.connections} conns (req/s limit)`, 'limit/get-rps', 'req/s'),
    lim('node:http small JSON, wrk GET, p99', 'limit/get-p99', 'ms', 2),
    lim(`node:http small JSON, ab HEAD, ${opts.connections} conns`, 'limit/head-rps', 'req/s'),
    lim('node:http small JSON, ab HEAD, p99', 'limit/head-p99', 'ms', 2),
  ];
  const targeted = rows.filter((r) => r.target && !r.note);
  const missed = targeted.filter((r) => !r.target!.met).map((r) => r.figure);
  return { rows, limits, met: targeted.length - missed.length, total: targeted.length, missed };
}

async function compare(opts: Options, workDir: string): Promise<number> {
  const started = Date.now();
  say(`wharf bench: work directory ${workDir}`);
  say(`${stamp()} generating ${sizeLabel(opts.bigBytes)} of random data...`);
  const blob = await BigBlob.create(join(workDir, 'big.bin'), opts.bigBytes);
  const small = new SmallBlobs(opts.smallBytes);
  const servers = {} as Record<ServerKind, RunningServer>;
  let trivial: TrivialServer | undefined;
  let tokenWharf: TokenWharf | undefined;
  let metricsWharf: MetricsWharf | undefined;
  let twinWharf: RunningServer | undefined;
  const ctx: Partial<Context> = { opts, workDir, blob, small, servers, samples: new Samples(), usage: new Map(), garbage: new Garbage() };
  try {
    for (const kind of KINDS) {
      servers[kind] = await startServer(kind, {
        workDir,
        log: { mode: opts.logMode },
        distributionCache: opts.distributionCache,
        wharfEntry: opts.wharfEntry,
        wharfEnv: opts.wharfEnv,
      });
      say(`${stamp()} ${servers[kind].label} listening on ${servers[kind].base} (pid ${servers[kind].pid})`);
    }
    let image: PushedImage | undefined;
    for (const kind of KINDS) {
      const pushed = await pushImage(servers[kind].base, 'bench/app', 'latest');
      if (image && !pushed.manifest.equals(image.manifest)) throw new BenchError('the two registries got different manifests');
      image = pushed;
      await checkManifest(servers[kind].base, 'bench/app', 'latest', pushed);
    }
    ctx.image = image!;
    await new Promise((r) => setTimeout(r, 500));
    const idleStart = { wharf: readMemory(servers.wharf.pid).rss, distribution: readMemory(servers.distribution.pid).rss };
    trivial = await startTrivialServer(workDir, blob, image!.manifest);
    ctx.trivial = trivial;
    tokenWharf = await startTokenWharf(workDir, servers.wharf.dataDir, { log: { mode: opts.logMode }, wharfEntry: opts.wharfEntry, wharfEnv: opts.wharfEnv });
    ctx.tokenWharf = tokenWharf;
    await checkManifest(tokenWharf.server.base, 'bench/app', 'latest', image!, tokenWharf.authorization);
    metricsWharf = await startMetricsWharf(workDir, servers.wharf.dataDir, { log: { mode: opts.logMode }, wharfEntry: opts.wharfEntry, wharfEnv: opts.wharfEnv });
    ctx.metricsWharf = metricsWharf;
    twinWharf = await startWharfVariant('twin', servers.wharf.dataDir, { workDir, log: { mode: opts.logMode }, wharfEntry: opts.wharfEntry, wharfEnv: opts.wharfEnv, label: 'wharf (twin)' }, {});
    ctx.twinWharf = twinWharf;
    say(`${stamp()} wharf variants: ${tokenWharf.server.label} on ${tokenWharf.server.base}, ${metricsWharf.server.label} on ${metricsWharf.server.base} (metrics ${metricsWharf.metricsUrl})`);
    const full = ctx as Context;
    say(`${stamp()} warming up (not recorded)...`);
    await warmUp(full);
    for (let round = 0; round < opts.rounds; round++) await runRound(full, round);
    agent.destroy();
    await new Promise((r) => setTimeout(r, opts.quick ? 1000 : 3000));
    const idleEnd = { wharf: readMemory(servers.wharf.pid).rss, distribution: readMemory(servers.distribution.pid).rss };
    const summary = summarize(full, { start: idleStart, end: idleEnd });
    const elapsed = (Date.now() - started) / 1000;
    printReport(full, summary, elapsed);
    await writeResults(opts, workDir, { options: opts, samples: full.samples, usage: Object.fromEntries(full.usage), idle: { start: idleStart, end: idleEnd }, summary }, say);
    return 0;
  } catch (err) {
    reportAbort(err, Object.values(servers), say);
    return 1;
  } finally {
    agent.destroy();
    await trivial?.stop();
    await tokenWharf?.server.stop();
    await metricsWharf?.server.stop();
    await twinWharf?.stop();
    for (const server of Object.values(servers)) await server.stop();
  }
}

const fmtMedian = (ctx: Context, key: string): string => ctx.samples.median(key).toFixed(2);
const fmtMax = (ctx: Context, key: string): string => ctx.samples.max(key).toFixed(2);

const ratios = (ctx: Context, variant: string): string => {
  const list = ctx.samples.get(`get-ratio/${variant}`);
  const paired = ctx.samples.get(`get-paired/${variant}`);
  return `${list.map((r) => r.toFixed(2)).join(' ')} (median ${median(list).toFixed(2)}), paired slices ${paired.map((r) => r.toFixed(3)).join(' ')} (median ${median(paired).toFixed(3)})`;
};

function printReport(ctx: Context, summary: Summary, elapsed: number): void {
  const { opts, blob } = ctx;
  const lines = [
    '',
    `wharf ${wharfRevision(['server', 'storage', 'auth', 'mirror', 'bin', 'package.json'])} vs CNCF Distribution ${distributionVersion()} -- ${opts.quick ? 'QUICK mode' : 'full mode'}, ${opts.rounds} rounds (order alternating), ${elapsed.toFixed(0)} s`,
    `machine: ${machineText()}, wrk -t${opts.wrkThreads}, ab (HEAD)`,
    `large blob ${sizeLabel(blob.size)}${opts.quick ? ' (quick mode: not 1 GiB)' : ''}; load phases ${opts.loadSeconds} s; logs: ${opts.logMode === 'info' ? 'info + access log on, both' : 'warn, access log off, both'}; Distribution blob descriptor cache: ${opts.distributionCache ? 'inmemory' : 'off'}`,
    `background load from other processes (idle moments, per round): median ${fmtMedian(ctx, 'env/background-cores')} cores, max ${fmtMax(ctx, 'env/background-cores')} cores of ${cpus().length}`,
    'values: median over rounds (peak RSS: max); ratio = wharf/Distribution; spread = (max-min)/median over rounds; MB = 10^6 bytes',
    'page cache not dropped: pulls read the blob just written from memory; sync before every phase; every write phase meets cold memory (see README)',
    ...(opts.wharfEntry || Object.keys(opts.wharfEnv).length
      ? [`wharf started as: ${Object.entries(opts.wharfEnv).map(([k, v]) => `${k}=${v} `).join('')}${opts.wharfEntry ? `node ${opts.wharfEntry}` : 'bin/wharf.js'} serve`]
      : []),
    '',
    renderFigures(summary.rows),
    '',
    renderLimits(summary.limits),
    '',
    `per-round ratios (6 s phases: to the plain wharf of the same round; paired slices: to the twin): wharf+token ${ratios(ctx, 'wharf-token')}; wharf+metrics ${ratios(ctx, 'wharf-metrics')}; A/A control, twin / plain wharf in paired slices ${ctx.samples.get('get-paired/wharf-twin').map((r) => r.toFixed(3)).join(' ')} (median ${ctx.samples.median('get-paired/wharf-twin').toFixed(3)})`,
    '',
  ];
  process.stdout.write(lines.join('\n'));
  process.stdout.write(`SUMMARY: wharf met ${summary.met} of ${summary.total} targets vs Distribution (${opts.quick ? 'quick' : 'full'} run)${missedText(summary.missed)}\n`);
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  for (const tool of ['wrk', 'ab']) {
    if (spawnSync('which', [tool]).status !== 0) throw new BenchError(`${tool} not found (apt-get install ${tool === 'ab' ? 'apache2-utils' : 'wrk'})`);
  }
  if (!buildDist()) throw new BenchError('npm run build failed');
  return inWorkDir(
    opts,
    'wharf-bench-',
    (workDir) => (opts.profile ? profileWharf(opts, workDir) : compare(opts, workDir)),
    async (workDir) => say(`kept ${workDir}: ${(await readdir(workDir)).join(', ')}`),
  );
}

// `npm run bench -- --s3 [options]` (or `npm run bench --s3`): the S3 bench, bench/s3.ts, instead.
if (process.argv.includes('--s3') || process.env.npm_config_s3 === 'true') await import('./s3.js');
else runMain(main, say);
