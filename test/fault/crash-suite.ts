// Crash safety, for one storage (registered by crash.test.ts for the filesystem and by
// crash-s3.test.ts for S3 on a Ceph RADOS Gateway): wharf runs as a child process, workers
// push blobs (monolithic and chunked), images, indexes and tags at once, and the child is
// SIGKILLed at a random moment, then restarted on the same storage (the same directory, or
// the same bucket and rootdirectory). After every restart the store is walked without wharf,
// through wharf's own driver for that storage (every blob whole under its digest, every link
// well-formed and pointing at content that exists, every tag at a revision), everything the
// server acknowledged before the kill is still served, and every upload session the kill
// interrupted is still reported with at least the bytes it acknowledged and at most the
// bytes sent (gone only when its completing PUT stored the blob); those sessions are resumed
// from the Range the server reports, must complete with their digest, and are fetched back
// and hashed. At the end, and every 25 kills, CNCF Distribution's garbage collector must
// accept the store (its s3 driver on the same bucket for S3). "Acknowledged" bytes of an
// upload are those a 202 answered for, or a status GET reported after a restart.
//
// What a killed PATCH leaves differs by storage, and the expectation covers both: on the
// filesystem the bytes arrive in the session's file as they come, so any part of the cut
// request may remain; on S3 each PATCH commits its bytes as one new object at the end of the
// request, so a session holds exactly the bytes acknowledged, or all of the killed PATCH when
// it committed before the kill - never part of it (checked: storage.atomicAppends).
//
// A kill counts as survived only when wharf ran until the test killed it (one that exits
// by itself fails the test) and came back serving everything it acknowledged. Every error
// a worker meets is classified: connection resets/refusals after the kill was sent are the
// kill's effect; anything before it, and anything else after it, fails the test.
//
// Settings (environment):
// - FAULT_CRASH_ITERATIONS: kills on the filesystem, default 100.
// - FAULT_CRASH_S3_ITERATIONS: kills on S3, default 30. A kill costs more on S3: every
//   request is gateway round trips (a monolithic push is ~14 of them, 0.2-0.4 s here against
//   a few ms on disk), the store check lists the bucket and reads what changed, and each kill
//   gets a longer workload (below). Measured on the 2-core machine while other suites ran
//   (load 7-8): 30 kills in 122-178 s, against 260-338 s for the filesystem's 100; most of
//   it is wharf starting after each kill (1.5-3.5 s there, less on an idle machine with
//   dist/ built). 30 keep the S3 file within 2-3 minutes while still carrying ~50 upload
//   sessions across restarts, completing 10-30 of them, acknowledging hundreds of blobs and
//   a few dozen manifests and tags, and running Distribution's collector on the bucket twice.
// - FAULT_CRASH_MAX_DELAY_MS: the latest kill after the workload starts, default 450 ms on
//   the filesystem and 3000 ms on S3: with 450 ms almost nothing is acknowledged on S3 before
//   the kill (measured over 10 kills: at 1500 ms 15 blobs and no manifest, at 3000 ms 63
//   blobs and 5 manifests).
// - FAULT_CRASH_GC_EVERY: kills between Distribution garbage-collect dry runs (default 25).
// - FAULT_SEED: the workload's seed (default 424242).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBody, sha256 } from '../support/client.js';
import { spawnWharf, type WharfProcess } from '../support/fault-process.js';
import { freePort } from '../support/processes.js';
import { requireRgw } from '../support/s3.js';
import {
  blobDataPath,
  checkStore,
  eachLimit,
  garbageCollectDryRun,
  haveDistribution,
  openFaultStorage,
  Rng,
  seedFromEnv,
  storedFileExists,
  type FaultStorage,
  type StorageKind,
} from '../support/fault-store.js';

/**
 * Per storage: how many kills, the latest kill after the workload starts, and the time limit
 * per kill (generous: wharf's start after each kill took up to 3 s on the 2-core machine
 * while other suites ran, 1 s when idle).
 */
