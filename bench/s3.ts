// npm run bench:s3 [-- --quick] [options] (also `npm run bench -- --s3 ...`): wharf on S3
// against CNCF Distribution 2.8's s3 driver, both on one throwaway Ceph RADOS Gateway
// (test/support/s3.ts) in the same bucket under different root directories, exercised one
// at a time, alternating (A B, then B A, ...) figure by figure, values the median over
// rounds. Both have storage.redirect.disable: true, so the blob bytes of every push and pull
// flow through the registry; one extra row pulls through a wharf with redirects on (307 to a
// presigned gateway URL, then the GET from the gateway). The storage's own speed (a plain
// aws-sdk PutObject / CopyObject / GetObject of the same blob from the bench process) is
// measured in the same rounds, so each figure reads against what the storage itself does.
//
// Figures: push of the big blob (POST + PUT, 1 GiB), its pull (the client hashes every byte),
// a chunked push (256 MiB in 16 MiB PATCHes), 1 MiB blobs pushed by 32 clients, manifest GET
// by tag under wrk (the main bench's settings). wharf's peak RSS during the big push is
// /proc VmHWM (reset at the phase start) cross-checked by sampling VmRSS (bench/proc.ts).
// Targets (issue 12): push and pull >= 1.5x Distribution, manifest GET >= 5x, peak RSS
// during the 1 GiB push < 200 MB.
//
// The gateway's OSD keeps objects in RAM (memstore, 4 GiB) and frees deleted ones only when
// the gateway's garbage collector runs: every blob is deleted after its figure and
// `radosgw-admin gc process --include-all` runs between phases (never inside one).
import { cpus } from 'node:os';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDist, inWorkDir, machineText, missedText, npmArgv, parseArgs, reportAbort, runMain, wharfRevision, writeResults, type CommonOptions } from './cli.js';
import { BigBlob, SmallBlobs, type BlobVariant } from './data.js';
import { agent, BenchError, expectStatus, header, send } from './http.js';
import { wrk, type LoadResult } from './load.js';
import { MB, seconds, sha256Speed, startTrivialServer, type TrivialServer } from './limits.js';
import { backgroundCores, PhaseMonitor, readCpuSeconds, readMemory, type PhaseUsage } from './proc.js';
import { analyse, renderProfile } from './profile.js';
import { checkBlob, checkManifest, OCI_MANIFEST, pullVerified, pushChunked, pushImage, pushMonolithic, pushSmall, type PushedImage } from './registry.js';
import { renderFigures, renderLimits, type LimitRow, type Row } from './report.js';
import {
  cephVersion,
  checkTools,
  collectStorageGarbage,
  startDistributionOnS3,
  startStorage,
  startWharfOnS3,
  STORAGE_MALLOC_ENV,
  storagePids,
  StorageClient,
  type RgwServer,
} from './s3-servers.js';
import { distributionVersion, roundOrder, type RunningServer, type ServerKind } from './servers.js';
import { median, Samples, spread } from './stats.js';

const MiB = 1 << 20;

interface Options extends CommonOptions {
  bigBytes: number;
  chunkedBytes: number;
  chunkBytes: number;
  smallBytes: number;
  smallClients: number;
  smallSeconds: number;
  connections: number;
  loadSeconds: number;
  wrkThreads: number;
  distributionCache: boolean;
  /** The gateway's daemons with STORAGE_MALLOC_ENV (default) or glibc's defaults. */
  storageMalloc: boolean;
  profile?: string;
  wharfEnv: Record<string, string>;
  wharfEntry?: string;
  distributionS3: Record<string, string>;
}

const USAGE = `npm run bench:s3 [-- options]        (or: npm run bench -- --s3 [options])

wharf on S3 against Distribution 2.8's s3 driver, both on one throwaway Ceph RGW.
Needs: radosgw ceph-mon ceph-osd ceph-common, docker-registry, wrk; ~6 GiB of free RAM.

  --quick              256 MiB blob, 64 MiB chunked, 2 rounds, 2 s load phases (a few minutes)
  --rounds N           rounds (default 3; each round runs every figure for both, order alternating)
  --size MiB           size of the big blob (default 1024)
  --chunked MiB        size of the chunked push (default 256)
  --chunk MiB          PATCH size of the chunked push (default 16)
  --seconds S          length of the wrk and small-blob phases (default 6)
  --wrk-threads N      wrk threads (default 2)
  --log info|warn      info: info level + access logs on both (default); warn: warn level, access logs off
  --no-dist-cache      run Distribution without its in-memory blob descriptor cache
  --rgw-default-malloc run the gateway's daemons with glibc's default malloc settings (about 3x
                       slower on this kind of VM; by default they keep freed heap mapped)
  --wharf-env K=V      extra environment for wharf (repeatable), e.g. REGISTRY_STORAGE_S3_CHUNKSIZE=...
  --wharf-entry JS     start wharf from this script (with bin/wharf.js's node flags), e.g. another
                       build's server/main.js
  --dist-s3 K=V        extra storage.s3 setting for Distribution (repeatable), e.g.
                       multipartcopythresholdsize=5368709120 (what wharf defaults to off AWS)
  --dir PATH           work directory (default: a new one under /var/tmp, removed at the end)
  --keep               keep the work directory (logs, results.json)
  --json PATH          also write the raw samples and summary as JSON to PATH
  --profile DIR        instead of comparing: run wharf alone under --cpu-prof through the same phases
                       and print the top self-time functions per phase (profiles kept in DIR)
`;

