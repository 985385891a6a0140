// Crash safety: wharf runs as a child process, workers push blobs (monolithic and
// chunked), images, indexes and tags at once, and the child is SIGKILLed at a random
// moment, then restarted on the same storage root. After every restart the store is
// walked without wharf (every blob whole under its digest, every link pointing at
// content that exists), everything the server acknowledged before the kill is still
// served, and every upload session the kill interrupted is still reported with at least
// the bytes it acknowledged (gone only when its completing PUT stored the blob); those
// sessions are resumed from the Range the server reports, must complete with their digest,
// and are fetched back and hashed. At the end, and every 25 kills, CNCF Distribution's
// garbage collector must accept the store.
//
// A kill counts as survived only when wharf ran until the test killed it (one that exits
// by itself fails the test) and came back serving everything it acknowledged. Every error
// a worker meets is classified: connection resets/refusals after the kill was sent are the
// kill's effect; anything before it, and anything else after it, fails the test.
//
// FAULT_CRASH_ITERATIONS (default 100), FAULT_SEED (default 424242) and
// FAULT_CRASH_MAX_DELAY_MS (latest kill after the workload starts, default 450).
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { asBody, sha256 } from '../support/client.js';
import { spawnWharf, type WharfProcess } from '../support/fault-process.js';
import { freePort } from '../support/processes.js';
import { checkStore, garbageCollectDryRun, haveDistribution, Rng, seedFromEnv, V2 } from '../support/fault-store.js';

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
  /** Bytes the server acknowledged holding (the last 202 answered Range 0-(acked-1)). */
  acked: number;
  /** Bytes sent so far: after a kill the session may hold anything from `acked` to `sent`. */
  sent: number;
  /** The last request sent for it was the completing PUT: after a kill the session may be gone because the blob is stored. */
  completing: boolean;
  /** Restarts after which the server still reported this session with its bytes. */
  restarts: number;
}

/** Thrown when the server answered something a correct server never answers. */
class Unexpected extends Error {}

const rng = new Rng(SEED);
let base = '';
const pending: Pending[] = [];
const busy = new Set<Pending>(); // interrupted uploads a worker is resuming now
// Blobs acknowledged, not yet re-checked; `hash`: GET it and hash what is served (resumed uploads).
const acked: { repo: string; digest: string; size: number; hash?: boolean }[] = [];
const ackedTags: { repo: string; tag: string; digest: string }[] = []; // tags, not yet re-checked
const latest = new Map<string, Set<string>>(); // repo -> every digest `latest` was ever pushed as
const stats = {
  kills: 0,
  survived: 0,
  blobs: 0,
  chunked: 0,
  manifests: 0,
  /** Upload sessions found intact (Range >= acknowledged bytes) after a restart, once per session and restart. */
  sessionsKept: 0,
  /** Uploads that survived at least one restart and then completed with the right digest. */
  resumed: 0,
  /** Sessions gone after a restart because their completing PUT had stored the blob before the kill. */
  completedAtKill: 0,
  /** Resumed blobs fetched back and hashed. */
  resumedVerified: 0,
  hashed: 0,
  requests: 0,
};
/** Errors the kill itself causes (a connection reset, refused or closed after SIGKILL), by kind. */
const killErrors = new Map<string, number>();
const problems: string[] = [];

async function call(path: string, init: RequestInit = {}): Promise<Response> {
  stats.requests++;
  return fetch(path.startsWith('http') ? path : `${base}${path}`, { ...init, signal: AbortSignal.timeout(15_000) });
}

async function expectStatus(res: Response, status: number, what: string): Promise<Response> {
  if (res.status !== status) throw new Unexpected(`${what}: ${res.status} ${(await res.text()).slice(0, 300)}`);
  return res;
}

// Socket-level failures a SIGKILL causes: requests in flight are reset or cut short, new
// connections are refused. Anything else (a timeout, a parse error, a TypeError of ours)
// is not explained by the kill.
const KILL_ERROR_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/** The error codes of `err` and of its causes. */
function errorCodes(err: unknown): string[] {
  const codes: string[] = [];
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') codes.push(code);
    for (const inner of (e as { errors?: unknown }).errors instanceof Array ? ((e as { errors: unknown[] }).errors) : []) codes.push(...errorCodes(inner));
  }
  return codes;
}

