// Concurrency: the same blob pushed by 16 clients at once (monolithic, chunked, mixed,
// into one repository and into many), one tag written concurrently with 16 different
// manifests (and deleted meanwhile), chunks of one upload sent out of order at once,
// and deletes while pulls stream. Every outcome must be consistent: a blob is whole,
// a tag points at one of the manifests written to it and that manifest is complete,
// a pull delivers exactly the right bytes or fails cleanly.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBody, RegistryClient, sha256 } from '../support/client.js';
import { firstCode as firstErrorCode, spawnWharf, type WharfProcess } from '../support/fault-process.js';
import { checkStore, garbageCollectDryRun, haveDistribution, Rng, V2 } from '../support/fault-store.js';

const CLIENTS = 16;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const rng = new Rng(2024);

let work = '';
let root = '';
let wharf: WharfProcess;
let client: RegistryClient;

async function chunkedPush(repo: string, data: Buffer, chunk: number): Promise<Response> {
  let location = await client.startUpload(repo);
  for (let start = 0; start < data.length; start += chunk) {
    const part = data.subarray(start, Math.min(data.length, start + chunk));
    const res = await client.fetch(location, { method: 'PATCH', body: asBody(part), headers: { 'Content-Range': `${start}-${start + part.length - 1}` } });
    if (res.status !== 202) return res;
    location = res.headers.get('Location') ?? location;
  }
  return client.fetch(`${location}${location.includes('?') ? '&' : '?'}digest=${sha256(data)}`, { method: 'PUT' });
}

