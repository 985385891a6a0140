// One storage root, shared while everything runs: wharf processes, CNCF Distribution 2.8
// (Debian's docker-registry) serving, and Distribution's garbage collector, all on the same
// directory at the same time, as an operator does when wharf replaces Distribution (or runs
// beside it) and keeps the usual `registry garbage-collect` cron job.
//
// - blobs deleted under a running wharf (Distribution's garbage-collect, another process):
//   a later push of the same bytes must store them again, a manifest must not be accepted
//   over them, a mount must not claim them;
// - a Distribution root holding Docker schema 1 manifests is served (and refused for new ones)
//   the way Distribution does;
// - rounds with both servers up: wharf pushes, Distribution collects garbage (plain and
//   --delete-untagged, with OCI `subject` referrers), wharf pushes again, both read, nothing
//   is lost;
// - a chunked upload started on one server is finished on the other (shared http.secret);
// - wharf's upload purging removes sessions Distribution started.
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DISTRIBUTION_APT_PACKAGE,
  DISTRIBUTION_BINARY,
  distributionGarbageCollect,
  startDistribution,
  type DistributionProcess,
} from '../support/distribution.js';
import {
  ALL_MANIFEST_TYPES,
  filesEntries,
  listTags,
  MT,
  ociArtifact,
  ociImage,
  pushManifestHttp,
  pushOciImageHttp,
  SCHEMA1,
  schema1Manifest,
  sha256,
  type OciArtifact,
  type OciImage,
  type Schema1Manifest,
} from '../support/images.js';
import { Cleanup, LOG_DIR, removeTree, sleep, tempDir } from '../support/processes.js';
import { all, requireTool } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(requireTool(DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE));

// ---------------------------------------------------------------------------------------
// Plain HTTP, the way a client speaks it.

interface Answer {
  status: number;
  /** errors[0].code of an error body. */
  code: string | undefined;
  headers: Headers;
  body: Buffer;
}

