// Crash safety: wharf runs as a child process, workers push blobs (monolithic and
// chunked), images, indexes and tags at once, and the child is SIGKILLed at a random
// moment, then restarted on the same storage root. After every restart the store is
// walked without wharf (every blob whole under its digest, every link pointing at
// content that exists), everything the server acknowledged before the kill is still
// served, and interrupted chunked uploads are resumed from the Range the server
// reports (or restarted when the session is gone). At the end, and every 25 kills,
// CNCF Distribution's garbage collector must accept the store.
//
// FAULT_CRASH_ITERATIONS (default 100), FAULT_SEED (default 424242) and
// FAULT_CRASH_MAX_DELAY_MS (latest kill after the workload starts, default 450).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { asBody, sha256 } from '../support/client.js';
import { spawnWharf, type WharfProcess } from '../support/fault-process.js';
import { freePort } from '../support/processes.js';
import { checkStore, garbageCollectDryRun, haveDistribution, Rng, seedFromEnv } from '../support/fault-store.js';

const ITERATIONS = Number(process.env.FAULT_CRASH_ITERATIONS ?? 100);
const SEED = seedFromEnv('FAULT_SEED', 424242);
const MAX_DELAY_MS = Number(process.env.FAULT_CRASH_MAX_DELAY_MS ?? 450);
const GC_EVERY = 25;
const REPOS = ['crash/app', 'crash/lib', 'crash/deep/tools'];
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const ACCEPT = `${OCI_MANIFEST}, ${OCI_INDEX}`;
const inCI = process.env.CI === 'true';

interface Pending {
  repo: string;
  location: string;
  data: Buffer;
  digest: string;
}

/** Thrown when the server answered something a correct server never answers. */
class Unexpected extends Error {}

const rng = new Rng(SEED);
let base = '';
const pending: Pending[] = [];
const busy = new Set<Pending>(); // interrupted uploads a worker is resuming now
const acked: { repo: string; digest: string; size: number }[] = []; // blobs, not yet re-checked
const ackedTags: { repo: string; tag: string; digest: string }[] = []; // tags, not yet re-checked
const latest = new Map<string, Set<string>>(); // repo -> every digest `latest` was ever pushed as
const stats = { kills: 0, survived: 0, blobs: 0, chunked: 0, manifests: 0, resumed: 0, restarted: 0, hashed: 0, requests: 0 };
const problems: string[] = [];

async function call(path: string, init: RequestInit = {}): Promise<Response> {
  stats.requests++;
  return fetch(path.startsWith('http') ? path : `${base}${path}`, { ...init, signal: AbortSignal.timeout(15_000) });
}

async function expectStatus(res: Response, status: number, what: string): Promise<Response> {
  if (res.status !== status) throw new Unexpected(`${what}: ${res.status} ${(await res.text()).slice(0, 300)}`);
  return res;
}

