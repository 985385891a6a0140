// npm run bench:mirror [-- --quick] [options]: wharf's pull-through mirror against CNCF
// Distribution 2.8's proxy (docker-registry with `proxy: remoteurl:`), side by side, in
// alternating rounds, both reaching the same upstream (a plain Distribution on loopback
// holding a ~50 MB image) through a throttled link (test/support/link-proxy.ts: 20 MB/s,
// 50 ms one way). Every cold measurement starts a fresh mirror process on an empty root
// directory. Figures are ratios against a baseline; see bench/README.md ("Mirror bench").
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startLinkProxy, type LinkProxy, type LinkSettingsPatch } from '../test/support/link-proxy.js';
import { buildDist, inWorkDir, machineText, missedText, npmArgv, parseArgs, reportAbort, runMain, wharfRevision, writeResults, type CommonOptions } from './cli.js';
import { BigBlob } from './data.js';
import { agent, BenchError } from './http.js';
import { MB, seconds } from './limits.js';
import { makeTestImage, newClient, pullBlob, pullImage, pushTestImage, type BlobRef, type TestImage } from './mirror-client.js';
import { renderRatios, renderValues, type Cell, type RatioRow, type ValueRow } from './mirror-report.js';
import { startMirror, startPlain, wharfRunsCompiled } from './mirror-servers.js';
import { backgroundCores, PhaseMonitor } from './proc.js';
import { pushMonolithic } from './registry.js';
import { distributionVersion, roundOrder, startServer, type RunningServer, type ServerKind } from './servers.js';
import { median, spread } from './stats.js';

const MiB = 1 << 20;
/** The link between each mirror and the upstream (and for the direct pull). */
const LINK: LinkSettingsPatch = { bandwidth: 20_000_000, latencyMs: 50 };
/** The link for the 1 GiB RSS figure: no bandwidth limit, no added latency (20 MB/s would take ~54 s). */
const FAST_LINK: LinkSettingsPatch = { bandwidth: null, latencyMs: 0 };
/** 5 layers, 50 MB of random bytes with the config. */
const LAYER_SIZES = [6_000_000, 14_000_000, 4_000_000, 18_000_000, 8_000_000];
const CONCURRENT_CLIENTS = 4;
const LABEL: Record<ServerKind, string> = { wharf: 'wharf', distribution: 'Distribution' };

interface Options extends CommonOptions {
  warmPulls: number;
  bigBytes: number;
}

const USAGE = `npm run bench:mirror [-- options]

  --quick            1 round, 7 pulls per warm figure (about 2 minutes)
  --rounds N         rounds (default 3; order alternating)
  --warm N           pulls per warm / upstream-down figure and round, median taken (default 11)
  --big MiB          size of the blob for the peak-RSS figure (default 1024; 0 skips the figure)
  --log info|warn    info: info level + access logs on all registries (default); warn: warn, access logs off
  --dir PATH         work directory (default: a new one under /var/tmp, removed at the end)
  --keep             keep the work directory (logs of every instance, results.json)
  --json PATH        also write the raw samples and failures as JSON to PATH
`;

function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): Options {
  const opts: Options = { quick: false, rounds: 3, warmPulls: 11, bigBytes: 1024 * MiB, logMode: 'info', keep: false };
  const explicit = parseArgs(npmArgv(argv, env, USAGE), opts, USAGE, (arg, value) => {
    switch (arg) {
      case '--warm':
        opts.warmPulls = value.int();
        return true;
      case '--big':
        opts.bigBytes = value.int(0) * MiB;
        return true;
      default:
        return false;
    }
  });
  if (opts.quick) {
    if (!explicit.has('--rounds')) opts.rounds = 1;
    if (!explicit.has('--warm')) opts.warmPulls = 7;
  }
  return opts;
}

/**
 * Other people edit the sources while the bench runs; bin/wharf.js then runs them through
 * tsx (about 35 MB more memory) instead of dist/. Called at the start of every round and
 * before the RSS figure: rebuilds when a source is newer than dist/.
 */
