// Full disk: the storage root is a 32 MiB tmpfs mounted by this test. A filler file
// leaves only a little room, pushes run out of it part-way, and wharf must answer with
// an OCI error (503 UNAVAILABLE, Retry-After), neither hang nor crash, leave nothing
// half-written visible as a blob, keep serving what it stored, and work again once
// space is freed. Needs root for mount(8): skipped loudly outside CI, never in CI.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../support/client.js';
import { httpRequest, ociErrorProblem, spawnWharf, type SimpleResponse, type WharfProcess } from '../support/fault-process.js';
import { checkStore, freeBytes, garbageCollectDryRun, haveDistribution, isRoot, mountTmpfs, Rng, unmount, V2 } from '../support/fault-store.js';

const inCI = process.env.CI === 'true';
const MiB = 1024 * 1024;
const REPO = 'disk/app';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let parent = '';
let mountPoint = '';
let mounted = false;
let skipReason = '';
let wharf: WharfProcess;
let root = '';
let filler = '';
const rng = new Rng(77);
const stored: { digest: string; data: Buffer }[] = [];
let manifest = { digest: '', body: Buffer.alloc(0) };
const big = rng.bytes(8 * MiB);
const bigDigest = sha256(big);
let chunkedLocation = '';
const chunked = rng.bytes(6 * MiB);

/** Grows or shrinks the filler file so that about `bytes` stay free on the tmpfs. */
async function leaveFree(bytes: number): Promise<void> {
  const free = await freeBytes(mountPoint);
  const handle = await open(filler, 'a');
  const size = (await handle.stat()).size;
  try {
    if (free > bytes) {
      const zeros = Buffer.alloc(MiB);
      for (let todo = free - bytes; todo > 0; todo -= zeros.length) await handle.write(zeros.subarray(0, Math.min(todo, zeros.length)));
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await handle.close();
  }
  if (free < bytes) await truncate(filler, Math.max(0, size - (bytes - free)));
}

async function push(path: string, method: string, body?: Buffer, headers: Record<string, string> = {}): Promise<SimpleResponse> {
  return httpRequest(wharf.base, method, path, { body, headers, timeoutMs: 20_000 });
}

function expectUnavailable(res: SimpleResponse, what: string): void {
  const detail = `${what}: ${res.status} ${res.body.slice(0, 300)}`;
  expect(ociErrorProblem(res.body), detail).toBeUndefined();
  expect(res.status, detail).toBe(503);
  expect(JSON.parse(res.body).errors[0].code, detail).toBe('UNAVAILABLE');
  expect(res.headers['retry-after'], detail).toBeDefined();
  expect(wharf.alive(), 'wharf is still running').toBe(true);
}

beforeAll(async () => {
  if (!isRoot()) {
    skipReason = 'not root: cannot mount a tmpfs';
  } else {
    parent = await mkdtemp(join(tmpdir(), 'wharf-disk-'));
    mountPoint = join(parent, 'fs');
    await mkdir(mountPoint);
    try {
      mountTmpfs(mountPoint, '32m');
      mounted = true;
    } catch (err) {
      skipReason = `mount -t tmpfs failed: ${(err as Error).message}`;
    }
  }
  if (!mounted) {
    if (inCI) throw new Error(`full-disk tests cannot run in CI: ${skipReason}`);
    console.warn(`\n!!! SKIPPING the full-disk fault tests (${skipReason}); run as root to include them\n`);
    return;
  }
  root = join(mountPoint, 'root');
  filler = join(mountPoint, 'filler');
  wharf = await spawnWharf({ root });
  // Content stored before the disk fills: two layers, a config and a tagged manifest.
  const layers = [];
  for (const size of [300 * 1024, 700 * 1024, 2048]) {
    const data = rng.bytes(size);
    const res = await push(`/v2/${REPO}/blobs/uploads/?digest=${sha256(data)}`, 'POST', data);
    expect(res.status, res.body).toBe(201);
    stored.push({ digest: sha256(data), data });
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(data), size });
  }
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { ...layers[2]!, mediaType: 'application/vnd.oci.image.config.v1+json' }, layers: layers.slice(0, 2) }));
  const res = await push(`/v2/${REPO}/manifests/v1`, 'PUT', body, { 'Content-Type': OCI_MANIFEST });
  expect(res.status, res.body).toBe(201);
  manifest = { digest: sha256(body), body };
}, 60_000);

afterAll(async () => {
  await wharf?.kill();
  if (mounted) await unmount(mountPoint);
  if (parent) await rm(parent, { recursive: true, force: true });
});