function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): Options {
  const opts: Options = {
    quick: false,
    rounds: 3,
    bigBytes: 1024 * MiB,
    chunkedBytes: 256 * MiB,
    chunkBytes: 16 * MiB,
    smallBytes: MiB,
    smallClients: 32,
    smallSeconds: 6,
    connections: 64,
    loadSeconds: 6,
    wrkThreads: 2,
    logMode: 'info',
    distributionCache: true,
    storageMalloc: true,
    keep: false,
    wharfEnv: {},
    distributionS3: {},
  };
  // `npm run bench -- --s3 ...` hands --s3 on: it only chose this bench.
  const args = npmArgv(argv, env, USAGE, 'bench:s3').filter((a) => a !== '--s3');
  const explicit = parseArgs(args, opts, USAGE, (arg, value) => {
    switch (arg) {
      case '--size':
        opts.bigBytes = value.int() * MiB;
        return true;
      case '--chunked':
        opts.chunkedBytes = value.int() * MiB;
        return true;
      case '--chunk':
        opts.chunkBytes = value.int(5) * MiB;
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
      case '--rgw-default-malloc':
        opts.storageMalloc = false;
        return true;
      case '--profile':
        opts.profile = value();
        return true;
      case '--wharf-entry':
        opts.wharfEntry = value();
        return true;
      case '--dist-s3': {
        const v = value();
        const eq = v.indexOf('=');
        if (eq <= 0) throw new BenchError('--dist-s3: NAME=VALUE');
        opts.distributionS3[v.slice(0, eq)] = v.slice(eq + 1);
        return true;
      }
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
  if (opts.quick) {
    if (!explicit.has('--size')) opts.bigBytes = 256 * MiB;
    if (!explicit.has('--chunked')) opts.chunkedBytes = 64 * MiB;
    if (!explicit.has('--rounds')) opts.rounds = 2;
    if (!explicit.has('--seconds')) opts.loadSeconds = opts.smallSeconds = 2;
  }
  return opts;
}

const say = (text: string): void => {
  process.stderr.write(`${text}\n`);
};
const hr = (): bigint => process.hrtime.bigint();
const benchStarted = Date.now();
const stamp = (): string => `${((Date.now() - benchStarted) / 1000).toFixed(0).padStart(4)}s`;
const sizeLabel = (bytes: number): string => (bytes >= 1 << 30 ? `${bytes / (1 << 30)} GiB` : `${bytes / MiB} MiB`);
const mb = (bytes: number): string => `${(bytes / MB).toFixed(0)} MB`;
const KINDS: ServerKind[] = ['wharf', 'distribution'];
const MANIFEST_PATH = '/v2/bench/app/manifests/latest';

interface Context {
  opts: Options;
  workDir: string;
  rgw: RgwServer;
  storage: StorageClient;
  /** The gateway's daemons, whose CPU each phase reports. */
  storagePids: number[];
  big: BigBlob;
  chunked: BigBlob;
  small: SmallBlobs;
  servers: Record<ServerKind, RunningServer>;
  /** wharf with redirects on, on the same root as `servers.wharf`. */
  redirectWharf: RunningServer;
  trivial: TrivialServer;
  image: PushedImage;
  samples: Samples;
  /** Usage per phase and server, one entry per round. */
  usage: Map<string, PhaseUsage[]>;
}

interface Measured<T> {
  value: T;
  secs: number;
  usage: PhaseUsage;
  /** CPU seconds of radosgw + ceph-osd during the phase. */
  storageCpu: number;
}

const storageCpu = (pids: number[]): number => pids.reduce((sum, pid) => sum + readCpuSeconds(pid), 0);

/** Runs `fn` against one server with its memory and CPU (and the gateway's CPU) watched; records them. */
async function phase<T>(ctx: Context, server: RunningServer, name: string, fn: () => Promise<T>): Promise<Measured<T>> {
  const monitor = new PhaseMonitor(server.pid);
  const cpu0 = storageCpu(ctx.storagePids);
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
  const storage = storageCpu(ctx.storagePids) - cpu0;
  const key = `${name}/${server.label}`;
  ctx.usage.set(key, [...(ctx.usage.get(key) ?? []), usage]);
  ctx.samples.add(`storage-cpu/${name}/${server.label}`, storage);
  return { value, secs, usage, storageCpu: storage };
}

function note(round: string, figure: string, who: string, value: string, m?: Measured<unknown>): void {
  const extra = m ? `   (peak RSS ${mb(m.usage.peakRss)}, CPU ${m.usage.cpuSeconds.toFixed(2)} s, gateway CPU ${m.storageCpu.toFixed(2)} s)` : '';
  say(`${stamp()} ${round} ${figure.padEnd(34)} ${who.padEnd(17)} ${value}${extra}`);
}

const getLoad = (ctx: Context, base: string, path: string, secs: number): Promise<LoadResult> =>
  wrk({ url: `${base}${path}`, threads: ctx.opts.wrkThreads, connections: ctx.opts.connections, durationSeconds: secs, headers: { Accept: OCI_MANIFEST } });

/** Frees what deleted objects hold in the gateway (not timed: between phases). */
function collect(ctx: Context): void {
  collectStorageGarbage(ctx.rgw);
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

/** A pull through wharf with redirects on: GET (307 to a presigned URL), then the GET from the gateway, verified. */
async function pullRedirected(server: RunningServer, repo: string, v: BlobVariant): Promise<void> {
  const reply = await send({ method: 'GET', base: server.base, url: `/v2/${repo}/blobs/${v.digest}` });
  expectStatus(reply, 307, `GET ${repo} blob (redirect on)`);
  if (header(reply, 'Docker-Content-Digest') !== v.digest) throw new BenchError('redirect: wrong Docker-Content-Digest');
  const location = new URL(header(reply, 'Location'));
  await pullVerified(location.origin, repo, v, `${location.pathname}${location.search}`);
}

/** The storage's own speed: PutObject, CopyObject, GetObject of a blob the size of the big one. */
async function storageLimits(ctx: Context, tag: string, round: number): Promise<void> {
  const { storage, big, samples } = ctx;
  const v = big.variant();
  let t0 = hr();
  const key = await storage.put(big, v, `put-${round}`);
  const put = v.size / MB / seconds(t0);
  samples.add('limit/put', put);
  t0 = hr();
  await storage.copy(key, `copy-${round}`);
  const copy = v.size / MB / seconds(t0);
  samples.add('limit/copy', copy);
  t0 = hr();
  await storage.getVerified(key, v);
  const get = v.size / MB / seconds(t0);
  samples.add('limit/get', get);
  // The registries' own pull client (pullVerified: node:http, SHA-256 of every byte) reading
  // the object straight from the gateway: no registry in between can deliver more to it.
  const url = new URL(await storage.presignedGet(key));
  t0 = hr();
  await pullVerified(url.origin, '', v, `${url.pathname}${url.search}`);
  const direct = v.size / MB / seconds(t0);
  samples.add('limit/get-direct', direct);
  note(
    tag,
    `limit: aws-sdk, ${sizeLabel(v.size)}`,
    'bench process',
    `PutObject ${put.toFixed(0)} MB/s, CopyObject ${copy.toFixed(0)} MB/s, GetObject + verify ${get.toFixed(0)} MB/s, pull client GET from RGW ${direct.toFixed(0)} MB/s`,
  );
  await storage.deleteLimitObjects();
  collect(ctx);
}

async function runRound(ctx: Context, round: number): Promise<void> {
  const { opts, big, chunked, samples, servers, storage } = ctx;
  const order = roundOrder(round);
  const tag = `[round ${round + 1}/${opts.rounds}]`;
  const label = sizeLabel(big.size);
  const limits = !opts.quick || round === 0;

  const background = await backgroundCores(opts.quick ? 300 : 1000, cpus().length);
  samples.add('env/background-cores', background);
  note(tag, 'machine: background CPU', 'other', `${background.toFixed(2)} cores busy while the bench idles`);

  // Manifest GET by tag (wrk), 64 keep-alive connections: nothing is written.
  for (const kind of order) {
    const server = servers[kind];
    await checkManifest(server.base, 'bench/app', 'latest', ctx.image);
    const m = await phase(ctx, server, 'get', () => getLoad(ctx, server.base, MANIFEST_PATH, opts.loadSeconds));
    samples.add(`get-rps/${kind}`, m.value.reqPerSec);
    samples.add(`get-p99/${kind}`, m.value.p99);
    note(tag, 'manifest GET by tag', server.label, `${m.value.reqPerSec.toFixed(0)} req/s, p50 ${m.value.p50.toFixed(2)} ms, p99 ${m.value.p99.toFixed(2)} ms`, m);
  }
  if (limits) {
    const l = await getLoad(ctx, ctx.trivial.base, '/json', opts.loadSeconds);
    samples.add('limit/get-rps', l.reqPerSec);
    samples.add('limit/get-p99', l.p99);
    note(tag, 'limit: node:http JSON GET', 'trivial', `${l.reqPerSec.toFixed(0)} req/s, p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms`);
    const sha = sha256Speed(256 * MiB);
    samples.add('limit/sha256', sha);
    note(tag, 'limit: SHA-256', 'node', `${sha.toFixed(0)} MB/s`);
  }

  // The storage's own speed with the same blob size, first in odd rounds, last in even ones.
  if (round % 2 === 0) await storageLimits(ctx, tag, round);

  // Push (POST + PUT with the whole body), then pull (verified) of that blob; wharf's blob is
  // also pulled through the redirecting wharf. Deleted (and collected) before the next server.
  for (const kind of order) {
    const server = servers[kind];
    const v = big.variant();
    const push = await phase(ctx, server, 'push', () => pushMonolithic(server.base, 'bench/big', v.digest, v.size, big.body(v)));
    await checkBlob(server.base, 'bench/big', v);
    samples.add(`push/${kind}`, v.size / MB / push.secs);
    note(tag, `push ${label} (POST+PUT)`, server.label, `${(v.size / MB / push.secs).toFixed(0)} MB/s`, push);
    const pull = await phase(ctx, server, 'pull', () => pullVerified(server.base, 'bench/big', v));
    samples.add(`pull/${kind}`, v.size / MB / pull.secs);
    note(tag, `pull ${label} + verify`, server.label, `${(v.size / MB / pull.secs).toFixed(0)} MB/s`, pull);
    if (kind === 'wharf') {
      const r = await phase(ctx, ctx.redirectWharf, 'pull', () => pullRedirected(ctx.redirectWharf, 'bench/big', v));
      samples.add('pull-redirect/wharf', v.size / MB / r.secs);
      note(tag, `pull ${label} + verify, 307`, ctx.redirectWharf.label, `${(v.size / MB / r.secs).toFixed(0)} MB/s`, r);
    }
    await storage.deleteBlobs(kind, [v.digest]);
    collect(ctx);
  }
  if (round % 2 === 1) await storageLimits(ctx, tag, round);

  // Chunked push: PATCHes with Content-Range, then PUT ?digest= without a body.
  for (const kind of order) {
    const server = servers[kind];
    const v = chunked.variant();
    const m = await phase(ctx, server, 'chunked', () => pushChunked(server.base, 'bench/chunked', chunked, v, opts.chunkBytes));
    await checkBlob(server.base, 'bench/chunked', v);
    samples.add(`chunked/${kind}`, v.size / MB / m.secs);
    note(tag, `push ${sizeLabel(v.size)} chunked`, server.label, `${(v.size / MB / m.secs).toFixed(0)} MB/s`, m);
    await storage.deleteBlobs(kind, [v.digest]);
    collect(ctx);
  }

  // Small blobs: 32 clients, each pushing 1 MiB blobs (POST + PUT) for a fixed time.
  for (const kind of order) {
    const server = servers[kind];
    const m = await phase(ctx, server, 'small', () => pushSmallFor(server.base, ctx.small, opts.smallClients, opts.smallSeconds));
    samples.add(`small/${kind}`, m.value.perSecond);
    note(tag, `push ${opts.smallClients}x ${sizeLabel(opts.smallBytes)} blobs`, server.label, `${m.value.perSecond.toFixed(0)} blobs/s (${m.value.digests.length})`, m);
    await storage.deleteBlobs(kind, m.value.digests);
    collect(ctx);
  }
  for (const server of [...Object.values(servers), ctx.redirectWharf]) server.truncateLog();
}

/** Not recorded: lets each server (and V8's JIT, and the gateway) reach its steady state. */
async function warmUp(ctx: Context): Promise<void> {
  const { opts, servers, storage } = ctx;
  for (const kind of KINDS) {
    const server = servers[kind];
    const { digests } = await pushSmallFor(server.base, ctx.small, opts.smallClients, opts.quick ? 0.5 : 1);
    await storage.deleteBlobs(kind, digests);
    await getLoad(ctx, server.base, MANIFEST_PATH, opts.quick ? 1 : 2);
    server.truncateLog();
  }
  await getLoad(ctx, ctx.trivial.base, '/json', 1);
  collect(ctx);
}

interface Summary {
  rows: Row[];
  limits: LimitRow[];
  met: number;
  total: number;
  missed: string[];
}

function summarize(ctx: Context, idle: Record<'start' | 'end', Record<ServerKind, number>>): Summary {
  const { samples, opts, big } = ctx;
  const m = (key: string): number => samples.median(key);
  const both = (figure: string): { wharf: number; distribution: number; spread: number } => ({
    wharf: m(`${figure}/wharf`),
    distribution: m(`${figure}/distribution`),
    spread: Math.max(spread(samples.get(`${figure}/wharf`)), spread(samples.get(`${figure}/distribution`))),
  });
  const ratio = (figure: string): number => m(`${figure}/wharf`) / m(`${figure}/distribution`);
  const atLeast = (figure: string, x: number): { text: string; met: boolean } => ({ text: `>= ${x.toFixed(1)}x`, met: ratio(figure) >= x });
  const usage = (figure: string, who: string): PhaseUsage[] => ctx.usage.get(`${figure}/${who}`) ?? [];
  const peak = (figure: string, who: string): number => Math.max(...usage(figure, who).map((u) => u.peakRss)) / MB;
  const cpu = (figure: string, who: string): number => median(usage(figure, who).map((u) => u.cpuSeconds));
  const gatewayCpu = (figure: string, who: string): number => m(`storage-cpu/${figure}/${who}`);
  const label = sizeLabel(big.size);
  const redirect = ctx.redirectWharf.label;

  // A registry in the path moves the same bytes from the same gateway to the same client, plus
  // a hop, on the same cores: the client's direct GET from the gateway bounds any registry's pull.
  const pullTarget = (): { text: string; met: boolean } => {
    const wanted = 1.5 * m('pull/distribution');
    const ceiling = m('limit/get-direct');
    const target = atLeast('pull', 1.5);
    if (wanted <= ceiling) return target;
    return { ...target, text: `${target.text} (${wanted.toFixed(0)} MB/s: above the ceiling here, ${ceiling.toFixed(0)} MB/s, the pull client's direct GET from RGW)` };
  };
  const rows: Row[] = [
    { figure: `Push ${label} (POST+PUT), through the registry`, unit: 'MB/s', ...both('push'), limit: m('limit/put'), target: atLeast('push', 1.5) },
    { figure: `Pull ${label}, through the registry, client verifies`, unit: 'MB/s', ...both('pull'), limit: m('limit/get-direct'), target: pullTarget() },
    {
      figure: `Pull ${label}, wharf redirect on (307 + GET from RGW)`,
      unit: 'MB/s',
      wharf: m('pull-redirect/wharf'),
      distribution: m('pull/distribution'),
      spread: spread(samples.get('pull-redirect/wharf')),
      limit: m('limit/get'),
    },
    { figure: `Push ${sizeLabel(ctx.chunked.size)} chunked (${sizeLabel(opts.chunkBytes)} PATCHes)`, unit: 'MB/s', ...both('chunked'), limit: m('limit/put') },
    {
      figure: `Push ${sizeLabel(opts.smallBytes)} blobs, ${opts.smallClients} clients`,
      unit: 'blobs/s',
      ...both('small'),
    },
    { figure: `Manifest GET by tag, ${opts.connections} conns (wrk)`, unit: 'req/s', ...both('get-rps'), limit: m('limit/get-rps'), target: atLeast('get-rps', 5) },
    { figure: 'Manifest GET by tag, p99', unit: 'ms', ...both('get-p99'), limit: m('limit/get-p99'), digits: 2 },
  ];
  const pushPeak = peak('push', 'wharf');
  const growth = (figure: string, who: string): number => Math.max(...usage(figure, who).map((u) => u.peakRss - u.startRss)) / MB;
  rows.push(
    {
      figure: `Peak RSS, push ${label}`,
      unit: 'MB',
      wharf: pushPeak,
      distribution: peak('push', 'Distribution'),
      target: { text: `wharf < 200 MB${big.size < 1 << 30 ? ' (at 1 GiB)' : ''}`, met: pushPeak < 200 },
    },
    { figure: `  RSS growth in push ${label} (peak - start)`, unit: 'MB', wharf: growth('push', 'wharf'), distribution: growth('push', 'Distribution'), noRatio: true },
  );
  const phases: [string, string][] = [
    ['pull', `pull ${label}`],
    ['chunked', 'chunked push'],
    ['small', 'small-blob pushes'],
    ['get', 'manifest GET'],
  ];
  for (const [key, name] of phases) rows.push({ figure: `Peak RSS, ${name}`, unit: 'MB', wharf: peak(key, 'wharf'), distribution: peak(key, 'Distribution') });
  rows.push({ figure: `Peak RSS, pull ${label}, redirect on (307 only)`, unit: 'MB', wharf: peak('pull', redirect), noRatio: true });
  for (const [key, name] of [['push', `push ${label}`], ...phases] as [string, string][]) {
    rows.push({ figure: `CPU seconds, ${name}`, unit: 's', wharf: cpu(key, 'wharf'), distribution: cpu(key, 'Distribution'), digits: 2 });
  }
  for (const [key, name] of [['push', `push ${label}`], ...phases] as [string, string][]) {
    rows.push({ figure: `  gateway CPU s (radosgw+osd), ${name}`, unit: 's', wharf: gatewayCpu(key, 'wharf'), distribution: gatewayCpu(key, 'Distribution'), digits: 2 });
  }
  rows.push(
    { figure: 'Idle RSS after start-up', unit: 'MB', wharf: idle.start.wharf / MB, distribution: idle.start.distribution / MB },
    { figure: 'Idle RSS after the run', unit: 'MB', wharf: idle.end.wharf / MB, distribution: idle.end.distribution / MB },
  );

  const lim = (name: string, key: string, unit: string, digits = 0): LimitRow => ({ name, unit, value: m(key), spread: spread(samples.get(key)), digits });
  const limits: LimitRow[] = [
    lim(`RGW PutObject ${label}, aws-sdk from the bench process, one stream`, 'limit/put', 'MB/s'),
    lim(`RGW CopyObject ${label} (server-side; what a single-request move costs)`, 'limit/copy', 'MB/s'),
    lim(`RGW GetObject ${label}, aws-sdk, bench verifies SHA-256`, 'limit/get', 'MB/s'),
    lim(`RGW GET ${label} by the pull client (presigned URL; node:http, SHA-256): pull ceiling`, 'limit/get-direct', 'MB/s'),
    lim('SHA-256, node crypto, 1 MiB updates', 'limit/sha256', 'MB/s'),
    lim(`node:http small JSON, wrk GET, ${opts.connections} conns (req/s limit)`, 'limit/get-rps', 'req/s'),
    lim('node:http small JSON, wrk GET, p99', 'limit/get-p99', 'ms', 2),
  ];
  const targeted = rows.filter((r) => r.target);
  const missed = targeted.filter((r) => !r.target!.met).map((r) => r.figure);
  return { rows, limits, met: targeted.length - missed.length, total: targeted.length, missed };
}

/** The settings given on the command line, for the header. */
function settingsText(opts: Options): string {
  const wharf = [...Object.entries(opts.wharfEnv).map(([k, v]) => `${k}=${v}`), ...(opts.wharfEntry ? [`node ${opts.wharfEntry}`] : [])];
  const dist = Object.entries(opts.distributionS3).map(([k, v]) => `storage.s3.${k}: ${v}`);
  return `${wharf.length ? `; wharf started with ${wharf.join(' ')}` : ''}${dist.length ? `; Distribution with ${dist.join(', ')}` : ''}`;
}

const fmtMedian = (ctx: Context, key: string): string => ctx.samples.median(key).toFixed(2);
const fmtMax = (ctx: Context, key: string): string => ctx.samples.max(key).toFixed(2);

function printReport(ctx: Context, summary: Summary, elapsed: number): void {
  const { opts, big } = ctx;
  const lines = [
    '',
    `wharf ${wharfRevision(['server', 'storage', 'auth', 'mirror', 'bin', 'package.json'])} vs CNCF Distribution ${distributionVersion()} on S3 -- ${opts.quick ? 'QUICK mode' : 'full mode'}, ${opts.rounds} rounds (order alternating), ${elapsed.toFixed(0)} s`,
    `storage: Ceph ${cephVersion()} RADOS Gateway on loopback (one ceph-osd with memstore: objects in RAM; daemons with ${opts.storageMalloc ? Object.entries(STORAGE_MALLOC_ENV).map(([k, v]) => `${k}=${v}`).join(' ') : "glibc's default malloc settings"}), one bucket; wharf under ${ctx.servers.wharf.dataDir}, Distribution under ${ctx.servers.distribution.dataDir}`,
    `driver settings: defaults on both unless listed: 10 MiB parts; a blob's move into place: Distribution multipart copy (UploadPartCopy) above 32 MiB, wharf (off AWS) one CopyObject up to 5 GiB, which the gateway makes by reference${settingsText(opts)}`,
    'storage.redirect.disable: true on both registries: every blob byte pushed or pulled flows through the registry; the "redirect on" row is a second wharf on the same root with redirects on (307 to a presigned RGW URL; the client then GETs from the gateway)',
    `machine: ${machineText()}; the gateway shares these cores with the registries and the client (gateway CPU per phase below); wrk -t${opts.wrkThreads} -c${opts.connections}`,
    `big blob ${sizeLabel(big.size)}${big.size < 1 << 30 ? ' (not 1 GiB)' : ''}; chunked ${sizeLabel(ctx.chunked.size)} in ${sizeLabel(opts.chunkBytes)} PATCHes; small blobs ${sizeLabel(opts.smallBytes)} x ${opts.smallClients} clients for ${opts.smallSeconds} s; load phases ${opts.loadSeconds} s; logs: ${opts.logMode === 'info' ? 'info + access log on, both' : 'warn, access log off, both'}; Distribution blob descriptor cache: ${opts.distributionCache ? 'inmemory' : 'off'}`,
    `background load from other processes (idle moments, per round): median ${fmtMedian(ctx, 'env/background-cores')} cores, max ${fmtMax(ctx, 'env/background-cores')} cores of ${cpus().length}`,
    'values: median over rounds (peak RSS: max); ratio = wharf/Distribution; limit = the storage itself from the bench process (push: PutObject, pull: GetObject + verify); spread = (max-min)/median; MB = 10^6 bytes',
    '',
    renderFigures(summary.rows),
    '',
    renderLimits(summary.limits),
    '',
  ];
  process.stdout.write(lines.join('\n'));
  process.stdout.write(`SUMMARY: wharf met ${summary.met} of ${summary.total} S3 targets vs Distribution (${opts.quick ? 'quick' : 'full'} run)${missedText(summary.missed)}\n`);
}

interface Setup {
  rgw: RgwServer;
  storage: StorageClient;
  big: BigBlob;
  chunked: BigBlob;
  small: SmallBlobs;
}

async function setUp(opts: Options, workDir: string): Promise<Setup> {
  say(`${stamp()} generating ${sizeLabel(opts.bigBytes)} + ${sizeLabel(opts.chunkedBytes)} of random data...`);
  const big = await BigBlob.create(join(workDir, 'big.bin'), opts.bigBytes);
  const chunked = await BigBlob.create(join(workDir, 'chunked.bin'), opts.chunkedBytes);
  say(`${stamp()} starting a Ceph RGW (mon, memstore osd, radosgw)...`);
  const rgw = await startStorage(opts.storageMalloc ? STORAGE_MALLOC_ENV : {});
  say(`${stamp()} RGW on ${rgw.endpoint} (started in ${(rgw.startMs / 1000).toFixed(1)} s, ${rgw.dir})`);
  return { rgw, storage: new StorageClient(rgw), big, chunked, small: new SmallBlobs(opts.smallBytes) };
}

async function compare(opts: Options, workDir: string): Promise<number> {
  const started = Date.now();
  say(`wharf S3 bench: work directory ${workDir}`);
  const servers = {} as Record<ServerKind, RunningServer>;
  const all: RunningServer[] = [];
  let setup: Setup | undefined;
  let trivial: TrivialServer | undefined;
  try {
    setup = await setUp(opts, workDir);
    const { rgw } = setup;
    const common = { workDir, rgw, log: { mode: opts.logMode }, wharfEnv: opts.wharfEnv, wharfEntry: opts.wharfEntry, distributionCache: opts.distributionCache, distributionS3: opts.distributionS3 };
    servers.wharf = await startWharfOnS3(common);
    all.push(servers.wharf);
    servers.distribution = await startDistributionOnS3(common);
    all.push(servers.distribution);
    const redirectWharf = await startWharfOnS3({ ...common, redirect: true, label: 'wharf, redirect on' });
    all.push(redirectWharf);
    for (const s of all) say(`${stamp()} ${s.label} listening on ${s.base} (pid ${s.pid}), storage ${s.dataDir}`);
    let image: PushedImage | undefined;
    for (const kind of KINDS) {
      const pushed = await pushImage(servers[kind].base, 'bench/app', 'latest');
      if (image && !pushed.manifest.equals(image.manifest)) throw new BenchError('the two registries got different manifests');
      image = pushed;
      await checkManifest(servers[kind].base, 'bench/app', 'latest', pushed);
    }
    await new Promise((r) => setTimeout(r, 500));
    const idleStart = { wharf: readMemory(servers.wharf.pid).rss, distribution: readMemory(servers.distribution.pid).rss };
    trivial = await startTrivialServer(workDir, setup.big, image!.manifest);
    const pids = storagePids(rgw);
    if (pids.radosgw === undefined || pids.osd === undefined) throw new BenchError(`cannot find the gateway's radosgw and ceph-osd processes (${rgw.dir})`);
    const ctx: Context = {
      opts,
      workDir,
      rgw,
      storage: setup.storage,
      storagePids: [pids.radosgw, pids.osd],
      big: setup.big,
      chunked: setup.chunked,
      small: setup.small,
      servers,
      redirectWharf,
      trivial,
      image: image!,
      samples: new Samples(),
      usage: new Map(),
    };
    say(`${stamp()} warming up (not recorded)...`);
    await warmUp(ctx);
    for (let round = 0; round < opts.rounds; round++) await runRound(ctx, round);
    agent.destroy();
    await new Promise((r) => setTimeout(r, opts.quick ? 1000 : 3000));
    const idleEnd = { wharf: readMemory(servers.wharf.pid).rss, distribution: readMemory(servers.distribution.pid).rss };
    const summary = summarize(ctx, { start: idleStart, end: idleEnd });
    printReport(ctx, summary, (Date.now() - started) / 1000);
    await writeResults(opts, workDir, { bench: 's3', options: opts, samples: ctx.samples, usage: Object.fromEntries(ctx.usage), idle: { start: idleStart, end: idleEnd }, summary }, say);
    return 0;
  } catch (err) {
    reportAbort(err, all, say);
    return 1;
  } finally {
    agent.destroy();
    await trivial?.stop();
    for (const server of all) await server.stop();
    setup?.storage.destroy();
    await setup?.rgw.stop();
  }
}

const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);

/** --profile: wharf alone on the gateway under --cpu-prof, through the same phases once each. */
async function profile(opts: Options, workDir: string): Promise<number> {
  const profileDir = opts.profile!;
  say(`profiling wharf on S3; profiles go to ${profileDir}`);
  let setup: Setup | undefined;
  let server: RunningServer | undefined;
  const windows: { phase: string; from: number; to: number }[] = [];
  const window = async (name: string, fn: () => Promise<void>): Promise<void> => {
    const from = nowUs();
    await fn();
    windows.push({ phase: name, from, to: nowUs() });
    say(`  ${name}: ${((nowUs() - from) / 1e6).toFixed(1)} s`);
  };
  const before = await readdir(profileDir).catch(() => [] as string[]);
  try {
    setup = await setUp(opts, workDir);
    const { big, chunked, small, storage, rgw } = setup;
    server = await startWharfOnS3({
      workDir,
      rgw,
      log: { mode: opts.logMode },
      wharfEnv: opts.wharfEnv,
      wharfEntry: opts.wharfEntry,
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=200'],
    });
    const s = server;
    const image = await pushImage(s.base, 'bench/app', 'latest');
    await checkManifest(s.base, 'bench/app', 'latest', image);
    await pushSmallFor(s.base, small, opts.smallClients, 1).then((r) => storage.deleteBlobs('wharf', r.digests));
    const v = big.variant();
    await window(`push ${sizeLabel(big.size)} (POST+PUT)`, () => pushMonolithic(s.base, 'bench/big', v.digest, v.size, big.body(v)));
    await checkBlob(s.base, 'bench/big', v);
    await window(`pull ${sizeLabel(big.size)}`, () => pullVerified(s.base, 'bench/big', v));
    await storage.deleteBlobs('wharf', [v.digest]);
    collectStorageGarbage(rgw);
    const c = chunked.variant();
    await window(`push ${sizeLabel(chunked.size)} chunked (${sizeLabel(opts.chunkBytes)} PATCHes)`, () => pushChunked(s.base, 'bench/chunked', chunked, c, opts.chunkBytes));
    await storage.deleteBlobs('wharf', [c.digest]);
    collectStorageGarbage(rgw);
    let digests: string[] = [];
    await window(`small blobs, ${opts.smallClients} clients, ${opts.smallSeconds} s`, async () => {
      const r = await pushSmallFor(s.base, small, opts.smallClients, opts.smallSeconds);
      digests = r.digests;
      say(`    ${r.perSecond.toFixed(0)} blobs/s under the profiler`);
    });
    await storage.deleteBlobs('wharf', digests);
    await window(`manifest GET by tag, wrk ${opts.loadSeconds} s`, async () => {
      const r = await getLoad({ opts } as Context, s.base, MANIFEST_PATH, opts.loadSeconds);
      say(`    ${r.reqPerSec.toFixed(0)} req/s under the profiler, p99 ${r.p99.toFixed(2)} ms`);
    });
  } finally {
    agent.destroy();
    await server?.stop(); // SIGTERM: wharf exits through process.exit, which writes the profile
    setup?.storage.destroy();
    await setup?.rgw.stop();
  }
  const created = (await readdir(profileDir)).filter(
    (f) => f.endsWith('.cpuprofile') && !before.includes(f) && f.split('.')[4] === '0' && f.split('.')[3] === String(server!.pid),
  );
  if (created.length !== 1) {
    say(`expected one new main-thread .cpuprofile of pid ${server!.pid} in ${profileDir}, found ${created.length}`);
    return 1;
  }
  const path = join(profileDir, created[0]!);
  const cpuProfile = JSON.parse(await readFile(path, 'utf8')) as Parameters<typeof analyse>[0];
  const out = [`profile of wharf on S3: ${path}`, ''];
  for (const w of windows) out.push(renderProfile(analyse(cpuProfile, w.phase, w.from, w.to)), '');
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  // Interrupted: exit through process.exit, whose hook (test/support/processes.ts) stops the
  // gateway's daemons and the registries, which run in process groups of their own.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  checkTools();
  if (!buildDist()) throw new BenchError('npm run build failed');
  return inWorkDir(
    opts,
    'wharf-bench-s3-',
    (workDir) => (opts.profile ? profile(opts, workDir) : compare(opts, workDir)),
    async (workDir) => say(`kept ${workDir}: ${(await readdir(workDir)).join(', ')}`),
  );
}

runMain(main, say);