function ensureBuild(ctx: Context): void {
  if (wharfRunsCompiled()) return;
  say(`${stamp()} sources changed since the last build: rebuilding dist/ (tsc -p tsconfig.build.json)...`);
  ctx.rebuilds++;
  if (!buildDist()) say(`${stamp()} WARNING: tsc reported errors in the sources being edited; wharf runs what it emitted`);
}

const say = (line: string): void => void process.stdout.write(`${line}\n`);
const hr = (): bigint => process.hrtime.bigint();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const syncDisk = (): void => void spawnSync('sync');
const started = Date.now();
const stamp = (): string => `[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s]`;
const errText = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 300);

interface Context {
  opts: Options;
  workDir: string;
  image: TestImage;
  upstream: RunningServer;
  /** Plain wharf (no proxy) holding the same image: wharf's warm baseline. */
  plainWharf: RunningServer;
  /** Each mirror's own link to the upstream, and one for the direct pull. */
  links: Record<ServerKind | 'direct', LinkProxy>;
  /** Unthrottled links for the big-blob figure. */
  fastLinks: Record<ServerKind, LinkProxy>;
  big?: BlobRef;
  samples: RoundSamples;
  /** figure/kind -> failure messages, one per failed round. */
  failures: Map<string, string[]>;
  /** Log excerpts of failed measurements, printed after the tables. */
  evidence: string[];
  instances: number;
  /** wharf starts, and how many of them ran the compiled build. */
  wharfStarts: number;
  wharfCompiledStarts: number;
  /** Rebuilds of dist/ during the run (sources edited meanwhile). */
  rebuilds: number;
}

function fail(ctx: Context, key: string, round: number, message: string, server?: RunningServer): void {
  const list = ctx.failures.get(key) ?? [];
  list.push(`round ${round + 1}: ${message}`);
  ctx.failures.set(key, list);
  say(`${stamp()} [round ${round + 1}] FAILED ${key}: ${message}`);
  if (server) ctx.evidence.push(`--- ${key}, round ${round + 1}: ${message}\n--- last lines of ${server.logPath}:\n${server.logTail(12)}`);
}

/** A fresh mirror on an empty root directory. */
async function freshMirror(ctx: Context, kind: ServerKind, link: LinkProxy, what: string, wharfEnv?: Record<string, string>): Promise<RunningServer> {
  const dir = join(ctx.workDir, `${String(++ctx.instances).padStart(3, '0')}-${kind}-${what}`);
  if (kind === 'wharf') {
    ctx.wharfStarts++;
    if (wharfRunsCompiled()) ctx.wharfCompiledStarts++;
    else say(`${stamp()} WARNING: a source file is newer than dist/ (edited since the last build): this wharf runs the sources through tsx`);
  }
  link.set({ refuse: false, blackhole: false });
  return startMirror(kind, { dir, remoteUrl: link.url, log: { mode: ctx.opts.logMode }, wharfEnv });
}

async function retire(ctx: Context, server: RunningServer | undefined): Promise<void> {
  if (!server) return;
  await server.stop();
  if (!ctx.opts.keep) await rm(join(server.logPath, '..'), { recursive: true, force: true });
}

/** One pull by `clients` clients at once (each its own connections); seconds until the last finished. */
async function timedPull(base: string, image: TestImage, clients = 1): Promise<number> {
  const agents = Array.from({ length: clients }, newClient);
  const t0 = hr();
  try {
    await Promise.all(agents.map((a) => pullImage(a, base, image)));
    return seconds(t0);
  } finally {
    for (const a of agents) a.destroy();
  }
}

const note = (round: number, figure: string, who: string, value: string): void =>
  say(`${stamp()} [round ${round + 1}] ${figure.padEnd(34)} ${who.padEnd(13)} ${value}`);

const secs = (s: number): string => `${s.toFixed(3)} s`;

/**
 * Cold pull through a fresh mirror by one client ('cold1') or CONCURRENT_CLIENTS at once
 * ('cold4'). Returns the mirror (the caller retires it: cold1's stays up for the warm
 * figures), or undefined when the pull failed.
 */