describe('full disk', () => {
  it('answers a monolithic push that fills the disk with 503 UNAVAILABLE, without hanging or crashing', async (ctx) => {
    if (!mounted) return ctx.skip();
    await leaveFree(3 * MiB);
    const res = await push(`/v2/${REPO}/blobs/uploads/?digest=${bigDigest}`, 'POST', big);
    expect(res.ms).toBeLessThan(15_000);
    expectUnavailable(res, 'monolithic push of 8 MiB into 3 MiB');
    expect(existsSync(join(root, V2, 'blobs/sha256', bigDigest.slice(7, 9), bigDigest.slice(7), 'data'))).toBe(false);
    expect((await push(`/v2/${REPO}/blobs/${bigDigest}`, 'HEAD')).status).toBe(404);
  });

  it('removes the partial data of a failed monolithic push (nobody can resume it, it would hold the space)', async (ctx) => {
    if (!mounted) return ctx.skip();
    const uploads = join(root, V2, 'repositories', REPO, '_uploads');
    const left = existsSync(uploads) ? await readdir(uploads) : [];
    expect(left, 'upload sessions left behind by monolithic pushes that failed').toEqual([]);
  });

  it('answers a chunk that fills the disk with 503 and keeps the upload resumable', async (ctx) => {
    if (!mounted) return ctx.skip();
    await leaveFree(2 * MiB);
    const start = await push(`/v2/${REPO}/blobs/uploads/`, 'POST');
    expect(start.status, start.body).toBe(202);
    chunkedLocation = String(start.headers.location);
    const patch = await push(chunkedLocation, 'PATCH', chunked, { 'Content-Range': `0-${chunked.length - 1}` });
    expectUnavailable(patch, 'PATCH of 6 MiB into 2 MiB');
    const status = await push(chunkedLocation, 'GET');
    expect(status.status, status.body).toBe(204);
    expect(String(status.headers.range)).toMatch(/^0-\d+$/);
  });

  it('answers manifest and upload starts on a completely full disk with 503', async (ctx) => {
    if (!mounted) return ctx.skip();
    await leaveFree(0);
    const other = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: JSON.parse(manifest.body.toString()).config, layers: [], annotations: { full: 'yes' } }));
    expectUnavailable(await push(`/v2/${REPO}/manifests/v2`, 'PUT', other, { 'Content-Type': OCI_MANIFEST }), 'manifest PUT on a full disk');
    const small = rng.bytes(64 * 1024);
    expectUnavailable(await push(`/v2/${REPO}/blobs/uploads/?digest=${sha256(small)}`, 'POST', small), 'monolithic push on a full disk');
    expect((await push(`/v2/${REPO}/manifests/v2`, 'GET')).status).toBe(404);
  });

  it('keeps serving everything stored before, whole, while the disk is full', async (ctx) => {
    if (!mounted) return ctx.skip();
    for (const { digest, data } of stored) {
      const res = await fetch(`${wharf.base}/v2/${REPO}/blobs/${digest}`);
      expect(res.status).toBe(200);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
      expect(Number(res.headers.get('Content-Length'))).toBe(data.length);
    }
    const res = await fetch(`${wharf.base}/v2/${REPO}/manifests/v1`, { headers: { Accept: OCI_MANIFEST } });
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(manifest.digest);
    const check = await checkStore(root);
    expect(check.problems).toEqual([]);
    expect(check.temps, 'temp files left by failed writes').toBe(0);
  });

  it('works again once space is freed: pushes succeed, the interrupted upload finishes', async (ctx) => {
    if (!mounted) return ctx.skip();
    await rm(filler);
    const res = await push(`/v2/${REPO}/blobs/uploads/?digest=${bigDigest}`, 'POST', big);
    expect(res.status, res.body).toBe(201);
    // Resume the chunked upload from the Range the server reports.
    const status = await push(chunkedLocation, 'GET');
    expect(status.status).toBe(204);
    const end = Number(/^0-(\d+)$/.exec(String(status.headers.range))![1]);
    const from = end === 0 ? 0 : end + 1;
    const rest = chunked.subarray(from);
    let done = await push(`${chunkedLocation}?digest=${sha256(chunked)}`, 'PUT', rest, { 'Content-Range': `${from}-${chunked.length - 1}` });
    if (done.status === 416 && from === 0) {
      done = await push(`${chunkedLocation}?digest=${sha256(chunked)}`, 'PUT', chunked.subarray(1), { 'Content-Range': `1-${chunked.length - 1}` });
    }
    expect(done.status, done.body).toBe(201);
    const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: bigDigest, size: big.length };
    const layer2 = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(chunked), size: chunked.length };
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: JSON.parse(manifest.body.toString()).config, layers: [layer, layer2] }));
    const put = await push(`/v2/${REPO}/manifests/v2`, 'PUT', body, { 'Content-Type': OCI_MANIFEST });
    expect(put.status, put.body).toBe(201);
    const pulled = await fetch(`${wharf.base}/v2/${REPO}/blobs/${bigDigest}`);
    expect(sha256(Buffer.from(await pulled.arrayBuffer()))).toBe(bigDigest);
    expect((await checkStore(root)).problems).toEqual([]);
    if (haveDistribution()) {
      const gc = await garbageCollectDryRun(root, parent);
      expect(gc.code, gc.output.slice(-2000)).toBe(0);
    }
  });
});
