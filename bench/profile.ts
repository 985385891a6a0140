// npm run bench -- --profile DIR: runs wharf alone under `node --cpu-prof`, drives it
// through the benchmark's phases, and prints per phase the functions with the most
// self time (samples inside each phase's time window only; start-up is excluded).
// The manifest GET is then profiled again in the bench's wharf variants (token auth,
// metrics), each a second wharf process on the same data, under the same flags.
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { BigBlob, SmallBlobs } from './data.js';
import { agent } from './http.js';
import { abHead, wrk } from './load.js';
import { checkBlob, checkManifest, OCI_MANIFEST, pullVerified, pushChunked, pushImage, pushMonolithic, pushSmall } from './registry.js';
import { REPO_ROOT, startServer, type RunningServer } from './servers.js';
import { startTokenWharf } from './token-wharf.js';
import { startMetricsWharf } from './metrics-wharf.js';
import type { Options } from './run.js';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface CpuProfile {
  nodes: { id: number; callFrame: CallFrame; children?: number[] }[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface Hotspot {
  name: string;
  where: string;
  ms: number;
  share: number;
}

export interface PhaseProfile {
  phase: string;
  /** Sampled wall time in the window, ms. */
  totalMs: number;
  idleMs: number;
  top: Hotspot[];
  /** Self time per area: wharf file, package, node internals, GC, ... */
  areas: Hotspot[];
  /** Inclusive (self + callees) time of wharf's own functions. */
  wharfInclusive: Hotspot[];
}

/** A frame of wharf's own code (server/, storage/, auth/, mirror/). */
const isWharf = (frame: CallFrame): boolean => /\/(server|storage|auth|mirror)\/.+\.[tj]s$/.test(frame.url.split('?')[0] ?? '') && !frame.url.includes('/node_modules/');

const say = (text: string): void => {
  process.stderr.write(`${text}\n`);
};

/** Where a frame lives, short: server/app.ts:12, koa/lib/application.js:88, node:internal/..., (native). */
function location(frame: CallFrame): string {
  const { url, lineNumber } = frame;
  if (!url) return '(native)';
  let path = url.startsWith('file://') ? decodeURIComponent(new URL(url).pathname) : url;
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) path = path.slice(nm + '/node_modules/'.length);
  else if (path.startsWith('/')) path = relative(REPO_ROOT, path);
  return `${path}:${lineNumber + 1}`;
}

function area(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native/builtin)';
  const path = url.startsWith('file://') ? decodeURIComponent(new URL(url).pathname) : url;
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + '/node_modules/'.length).split('/');
    return `pkg ${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  if (path.startsWith('node:')) return `node ${path.slice(5).split('/').slice(0, 2).join('/')}`;
  if (path.startsWith('/')) return relative(REPO_ROOT, path);
  return path;
}

/** Self time per function (name + location) of the samples taken in [fromUs, toUs]. */
export function analyse(profile: CpuProfile, phase: string, fromUs: number, toUs: number, topN = 25): PhaseProfile {
  const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map<string, Hotspot>();
  const fn = new Map<string, Hotspot>();
  const areas = new Map<string, Hotspot>();
  let t = profile.startTime;
  let totalUs = 0;
  let idleUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i] ?? 0;
    // A sample stands for the time until the next one.
    const dur = profile.timeDeltas[i + 1] ?? 0;
    if (t < fromUs || t > toUs) continue;
    const frame = byId.get(profile.samples[i]!)!;
    totalUs += dur;
    if (frame.functionName === '(idle)') {
      idleUs += dur;
      continue;
    }
    const name = frame.functionName || '(anonymous)';
    const where = location(frame);
    const key = `${name}@${where}`;
    const hit = fn.get(key) ?? { name, where, ms: 0, share: 0 };
    hit.ms += dur / 1000;
    fn.set(key, hit);
    const a = area(frame);
    const ah = areas.get(a) ?? { name: a, where: '', ms: 0, share: 0 };
    ah.ms += dur / 1000;
    areas.set(a, ah);
    const seen = new Set<string>();
    for (let id: number | undefined = profile.samples[i]; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id)!;
      if (!isWharf(f)) continue;
      const k = `${f.functionName || '(anonymous)'}@${location(f)}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const h = inclusive.get(k) ?? { name: f.functionName || '(anonymous)', where: location(f), ms: 0, share: 0 };
      h.ms += dur / 1000;
      inclusive.set(k, h);
    }
  }
  const busyMs = (totalUs - idleUs) / 1000;
  const rank = (m: Map<string, Hotspot>, n: number): Hotspot[] =>
    [...m.values()]
      .map((h) => ({ ...h, share: busyMs > 0 ? h.ms / busyMs : 0 }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, n);
  return { phase, totalMs: totalUs / 1000, idleMs: idleUs / 1000, top: rank(fn, topN), areas: rank(areas, 15), wharfInclusive: rank(inclusive, 15) };
}