async function coldPull(ctx: Context, round: number, kind: ServerKind, key: 'cold1' | 'cold4'): Promise<RunningServer | undefined> {
  const clients = key === 'cold1' ? 1 : CONCURRENT_CLIENTS;
  const link = ctx.links[kind];
  let mirror: RunningServer | undefined;
  try {
    mirror = await freshMirror(ctx, kind, link, `${key}-r${round + 1}`);
    syncDisk();
    link.resetStats();
    const s = await timedPull(mirror.base, ctx.image, clients);
    const bytes = link.stats().bytesDown;
    ctx.samples.add(round, `${key}-s/${kind}`, s);
    ctx.samples.add(round, `${key}-bytes/${kind}`, bytes / ctx.image.bytes);
    const figure = clients === 1 ? 'cold pull, 1 client' : `cold pull, ${clients} clients at once`;
    note(round, figure, LABEL[kind], `${secs(s)}, upstream ${(bytes / MB).toFixed(2)} MB (${(bytes / ctx.image.bytes).toFixed(3)}x image), ${link.stats().connections} connections`);
    return mirror;
  } catch (err) {
    fail(ctx, `${key}/${kind}`, round, errText(err), mirror);
    await retire(ctx, mirror);
    return undefined;
  }
}

async function directPull(ctx: Context, round: number): Promise<void> {
  const link = ctx.links.direct;
  syncDisk();
  link.resetStats();
  const s = await timedPull(link.url, ctx.image);
  ctx.samples.add(round, 'direct-s', s);
  note(round, 'direct pull through the link', 'upstream', `${secs(s)}, ${(link.stats().bytesDown / MB).toFixed(2)} MB over the link, ${link.stats().connections} connections`);
}

/** `n` pulls, alternating between the servers given; seconds per server (after two unrecorded pulls each). */
async function alternatePulls(ctx: Context, targets: { key: string; base: string }[], n: number): Promise<Map<string, number[]>> {
  const times = new Map<string, number[]>(targets.map((t) => [t.key, []]));
  for (let i = 0; i < 2; i++) for (const t of targets) await timedPull(t.base, ctx.image);
  for (let i = 0; i < n; i++) {
    for (const t of i % 2 === 0 ? targets : [...targets].reverse()) times.get(t.key)!.push(await timedPull(t.base, ctx.image));
  }
  return times;
}

const medianOf = median;

/** Samples by key and round (a failed round has none), so ratios pair values of the same round. */
class RoundSamples {
  private readonly values = new Map<string, Map<number, number>>();

  add(round: number, key: string, value: number): void {
    const m = this.values.get(key) ?? new Map<number, number>();
    m.set(round, value);
    this.values.set(key, m);
  }

  byRound(key: string): Map<number, number> {
    return this.values.get(key) ?? new Map();
  }

  get(key: string): number[] {
    return [...this.byRound(key).values()];
  }

  median(key: string): number {
    return median(this.get(key));
  }

  toJSON(): Record<string, Record<number, number>> {
    return Object.fromEntries([...this.values].map(([k, m]) => [k, Object.fromEntries(m)]));
  }
}

/** Warm pulls (everything cached) against the plain local registry of the same kind, interleaved. */
async function warm(ctx: Context, round: number, kind: ServerKind, mirror: RunningServer): Promise<void> {
  const link = ctx.links[kind];
  // The plain registry of the same implementation: wharf without proxy; the upstream Distribution without the link.
  const plain = kind === 'wharf' ? ctx.plainWharf : ctx.upstream;
  try {
    link.resetStats();
    const times = await alternatePulls(ctx, [{ key: 'mirror', base: mirror.base }, { key: 'plain', base: plain.base }], ctx.opts.warmPulls);
    const m = medianOf(times.get('mirror')!);
    const p = medianOf(times.get('plain')!);
    const upstreamPerPull = link.stats().bytesDown / (ctx.opts.warmPulls + 2);
    ctx.samples.add(round, `warm-s/${kind}`, m);
    ctx.samples.add(round, `plain-s/${kind}`, p);
    ctx.samples.add(round, `warm-upstream-bytes/${kind}`, upstreamPerPull);
    note(round, 'warm pull (cached)', LABEL[kind], `${secs(m)} vs plain ${plain === ctx.upstream ? 'Distribution' : 'wharf'} ${secs(p)}; upstream ${(upstreamPerPull / 1000).toFixed(1)} kB/pull`);
  } catch (err) {
    fail(ctx, `warm/${kind}`, round, errText(err), mirror);
  }
}

