// Load and soak: a mixed workload on loopback over 64 keep-alive connections against a
// wharf child process — monolithic and chunked pushes, blob pulls, manifest GET/HEAD by
// tag and digest, tag lists, and clients that hang up mid-pull or mid-upload — checking
// every pulled blob against its digest and every manifest GET byte for byte (digest,
// length, media type) against what was pushed, reporting throughput and checking that the
// child's RSS and open file descriptors stay flat: measured at quiet points (no request in
// flight) after warm-up and at the end.
//
//   node --import tsx test/fault/soak.ts          # SOAK_SECONDS (default 60), SOAK_CONNECTIONS (64)
//
// test/fault/soak.test.ts runs a 20 s version in CI.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { procStats, sleep, spawnWharf, type WharfProcess } from '../support/fault-process.js';
import { Rng, seededBytes } from '../support/fault-store.js';

export interface SoakOptions {
  seconds: number;
  connections?: number;
  seed?: number;
  /** Share of the run used to warm up before the baseline is taken (default 0.25, at least 4 s). */
  warmupShare?: number;
  log?: (line: string) => void;
}

export interface SoakResult {
  seconds: number;
  connections: number;
  operations: number;
  opsPerSecond: number;
  mbPerSecond: number;
  byKind: Record<string, number>;
  p50ms: number;
  p99ms: number;
  errors: string[];
  /** Responses whose content was checked: every blob pull hashed, every manifest GET compared byte for byte. */
  verified: { blobPulls: number; manifestGets: number; manifestHeads: number };
  rss: { start: number; end: number; max: number };
  fds: { start: number; end: number; max: number };
  alive: boolean;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const REPOS = ['soak/app', 'soak/api', 'soak/db/pg', 'soak/tools'];
const sha = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const connections = options.connections ?? 64;
  const log = options.log ?? ((line: string) => console.log(line));
  const rng = new Rng(options.seed ?? 99);
  const work = await mkdtemp(join(tmpdir(), 'wharf-soak-'));
  const wharf: WharfProcess = await spawnWharf({ root: join(work, 'data') });
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  let bytes = 0;