function describeError(err: unknown): string {
  const parts: string[] = [];
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const { name, message, code } = e as { name?: string; message?: string; code?: string };
    parts.push(`${name ?? typeof e}${code ? ` ${code}` : ''}: ${message ?? String(e)}`);
    if (typeof e !== 'object') break;
  }
  return `${parts.join(' <- ')}${err instanceof Error && err.stack ? `\n${err.stack.split('\n').slice(1, 4).join('\n')}` : ''}`;
}

/** `Range: 0-<end>` as [least, most] bytes held ("0-0" is both empty and one byte), or undefined. */
function heldBytes(range: string | null): [number, number] | undefined {
  const match = /^0-(\d+)$/.exec(range ?? '');
  if (!match) return undefined;
  const end = Number(match[1]);
  return [end === 0 ? 0 : end + 1, end + 1];
}

/** Why a session reporting `range` does not hold what it should (acknowledged <= held <= sent), or undefined. */
function sessionProblem(up: Pending, range: string | null): string | undefined {
  const held = heldBytes(range);
  if (!held) return `upload status without a Range: ${range}`;
  if (held[1] < up.acked) return `upload reports Range ${range} but ${up.acked} bytes were acknowledged: acknowledged bytes lost`;
  if (held[0] > up.sent) return `upload reports Range ${range} but only ${up.sent} bytes were sent`;
  return undefined;
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
  up.completing = false; // until the PUT below is sent
  for (let start = offset; start < up.data.length; start += chunk) {
    const part = up.data.subarray(start, Math.min(up.data.length, start + chunk));
    up.sent = Math.max(up.sent, start + part.length);
    const res = await call(location, {
      method: 'PATCH',
      body: asBody(part),
      headers: { 'Content-Range': `${start}-${start + part.length - 1}`, 'Content-Type': 'application/octet-stream' },
    });
    await expectStatus(res, 202, `PATCH ${start}-${start + part.length - 1} of ${up.data.length}`);
    if (res.headers.get('Range') !== `0-${start + part.length - 1}`) throw new Unexpected(`PATCH answered Range ${res.headers.get('Range')}`);
    up.acked = start + part.length;
    location = res.headers.get('Location') ?? location;
    up.location = location;
  }
  const sep = location.includes('?') ? '&' : '?';
  up.completing = true;
  const done = await expectStatus(await call(`${location}${sep}digest=${up.digest}`, { method: 'PUT' }), 201, 'PUT completing an upload');
  if (done.headers.get('Docker-Content-Digest') !== up.digest) throw new Unexpected(`upload completed as ${done.headers.get('Docker-Content-Digest')}, not ${up.digest}`);
  pending.splice(pending.indexOf(up), 1);
  // A session that outlived a restart is fetched back and hashed after the next one.
  acked.push({ repo: up.repo, digest: up.digest, size: up.data.length, hash: up.restarts > 0 });
  if (up.restarts > 0) stats.resumed++;
}

async function chunkedUpload(repo: string, data: Buffer, chunk: number): Promise<void> {
  const res = await expectStatus(await call(`/v2/${repo}/blobs/uploads/`, { method: 'POST' }), 202, 'starting an upload');
  const up: Pending = { repo, location: res.headers.get('Location')!, data, digest: sha256(data), acked: 0, sent: 0, completing: false, restarts: 0 };
  pending.push(up);
  busy.add(up);
  await finishUpload(up, 0, chunk);
  stats.chunked++;
}