/** Pulls of the cached image with the upstream down (new connections reset, live ones dropped). */
async function upstreamDown(ctx: Context, round: number, kind: ServerKind, mirror: RunningServer, key: string): Promise<void> {
  const link = ctx.links[kind];
  link.set({ refuse: true });
  link.dropConnections();
  try {
    const times: number[] = [];
    for (let i = 0; i < ctx.opts.warmPulls; i++) times.push(await timedPull(mirror.base, ctx.image));
    const m = medianOf(times);
    ctx.samples.add(round, `${key}-s/${kind}`, m);
    note(round, key === 'down' ? 'cached pull, upstream down' : 'cached pull, upstream down, ttl 1ms', LABEL[kind], `${secs(m)} (${link.stats().connections} connections refused)`);
  } catch (err) {
    fail(ctx, `${key}/${kind}`, round, errText(err), mirror);
  } finally {
    link.set({ refuse: false });
  }
}

/** wharf only: tag TTL 1 ms, so every pull asks the upstream first; then the upstream goes down. */
async function expiredTtl(ctx: Context, round: number): Promise<void> {
  const link = ctx.links.wharf;
  let mirror: RunningServer | undefined;
  try {
    mirror = await freshMirror(ctx, 'wharf', link, `ttl-r${round + 1}`, { REGISTRY_PROXY_TTL: '1ms' });
    await timedPull(mirror.base, ctx.image); // cold, not recorded
    await sleep(300);
    const times = await alternatePulls(ctx, [{ key: 'mirror', base: mirror.base }], ctx.opts.warmPulls);
    const m = medianOf(times.get('mirror')!);
    ctx.samples.add(round, 'warmttl-s/wharf', m);
    note(round, 'warm pull, ttl 1ms (revalidates)', 'wharf', secs(m));
    await upstreamDown(ctx, round, 'wharf', mirror, 'downttl');
  } catch (err) {
    fail(ctx, 'warmttl/wharf', round, errText(err), mirror);
  } finally {
    await retire(ctx, mirror);
  }
}

/** Peak RSS of a fresh mirror while one client pulls the big blob cold over the unthrottled link. */
async function bigBlob(ctx: Context, round: number, kind: ServerKind): Promise<void> {
  const link = ctx.fastLinks[kind];
  const blob = ctx.big!;
  let mirror: RunningServer | undefined;
  const client = newClient();
  try {
    mirror = await freshMirror(ctx, kind, link, `big-r${round + 1}`);
    await sleep(500);
    syncDisk();
    link.resetStats();
    const monitor = new PhaseMonitor(mirror.pid);
    const t0 = hr();
    try {
      await pullBlob(client, mirror.base, 'bench/big', blob);
    } finally {
      const usage = monitor.stop();
      const s = seconds(t0);
      ctx.samples.add(round, `big-rss/${kind}`, usage.peakRss / MB);
      ctx.samples.add(round, `big-start-rss/${kind}`, usage.startRss / MB);
      ctx.samples.add(round, `big-mbps/${kind}`, blob.size / MB / s);
      ctx.samples.add(round, `big-bytes/${kind}`, link.stats().bytesDown / blob.size);
      note(round, `cold pull of ${(blob.size / MiB).toFixed(0)} MiB blob, fast link`, LABEL[kind], `peak RSS ${(usage.peakRss / MB).toFixed(0)} MB (start ${(usage.startRss / MB).toFixed(0)} MB), ${(blob.size / MB / s).toFixed(0)} MB/s, CPU ${usage.cpuSeconds.toFixed(1)} s`);
    }
  } catch (err) {
    fail(ctx, `big/${kind}`, round, errText(err), mirror);
  } finally {
    client.destroy();
    await retire(ctx, mirror);
  }
}