async function call(url: string, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(url, init);
  const body = Buffer.from(await res.arrayBuffer());
  let code: string | undefined;
  if (res.status >= 400 && body.length > 0) {
    try {
      code = (JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
    } catch {
      /* not JSON */
    }
  }
  return { status: res.status, code, headers: res.headers, body };
}

const describeAnswer = (what: string, a: Answer): string => `${what}: ${a.status} ${a.body.toString('utf8').slice(0, 300)}`;
const bytes = (data: Uint8Array): BodyInit => data as Uint8Array<ArrayBuffer>;

/** Monolithic upload in one request: `POST /v2/<repo>/blobs/uploads/?digest=`. */
function postBlob(baseUrl: string, repo: string, data: Buffer): Promise<Answer> {
  return call(`${baseUrl}/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, {
    method: 'POST',
    body: bytes(data),
    headers: { 'Content-Type': 'application/octet-stream' },
  });
}

async function expectPushed(baseUrl: string, repo: string, data: Buffer, who: string): Promise<void> {
  const a = await postBlob(baseUrl, repo, data);
  expect(a.status, describeAnswer(`${who}: POST ?digest=${sha256(data)} to ${repo}`, a)).toBe(201);
  expect(a.headers.get('Docker-Content-Digest')).toBe(sha256(data));
}

/** GET of a blob answers 200 with exactly `data`. */
async function expectBlob(baseUrl: string, repo: string, data: Buffer, who: string): Promise<void> {
  const a = await call(`${baseUrl}/v2/${repo}/blobs/${sha256(data)}`);
  expect(a.status, describeAnswer(`${who}: GET ${repo} blob ${sha256(data)}`, a)).toBe(200);
  expect(a.body.equals(data), `${who}: ${repo} blob ${sha256(data)} bytes`).toBe(true);
}

/** GET of a manifest by `ref` answers 200 with exactly `manifest`, its digest and media type. */
async function expectManifest(baseUrl: string, repo: string, ref: string, manifest: Buffer, mediaType: string, who: string): Promise<void> {
  const a = await call(`${baseUrl}/v2/${repo}/manifests/${ref}`, { headers: { Accept: ALL_MANIFEST_TYPES } });
  expect(a.status, describeAnswer(`${who}: GET ${repo}:${ref}`, a)).toBe(200);
  expect(a.headers.get('Docker-Content-Digest'), `${who}: ${repo}:${ref} digest`).toBe(sha256(manifest));
  expect(a.headers.get('Content-Type'), `${who}: ${repo}:${ref} type`).toBe(mediaType);
  expect(a.body.equals(manifest), `${who}: ${repo}:${ref} bytes`).toBe(true);
}

/** Everything a registry must serve of an image: by tag and digest, and every blob. */
async function expectImage(baseUrl: string, repo: string, tag: string, im: OciImage, who: string): Promise<void> {
  for (const ref of [tag, im.manifestDigest]) await expectManifest(baseUrl, repo, ref, im.manifest, MT.ociManifest, who);
  for (const data of [im.config, ...im.layers.map((l) => l.blob)]) await expectBlob(baseUrl, repo, data, who);
}

async function expectArtifact(baseUrl: string, repo: string, ref: string, art: OciArtifact, who: string): Promise<void> {
  await expectManifest(baseUrl, repo, ref, art.manifest, MT.ociManifest, who);
  for (const data of art.blobs.values()) await expectBlob(baseUrl, repo, data, who);
}

async function pushArtifact(baseUrl: string, repo: string, ref: string, art: OciArtifact): Promise<void> {
  for (const data of art.blobs.values()) await expectPushed(baseUrl, repo, data, 'artifact blob');
  await pushManifestHttp(baseUrl, repo, ref, art.manifest, MT.ociManifest);
}

async function referrers(baseUrl: string, repo: string, subject: string): Promise<string[]> {
  const a = await call(`${baseUrl}/v2/${repo}/referrers/${subject}`);
  if (a.status !== 200) throw new Error(describeAnswer(`GET referrers of ${subject}`, a));
  const index = JSON.parse(a.body.toString('utf8')) as { manifests?: Array<{ digest: string }> };
  return (index.manifests ?? []).map((m) => m.digest).sort();
}

/** The path and query of a Location header, to send to either server. */
function pathOf(location: string | null): string {
  if (!location) throw new Error('no Location header');
  const u = new URL(location, 'http://registry.invalid');
  return `${u.pathname}${u.search}`;
}

const withDigest = (url: string, digest: string): string => `${url}${url.includes('?') ? '&' : '?'}digest=${digest}`;

function patchChunk(url: string, chunk: Buffer, start: number): Promise<Answer> {
  return call(url, {
    method: 'PATCH',
    body: bytes(chunk),
    headers: {
      'Content-Type': 'application/octet-stream',
      'Content-Range': `${start}-${start + chunk.length - 1}`,
      'Content-Length': String(chunk.length),
    },
  });
}

// ---------------------------------------------------------------------------------------
// The storage root, in Distribution's layout.

const V2 = ['docker', 'registry', 'v2'];
const hexOf = (digest: string): string => digest.slice('sha256:'.length);
const blobDirOf = (root: string, digest: string): string => join(root, ...V2, 'blobs', 'sha256', hexOf(digest).slice(0, 2), hexOf(digest));
const repoDirOf = (root: string, repo: string): string => join(root, ...V2, 'repositories', ...repo.split('/'));

async function putFile(path: string, data: Buffer | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, data);
}

/** Writes `data` as a blob and links it into `repo`, as Distribution does when a layer is pushed. */
async function writeLayer(root: string, repo: string, data: Buffer): Promise<void> {
  const d = sha256(data);
  await putFile(join(blobDirOf(root, d), 'data'), data);
  await putFile(join(repoDirOf(root, repo), '_layers', 'sha256', hexOf(d), 'link'), d);
}

/** Writes manifest bytes, their revision link and a tag, as Distribution does on a manifest PUT. */
async function writeTaggedManifest(root: string, repo: string, tag: string, stored: Buffer): Promise<string> {
  const d = sha256(stored);
  const dir = repoDirOf(root, repo);
  await putFile(join(blobDirOf(root, d), 'data'), stored);
  await putFile(join(dir, '_manifests', 'revisions', 'sha256', hexOf(d), 'link'), d);
  await putFile(join(dir, '_manifests', 'tags', tag, 'index', 'sha256', hexOf(d), 'link'), d);
  await putFile(join(dir, '_manifests', 'tags', tag, 'current', 'link'), d);
  return d;
}

/** Distribution's garbage collector over `root` (for real); its output goes to the e2e log dir. */
async function collectGarbage(root: string, opts: { deleteUntagged?: boolean } = {}): Promise<string> {
  const gc = await distributionGarbageCollect(root, { dryRun: false, deleteUntagged: opts.deleteUntagged ?? false });
  const out = `${gc.stdout}\n${gc.stderr}`;
  await mkdir(LOG_DIR, { recursive: true });
  await writeFile(join(LOG_DIR, `distribution-gc-${Date.now()}-${process.pid}.log`), `${gc.command}\n${out}`);
  expect(gc.code, out.slice(-4000)).toBe(0);
  return out;
}

const eligibleBlobs = (gcOutput: string): string[] =>
  [...gcOutput.matchAll(/blob eligible for deletion: (sha256:[0-9a-f]{64})/g)].map((m) => m[1]!).sort();

const randomImage = (name: string, sizes: number[]): OciImage =>
  ociImage(sizes.map((size, i) => filesEntries([{ path: `data/${name}-${i}.bin`, data: randomBytes(size) }])));

/** An OCI image manifest whose only layer is `layer` (any bytes) and whose config is `config`. */
function manifestOver(config: Buffer, layer: Buffer): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: sha256(config), size: config.length },
      layers: [{ mediaType: MT.ociLayerGzip, digest: sha256(layer), size: layer.length }],
    }),
  );
}

/** Polls `check` every 100 ms for up to `ms`; returns its last value. */
async function within<T>(ms: number, check: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (done(v) || Date.now() > deadline) return v;
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------

describe.skipIf(!available)('wharf and Distribution on one storage root, at the same time', () => {
  const cleanup = new Cleanup();
  afterAll(() => cleanup.run(), 120_000);

  describe('blobs deleted under a running wharf', () => {
    let root: string;
    let p1: WharfProcess;
    let p2: WharfProcess;
    // One blob per check and per case, so that each check fails on its own: pushed to `gc/a`
    // only (wharf remembers it from the upload), or pushed and then served (surely cached).
    const CASES = ['a blob wharf only stored', 'a blob wharf stored and served'] as const;
    const CHECKS = ['push', 'manifest', 'mount'] as const;
    const blobs = new Map<string, Buffer>(CASES.flatMap((c) => CHECKS.map((k): [string, Buffer] => [`${c}/${k}`, randomBytes(100 * 1024 + Math.floor(Math.random() * 100_000))])));
    const blobFor = (c: (typeof CASES)[number], k: (typeof CHECKS)[number]): Buffer => blobs.get(`${c}/${k}`)!;
    let gcOutput = '';

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-gcroot-');
      cleanup.add('gc root', () => removeTree(root));
      p1 = await startWharf({ root });
      cleanup.add('wharf 1', () => p1.stop({ keepRoot: true }));
      p2 = await startWharf({ root });
      cleanup.add('wharf 2', () => p2.stop({ keepRoot: true }));

      // Blobs without a manifest: garbage to Distribution's collector.
      for (const c of CASES) {
        for (const k of CHECKS) {
          await expectPushed(p1.url, 'gc/a', blobFor(c, k), 'wharf');
          if (c === 'a blob wharf stored and served') await expectBlob(p1.url, 'gc/a', blobFor(c, k), 'wharf before gc');
        }
      }
      // Distribution's garbage-collect is meant to run offline; here wharf keeps running.
      gcOutput = await collectGarbage(root);
    }, 120_000);

    it('Distribution garbage-collect deleted the unreferenced blobs (the premise)', () => {
      expect(eligibleBlobs(gcOutput)).toEqual([...blobs.values()].map((b) => sha256(b)).sort());
      for (const data of blobs.values()) expect(existsSync(blobDirOf(root, sha256(data))), `${sha256(data)} on disk`).toBe(false);
    });

    for (const c of CASES) {
      it(`after garbage-collect, ${c} and pushed again to another repository is stored (201, then GET 200 with the bytes)`, async () => {
        const data = blobFor(c, 'push');
        await expectPushed(p1.url, 'gc/b', data, 'wharf after gc');
        await expectBlob(p1.url, 'gc/b', data, 'wharf after the new push');
        await expectBlob(p2.url, 'gc/b', data, 'the other wharf after the new push');
        await expectBlob(p1.url, 'gc/a', data, 'wharf, the repository that had it');
        expect(existsSync(join(blobDirOf(root, sha256(data)), 'data')), `${sha256(data)} on disk after the new push`).toBe(true);
      });

      it(`after garbage-collect, a manifest over ${c} is refused with MANIFEST_BLOB_UNKNOWN`, async () => {
        const data = blobFor(c, 'manifest');
        const digest = sha256(data);
        const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [digest] }, note: c }));
        await expectPushed(p1.url, 'gc/a', config, 'wharf');
        const put = await call(`${p1.url}/v2/gc/a/manifests/over-${digest.slice(7, 15)}`, {
          method: 'PUT',
          body: bytes(manifestOver(config, data)),
          headers: { 'Content-Type': MT.ociManifest },
        });
        expect(put.status, describeAnswer(`PUT a manifest over ${digest} after gc`, put)).toBe(400);
        expect(put.code).toBe('MANIFEST_BLOB_UNKNOWN');
      });

      it(`after garbage-collect, a mount of ${c} falls back to an upload session (202, not 201)`, async () => {
        const digest = sha256(blobFor(c, 'mount'));
        const mount = await call(`${p1.url}/v2/gc/c/blobs/uploads/?mount=${digest}&from=gc/a`, { method: 'POST', headers: { 'Content-Length': '0' } });
        expect(mount.status, describeAnswer(`mount ${digest} from gc/a after gc`, mount)).toBe(202);
        expect(mount.headers.get('Location')).toMatch(/\/v2\/gc\/c\/blobs\/uploads\//);
        const anywhere = await call(`${p1.url}/v2/gc/d/blobs/uploads/?mount=${digest}`, { method: 'POST', headers: { 'Content-Length': '0' } });
        expect(anywhere.status, describeAnswer(`mount ${digest} without from after gc`, anywhere)).toBe(202);
      });
    }

    it('a blob another process deleted is stored again when pushed to the process that had it cached', async () => {
      const data = randomBytes(256 * 1024 + 1);
      await expectPushed(p1.url, 'two/a', data, 'wharf 1');
      await expectBlob(p1.url, 'two/a', data, 'wharf 1');
      await expectBlob(p2.url, 'two/a', data, 'wharf 2');
      // Stands in for the other process's garbage collection (wharf has no collector of its own yet).
      await removeTree(blobDirOf(root, sha256(data)));

      await expectPushed(p1.url, 'two/b', data, 'wharf 1 after the deletion');
      await expectBlob(p1.url, 'two/b', data, 'wharf 1');
      await expectBlob(p2.url, 'two/b', data, 'wharf 2');
      await expectBlob(p2.url, 'two/a', data, 'wharf 2, first repository');
    });

    it('the same, with the blob pushed again in chunks to the other process', async () => {
      const data = randomBytes(600 * 1024 + 5);
      const digest = sha256(data);
      await expectPushed(p2.url, 'two/c', data, 'wharf 2');
      await expectBlob(p1.url, 'two/c', data, 'wharf 1');
      await expectBlob(p2.url, 'two/c', data, 'wharf 2');
      await removeTree(blobDirOf(root, digest));

      const start = await call(`${p1.url}/v2/two/d/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(start.status, describeAnswer('POST upload', start)).toBe(202);
      let location = `${p1.url}${pathOf(start.headers.get('Location'))}`;
      const half = 300 * 1024;
      for (const [off, chunk] of [[0, data.subarray(0, half)], [half, data.subarray(half)]] as const) {
        const a = await patchChunk(location, chunk, off);
        expect(a.status, describeAnswer(`PATCH ${off}`, a)).toBe(202);
        location = `${p1.url}${pathOf(a.headers.get('Location'))}`;
      }
      const done = await call(withDigest(location, digest), { method: 'PUT', headers: { 'Content-Length': '0' } });
      expect(done.status, describeAnswer('closing PUT', done)).toBe(201);
      await expectBlob(p1.url, 'two/d', data, 'wharf 1');
      await expectBlob(p2.url, 'two/d', data, 'wharf 2');
    });

    it('a process that served a blob another process deleted does not mount it', async () => {
      const data = randomBytes(64 * 1024 + 3);
      const digest = sha256(data);
      await expectPushed(p1.url, 'two/e', data, 'wharf 1');
      await expectBlob(p2.url, 'two/e', data, 'wharf 2');
      await removeTree(blobDirOf(root, digest));
      const mount = await call(`${p2.url}/v2/two/f/blobs/uploads/?mount=${digest}&from=two/e`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(mount.status, describeAnswer('mount after the other process deleted the blob', mount)).toBe(202);
    });
  });

  describe('a Distribution 2.8 root with Docker schema 1 manifests', () => {
    const REPO = 'legacy/app';
    let root: string;
    let wharf: WharfProcess;
    let dist: DistributionProcess;
    /** Stored with its signatures, written into the layout by this test. */
    let signed: Schema1Manifest;
    let signedDigest: string;
    /** Pushed through Distribution (schema 1 compatibility on): stored as Distribution 2.8 stores it. */
    let pushed: Schema1Manifest;
    let pushedDigest: string;
    /** What Distribution answered for the same requests, by name. */
    const reference = new Map<string, Answer>();
    const image = randomImage('legacy-oci', [64 * 1024]);

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-schema1-');
      cleanup.add('schema1 root', () => removeTree(root));
      const layers = [randomBytes(32 * 1024 + 1), randomBytes(48 * 1024 + 3)];
      for (const l of layers) await writeLayer(root, REPO, l);
      signed = schema1Manifest(REPO, 'old', layers);
      signedDigest = await writeTaggedManifest(root, REPO, 'old', signed.signed);

      // Distribution itself writes the second one: with schema 1 compatibility enabled it
      // verifies the signature and stores the payload without it (sm.Canonical).
      pushed = schema1Manifest(REPO, 'pushed', layers);
      const writer = await startDistribution({ root, schema1: true });
      cleanup.add('distribution (schema1 on)', () => writer.stop());
      try {
        const put = await call(`${writer.url}/v2/${REPO}/manifests/pushed`, { method: 'PUT', body: bytes(pushed.signed), headers: { 'Content-Type': SCHEMA1.signed } });
        expect(put.status, describeAnswer('Distribution (schema 1 enabled): PUT a signed schema 1 manifest', put)).toBe(201);
        pushedDigest = put.headers.get('Docker-Content-Digest') ?? '';
        expect(pushedDigest).toBe(sha256(pushed.payload));
      } finally {
        await writer.stop();
      }

      // The reference: Distribution as installed (schema 1 compatibility off, its default).
      dist = await startDistribution({ root });
      cleanup.add('distribution', () => dist.stop());
      for (const [name, ref] of [['old', 'old'], ['old@', signedDigest], ['pushed', 'pushed'], ['pushed@', pushedDigest]]) {
        reference.set(name, await call(`${dist.url}/v2/${REPO}/manifests/${ref}`, { headers: { Accept: `${SCHEMA1.signed}, ${ALL_MANIFEST_TYPES}` } }));
      }
      const fresh = schema1Manifest(REPO, 'new', layers);
      reference.set('put signed', await call(`${dist.url}/v2/${REPO}/manifests/new`, { method: 'PUT', body: bytes(fresh.signed), headers: { 'Content-Type': SCHEMA1.signed } }));
      reference.set('put unsigned', await call(`${dist.url}/v2/${REPO}/manifests/new`, { method: 'PUT', body: bytes(fresh.payload), headers: { 'Content-Type': SCHEMA1.unsigned } }));

      wharf = await startWharf({ root });
      cleanup.add('wharf on schema1 root', () => wharf.stop({ keepRoot: true }));
      // An OCI image beside the schema 1 manifests (the referrers test adds an artifact for it).
      await pushOciImageHttp(wharf.url, REPO, 'oci', image);
    }, 120_000);

    it('Distribution serves both (the reference): 200, the schema 1 signed type, the stored digest', () => {
      for (const [name, digest] of [['old', signedDigest], ['old@', signedDigest], ['pushed', pushedDigest], ['pushed@', pushedDigest]] as const) {
        const a = reference.get(name)!;
        expect(a.status, describeAnswer(`Distribution GET ${name}`, a)).toBe(200);
        expect(a.headers.get('Content-Type')).toBe(SCHEMA1.signed);
        expect(a.headers.get('Docker-Content-Digest')).toBe(digest);
      }
    });

    it('serves the stored signed manifest by tag and by digest, HEAD and GET, byte for byte', async () => {
      for (const ref of ['old', signedDigest]) {
        const head = await call(`${wharf.url}/v2/${REPO}/manifests/${ref}`, { method: 'HEAD', headers: { Accept: SCHEMA1.signed } });
        expect(head.status, describeAnswer(`HEAD ${ref}`, head)).toBe(200);
        expect(head.headers.get('Content-Type')).toBe(SCHEMA1.signed);
        expect(head.headers.get('Docker-Content-Digest')).toBe(signedDigest);
        expect(head.headers.get('Content-Length')).toBe(String(signed.signed.length));
        const get = await call(`${wharf.url}/v2/${REPO}/manifests/${ref}`, { headers: { Accept: `${SCHEMA1.signed}, ${ALL_MANIFEST_TYPES}` } });
        expect(get.status, describeAnswer(`GET ${ref}`, get)).toBe(200);
        expect(get.headers.get('Content-Type')).toBe(SCHEMA1.signed);
        expect(get.headers.get('Docker-Content-Digest')).toBe(signedDigest);
        expect(get.body.equals(signed.signed), `${ref}: the stored bytes`).toBe(true);
        // Whoever asks gets it: clients that list no schema 1 type in Accept too (as Distribution does).
        const plain = await call(`${wharf.url}/v2/${REPO}/manifests/${ref}`);
        expect(plain.status, describeAnswer(`GET ${ref} without Accept`, plain)).toBe(200);
        expect(plain.body.equals(signed.signed)).toBe(true);
      }
    });

    it('serves the manifest Distribution stored (its payload, no signatures) under the digest Distribution gave it', async () => {
      for (const ref of ['pushed', pushedDigest]) {
        const get = await call(`${wharf.url}/v2/${REPO}/manifests/${ref}`, { headers: { Accept: `${SCHEMA1.signed}, ${SCHEMA1.unsigned}, ${ALL_MANIFEST_TYPES}` } });
        expect(get.status, describeAnswer(`GET ${ref}`, get)).toBe(200);
        expect(get.headers.get('Docker-Content-Digest')).toBe(pushedDigest);
        const type = get.headers.get('Content-Type');
        expect([SCHEMA1.signed, SCHEMA1.unsigned]).toContain(type);
        // Served as stored (v1+json), or signed anew as Distribution does (+prettyjws): either
        // way the payload a client verifies against the digest is the stored one.
        if (type === SCHEMA1.unsigned) expect(get.body.equals(pushed.payload), `${ref}: the stored bytes`).toBe(true);
        else expect(schema1Payload(get.body).equals(pushed.payload), `${ref}: the signed payload is the stored one`).toBe(true);
      }
    });

    it('lists the schema 1 tags', async () => {
      expect((await listTags(wharf.url, REPO)).tags).toEqual(['oci', 'old', 'pushed']);
    });

    it('answers referrers in a repository that holds schema 1 manifests', async () => {
      const art = ociArtifact({ mediaType: MT.ociManifest, digest: image.manifestDigest, size: image.manifest.length }, 'application/vnd.example.sbom.v1+json', [
        Buffer.from(JSON.stringify({ sbom: 'legacy', n: randomBytes(8).toString('hex') })),
      ]);
      await pushArtifact(wharf.url, REPO, art.manifestDigest, art);
      expect(await referrers(wharf.url, REPO, image.manifestDigest)).toEqual([art.manifestDigest]);
      expect(await referrers(wharf.url, REPO, signedDigest)).toEqual([]);
    });

    it('refuses a new schema 1 manifest as Distribution 2.8 does', async () => {
      const fresh = schema1Manifest(REPO, 'new', [...signed.layers.values()]);
      // Unsigned (v1+json): Distribution answers 400 MANIFEST_INVALID ("missing signature key").
      const refUnsigned = reference.get('put unsigned')!;
      expect(refUnsigned.status, describeAnswer('Distribution PUT unsigned schema 1', refUnsigned)).toBe(400);
      const unsigned = await call(`${wharf.url}/v2/${REPO}/manifests/new`, { method: 'PUT', body: bytes(fresh.payload), headers: { 'Content-Type': SCHEMA1.unsigned } });
      expect({ status: unsigned.status, code: unsigned.code }, describeAnswer('wharf PUT unsigned schema 1', unsigned)).toEqual({
        status: refUnsigned.status,
        code: refUnsigned.code,
      });
      // Signed (+prettyjws): Distribution 2.8.2 refuses it too, but as 500 UNKNOWN ("manifest
      // schema v1 unsupported" unmapped: a 5xx that makes clients retry). wharf answers what
      // Distribution answers for every other schema 1 it refuses, and Distribution 3 for this
      // one: 400 MANIFEST_INVALID.
      const refSigned = reference.get('put signed')!;
      expect(refSigned.status, describeAnswer('Distribution PUT signed schema 1', refSigned)).toBeGreaterThanOrEqual(400);
      const signedPut = await call(`${wharf.url}/v2/${REPO}/manifests/new`, { method: 'PUT', body: bytes(fresh.signed), headers: { 'Content-Type': SCHEMA1.signed } });
      expect({ status: signedPut.status, code: signedPut.code }, describeAnswer('wharf PUT signed schema 1', signedPut)).toEqual({
        status: 400,
        code: 'MANIFEST_INVALID',
      });
      expect((await listTags(wharf.url, REPO)).tags).not.toContain('new');
    });

    it('deletes a schema 1 manifest by digest (202, then 404 on both servers)', async () => {
      const del = await call(`${wharf.url}/v2/${REPO}/manifests/${signedDigest}`, { method: 'DELETE' });
      expect(del.status, describeAnswer('DELETE schema 1 by digest', del)).toBe(202);
      for (const ref of [signedDigest, 'old']) {
        const w = await call(`${wharf.url}/v2/${REPO}/manifests/${ref}`);
        expect(w.status, describeAnswer(`wharf GET ${ref} after DELETE`, w)).toBe(404);
        expect(w.code).toBe('MANIFEST_UNKNOWN');
        const d = await call(`${dist.url}/v2/${REPO}/manifests/${ref}`);
        expect(d.status, describeAnswer(`Distribution GET ${ref} after wharf's DELETE`, d)).toBe(404);
      }
      expect((await listTags(wharf.url, REPO)).tags).toEqual(['oci', 'pushed']);
      const still = await call(`${wharf.url}/v2/${REPO}/manifests/pushed`);
      expect(still.status, describeAnswer('the other schema 1 manifest', still)).toBe(200);
    });
  });

  describe('both servers up on one root: garbage collection rounds and uploads across', () => {
    const SECRET = `wharf-e2e-${randomBytes(16).toString('hex')}`;
    const REPO = 'shared/app';
    let root: string;
    let wharf: WharfProcess;
    let dist: DistributionProcess;
    const img1 = randomImage('one', [256 * 1024, 64 * 1024]);
    const orphan = randomBytes(128 * 1024 + 9);
    // Reuses a layer of img1 and the orphan blob that garbage collection removes in round 1.
    const img2 = ociImage([filesEntries([{ path: 'data/two.bin', data: randomBytes(96 * 1024) }])]);
    let img2Layers: Buffer[];
    let img2Manifest: Buffer;
    const img3 = randomImage('three', [80 * 1024]);
    let art: OciArtifact;

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-shared-');
      cleanup.add('shared root', () => removeTree(root));
      wharf = await startWharf({ root, env: { REGISTRY_HTTP_SECRET: SECRET } });
      cleanup.add('wharf on shared root', () => wharf.stop({ keepRoot: true }));
      dist = await startDistribution({ root, secret: SECRET });
      cleanup.add('distribution on shared root', () => dist.stop());
      art = ociArtifact({ mediaType: MT.ociManifest, digest: img1.manifestDigest, size: img1.manifest.length }, 'application/vnd.example.sbom.v1+json', [
        Buffer.from(JSON.stringify({ sbom: 'img1', packages: [randomBytes(16).toString('hex')] })),
      ]);
      // img2: its own layer, a layer of img1 and the orphan (gzip is not checked by registries).
      img2Layers = [img2.layers[0]!.blob, img1.layers[1]!.blob, orphan];
      img2Manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MT.ociManifest,
          config: { mediaType: MT.ociConfig, digest: img2.configDigest, size: img2.config.length },
          layers: img2Layers.map((l) => ({ mediaType: MT.ociLayerGzip, digest: sha256(l), size: l.length })),
        }),
      );
    }, 120_000);

    async function expectImg2(url: string, who: string): Promise<void> {
      for (const ref of ['2', sha256(img2Manifest)]) await expectManifest(url, REPO, ref, img2Manifest, MT.ociManifest, who);
      for (const data of [img2.config, ...img2Layers]) await expectBlob(url, REPO, data, who);
    }

    it('round 1: wharf pushes, Distribution collects garbage while both run, wharf pushes again, both read everything', async () => {
      await pushOciImageHttp(wharf.url, REPO, '1', img1);
      await pushArtifact(wharf.url, REPO, art.manifestDigest, art); // untagged, subject img1
      await expectPushed(wharf.url, REPO, orphan, 'wharf'); // no manifest: garbage
      await expectBlob(wharf.url, REPO, orphan, 'wharf');
      expect(await referrers(wharf.url, REPO, img1.manifestDigest)).toEqual([art.manifestDigest]);

      const round1 = await collectGarbage(root);
      expect(eligibleBlobs(round1), 'only the orphan is garbage').toEqual([sha256(orphan)]);
      expect(round1).toContain(`${REPO}: marking manifest ${art.manifestDigest}`);

      // wharf pushes again, the collected blob among others.
      for (const data of [img2.config, ...img2Layers]) await expectPushed(wharf.url, REPO, data, 'wharf after gc');
      await pushManifestHttp(wharf.url, REPO, '2', img2Manifest, MT.ociManifest);

      for (const [who, url] of [['Distribution', dist.url], ['wharf', wharf.url]] as const) {
        await expectImage(url, REPO, '1', img1, who);
        await expectImg2(url, who);
        await expectArtifact(url, REPO, art.manifestDigest, art, who);
      }
      expect(await referrers(wharf.url, REPO, img1.manifestDigest)).toEqual([art.manifestDigest]);
    }, 60_000);

    it('round 2: garbage-collect --delete-untagged removes the untagged referrer; wharf stops listing it, pushes it again, both read everything', async () => {
      await pushOciImageHttp(wharf.url, REPO, '3', img3);
      const out = await collectGarbage(root, { deleteUntagged: true });
      expect(out).toContain(`manifest eligible for deletion: ${art.manifestDigest}`);
      expect(eligibleBlobs(out), "the referrer's manifest and blobs are garbage").toEqual([art.manifestDigest, ...art.blobs.keys()].sort());

      // The referrers list must not keep offering a manifest that is gone (wharf trusts
      // links from memory for storage.cache.linkttl, 1 s by default).
      const listed = await within(3000, () => referrers(wharf.url, REPO, img1.manifestDigest), (l) => l.length === 0);
      expect(listed, 'referrers of img1 after --delete-untagged').toEqual([]);
      for (const [who, url] of [['Distribution', dist.url], ['wharf', wharf.url]] as const) {
        const gone = await call(`${url}/v2/${REPO}/manifests/${art.manifestDigest}`, { headers: { Accept: MT.ociManifest } });
        expect(gone.status, describeAnswer(`${who}: the deleted referrer`, gone)).toBe(404);
      }

      // The tagged images this round pushed or kept are whole on both servers.
      for (const [who, url] of [['Distribution', dist.url], ['wharf', wharf.url]] as const) {
        await expectImage(url, REPO, '1', img1, who);
        await expectImage(url, REPO, '3', img3, who);
      }

      // wharf pushes the referrer again, tagged this time: its collected blobs and manifest
      // bytes must be stored again, not acknowledged from memory.
      await pushArtifact(wharf.url, REPO, 'sbom', art);
      for (const [who, url] of [['Distribution', dist.url], ['wharf', wharf.url]] as const) {
        await expectArtifact(url, REPO, 'sbom', art, who);
        await expectArtifact(url, REPO, art.manifestDigest, art, who);
      }
      expect(await referrers(wharf.url, REPO, img1.manifestDigest)).toEqual([art.manifestDigest]);

      // The collector, run once more, finds nothing to delete, and nothing tagged was lost in
      // either round, on either server.
      const again = await collectGarbage(root, { deleteUntagged: true });
      expect(eligibleBlobs(again)).toEqual([]);
      for (const [who, url] of [['Distribution', dist.url], ['wharf', wharf.url]] as const) {
        await expectImage(url, REPO, '1', img1, who);
        await expectImg2(url, who);
        await expectImage(url, REPO, '3', img3, who);
        await expectArtifact(url, REPO, 'sbom', art, who);
      }
    }, 60_000);

    it('a chunked upload started on Distribution is finished on wharf', async () => {
      const repo = 'cross/d2w';
      const data = randomBytes(700 * 1024 + 13);
      const digest = sha256(data);
      const [c1, c2] = [data.subarray(0, 400 * 1024), data.subarray(400 * 1024)];
      const start = await call(`${dist.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(start.status, describeAnswer('Distribution POST', start)).toBe(202);
      const first = await patchChunk(`${dist.url}${pathOf(start.headers.get('Location'))}`, c1, 0);
      expect(first.status, describeAnswer('Distribution PATCH', first)).toBe(202);
      const uuid = first.headers.get('Docker-Upload-UUID') ?? '';

      // The next request goes to wharf, at the URL Distribution handed out (its _state included).
      const second = await patchChunk(`${wharf.url}${pathOf(first.headers.get('Location'))}`, c2, c1.length);
      expect(second.status, describeAnswer('wharf PATCH of a session Distribution started', second)).toBe(202);
      expect(second.headers.get('Range')).toBe(`0-${data.length - 1}`);
      const done = await call(withDigest(`${wharf.url}${pathOf(second.headers.get('Location'))}`, digest), { method: 'PUT', headers: { 'Content-Length': '0' } });
      expect(done.status, describeAnswer('wharf closing PUT', done)).toBe(201);
      expect(done.headers.get('Docker-Content-Digest')).toBe(digest);

      await expectBlob(wharf.url, repo, data, 'wharf');
      await expectBlob(dist.url, repo, data, 'Distribution');
      expect(existsSync(join(repoDirOf(root, repo), '_uploads', uuid)), 'the session directory is gone').toBe(false);
    });

    it('a chunked upload started on wharf is finished on Distribution (same http.secret)', async () => {
      const repo = 'cross/w2d';
      const data = randomBytes(650 * 1024 + 21);
      const digest = sha256(data);
      const [c1, c2] = [data.subarray(0, 256 * 1024), data.subarray(256 * 1024)];
      const start = await call(`${wharf.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(start.status, describeAnswer('wharf POST', start)).toBe(202);
      const first = await patchChunk(`${wharf.url}${pathOf(start.headers.get('Location'))}`, c1, 0);
      expect(first.status, describeAnswer('wharf PATCH', first)).toBe(202);
      const uuid = first.headers.get('Docker-Upload-UUID') ?? '';

      // Distribution accepts the next request only with a _state it can verify (HMAC with
      // http.secret) naming this repository, this session and the bytes stored so far.
      const second = await patchChunk(`${dist.url}${pathOf(first.headers.get('Location'))}`, c2, c1.length);
      expect(second.status, describeAnswer("Distribution PATCH at wharf's Location", second)).toBe(202);
      expect(second.headers.get('Range')).toBe(`0-${data.length - 1}`);
      const done = await call(withDigest(`${dist.url}${pathOf(second.headers.get('Location'))}`, digest), { method: 'PUT', headers: { 'Content-Length': '0' } });
      expect(done.status, describeAnswer('Distribution closing PUT', done)).toBe(201);
      expect(done.headers.get('Docker-Content-Digest')).toBe(digest);

      await expectBlob(dist.url, repo, data, 'Distribution');
      await expectBlob(wharf.url, repo, data, 'wharf');
      expect(existsSync(join(repoDirOf(root, repo), '_uploads', uuid)), 'the session directory is gone').toBe(false);
    });
  });

  describe("wharf's upload purging on a root where Distribution started sessions", () => {
    const REPO = 'abandoned/first-push';
    let root: string;
    let dist: DistributionProcess;
    let location: string;
    let uuid: string;

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-purge-');
      cleanup.add('purge root', () => removeTree(root));
      dist = await startDistribution({ root });
      cleanup.add('distribution on purge root', () => dist.stop());
      // A first push that was abandoned: the repository holds nothing but _uploads.
      const start = await call(`${dist.url}/v2/${REPO}/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(start.status, describeAnswer('Distribution POST', start)).toBe(202);
      const first = await patchChunk(`${dist.url}${pathOf(start.headers.get('Location'))}`, randomBytes(64 * 1024), 0);
      expect(first.status, describeAnswer('Distribution PATCH', first)).toBe(202);
      location = pathOf(first.headers.get('Location'));
      uuid = first.headers.get('Docker-Upload-UUID') ?? '';
    }, 120_000);

    it('removes a session Distribution started in a repository that holds only _uploads; both servers then call it unknown', async () => {
      const sessionDir = join(repoDirOf(root, REPO), '_uploads', uuid);
      expect(existsSync(sessionDir), 'the session Distribution started').toBe(true);
      expect(await readdir(repoDirOf(root, REPO))).toEqual(['_uploads']);

      const wharf = await startWharf({
        root,
        env: {
          REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'true',
          REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE: '1s',
          REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_INTERVAL: '1s',
          REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN: 'false',
        },
      });
      cleanup.add('wharf purging', () => wharf.stop({ keepRoot: true }));

      // First purge ~1 s after start, then every second; allow a loaded machine some slack.
      const gone = await within(5000, async () => !existsSync(sessionDir), (v) => v);
      expect(gone, `${sessionDir} still there 5 s after wharf started purging (age 1s, interval 1s)`).toBe(true);

      // Distribution needs the _state it signed (with a secret of its own here); wharf gets the plain session URL.
      for (const [who, url] of [['wharf', `${wharf.url}${location.split('?')[0]}`], ['Distribution', `${dist.url}${location}`]] as const) {
        const status = await call(url);
        expect(status.status, describeAnswer(`${who}: GET upload status after the purge`, status)).toBe(404);
        expect(status.code).toBe('BLOB_UPLOAD_UNKNOWN');
      }
    }, 30_000);
  });
});

/**
 * The payload of a libtrust pretty-JWS schema 1 manifest: the bytes before the signatures
 * (formatLength of the first signature's protected header) plus its formatTail.
 */
function schema1Payload(body: Buffer): Buffer {
  const doc = JSON.parse(body.toString('utf8')) as { signatures?: Array<{ protected: string }> };
  const first = doc.signatures?.[0];
  if (!first) throw new Error('no signatures in a +prettyjws manifest');
  const header = JSON.parse(Buffer.from(first.protected, 'base64url').toString('utf8')) as { formatLength: number; formatTail: string };
  return Buffer.concat([body.subarray(0, header.formatLength), Buffer.from(header.formatTail, 'base64url')]);
}