  const call = (method: string, path: string, body?: Buffer, headers: Record<string, string> = {}, abortAfter?: number): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: wharf.port, method, path, agent, headers: body ? { 'Content-Length': String(body.length), ...headers } : headers }, (res) => {
        const parts: Buffer[] = [];
        let got = 0;
        res.on('data', (d: Buffer) => {
          got += d.length;
          bytes += d.length;
          if (abortAfter !== undefined && got >= abortAfter) {
            req.destroy(); // a client that goes away mid-pull
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.alloc(0) });
          } else parts.push(d);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path}: timed out`)));
      if (body) bytes += body.length;
      req.end(body);
    });

  // Content to pull: per repository, 3 images of 3 layers.
  const blobs: { repo: string; digest: string; size: number }[] = [];
  const manifests: { repo: string; tag: string; digest: string; body: Buffer; config: { digest: string; size: number } }[] = [];
  const pool = Array.from({ length: 64 }, (_, i) => seededBytes(`pool-${i}`, 1024 + ((i * 7919) % (256 * 1024))));
  const big = seededBytes('big', 4 << 20);
  for (const repo of REPOS) {
    const up = await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha(big)}`, big);
    if (up.status !== 201) throw new Error(`seeding: ${up.status} ${up.body}`);
    blobs.push({ repo, digest: sha(big), size: big.length });
    for (let t = 0; t < 3; t++) {
      const layers = [];
      for (let l = 0; l < 3; l++) {
        const data = pool[(t * 3 + l + REPOS.indexOf(repo) * 9) % pool.length]!;
        await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha(data)}`, data);
        blobs.push({ repo, digest: sha(data), size: data.length });
        layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(data), size: data.length });
      }
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', t }));
      await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha(config)}`, config);
      const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length }, layers }));
      const put = await call('PUT', `/v2/${repo}/manifests/v${t}`, manifest, { 'Content-Type': OCI_MANIFEST });
      if (put.status !== 201) throw new Error(`seeding: ${put.status} ${put.body}`);
      manifests.push({ repo, tag: `v${t}`, digest: sha(manifest), body: manifest, config: { digest: sha(config), size: config.length } });
    }
  }

  const errors: string[] = [];
  const verified = { blobPulls: 0, manifestGets: 0, manifestHeads: 0 };
  const wrong = (message: string): void => {
    if (errors.length < 50) errors.push(message);
  };
  const byKind: Record<string, number> = {};
  const latencies: number[] = [];
  let inflight = 0;
  let paused = false;
  let stop = false;
  let unique = 0;
  const expect = (what: string, res: Answer, status: number): void => {
    if (res.status !== status && errors.length < 50) errors.push(`${what}: ${res.status} ${res.body.toString().slice(0, 200)}`);
  };

  const operation = async (): Promise<void> => {
    const roll = rng.next();
    const repo = rng.pick(REPOS);
    let kind: string;
    if (roll < 0.12) {
      kind = 'push';
      const data = rng.chance(0.2) ? seededBytes(`unique-${unique++}`, rng.int(1, 8192)) : rng.pick(pool);
      expect(kind, await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha(data)}`, data), 201);
      if (rng.chance(0.3)) {
        const layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(data), size: data.length }];
        const { config } = manifests.find((m) => m.repo === repo)!;
        const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers }));
        const put = await call('PUT', `/v2/${repo}/manifests/soak-${rng.int(0, 20)}`, body, { 'Content-Type': OCI_MANIFEST });
        expect('manifest put', put, 201);
        if (put.status === 201 && put.headers['docker-content-digest'] !== sha(body)) wrong(`manifest put: answered digest ${put.headers['docker-content-digest']}, not ${sha(body)}`);
      }
    } else if (roll < 0.17) {
      kind = 'chunked push';
      const data = rng.pick(pool);
      const start = await call('POST', `/v2/${repo}/blobs/uploads/`);
      expect(kind, start, 202);
      const location = String(start.headers.location);
      const half = data.length >> 1;
      expect(kind, await call('PATCH', location, data.subarray(0, half), { 'Content-Range': `0-${half - 1}` }), 202);
      expect(kind, await call('PUT', `${location}?digest=${sha(data)}`, data.subarray(half), { 'Content-Range': `${half}-${data.length - 1}` }), 201);
    } else if (roll < 0.5) {
      kind = 'blob pull';
      const blob = rng.pick(blobs.filter((b) => b.size < 1 << 20));
      const res = await call('GET', `/v2/${blob.repo}/blobs/${blob.digest}`);
      expect(kind, res, 200);
      if (res.status === 200) {
        // Every pull is hashed: ~2700 pulls (~350 MB) in the 20 s CI run cost ~0.3 s of CPU, no change in throughput.
        const got = sha(res.body);
        if (res.body.length !== blob.size || got !== blob.digest) wrong(`${kind}: ${blob.repo}@${blob.digest} served ${res.body.length} bytes hashing to ${got}`);
        else if (res.headers['docker-content-digest'] !== blob.digest) wrong(`${kind}: ${blob.repo}@${blob.digest} answered Docker-Content-Digest ${res.headers['docker-content-digest']}`);
        else verified.blobPulls++;
      }
    } else if (roll < 0.75) {
      kind = 'manifest get/head';
      const m = rng.pick(manifests);
      const ref = rng.chance(0.5) ? m.tag : m.digest;
      const method = rng.chance(0.5) ? 'GET' : 'HEAD';
      const res = await call(method, `/v2/${m.repo}/manifests/${ref}`, undefined, { Accept: OCI_MANIFEST });
      expect(kind, res, 200);
      if (res.status === 200) {
        // Exactly what was pushed: the bytes (GET), their digest, length and media type.
        const where = `${kind}: ${method} ${m.repo}:${ref}`;
        const type = res.headers['content-type'];
        if (res.headers['docker-content-digest'] !== m.digest) wrong(`${where} answered Docker-Content-Digest ${res.headers['docker-content-digest']}, pushed ${m.digest}`);
        else if (type !== OCI_MANIFEST) wrong(`${where} answered Content-Type ${type}, pushed ${OCI_MANIFEST}`);
        else if (res.headers['content-length'] !== String(m.body.length)) wrong(`${where} answered Content-Length ${res.headers['content-length']}, pushed ${m.body.length} bytes`);
        else if (method === 'HEAD') verified.manifestHeads++;
        else if (!res.body.equals(m.body)) wrong(`${where} served a body hashing to ${sha(res.body)} (${res.body.length} bytes), not the ${m.body.length} bytes pushed as ${m.digest}`);
        else verified.manifestGets++;
      }
    } else if (roll < 0.9) {
      kind = 'tags/catalog';
      expect(kind, await call('GET', rng.chance(0.8) ? `/v2/${repo}/tags/list` : '/v2/_catalog'), 200);
    } else if (roll < 0.95) {
      kind = 'aborted pull';
      await call('GET', `/v2/${repo}/blobs/${sha(big)}`, undefined, {}, 64 * 1024).catch(() => undefined);
    } else {
      kind = 'aborted upload';
      const start = await call('POST', `/v2/${repo}/blobs/uploads/`);
      expect(kind, start, 202);
      await new Promise<void>((resolve) => {
        const req = request({ host: '127.0.0.1', port: wharf.port, method: 'PATCH', path: String(start.headers.location), headers: { 'Content-Length': String(1 << 20) } });
        req.on('error', () => resolve());
        req.on('close', () => resolve());
        req.write(big.subarray(0, 64 * 1024), () => setTimeout(() => req.destroy(), 5));
      });
    }
    byKind[kind] = (byKind[kind] ?? 0) + 1;
  };
  const worker = async (): Promise<void> => {
    while (!stop) {
      if (paused) {
        await sleep(10);
        continue;
      }
      inflight++;
      const t = process.hrtime.bigint();
      try {
        await operation();
      } catch (err) {
        if (errors.length < 50) errors.push(`request failed: ${(err as Error).message}`);
      } finally {
        inflight--;
      }
      latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
  };
  /** Lets every request finish, then reads RSS and fds of the child. */
  const quiet = async (): Promise<{ rss: number; fds: number }> => {
    paused = true;
    while (inflight > 0) await sleep(5);
    await sleep(300); // aborted requests settle, streams close
    if (!wharf.alive()) {
      const { exitCode, signalCode } = wharf.child;
      throw new Error(`wharf exited during the soak (code ${exitCode}, signal ${signalCode}); its last output:\n${wharf.output().slice(-3000)}`);
    }
    const stats = procStats(wharf.pid);
    paused = false;
    return stats;
  };

  const seconds = options.seconds;
  const warmup = Math.max(4, seconds * (options.warmupShare ?? 0.25));
  const started = Date.now();
  const workers = Array.from({ length: connections }, () => worker());
  const samples: { rss: number; fds: number; at: number }[] = [];
  const sampler = setInterval(() => {
    try {
      samples.push({ ...procStats(wharf.pid), at: Date.now() });
    } catch {
      // the child is gone: reported below
    }
  }, 500);
  await sleep(warmup * 1000);
  const baseline = await quiet();
  const opsAtBaseline = latencies.length;
  const bytesAtBaseline = bytes;
  const measureStart = Date.now();
  log(`[soak] warm-up done after ${warmup.toFixed(0)} s: RSS ${(baseline.rss / 2 ** 20).toFixed(1)} MiB, ${baseline.fds} fds`);
  while (Date.now() - started < seconds * 1000) {
    await sleep(Math.min(5000, seconds * 1000 - (Date.now() - started)));
    if (Date.now() - started < seconds * 1000) {
      const s = samples[samples.length - 1];
      if (s) log(`[soak] ${((Date.now() - started) / 1000).toFixed(0)} s: ${latencies.length} ops, RSS ${(s.rss / 2 ** 20).toFixed(1)} MiB, ${s.fds} fds`);
    }
  }
  const end = await quiet();
  const measureEnd = Date.now();
  const measured = (measureEnd - measureStart) / 1000;
  // RSS is judged peak against peak: the highest reading of the first half of the
  // measured period against the highest of the second half. Single readings land
  // anywhere on V8's garbage-collection sawtooth (tens of MB here), so they flag
  // noise; a leak keeps raising the peaks.
  const middle = (measureStart + measureEnd) / 2;
  const peak = (from: number, to: number): number =>
    Math.max(0, ...samples.filter((x) => x.at >= from && x.at < to).map((x) => x.rss));
  stop = true;
  await Promise.all(workers);
  clearInterval(sampler);
  const alive = wharf.alive();
  agent.destroy();
  await wharf.stop();
  await rm(work, { recursive: true, force: true });

  const sorted = latencies.slice(opsAtBaseline).sort((a, b) => a - b);
  const result: SoakResult = {
    seconds,
    connections,
    operations: latencies.length,
    opsPerSecond: (latencies.length - opsAtBaseline) / measured,
    mbPerSecond: (bytes - bytesAtBaseline) / measured / 2 ** 20,
    byKind,
    p50ms: sorted[Math.floor(sorted.length * 0.5)] ?? 0,
    p99ms: sorted[Math.floor(sorted.length * 0.99)] ?? 0,
    errors,
    verified,
    rss: {
      start: peak(measureStart, middle) || baseline.rss,
      end: peak(middle, measureEnd + 1) || end.rss,
      max: Math.max(...samples.map((s) => s.rss)),
    },
    fds: { start: baseline.fds, end: end.fds, max: Math.max(...samples.map((s) => s.fds)) },
    alive,
  };
  log(
    `[soak] ${seconds} s, ${connections} connections: ${result.operations} operations, ` +
      `${result.opsPerSecond.toFixed(0)} ops/s, ${result.mbPerSecond.toFixed(1)} MiB/s after warm-up, p50 ${result.p50ms.toFixed(1)} ms, p99 ${result.p99ms.toFixed(1)} ms\n` +
      `[soak] mix: ${Object.entries(byKind).map(([k, v]) => `${k} ${v}`).join(', ')}; verified: ${verified.blobPulls} blob pulls hashed, ` +
      `${verified.manifestGets} manifest GETs byte for byte, ${verified.manifestHeads} manifest HEADs\n` +
      `[soak] RSS ${(result.rss.start / 2 ** 20).toFixed(1)} -> ${(result.rss.end / 2 ** 20).toFixed(1)} MiB (max ${(result.rss.max / 2 ** 20).toFixed(1)}), ` +
      `fds ${result.fds.start} -> ${result.fds.end} (max ${result.fds.max}); ${errors.length} errors${errors.length ? `: ${errors.slice(0, 5).join('; ')}` : ''}`,
  );
  return result;
}

/** The flatness verdict: problems, none when RSS and fds stayed flat and nothing failed. */
export function soakProblems(r: SoakResult): string[] {
  const out: string[] = [];
  if (!r.alive) out.push('wharf died');
  if (r.errors.length > 0) out.push(...r.errors.slice(0, 10));
  if (r.rss.end > r.rss.start * 1.3) out.push(`RSS peak grew from ${r.rss.start} to ${r.rss.end} bytes (> +30 %)`);
  if (r.fds.end > r.fds.start + 10) out.push(`open fds grew from ${r.fds.start} to ${r.fds.end} (> +10)`);
  return out;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const seconds = Number(process.env.SOAK_SECONDS ?? 60);
  const result = await runSoak({ seconds, connections: Number(process.env.SOAK_CONNECTIONS ?? 64) });
  const problems = soakProblems(result);
  if (problems.length > 0) {
    console.error(`[soak] FAILED:\n${problems.join('\n')}`);
    process.exit(1);
  }
  console.log('[soak] OK: RSS and file descriptors stayed flat');
}