async function runRound(ctx: Context, round: number): Promise<void> {
  ensureBuild(ctx);
  const order = roundOrder(round);
  const background = await backgroundCores(ctx.opts.quick ? 300 : 1000, cpus().length);
  ctx.samples.add(round, 'env/background-cores', background);
  note(round, 'machine: background CPU', 'other', `${background.toFixed(2)} cores busy while the bench idles`);

  // Cold pull by one client, with the direct pull through the link first (even rounds) or last.
  const mirrors = new Map<ServerKind, RunningServer>();
  if (round % 2 === 0) await directPull(ctx, round);
  for (const kind of order) {
    const m = await coldPull(ctx, round, kind, 'cold1');
    if (m) mirrors.set(kind, m);
  }
  if (round % 2 === 1) await directPull(ctx, round);
  await sleep(500); // downloads finishing after their last byte was served (Distribution commits after)

  // Warm, then upstream down, on the mirrors the cold pulls filled.
  for (const kind of order) {
    const m = mirrors.get(kind);
    if (!m) continue;
    await warm(ctx, round, kind, m);
    await upstreamDown(ctx, round, kind, m, 'down');
    await retire(ctx, m);
  }
  await expiredTtl(ctx, round);

  // 4 clients pulling the same cold image at once.
  for (const kind of order) await retire(ctx, await coldPull(ctx, round, kind, 'cold4'));

  // Peak RSS with the big blob: every round of a full run, the first of a quick one.
  if (ctx.big && (!ctx.opts.quick || round === 0)) {
    ensureBuild(ctx);
    for (const kind of order) await bigBlob(ctx, round, kind);
  }
}