function monolithicPush(repo: string, data: Buffer): Promise<Response> {
  return client.fetch(`/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: asBody(data) });
}

async function pullDigest(repo: string, digest: string): Promise<string> {
  const res = await client.fetch(`/v2/${repo}/blobs/${digest}`);
  expect(res.status).toBe(200);
  return sha256(Buffer.from(await res.arrayBuffer()));
}

async function uploadsLeft(repo: string): Promise<string[]> {
  return readdir(join(root, V2, 'repositories', repo, '_uploads')).catch(() => []);
}

async function expectConsistentStore(): Promise<void> {
  const check = await checkStore(root);
  expect(check.problems).toEqual([]);
  expect(check.temps, 'temp files left behind').toBe(0);
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'wharf-conc-'));
  root = join(work, 'data');
  wharf = await spawnWharf({ root });
  client = new RegistryClient(wharf.base);
}, 60_000);

afterAll(async () => {
  await wharf?.kill();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('concurrency', () => {
  it(`stores one blob pushed by ${CLIENTS} clients at once, monolithic, once and whole`, async () => {
    const data = rng.bytes(4 << 20);
    const results = await Promise.all(Array.from({ length: CLIENTS }, () => monolithicPush('conc/mono', data)));
    expect(results.map((r) => r.status)).toEqual(Array(CLIENTS).fill(201));
    expect(await pullDigest('conc/mono', sha256(data))).toBe(sha256(data));
    expect(await uploadsLeft('conc/mono')).toEqual([]);
    await expectConsistentStore();
  });

  it(`stores one blob pushed by ${CLIENTS} clients at once in chunks, and mixed with monolithic pushes into many repositories`, async () => {
    const data = rng.bytes(3 << 20);
    const chunked = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => chunkedPush('conc/chunked', data, 256 * 1024 + i * 4096)));
    expect(chunked.map((r) => r.status)).toEqual(Array(CLIENTS).fill(201));
    expect(await pullDigest('conc/chunked', sha256(data))).toBe(sha256(data));
    expect(await uploadsLeft('conc/chunked')).toEqual([]);
    const other = rng.bytes(2 << 20);
    const mixed = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) => (i % 2 ? monolithicPush(`conc/many${i % 4}`, other) : chunkedPush(`conc/many${i % 4}`, other, 300 * 1024))),
    );
    expect(mixed.map((r) => r.status)).toEqual(Array(CLIENTS).fill(201));
    for (let i = 0; i < 4; i++) expect(await pullDigest(`conc/many${i}`, sha256(other))).toBe(sha256(other));
    await expectConsistentStore();
  });

  it('assembles chunks of one upload sent at once and out of order: 416 with the Range, then the right blob', async () => {
    const data = rng.bytes(CLIENTS * 64 * 1024);
    const location = await client.startUpload('conc/order');
    const chunk = data.length / CLIENTS;
    const sendChunk = async (i: number): Promise<number> => {
      for (let attempt = 0; ; attempt++) {
        const start = i * chunk;
        const res = await client.fetch(location, {
          method: 'PATCH',
          body: asBody(data.subarray(start, start + chunk)),
          headers: { 'Content-Range': `${start}-${start + chunk - 1}` },
        });
        await res.arrayBuffer();
        if (res.status === 202) return attempt;
        expect(res.status).toBe(416);
        expect(res.headers.get('Range')).toMatch(/^0-\d+$/);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    // Sent in a shuffled order, so that later chunks arrive first.
    const order = Array.from({ length: CLIENTS }, (_, i) => i).sort(() => rng.next() - 0.5);
    if (order[0] === 0) order.reverse();
    const retries = await Promise.all(order.map((i) => sendChunk(i)));
    expect(retries.some((n) => n > 0)).toBe(true); // they really raced
    const done = await client.fetch(`${location}?digest=${sha256(data)}`, { method: 'PUT' });
    expect(done.status, await done.text()).toBe(201);
    expect(await pullDigest('conc/order', sha256(data))).toBe(sha256(data));
  });

  it(`points a tag written by ${CLIENTS} clients at once at one complete manifest of theirs`, { timeout: 60_000 }, async () => {
    const images = [];
    for (let i = 0; i < CLIENTS; i++) images.push(await client.pushImage('conc/tag', `own-${i}`, [rng.bytes(10_000 + i)]));
    const digests = new Set(images.map((m) => m.digest));
    for (let round = 0; round < 10; round++) {
      const results = await Promise.all(images.map((m) => client.pushManifest('conc/tag', 'race', m.body.toString(), OCI_MANIFEST)));
      expect(results.map((r) => r.status)).toEqual(Array(CLIENTS).fill(201));
      const res = await client.fetch('/v2/conc/tag/manifests/race', { headers: { Accept: OCI_MANIFEST } });
      expect(res.status).toBe(200);
      const body = Buffer.from(await res.arrayBuffer());
      expect(digests.has(sha256(body))).toBe(true);
      expect(res.headers.get('Docker-Content-Digest')).toBe(sha256(body));
      const manifest = JSON.parse(body.toString()) as { config: { digest: string }; layers: { digest: string }[] };
      for (const blob of [manifest.config, ...manifest.layers]) {
        expect((await client.fetch(`/v2/conc/tag/blobs/${blob.digest}`, { method: 'HEAD' })).status).toBe(200);
      }
    }
    await expectConsistentStore();
  });

  it('keeps tags consistent when the tag, or its manifest by digest, is deleted while clients push it', { timeout: 60_000 }, async () => {
    const images = [];
    for (let i = 0; i < 8; i++) images.push(await client.pushImage('conc/deltag', `own-${i}`, [rng.bytes(5000 + i)]));
    // Statuses per kind of request: each kind has its own allowed answers.
    const statuses = new Map<string, number>();
    const note = async (kind: string, res: Response): Promise<void> => {
      const body = await res.text();
      const code = res.status >= 400 ? ` ${firstErrorCode(body)}` : '';
      const key = `${kind}: ${res.status}${code}${res.status >= 500 ? ` ${body.slice(0, 200)}` : ''}`;
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
    };
    const problems: string[] = [];
    const verified = new Set<string>();
    for (let round = 0; round < 40 && problems.length === 0; round++) {
      const writes = images.map(async (m) => note('tag PUT', await client.pushManifest('conc/deltag', 'flip', m.body.toString(), OCI_MANIFEST)));
      const deletes = [
        ...Array.from({ length: 3 }, async () => note('tag DELETE', await client.fetch('/v2/conc/deltag/manifests/flip', { method: 'DELETE' }))),
        ...images.slice(0, 2).map(async (m) => note('digest DELETE', await client.fetch(`/v2/conc/deltag/manifests/${m.digest}`, { method: 'DELETE' }))),
      ];
      await Promise.all([...writes, ...deletes]);
      // Settled: a listed tag resolves to one of the manifests pushed, whole; an unlisted one is gone.
      const listed = ((await (await client.fetch('/v2/conc/deltag/tags/list')).json()) as { tags: string[] }).tags.includes('flip');
      const res = await client.fetch('/v2/conc/deltag/manifests/flip', { headers: { Accept: OCI_MANIFEST } });
      const body = Buffer.from(await res.arrayBuffer());
      if (listed !== (res.status === 200)) problems.push(`round ${round}: tag ${listed ? 'listed' : 'not listed'} but GET answers ${res.status}`);
      if (res.status === 200 && !images.some((m) => m.digest === sha256(body))) problems.push(`round ${round}: tag serves foreign content`);
      const check = await checkStore(root, verified);
      problems.push(...check.problems.map((p) => `round ${round}: ${p}`));
      // The deleted manifests come back for the next round.
      for (const m of images.slice(0, 2)) await note('re-push', await client.pushManifest('conc/deltag', 'own-back', m.body.toString(), OCI_MANIFEST));
    }
    console.log(`[concurrency] tag writes and deletes: ${[...statuses].map(([k, v]) => `${k} x${v}`).join(', ')}`);
    // Writers always get 201 (a manifest PUT answered 404 is a lost write); deleters 202, or
    // 404 MANIFEST_UNKNOWN when another deleter was first; never a server error.
    const allowed: Record<string, string[]> = {
      'tag PUT': ['201'],
      're-push': ['201'],
      'tag DELETE': ['202', '404 MANIFEST_UNKNOWN'],
      'digest DELETE': ['202', '404 MANIFEST_UNKNOWN'],
    };
    const outcomes = [...statuses.keys()];
    expect(outcomes.filter((o) => !allowed[o.slice(0, o.indexOf(':'))]!.includes(o.slice(o.indexOf(':') + 2))), 'answers outside the kind\'s allowed set').toEqual([]);
    // Each kind was exercised and the race was real: writes succeeded and deletes hit.
    for (const kind of Object.keys(allowed)) expect(outcomes.some((o) => o.startsWith(`${kind}: 2`)), `${kind} succeeded at least once`).toBe(true);
    expect(problems).toEqual([]);
    await expectConsistentStore();
  });

  it('lets a pull complete with the right bytes, or fail cleanly, when the blob and manifest are deleted meanwhile', { timeout: 60_000 }, async () => {
    const big = rng.bytes(24 << 20);
    const image = await client.pushImage('conc/del', 'v1', [big]);
    const layer = image.manifest.layers[0]!.digest;
    const outcomes = new Map<string, number>();
    const note = (k: string): void => void outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
    for (let round = 0; round < 4; round++) {
      const pulls = Array.from({ length: 8 }, async () => {
        try {
          const res = await client.fetch(`/v2/conc/del/blobs/${layer}`);
          if (res.status !== 200) {
            expect(res.status).toBe(404);
            expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('BLOB_UNKNOWN');
            return note('404 before the body');
          }
          // Read slowly so that the deletes land mid-stream.
          const reader = res.body!.getReader();
          const hash = (await import('node:crypto')).createHash('sha256');
          let size = 0;
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            hash.update(value);
            size += value.length;
            if (size < 8 << 20) await new Promise((resolve) => setTimeout(resolve, 1));
          }
          expect(size).toBe(big.length);
          expect(`sha256:${hash.digest('hex')}`).toBe(layer);
          note('complete and right');
        } catch (err) {
          if ((err as Error).name === 'AssertionError') throw err;
          note(`failed: ${(err as Error).message}`);
        }
      });
      const manifestGets = Array.from({ length: 8 }, async () => {
        const res = await client.fetch(`/v2/conc/del/manifests/${image.digest}`, { headers: { Accept: OCI_MANIFEST } });
        const body = Buffer.from(await res.arrayBuffer());
        if (res.status === 200) expect(sha256(body)).toBe(image.digest);
        else expect(res.status).toBe(404);
      });
      await new Promise((resolve) => setTimeout(resolve, 20));
      const deleted = await Promise.all([
        client.fetch(`/v2/conc/del/blobs/${layer}`, { method: 'DELETE' }),
        client.fetch(`/v2/conc/del/manifests/${image.digest}`, { method: 'DELETE' }),
      ]);
      expect(deleted.map((r) => r.status)).toEqual([202, 202]);
      await Promise.all([...pulls, ...manifestGets]);
      expect((await client.fetch(`/v2/conc/del/blobs/${layer}`, { method: 'HEAD' })).status).toBe(404);
      expect((await client.fetch('/v2/conc/del/manifests/v1', { method: 'HEAD' })).status).toBe(404);
      await client.pushImage('conc/del', 'v1', [big]); // back for the next round
    }
    console.log(`[concurrency] pulls during deletes: ${[...outcomes].map(([k, v]) => `${k}: ${v}`).join(', ')}`);
    expect(outcomes.get('complete and right') ?? 0).toBeGreaterThan(0);
    await expectConsistentStore();
    if (haveDistribution()) {
      const gc = await garbageCollectDryRun(root, work);
      expect(gc.code, gc.output.slice(-2000)).toBe(0);
    }
    expect(wharf.alive()).toBe(true);
  });
});