async function pushBlob(repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const res = await call(`/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: asBody(data) });
  await expectStatus(res, 201, `monolithic push of ${data.length} bytes`);
  if (res.headers.get('Docker-Content-Digest') !== digest) throw new Unexpected(`push answered digest ${res.headers.get('Docker-Content-Digest')}`);
  acked.push({ repo, digest, size: data.length });
  stats.blobs++;
  return digest;
}

/** PATCHes data[offset..] in chunks, then PUTs the digest. */
async function finishUpload(up: Pending, offset: number, chunk: number): Promise<void> {
  let location = up.location;
  for (let start = offset; start < up.data.length; start += chunk) {
    const part = up.data.subarray(start, Math.min(up.data.length, start + chunk));
    const res = await call(location, {
      method: 'PATCH',
      body: asBody(part),
      headers: { 'Content-Range': `${start}-${start + part.length - 1}`, 'Content-Type': 'application/octet-stream' },
    });
    await expectStatus(res, 202, `PATCH ${start}-${start + part.length - 1} of ${up.data.length}`);
    if (res.headers.get('Range') !== `0-${start + part.length - 1}`) throw new Unexpected(`PATCH answered Range ${res.headers.get('Range')}`);
    location = res.headers.get('Location') ?? location;
    up.location = location;
  }
  const sep = location.includes('?') ? '&' : '?';
  await expectStatus(await call(`${location}${sep}digest=${up.digest}`, { method: 'PUT' }), 201, 'PUT completing an upload');
  pending.splice(pending.indexOf(up), 1);
  acked.push({ repo: up.repo, digest: up.digest, size: up.data.length });
}

async function chunkedUpload(repo: string, data: Buffer, chunk: number): Promise<void> {
  const res = await expectStatus(await call(`/v2/${repo}/blobs/uploads/`, { method: 'POST' }), 202, 'starting an upload');
  const up: Pending = { repo, location: res.headers.get('Location')!, data, digest: sha256(data) };
  pending.push(up);
  busy.add(up);
  await finishUpload(up, 0, chunk);
  stats.chunked++;
}

/** Continues an upload the kill interrupted, from the size the server reports. */
async function resume(up: Pending, chunk: number): Promise<void> {
  const res = await call(up.location);
  await res.arrayBuffer();
  if (res.status === 404) {
    // The session is gone (completed, or never fully started): restart it cleanly.
    pending.splice(pending.indexOf(up), 1);
    await pushBlob(up.repo, up.data);
    stats.restarted++;
    return;
  }
  if (res.status !== 204) throw new Unexpected(`upload status: ${res.status}`);
  const range = /^0-(\d+)$/.exec(res.headers.get('Range') ?? '');
  if (!range) throw new Unexpected(`upload status without a Range: ${res.headers.get('Range')}`);
  const end = Number(range[1]);
  if (end + 1 > up.data.length) throw new Unexpected(`upload holds ${end + 1} bytes, only ${up.data.length} were sent`);
  // "0-0" is both "empty" and "one byte": try 0 first, then 1.
  try {
    await finishUpload(up, end === 0 ? 0 : end + 1, chunk);
  } catch (err) {
    if (!(err instanceof Unexpected) || end !== 0 || !err.message.includes(': 416')) throw err;
    await finishUpload(up, 1, chunk);
  }
  stats.resumed++;
}

async function pushManifest(repo: string, tag: string, manifest: object, mediaType: string): Promise<string> {
  const body = Buffer.from(JSON.stringify(manifest));
  const digest = sha256(body);
  if (tag === 'latest') {
    if (!latest.has(repo)) latest.set(repo, new Set());
    latest.get(repo)!.add(digest); // attempted: the tag may end up at any attempted digest
  }
  const res = await call(`/v2/${repo}/manifests/${tag}`, { method: 'PUT', body, headers: { 'Content-Type': mediaType } });
  await expectStatus(res, 201, `manifest PUT ${repo}:${tag}`);
  if (tag !== 'latest') ackedTags.push({ repo, tag, digest });
  stats.manifests++;
  return digest;
}

function blobSize(): number {
  return rng.chance(0.7) ? rng.int(1, 64 * 1024) : rng.int(256 * 1024, 3 * 1024 * 1024);
}

/** One worker: loops until the server dies under it. */
async function worker(kind: 'blob' | 'chunked' | 'image', iteration: number, id: number): Promise<void> {
  const images: { digest: string; size: number }[] = [];
  for (let n = 0; ; n++) {
    const repo = rng.pick(REPOS);
    if (kind === 'blob') {
      await pushBlob(repo, rng.bytes(blobSize()));
    } else if (kind === 'chunked') {
      const chunk = rng.int(64 * 1024, 1024 * 1024);
      const interrupted = pending.find((p) => !busy.has(p));
      if (interrupted) {
        busy.add(interrupted);
        await resume(interrupted, chunk);
      } else {
        await chunkedUpload(repo, rng.bytes(rng.int(200 * 1024, 3 * 1024 * 1024)), chunk);
      }
    } else {
      const target = REPOS[id % REPOS.length]!;
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', created: `${iteration}-${id}-${n}` }));
      const layers = [];
      for (let i = rng.int(1, 2); i > 0; i--) {
        const layer = rng.bytes(rng.int(1, 200 * 1024));
        layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(target, layer), size: layer.length });
      }
      const manifest = {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await pushBlob(target, config), size: config.length },
        layers,
      };
      const size = Buffer.byteLength(JSON.stringify(manifest));
      const digest = await pushManifest(target, `i${iteration}-w${id}-${n}`, manifest, OCI_MANIFEST);
      images.push({ digest, size });
      if (rng.chance(0.35)) await pushManifest(target, 'latest', manifest, OCI_MANIFEST);
      if (images.length >= 2 && rng.chance(0.3)) {
        const manifests = images.slice(-2).map((m, i) => ({
          mediaType: OCI_MANIFEST,
          digest: m.digest,
          size: m.size,
          platform: { os: 'linux', architecture: i === 0 ? 'amd64' : 'arm64' },
        }));
        await pushManifest(target, `x${iteration}-w${id}-${n}`, { schemaVersion: 2, mediaType: OCI_INDEX, manifests }, OCI_INDEX);
      }
    }
  }
}

/** Runs the workload until the child is killed under it; unexpected answers go to `problems`. */
async function workloadUntilKilled(wharf: WharfProcess, iteration: number): Promise<void> {
  const kinds = ['blob', 'blob', 'chunked', 'chunked', 'image', 'image'] as const;
  const delay = rng.int(10, MAX_DELAY_MS);
  const killer = new Promise<void>((resolve) => setTimeout(() => wharf.kill().then(resolve), delay));
  const results = await Promise.allSettled(kinds.map((kind, id) => worker(kind, iteration, id)));
  await killer;
  stats.kills++;
  for (const r of results) {
    if (r.status === 'rejected' && r.reason instanceof Unexpected) problems.push(`iteration ${iteration}: ${r.reason.message}`);
  }
  busy.clear();
}

/** Everything acknowledged before the kill is still served, whole. */
async function checkAcknowledged(iteration: number): Promise<void> {
  const fail = (message: string): void => void problems.push(`after kill ${iteration}: ${message}`);
  for (const { repo, digest, size } of acked.splice(0)) {
    const res = await call(`/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
    if (res.status !== 200 || res.headers.get('Content-Length') !== String(size)) fail(`acknowledged blob ${repo}@${digest}: ${res.status}`);
  }
  const checkManifest = async (repo: string, reference: string, expected: Set<string> | undefined): Promise<void> => {
    const res = await call(`/v2/${repo}/manifests/${reference}`, { headers: { Accept: ACCEPT } });
    const body = Buffer.from(await res.arrayBuffer());
    if (res.status !== 200) return fail(`manifest ${repo}:${reference}: ${res.status}`);
    const digest = sha256(body);
    if (res.headers.get('Docker-Content-Digest') !== digest) return fail(`manifest ${repo}:${reference} served under another digest`);
    if (expected && !expected.has(digest)) return fail(`tag ${repo}:${reference} points at ${digest}, never pushed as that tag`);
    const doc = JSON.parse(body.toString()) as { config?: { digest: string }; layers?: { digest: string }[]; manifests?: { digest: string }[] };
    for (const blob of [...(doc.config ? [doc.config] : []), ...(doc.layers ?? [])]) {
      const head = await call(`/v2/${repo}/blobs/${blob.digest}`, { method: 'HEAD' });
      if (head.status !== 200) fail(`manifest ${repo}:${reference} references blob ${blob.digest}: ${head.status}`);
    }
    for (const child of doc.manifests ?? []) {
      const head = await call(`/v2/${repo}/manifests/${child.digest}`, { method: 'HEAD', headers: { Accept: ACCEPT } });
      if (head.status !== 200) fail(`index ${repo}:${reference} references manifest ${child.digest}: ${head.status}`);
    }
  };
  for (const { repo, tag, digest } of ackedTags.splice(0)) await checkManifest(repo, tag, new Set([digest]));
  for (const [repo, digests] of latest) {
    const head = await call(`/v2/${repo}/manifests/latest`, { method: 'HEAD', headers: { Accept: ACCEPT } });
    if (head.status === 200) await checkManifest(repo, 'latest', digests);
    else if (head.status !== 404) fail(`HEAD ${repo}:latest: ${head.status}`);
  }
}