/** Per-round ratio samples from the raw ones (same round, same conditions), then the summary. */
function summarize(ctx: Context): { ratios: RatioRow[]; values: ValueRow[]; met: number; total: number; missed: string[] } {
  const { samples, opts } = ctx;
  /** num/den per round, for the rounds in which both were measured. */
  const ratio = (num: string, den: string): number[] => {
    const a = samples.byRound(num);
    const b = samples.byRound(den);
    return [...a].filter(([r]) => b.has(r)).map(([r, v]) => v / b.get(r)!);
  };
  const failedCell = (keys: string[]): string | undefined => {
    const rounds = new Set(keys.flatMap((k) => (ctx.failures.get(k) ?? []).map((msg) => msg.split(':', 1)[0])));
    return rounds.size ? `FAILED (${rounds.size}/${opts.rounds})` : undefined;
  };
  const per = (values: number[], failKeys: string[], digits: number): Cell => {
    const failed = failedCell(failKeys);
    if (!values.length) return failed ? { failed } : {};
    const value = medianOf(values);
    // Some rounds measured, others failed: the value, marked.
    if (failed) return { failed: `${value.toFixed(digits)}x, ${failed}` };
    return { value, spread: spread(values) };
  };
  const row = (figure: string, unit: string, values: (k: ServerKind) => number[], failKeys: (k: ServerKind) => string[], target?: { text: string; ok: (v: number) => boolean }, digits = 2): RatioRow => {
    const wharf = per(values('wharf'), failKeys('wharf'), digits);
    const distribution = per(values('distribution'), failKeys('distribution'), digits);
    return {
      figure,
      unit,
      wharf,
      distribution,
      digits,
      target: target && { text: target.text, met: wharf.failed === undefined && wharf.value !== undefined && target.ok(wharf.value) },
    };
  };
  const atMost = (x: number, digits = 2): { text: string; ok: (v: number) => boolean } => ({ text: `<= ${x.toFixed(digits)}x`, ok: (v) => v <= x });
  const bigLabel = ctx.big ? `${(ctx.big.size / MiB).toFixed(0)} MiB` : '1 GiB';

  const ratios: RatioRow[] = [
    row('Cold pull, 1 client / direct pull through the link', 'x', (k) => ratio(`cold1-s/${k}`, 'direct-s'), (k) => [`cold1/${k}`], atMost(1.15)),
    row('Upstream bytes / image bytes, 1 cold client', 'x', (k) => samples.get(`cold1-bytes/${k}`), (k) => [`cold1/${k}`], atMost(1.05), 3),
    row(`Upstream bytes / image bytes, ${CONCURRENT_CLIENTS} cold clients`, 'x', (k) => samples.get(`cold4-bytes/${k}`), (k) => [`cold4/${k}`], atMost(1.05), 3),
    row(`Cold pull time, ${CONCURRENT_CLIENTS} clients / 1 client`, 'x', (k) => ratio(`cold4-s/${k}`, `cold1-s/${k}`), (k) => [`cold4/${k}`, `cold1/${k}`], atMost(1.2)),
    row('Warm pull / plain local registry (same impl.)', 'x', (k) => ratio(`warm-s/${k}`, `plain-s/${k}`), (k) => [`warm/${k}`, `cold1/${k}`], atMost(1.1)),
    row('Cached pull, upstream down / warm', 'x', (k) => ratio(`down-s/${k}`, `warm-s/${k}`), (k) => [`down/${k}`, `warm/${k}`, `cold1/${k}`], atMost(1.2)),
  ];
  const ttlRow = row('  tag TTL expired (wharf ttl=1ms) / warm ttl=1ms', 'x', (k) => (k === 'wharf' ? ratio('downttl-s/wharf', 'warmttl-s/wharf') : []), (k) => (k === 'wharf' ? ['downttl/wharf', 'warmttl/wharf'] : []), atMost(1.2));
  ttlRow.distribution = { failed: 'n/a (always asks)' };
  ratios.push(ttlRow);
  if (ctx.big) {
    const rss = (k: ServerKind): Cell => {
      const v = samples.get(`big-rss/${k}`);
      const failed = failedCell([`big/${k}`]);
      return v.length ? { value: Math.max(...v), spread: spread(v) } : failed ? { failed } : {};
    };
    const w = rss('wharf');
    ratios.push({
      figure: `Peak RSS, cold pull of ${bigLabel} blob (unthrottled link)`,
      unit: 'MB',
      wharf: w,
      distribution: rss('distribution'),
      digits: 0,
      target: { text: 'wharf < 150 MB', met: w.value !== undefined && w.value < 150 },
    });
  }

  const m = (key: string): number | undefined => (samples.get(key).length ? samples.median(key) : undefined);
  const direct = m('direct-s');
  const values: ValueRow[] = [
    { figure: 'Direct pull through the link (1 client)', unit: 's', wharf: direct, distribution: direct, digits: 3, baseline: 'same upstream, same link' },
    { figure: 'Cold pull, 1 client', unit: 's', wharf: m('cold1-s/wharf'), distribution: m('cold1-s/distribution'), digits: 3, baseline: 'direct pull' },
    { figure: `Cold pull, ${CONCURRENT_CLIENTS} clients at once (until the last)`, unit: 's', wharf: m('cold4-s/wharf'), distribution: m('cold4-s/distribution'), digits: 3, baseline: 'cold pull, 1 client' },
    { figure: 'Warm pull (cached)', unit: 's', wharf: m('warm-s/wharf'), distribution: m('warm-s/distribution'), digits: 3, baseline: 'plain pull' },
    { figure: 'Plain local registry pull (no link)', unit: 's', wharf: m('plain-s/wharf'), distribution: m('plain-s/distribution'), digits: 3, baseline: 'wharf / upstream Distribution' },
    { figure: 'Upstream bytes per warm pull', unit: 'kB', wharf: kb(m('warm-upstream-bytes/wharf')), distribution: kb(m('warm-upstream-bytes/distribution')), digits: 1 },
    { figure: 'Cached pull, upstream down', unit: 's', wharf: m('down-s/wharf'), distribution: m('down-s/distribution'), digits: 3, baseline: 'warm pull' },
    { figure: 'Warm pull, wharf ttl=1ms (HEAD per pull)', unit: 's', wharf: m('warmttl-s/wharf'), digits: 3 },
    { figure: 'Cached pull, upstream down, wharf ttl=1ms', unit: 's', wharf: m('downttl-s/wharf'), digits: 3, baseline: 'warm pull, ttl=1ms' },
  ];
  if (ctx.big) {
    values.push(
      { figure: `RSS at the start of the ${bigLabel} pull`, unit: 'MB', wharf: m('big-start-rss/wharf'), distribution: m('big-start-rss/distribution'), digits: 0 },
      { figure: `Cold pull of ${bigLabel} blob, unthrottled link`, unit: 'MB/s', wharf: m('big-mbps/wharf'), distribution: m('big-mbps/distribution'), digits: 0 },
      { figure: `Upstream bytes / blob, ${bigLabel}`, unit: 'x', wharf: m('big-bytes/wharf'), distribution: m('big-bytes/distribution'), digits: 3 },
    );
  }
  const targeted = ratios.filter((r) => r.target);
  const missed = targeted.filter((r) => !r.target!.met).map((r) => r.figure.trim());
  return { ratios, values, met: targeted.length - missed.length, total: targeted.length, missed };
}