const SETTINGS: Record<StorageKind, { iterations: number; maxDelayMs: number; msPerKill: number }> = {
  filesystem: { iterations: Number(process.env.FAULT_CRASH_ITERATIONS ?? 100), maxDelayMs: Number(process.env.FAULT_CRASH_MAX_DELAY_MS ?? 450), msPerKill: 4500 },
  s3: { iterations: Number(process.env.FAULT_CRASH_S3_ITERATIONS ?? 30), maxDelayMs: Number(process.env.FAULT_CRASH_MAX_DELAY_MS ?? 3000), msPerKill: 12_000 },
};
const SEED = seedFromEnv('FAULT_SEED', 424242);
/** The latest kill after the workload starts, in ms: SETTINGS[kind].maxDelayMs, set by crashSuite(). */
let maxDelayMs = 450;
/** Requests at a time when re-checking what was acknowledged. */
const CHECK_PARALLEL = 6;
const GC_EVERY = Number(process.env.FAULT_CRASH_GC_EVERY ?? 25);
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
  /**
   * Bytes the server acknowledged holding: the last 202 answered Range 0-(acked-1), or a status
   * GET after a restart reported at least that many (bytes a server reported are as
   * acknowledged as bytes it answered a PATCH for).
   */
  acked: number;
  /** Bytes sent so far: after a kill the session may hold anything from `acked` to `sent`. */
  sent: number;
  /**
   * Where the last PATCH sent ends (`acked` once it was acknowledged). Where appends are
   * atomic, a session holds `acked` or `lastEnd` bytes after a kill; `sent` may be more, from
   * a PATCH an earlier kill cut before it was stored.
   */
  lastEnd: number;
  /** The last request sent for it was the completing PUT: after a kill the session may be gone because the blob is stored. */
  completing: boolean;
  /** Restarts after which the server still reported this session with its bytes. */
  restarts: number;
}

/** Thrown when the server answered something a correct server never answers. */
class Unexpected extends Error {}

const rng = new Rng(SEED);
let base = '';
/** The storage of this file's run, set by crashSuite(). */
let storage: FaultStorage;
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
  /** Of them: holding exactly the acknowledged bytes; the whole PATCH the kill cut (stored, not yet answered); part of it (filesystem only). */
  sessionsAtAcked: 0,
  sessionsAtSent: 0,
  sessionsPartial: 0,
  /** Uploads that survived at least one restart and then completed with the right digest. */
  resumed: 0,
  /** Sessions gone after a restart because their completing PUT had stored the blob before the kill. */
  completedAtKill: 0,
  /** Resumed blobs fetched back and hashed. */
  resumedVerified: 0,
  hashed: 0,
  requests: 0,
  /** Distribution garbage-collect dry runs due, and passed. */
  gcDue: 0,
  gcRuns: 0,
};
/** Where the run's time went, in ms: starting wharf, checks after a restart, the workloads, garbage-collect. */
const timing = { restart: 0, checks: 0, storeCheck: 0, workload: 0, gc: 0 };
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

/**
 * Why a session reporting `range` does not hold what it should, or undefined. On any storage:
 * at least the bytes acknowledged, at most the bytes sent. Where appends are atomic (S3: a
 * PATCH is one object written when the request ends), exactly one of those two: a session
 * holding part of a PATCH would be a torn write.
 */
function sessionProblem(up: Pending, range: string | null): string | undefined {
  const held = heldBytes(range);
  if (!held) return `upload status without a Range: ${range}`;
  if (held[1] < up.acked) return `upload reports Range ${range} but ${up.acked} bytes were acknowledged: acknowledged bytes lost`;
  if (held[0] > up.sent) return `upload reports Range ${range} but only ${up.sent} bytes were sent`;
  if (storage.atomicAppends && !holds(held, up.acked) && !holds(held, up.lastEnd)) {
    return `upload reports Range ${range}: part of the PATCH the kill cut (${up.acked} bytes acknowledged, the last PATCH ending at ${up.lastEnd}), but ${storage.kind} appends whole requests only`;
  }
  return undefined;
}

const holds = ([least, most]: [number, number], size: number): boolean => least <= size && size <= most;

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
    up.lastEnd = start + part.length;
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
  const up: Pending = { repo, location: res.headers.get('Location')!, data, digest: sha256(data), acked: 0, sent: 0, lastEnd: 0, completing: false, restarts: 0 };
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
  up.acked = Math.max(up.acked, least);
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
  const delay = rng.int(10, maxDelayMs);
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
async function checkSessions(iteration: number): Promise<void> {
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
    if (problem && up.completing && (await storedFileExists(storage.driver, blobDataPath(up.digest)))) {
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
    const held = heldBytes(res.headers.get('Range'))!;
    if (holds(held, up.acked)) stats.sessionsAtAcked++;
    else if (holds(held, up.lastEnd)) stats.sessionsAtSent++;
    else stats.sessionsPartial++;
    up.acked = Math.max(up.acked, held[0]); // reported: must survive the next kill too
  }
}