export function renderProfile(p: PhaseProfile): string {
  const lines = [
    `== ${p.phase}: ${p.totalMs.toFixed(0)} ms sampled, ${(p.totalMs - p.idleMs).toFixed(0)} ms busy on the main thread (${((1 - p.idleMs / p.totalMs) * 100).toFixed(0)}%); shares are of busy time`,
    '  self ms   share  function  (location)',
  ];
  for (const h of p.top) lines.push(`  ${h.ms.toFixed(0).padStart(7)}  ${(h.share * 100).toFixed(1).padStart(5)}%  ${h.name}  (${h.where})`);
  lines.push('  -- by area --');
  for (const h of p.areas) lines.push(`  ${h.ms.toFixed(0).padStart(7)}  ${(h.share * 100).toFixed(1).padStart(5)}%  ${h.name}`);
  lines.push('  -- wharf functions, inclusive (self + everything they call) --');
  for (const h of p.wharfInclusive) lines.push(`  ${h.ms.toFixed(0).padStart(7)}  ${(h.share * 100).toFixed(1).padStart(5)}%  ${h.name}  (${h.where})`);
  return lines.join('\n');
}

const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);

interface Profiled {
  server: RunningServer;
  windows: { phase: string; from: number; to: number }[];
}

export async function profileWharf(opts: Options, workDir: string): Promise<number> {
  const profileDir = opts.profile!;
  say(`profiling wharf; profiles go to ${profileDir}`);
  const blob = await BigBlob.create(join(workDir, 'big.bin'), opts.bigBytes);
  const small = new SmallBlobs(opts.smallBytes);
  const serverOptions = {
    log: { mode: opts.logMode },
    wharfEntry: opts.wharfEntry,
    wharfEnv: opts.wharfEnv,
    nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=200'],
  };
  const server = await startServer('wharf', { workDir, ...serverOptions });
  /** The servers profiled (each writes its own profile), and the phases measured on each. */
  const profiled: Profiled[] = [{ server, windows: [] }];
  const window = async (phase: string, fn: () => Promise<void>, on = profiled[0]!): Promise<void> => {
    const from = nowUs();
    await fn();
    on.windows.push({ phase, from, to: nowUs() });
    say(`  ${phase}: ${((nowUs() - from) / 1e6).toFixed(1)} s`);
  };
  let before: string[] = [];
  try {
    before = await readdir(profileDir).catch(() => []);
    const image = await pushImage(server.base, 'bench/app', 'latest');
    await checkManifest(server.base, 'bench/app', 'latest', image);
    // Warm-up, outside every window.
    await wrk({ url: `${server.base}/v2/bench/app/manifests/latest`, threads: opts.wrkThreads, connections: opts.connections, durationSeconds: 1, headers: { Accept: OCI_MANIFEST } });
    const label = `${blob.size >> 20} MiB`;
    const rounds = Math.max(1, Math.min(opts.rounds, 3));
    let lastMono = blob.variant();
    await window(`push ${label} monolithic x${rounds}`, async () => {
      for (let i = 0; i < rounds; i++) {
        lastMono = blob.variant();
        await pushMonolithic(server.base, 'bench/big', lastMono.digest, lastMono.size, blob.body(lastMono));
      }
    });
    await checkBlob(server.base, 'bench/big', lastMono);
    await window(`push ${label} chunked x${rounds}`, async () => {
      for (let i = 0; i < rounds; i++) {
        const v = blob.variant();
        await pushChunked(server.base, 'bench/big', blob, v, opts.chunkBytes);
      }
    });
    await window(`pull ${label} x${rounds}`, async () => {
      for (let i = 0; i < rounds; i++) await pullVerified(server.base, 'bench/big', lastMono);
    });
    await window(`small blobs, ${opts.smallClients} clients, ${opts.smallSeconds} s`, async () => {
      const deadline = Date.now() + opts.smallSeconds * 1000;
      await Promise.all(
        Array.from({ length: opts.smallClients }, async () => {
          while (Date.now() < deadline) await pushSmall(server.base, 'bench/small', small);
        }),
      );
    });
    const manifestUrl = `${server.base}/v2/bench/app/manifests/latest`;
    await window(`manifest GET by tag, wrk ${opts.loadSeconds} s`, async () => {
      const r = await wrk({ url: manifestUrl, threads: opts.wrkThreads, connections: opts.connections, durationSeconds: opts.loadSeconds, headers: { Accept: OCI_MANIFEST } });
      say(`    ${r.reqPerSec.toFixed(0)} req/s under the profiler, p99 ${r.p99.toFixed(2)} ms`);
    });
    await window(`manifest HEAD by tag, ab ${opts.loadSeconds} s`, async () => {
      const r = await abHead({ url: manifestUrl, connections: opts.connections, durationSeconds: opts.loadSeconds, headers: { Accept: OCI_MANIFEST }, csvPath: join(workDir, 'ab.csv') });
      say(`    ${r.reqPerSec.toFixed(0)} req/s under the profiler, p99 ${r.p99.toFixed(2)} ms`);
    });
    // The same manifest GET in the variants, each after the same 1 s warm-up.
    const token = await startTokenWharf(workDir, server.dataDir, serverOptions);
    profiled.push({ server: token.server, windows: [] });
    const metrics = await startMetricsWharf(workDir, server.dataDir, serverOptions);
    profiled.push({ server: metrics.server, windows: [] });
    const variants: { name: string; on: Profiled; headers: Record<string, string> }[] = [
      { name: 'with a valid token', on: profiled[1]!, headers: { Accept: OCI_MANIFEST, Authorization: token.authorization } },
      { name: 'with metrics', on: profiled[2]!, headers: { Accept: OCI_MANIFEST } },
    ];
    for (const { name, on, headers } of variants) {
      const url = `${on.server.base}/v2/bench/app/manifests/latest`;
      await checkManifest(on.server.base, 'bench/app', 'latest', image, headers.Authorization);
      await wrk({ url, threads: opts.wrkThreads, connections: opts.connections, durationSeconds: 1, headers });
      const phase = `manifest GET by tag ${name} (${on.server.label}), wrk ${opts.loadSeconds} s`;
      await window(phase, async () => {
        const r = await wrk({ url, threads: opts.wrkThreads, connections: opts.connections, durationSeconds: opts.loadSeconds, headers });
        say(`    ${r.reqPerSec.toFixed(0)} req/s under the profiler, p99 ${r.p99.toFixed(2)} ms`);
      }, on);
    }
  } finally {
    agent.destroy();
    // SIGTERM: wharf exits through process.exit, which writes the profile.
    for (const { server: s } of profiled) await s.stop();
  }
  const out: string[] = [];
  for (const { server: s, windows } of profiled) {
    // One profile per thread: CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; thread 0 is the
    // main thread (tsx's module loader runs on a worker thread of its own).
    const created = (await readdir(profileDir)).filter(
      (f) => f.endsWith('.cpuprofile') && !before.includes(f) && f.split('.')[4] === '0' && f.split('.')[3] === String(s.pid),
    );
    if (created.length !== 1) {
      say(`expected one new main-thread .cpuprofile of pid ${s.pid} (${s.label}) in ${profileDir}, found ${created.length}`);
      return 1;
    }
    const path = join(profileDir, created[0]!);
    const profile = JSON.parse(await readFile(path, 'utf8')) as CpuProfile;
    out.push(`profile of ${s.label}: ${path}`, '');
    for (const w of windows) out.push(renderProfile(analyse(profile, w.phase, w.from, w.to)), '');
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}