const kb = (bytes: number | undefined): number | undefined => (bytes === undefined ? undefined : bytes / 1000);

async function run(opts: Options, workDir: string): Promise<number> {
  say(`wharf mirror bench: work directory ${workDir}`);
  const ctx: Partial<Context> = {
    opts,
    workDir,
    samples: new RoundSamples(),
    failures: new Map(),
    evidence: [],
    instances: 0,
    wharfStarts: 0,
    wharfCompiledStarts: 0,
    rebuilds: 0,
  };
  const links: LinkProxy[] = [];
  const servers: RunningServer[] = [];
  try {
    const upstream = await startServer('distribution', { workDir: join(workDir, 'upstream'), log: { mode: opts.logMode } });
    servers.push(upstream);
    const plainWharf = await startPlain('wharf', join(workDir, 'plain'), { mode: opts.logMode });
    servers.push(plainWharf);
    say(`${stamp()} upstream Distribution ${upstream.base} (pid ${upstream.pid}); plain wharf ${plainWharf.base} (pid ${plainWharf.pid})`);
    const content = makeTestImage('bench/app', 'v1', LAYER_SIZES);
    await pushTestImage(upstream.base, content);
    await pushTestImage(plainWharf.base, content);
    ctx.image = content.image;
    say(`${stamp()} image bench/app:v1 pushed to both: ${content.image.blobs.length - 1} layers (${LAYER_SIZES.map((s) => s / MB).join(', ')} MB) + config + manifest = ${content.image.bytes} bytes`);
    const link = async (settings: LinkSettingsPatch): Promise<LinkProxy> => {
      const l = await startLinkProxy({ target: { host: '127.0.0.1', port: upstream.port }, settings });
      links.push(l);
      return l;
    };
    ctx.upstream = upstream;
    ctx.plainWharf = plainWharf;
    ctx.links = { wharf: await link(LINK), distribution: await link(LINK), direct: await link(LINK) };
    ctx.fastLinks = { wharf: await link(FAST_LINK), distribution: await link(FAST_LINK) };
    if (opts.bigBytes > 0) {
      say(`${stamp()} generating and pushing a ${(opts.bigBytes / MiB).toFixed(0)} MiB random blob to the upstream...`);
      const file = join(workDir, 'big.bin');
      const blob = await BigBlob.create(file, opts.bigBytes);
      const v = blob.variant();
      await pushMonolithic(upstream.base, 'bench/big', v.digest, v.size, blob.body(v));
      await rm(file, { force: true });
      ctx.big = { digest: v.digest, size: v.size };
    }
    const full = ctx as Context;
    // Not recorded: the plain registries' first pulls (JIT, page cache); the link's first connections.
    for (const base of [plainWharf.base, upstream.base, full.links.direct.url]) await timedPull(base, full.image);
    for (let round = 0; round < opts.rounds; round++) await runRound(full, round);
    agent.destroy();
    printReport(full);
    await writeResults(opts, workDir, { options: opts, image: full.image.bytes, samples: full.samples, failures: Object.fromEntries(full.failures) }, say);
    return 0;
  } catch (err) {
    reportAbort(err, servers, say);
    return 1;
  } finally {
    agent.destroy();
    for (const l of links) await l.close();
    for (const server of servers) await server.stop();
  }
}