/** Continues an upload the kill interrupted, from the size the server reports. */
async function resume(up: Pending, chunk: number): Promise<void> {
  // checkSessions() found it after the restart: the same server must still know it.
  const res = await call(up.location);
  await res.arrayBuffer();
  if (res.status !== 204) throw new Unexpected(`upload status of a session reported after the restart: ${res.status}`);
  const problem = sessionProblem(up, res.headers.get('Range'));
  if (problem) throw new Unexpected(problem);
  const [least] = heldBytes(res.headers.get('Range'))!;
  // "0-0" is both "empty" and "one byte": try the least, then one more.
  try {
    await finishUpload(up, least, chunk);
  } catch (err) {
    if (!(err instanceof Unexpected) || res.headers.get('Range') !== '0-0' || least !== 0 || !err.message.includes(': 416')) throw err;
    await finishUpload(up, 1, chunk);
  }
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

/**
 * Runs the workload until the child is killed under it. Every worker ends with an error
 * (they loop until the server is gone); each one is classified: `Unexpected` answers, any
 * error before the kill was sent, and errors a kill does not cause (a timeout, a bug of
 * ours) go to `problems`; connection errors after the kill are its expected effect. The
 * child must have been running until the kill: a wharf that exits by itself is a problem.
 */
async function workloadUntilKilled(wharf: WharfProcess, iteration: number): Promise<void> {
  const kinds = ['blob', 'blob', 'chunked', 'chunked', 'image', 'image'] as const;
  const delay = rng.int(10, MAX_DELAY_MS);
  let killSent = false;
  let aliveAtKill = true;
  const killer = new Promise<void>((resolve) =>
    setTimeout(() => {
      aliveAtKill = wharf.alive();
      killSent = true;
      void wharf.kill().then(resolve);
    }, delay),
  );
  await Promise.all(
    kinds.map((kind, id) =>
      worker(kind, iteration, id).catch((err: unknown) => {
        if (err instanceof Unexpected) {
          problems.push(`iteration ${iteration}: ${err.message}`);
        } else if (!killSent) {
          problems.push(`iteration ${iteration}: ${kind} worker failed before the kill (due at ${delay} ms; wharf ${wharf.alive() ? 'running' : 'exited'}): ${describeError(err)}`);
        } else {
          const codes = errorCodes(err);
          const code = codes.find((c) => KILL_ERROR_CODES.has(c));
          if (code) killErrors.set(code, (killErrors.get(code) ?? 0) + 1);
          else problems.push(`iteration ${iteration}: ${kind} worker failed after the kill with an error a kill does not cause: ${describeError(err)}`);
        }
      }),
    ),
  );
  await killer;
  const exit = await wharf.exited;
  if (!aliveAtKill || exit.signal !== 'SIGKILL') {
    problems.push(
      `iteration ${iteration}: wharf exited by itself before the kill at ${delay} ms (code ${exit.code}, signal ${exit.signal}); its last output:\n` +
        wharf.output().slice(-2000),
    );
  } else {
    stats.kills++;
  }
  busy.clear();
}

/**
 * Right after a restart: every upload session interrupted by the kill is still reported
 * with at least the bytes it acknowledged (and no more than were sent). The one exception
 * is a session whose completing PUT was in flight: completing moves the data to the blob
 * store, links it, then removes the session, so a kill between those steps leaves the
 * session gone (404) with the blob linked, or still listed but without its data with the
 * blob stored; the second is then cancelled and pushed again, as a client would.
 */
async function checkSessions(iteration: number, root: string): Promise<void> {
  const fail = (message: string): void => void problems.push(`after kill ${iteration}: ${message}`);
  for (const up of [...pending]) {
    const res = await call(up.location);
    await res.arrayBuffer();
    const what = `upload session ${up.location} (${up.acked} bytes acknowledged, ${up.sent} sent, ${up.restarts} restarts survived${up.completing ? ', completing PUT sent' : ''})`;
    if (res.status === 404 && up.completing) {
      const head = await call(`/v2/${up.repo}/blobs/${up.digest}`, { method: 'HEAD' });
      if (head.status === 200) {
        pending.splice(pending.indexOf(up), 1);
        acked.push({ repo: up.repo, digest: up.digest, size: up.data.length, hash: true });
        stats.completedAtKill++;
        continue;
      }
    }
    if (res.status !== 204) {
      pending.splice(pending.indexOf(up), 1); // reported once
      fail(`${what} lost on restart: status ${res.status}${up.completing ? ', and its blob is not stored either' : ''}`);
      continue;
    }
    const problem = sessionProblem(up, res.headers.get('Range'));
    const hex = up.digest.slice('sha256:'.length);
    if (problem && up.completing && existsSync(join(root, V2, 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'))) {
      pending.splice(pending.indexOf(up), 1);
      const cancel = await call(up.location, { method: 'DELETE' });
      await cancel.arrayBuffer();
      if (cancel.status !== 204) fail(`${what}: cancelling the emptied session answered ${cancel.status}`);
      const pushed = await pushBlob(up.repo, up.data).then(
        () => true,
        (err: unknown) => {
          fail(`${what}: pushing it again: ${describeError(err)}`);
          return false;
        },
      );
      if (pushed) acked[acked.length - 1]!.hash = true; // pushBlob's entry: fetch it back and hash it
      stats.completedAtKill++;
      continue;
    }
    if (problem) {
      pending.splice(pending.indexOf(up), 1);
      fail(`${what}: ${problem}`);
      continue;
    }
    up.restarts++;
    stats.sessionsKept++;
  }
}

/** Everything acknowledged before the kill is still served, whole. */
async function checkAcknowledged(iteration: number): Promise<void> {
  const fail = (message: string): void => void problems.push(`after kill ${iteration}: ${message}`);
  for (const { repo, digest, size, hash } of acked.splice(0)) {
    if (hash) {
      // An upload resumed across restarts: what is served is exactly what was sent.
      const res = await call(`/v2/${repo}/blobs/${digest}`);
      const body = Buffer.from(await res.arrayBuffer());
      if (res.status !== 200 || body.length !== size || sha256(body) !== digest) {
        fail(`resumed upload ${repo}@${digest}: ${res.status}, ${body.length} bytes hashing to ${sha256(body)}`);
      } else stats.resumedVerified++;
      continue;
    }
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
    /** Restarts wharf after kill `iteration` and checks what it kept; a survival is counted only when all of it holds. */
    const restart = async (iteration: number): Promise<WharfProcess> => {
      const wharf = (current = await spawnWharf({ root, port }));
      base = wharf.base;
      const check = await checkStore(root, verified);
      stats.hashed += check.hashed;
      if (check.problems.length > 0) fail(iteration, check.problems);
      await checkAcknowledged(iteration);
      await checkSessions(iteration, root);
      if (problems.length > 0) fail(iteration, problems);
      // The kill was ours (the child ran until it), it restarted, and it serves what it acknowledged.
      if (iteration > 0 && stats.kills === iteration) stats.survived++;
      return wharf;
    };
    for (let iteration = 1; iteration <= ITERATIONS; iteration++) {
      const wharf = await restart(iteration - 1);
      if (iteration % GC_EVERY === 0) await gc(iteration - 1);
      await workloadUntilKilled(wharf, iteration);
      if (problems.length > 0) fail(iteration, problems);
    }
    // Last restart: everything consistent, every interrupted upload finishes, with the right content.
    const wharf = await restart(ITERATIONS);
    const interrupted = pending.length;
    for (const up of [...pending]) {
      await resume(up, 256 * 1024).catch((err: unknown) => void problems.push(`finishing ${up.location} after the last kill: ${describeError(err)}`));
    }
    await checkAcknowledged(ITERATIONS);
    if (problems.length > 0) fail(ITERATIONS, problems);
    expect(pending).toEqual([]);
    const last = await checkStore(root, verified);
    if (last.problems.length > 0) fail(ITERATIONS, last.problems);
    await gc(ITERATIONS);
    console.log(
      `[crash] seed ${SEED}: ${stats.survived}/${stats.kills} kills survived in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
        `${stats.blobs} monolithic blobs, ${stats.chunked} chunked uploads, ${stats.manifests} manifests acknowledged; ` +
        `upload sessions found intact after a restart ${stats.sessionsKept} times, ${stats.resumed} such uploads completed with their digest ` +
        `(${interrupted} after the last kill), ${stats.completedAtKill} completed by a PUT the kill interrupted; ` +
        `kill errors: ${[...killErrors].map(([k, v]) => `${k} ${v}`).join(', ')}; ` +
        `${last.blobs} blobs on disk (${stats.hashed} hashed), ${last.links} links, ${last.temps} leftover temp files; ${stats.requests} requests`,
    );
    // Every kill was ours, and wharf came back from each one with everything it acknowledged.
    expect(stats.kills, 'kills of a running wharf').toBe(ITERATIONS);
    expect(stats.survived, 'restarts that served everything acknowledged').toBe(ITERATIONS);
    // The workload really ran between the kills (a wharf that answers nothing must not pass):
    // ~3-5 acknowledged pushes per kill on 2 busy cores.
    expect(stats.blobs + stats.chunked + stats.manifests, 'acknowledged pushes').toBeGreaterThanOrEqual(ITERATIONS);
    // Interrupted sessions really were carried across restarts and completed (measured at 100
    // kills: found intact 137-150 times, 43-67 completed).
    expect(stats.sessionsKept, 'upload sessions kept across a restart').toBeGreaterThanOrEqual(Math.floor(ITERATIONS / 5));
    expect(stats.resumed, 'kept sessions completed with their digest').toBeGreaterThanOrEqual(Math.floor(ITERATIONS / 10));
    expect(stats.resumedVerified, 'resumed uploads fetched back and hashed').toBe(stats.resumed + stats.completedAtKill);
    await wharf.stop();
  });
});