/** Everything acknowledged before the kill is still served, whole. */
async function checkAcknowledged(iteration: number): Promise<void> {
  const fail = (message: string): void => void problems.push(`after kill ${iteration}: ${message}`);
  // A few requests at a time: each one is gateway round trips on S3.
  await eachLimit(acked.splice(0), CHECK_PARALLEL, async ({ repo, digest, size, hash }) => {
    if (hash) {
      // An upload resumed across restarts: what is served is exactly what was sent.
      const res = await call(`/v2/${repo}/blobs/${digest}`);
      const body = Buffer.from(await res.arrayBuffer());
      if (res.status !== 200 || body.length !== size || sha256(body) !== digest) {
        fail(`resumed upload ${repo}@${digest}: ${res.status}, ${body.length} bytes hashing to ${sha256(body)}`);
      } else stats.resumedVerified++;
      return;
    }
    const res = await call(`/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
    if (res.status !== 200 || res.headers.get('Content-Length') !== String(size)) fail(`acknowledged blob ${repo}@${digest}: ${res.status}`);
  });
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
  await eachLimit(ackedTags.splice(0), CHECK_PARALLEL, ({ repo, tag, digest }) => checkManifest(repo, tag, new Set([digest])));
  await eachLimit([...latest], CHECK_PARALLEL, async ([repo, digests]) => {
    const head = await call(`/v2/${repo}/manifests/latest`, { method: 'HEAD', headers: { Accept: ACCEPT } });
    if (head.status === 200) await checkManifest(repo, 'latest', digests);
    else if (head.status !== 404) fail(`HEAD ${repo}:latest: ${head.status}`);
  });
}

let registered = false;

/**
 * Registers the crash suite for one storage. Its state is this module's, so one call per test
 * file (vitest gives each file its own module instances). Outside CI a missing Ceph RGW skips
 * the S3 suite loudly; with CI=true it fails (requireRgw), as does a missing docker-registry.
 */
export function crashSuite(kind: StorageKind): void {
  if (registered) throw new Error('crashSuite() registers module state: call it once per test file');
  registered = true;
  const { iterations: ITERATIONS, msPerKill } = SETTINGS[kind];
  maxDelayMs = SETTINGS[kind].maxDelayMs;
  const available = kind === 's3' ? requireRgw() : true;
  let work = '';
  let current: WharfProcess | undefined; // the running child, killed whatever happens

  beforeAll(async () => {
    if (!available) return;
    work = await mkdtemp(join(tmpdir(), 'wharf-crash-'));
    storage = await openFaultStorage(kind, work);
  }, 180_000);

  afterAll(async () => {
    await current?.kill();
    await storage?.close();
    if (work) await rm(work, { recursive: true, force: true });
  }, 60_000);

  describe.skipIf(!available)(`crash safety (SIGKILL during pushes) on ${kind}`, () => {
    it(`survives ${ITERATIONS} kills with every blob, link and tag consistent`, { timeout: 60_000 + ITERATIONS * msPerKill }, async () => {
      if (!haveDistribution()) {
        if (inCI) throw new Error('docker-registry (Debian package docker-registry) is required in CI');
        console.warn('\n!!! SKIPPING the garbage-collect checks: /usr/bin/docker-registry missing (apt-get install docker-registry)\n');
      }
      const verified = new Set<string>();
      const started = Date.now();
      const port = await freePort();
      const fail = (iteration: number, what: string[]): never => {
        throw new Error(`${kind}, seed ${SEED}, kill ${iteration}: ${what.length} problem(s)\n${what.slice(0, 30).join('\n')}`);
      };
      const gc = async (iteration: number): Promise<void> => {
        if (!haveDistribution()) return;
        stats.gcDue++;
        const t = Date.now();
        const result = await garbageCollectDryRun(storage.distribution, work);
        timing.gc += Date.now() - t;
        if (result.code !== 0) fail(iteration, [`garbage-collect --dry-run over ${storage.label} exited ${result.code}:`, result.output.slice(-3000)]);
        stats.gcRuns++;
      };
      /** Restarts wharf after kill `iteration` and checks what it kept; a survival is counted only when all of it holds. */
      const restart = async (iteration: number): Promise<WharfProcess> => {
        // The same storage every time: the directory, or the bucket and its rootdirectory.
        let t = Date.now();
        const wharf = (current = await spawnWharf({ root: storage.root, storageEnv: storage.env, port, readyTimeoutMs: 60_000 }));
        base = wharf.base;
        timing.restart += Date.now() - t;
        t = Date.now();
        const check = await checkStore(storage.driver, verified);
        timing.storeCheck += Date.now() - t;
        stats.hashed += check.hashed;
        if (check.problems.length > 0) fail(iteration, check.problems);
        await checkAcknowledged(iteration);
        await checkSessions(iteration);
        timing.checks += Date.now() - t;
        if (problems.length > 0) fail(iteration, problems);
        // The kill was ours (the child ran until it), it restarted, and it serves what it acknowledged.
        if (iteration > 0 && stats.kills === iteration) stats.survived++;
        return wharf;
      };
      for (let iteration = 1; iteration <= ITERATIONS; iteration++) {
        const wharf = await restart(iteration - 1);
        if (iteration > 1 && (iteration - 1) % GC_EVERY === 0) await gc(iteration - 1);
        const t = Date.now();
        await workloadUntilKilled(wharf, iteration);
        timing.workload += Date.now() - t;
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
      const last = await checkStore(storage.driver, verified);
      if (last.problems.length > 0) fail(ITERATIONS, last.problems);
      await gc(ITERATIONS);
      console.log(
        `[crash] ${storage.label}\n[crash] ${kind}, seed ${SEED}: ${stats.survived}/${stats.kills} kills survived in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
          `${stats.blobs} monolithic blobs, ${stats.chunked} chunked uploads, ${stats.manifests} manifests acknowledged; ` +
          `upload sessions found intact after a restart ${stats.sessionsKept} times (holding the bytes acknowledged ${stats.sessionsAtAcked}, ` +
          `all of the cut PATCH ${stats.sessionsAtSent}, part of it ${stats.sessionsPartial}), ${stats.resumed} such uploads completed with their digest ` +
          `(${interrupted} after the last kill), ${stats.completedAtKill} completed by a PUT the kill interrupted; ` +
          `kill errors: ${[...killErrors].map(([k, v]) => `${k} ${v}`).join(', ')}; ` +
          `${last.blobs} blobs stored (${stats.hashed} hashed), ${last.links} links, ${last.temps} leftover temp files; ` +
          `${stats.gcRuns} garbage-collect dry runs; ${stats.requests} requests; ` +
          `time in s: wharf starting ${(timing.restart / 1000).toFixed(1)}, checks ${(timing.checks / 1000).toFixed(1)} ` +
          `(of which the store walk ${(timing.storeCheck / 1000).toFixed(1)}), ` +
          `workload ${(timing.workload / 1000).toFixed(1)}, garbage-collect ${(timing.gc / 1000).toFixed(1)}`,
      );
      // Every kill was ours, and wharf came back from each one with everything it acknowledged.
      expect(stats.kills, 'kills of a running wharf').toBe(ITERATIONS);
      expect(stats.survived, 'restarts that served everything acknowledged').toBe(ITERATIONS);
      // The workload really ran between the kills (a wharf that answers nothing must not pass):
      // ~3-5 acknowledged pushes per kill on 2 busy cores.
      expect(stats.blobs + stats.chunked + stats.manifests, 'acknowledged pushes').toBeGreaterThanOrEqual(ITERATIONS);
      // Interrupted sessions really were carried across restarts and completed (measured at 100
      // kills on the filesystem: found intact 137-150 times, 43-67 completed).
      expect(stats.sessionsKept, 'upload sessions kept across a restart').toBeGreaterThanOrEqual(Math.floor(ITERATIONS / 5));
      expect(stats.resumed, 'kept sessions completed with their digest').toBeGreaterThanOrEqual(Math.floor(ITERATIONS / 10));
      expect(stats.resumedVerified, 'resumed uploads fetched back and hashed').toBe(stats.resumed + stats.completedAtKill);
      // Where appends are atomic, no session ever held part of a request (also checked per session).
      if (storage.atomicAppends) expect(stats.sessionsPartial, 'sessions holding part of a PATCH').toBe(0);
      if (haveDistribution()) expect(stats.gcRuns, 'garbage-collect dry runs passed').toBe(stats.gcDue);
      await wharf.stop();
    });
  });
}