function printReport(ctx: Context): void {
  const { opts, samples } = ctx;
  const summary = summarize(ctx);
  const elapsed = (Date.now() - started) / 1000;
  const bg = samples.get('env/background-cores');
  const lines = [
    '',
    `wharf mirror ${wharfRevision(['server', 'storage', 'auth', 'mirror', 'bin'])} vs CNCF Distribution ${distributionVersion()} proxy -- ${opts.quick ? 'QUICK mode' : 'full mode'}, ${opts.rounds} round(s) (order alternating), ${elapsed.toFixed(0)} s`,
    `machine: ${machineText()}; background load: median ${samples.median('env/background-cores').toFixed(2)}, max ${bg.length ? Math.max(...bg).toFixed(2) : '-'} cores of ${cpus().length}`,
    `upstream: Distribution on loopback; link (each mirror its own, and one for the direct pull): 20 MB/s shared, 50 ms one way, TCP handshake modelled`,
    `image: ${ctx.image.blobs.length - 1} random layers + config + manifest = ${(ctx.image.bytes / MB).toFixed(2)} MB; pull = manifest by tag, then blobs 3 at a time, every byte verified`,
    `every cold figure on a fresh mirror process with an empty root directory; warm/down figures: median of ${opts.warmPulls} pulls per round; logs: ${opts.logMode === 'info' ? 'info + access log' : 'warn, no access log'}`,
    `wharf: bin/wharf.js serve, compiled dist/ in ${ctx.wharfCompiledStarts} of ${ctx.wharfStarts} mirror starts${ctx.wharfCompiledStarts < ctx.wharfStarts ? ' (the others ran the sources through tsx: sources edited during the run)' : ''}${ctx.rebuilds ? `, dist/ rebuilt ${ctx.rebuilds}x during the run (sources edited meanwhile)` : ''}; default proxy settings (ttl 5m, prefetch on) unless said`,
    ...(ctx.big ? [`peak RSS figure: ${(ctx.big.size / MiB).toFixed(0)} MiB blob over an UNTHROTTLED link (no bandwidth limit, no added latency), max over rounds; VmHWM reset at the start + VmRSS sampled every 25 ms`] : []),
    'values: median over rounds of per-round ratios (each ratio from the same round); spread = (max-min)/median over rounds',
    '',
    renderRatios(summary.ratios),
    '',
    renderValues(summary.values),
    '',
  ];
  if (ctx.failures.size) {
    lines.push('Failures:');
    for (const [key, msgs] of ctx.failures) for (const msg of msgs) lines.push(`  ${key}: ${msg}`);
    lines.push('');
  }
  if (ctx.evidence.length) lines.push(...ctx.evidence, '');
  process.stdout.write(lines.join('\n'));
  process.stdout.write(`SUMMARY: wharf's mirror met ${summary.met} of ${summary.total} targets (${opts.quick ? 'quick' : 'full'} run)${missedText(summary.missed)}\n`);
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (!buildDist()) throw new BenchError('npm run build failed');
  return inWorkDir(opts, 'wharf-mirror-bench-', (workDir) => run(opts, workDir), (workDir) => say(`kept ${workDir}`));
}

runMain(main, say);