const roots: string[] = [];
let current: WharfProcess | undefined; // the running child, killed whatever happens
afterAll(async () => {
  await current?.kill();
  for (const dir of roots) await rm(dir, { recursive: true, force: true });
});

describe('crash safety (SIGKILL during pushes)', () => {
  it(`survives ${ITERATIONS} kills with every blob, link and tag consistent`, { timeout: 330_000 }, async () => {
    if (!haveDistribution()) {
      if (inCI) throw new Error('docker-registry (Debian package docker-registry) is required in CI');
      console.warn('\n!!! SKIPPING the garbage-collect checks: /usr/bin/docker-registry missing (apt-get install docker-registry)\n');
    }
    const work = await mkdtemp(join(tmpdir(), 'wharf-crash-'));
    roots.push(work);
    const root = join(work, 'data');
    const verified = new Set<string>();
    const started = Date.now();
    const port = await freePort();
    const fail = (iteration: number, what: string[]): never => {
      throw new Error(`seed ${SEED}, kill ${iteration}: ${what.length} problem(s)\n${what.slice(0, 30).join('\n')}`);
    };
    const gc = async (iteration: number): Promise<void> => {
      if (!haveDistribution()) return;
      const result = await garbageCollectDryRun(root, work);
      if (result.code !== 0) fail(iteration, [`garbage-collect --dry-run exited ${result.code}:`, result.output.slice(-3000)]);
    };
    for (let iteration = 1; iteration <= ITERATIONS; iteration++) {
      const wharf = (current = await spawnWharf({ root, port }));
      base = wharf.base;
      const check = await checkStore(root, verified);
      stats.hashed += check.hashed;
      if (check.problems.length > 0) fail(iteration - 1, check.problems);
      await checkAcknowledged(iteration - 1);
      if (problems.length > 0) fail(iteration - 1, problems);
      if (iteration > 1) stats.survived++;
      if (iteration % GC_EVERY === 0) await gc(iteration - 1);
      await workloadUntilKilled(wharf, iteration);
      if (problems.length > 0) fail(iteration, problems);
    }
    // Last restart: everything consistent, every interrupted upload finishes.
    const wharf = (current = await spawnWharf({ root, port }));
    base = wharf.base;
    const check = await checkStore(root, verified);
    stats.hashed += check.hashed;
    if (check.problems.length > 0) fail(ITERATIONS, check.problems);
    await checkAcknowledged(ITERATIONS);
    stats.survived++;
    const interrupted = pending.length;
    for (const up of [...pending]) await resume(up, 256 * 1024);
    await checkAcknowledged(ITERATIONS);
    if (problems.length > 0) fail(ITERATIONS, problems);
    expect(pending).toEqual([]);
    const last = await checkStore(root, verified);
    if (last.problems.length > 0) fail(ITERATIONS, last.problems);
    await gc(ITERATIONS);
    console.log(
      `[crash] seed ${SEED}: ${stats.survived}/${stats.kills} kills survived in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
        `${stats.blobs} monolithic blobs, ${stats.chunked} chunked uploads, ${stats.manifests} manifests acknowledged; ` +
        `${stats.resumed} interrupted uploads resumed from their Range, ${stats.restarted} restarted (session gone), ` +
        `${interrupted} finished after the last kill; ${last.blobs} blobs on disk (${stats.hashed} hashed), ${last.links} links, ` +
        `${last.temps} leftover temp files; ${stats.requests} requests`,
    );
    expect(stats.survived).toBe(ITERATIONS);
    await wharf.stop();
  });
});
