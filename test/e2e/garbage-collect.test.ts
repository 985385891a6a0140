// `wharf garbage-collect` against Distribution 2.8's `docker-registry garbage-collect` on
// copies of one storage root: the same blobs and links must remain (plain and
// --delete-untagged), a wharf on the collected root serves every tagged image whole, and
// --dry-run deletes nothing while reporting the same counts.
//
// The one documented difference: with --delete-untagged, Distribution 2.8 deletes the untagged
// children of a tagged index (breaking it); wharf keeps them with their blobs, as Distribution 3
// does. The test asserts that difference exactly.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdir, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, distributionGarbageCollect } from '../support/distribution.js';
import { RegistryClient, sha256 } from '../support/client.js';
import { MT, ociArtifact, schema1Manifest } from '../support/images.js';
import { describeFailure, removeTree, run, tempDir, type RunResult } from '../support/processes.js';
import { startServer } from '../support/server.js';
import { all, requireTool } from '../support/tools.js';
import { treeListing } from '../support/file-tree.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'wharf.js');
const V2 = join('docker', 'registry', 'v2');
const available = all(requireTool(DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE));

interface Tagged {
  repo: string;
  tag: string;
}

/** What remains: blob digests, and every link file under repositories (minus wharf's _referrers and uploads). */
async function snapshot(root: string): Promise<{ blobs: Set<string>; links: Set<string>; referrers: Set<string> }> {
  const blobs = new Set<string>();
  const links = new Set<string>();
  const referrers = new Set<string>();
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) await walk(path);
      else if (e.name === 'data' && relative(join(root, V2), path).startsWith('blobs')) {
        const parts = relative(join(root, V2, 'blobs'), path).split('/');
        blobs.add(`${parts[0]}:${parts[2]}`);
      } else if (e.name === 'link') {
        const rel = relative(join(root, V2, 'repositories'), path);
        if (rel.includes('/_uploads/')) continue;
        if (rel.includes('/_referrers/')) referrers.add(rel);
        else links.add(rel);
      }
    }
  };
  await walk(join(root, V2));
  return { blobs, links, referrers };
}

const setDiff = (a: Set<string>, b: Set<string>): string[] => [...a].filter((x) => !b.has(x)).sort();

async function wharfGc(configFile: string, args: string[]): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('VITEST')),
  );
  delete env.NODE_OPTIONS;
  return run(BIN, ['garbage-collect', configFile, ...args], { env, timeoutMs: 60_000 });
}

/** The summary line's numbers. */
function summary(r: RunResult): Record<string, number> {
  const line = r.stdout.trim().split('\n').at(-1)!;
  const m = /(\d+) manifests marked, (\d+) manifests deleted, (\d+) blobs marked, (\d+) blobs deleted, .*\((\d+) bytes\) freed, (\d+) referrer entries, (\d+) temporary files, (\d+) upload sessions/.exec(line);
  if (!m) throw new Error(`no summary in:\n${r.stdout}`);
  const [manifestsMarked, manifestsDeleted, blobsMarked, blobsDeleted, bytesFreed, referrers, temp, uploads] = m.slice(1).map(Number);
  return { manifestsMarked: manifestsMarked!, manifestsDeleted: manifestsDeleted!, blobsMarked: blobsMarked!, blobsDeleted: blobsDeleted!, bytesFreed: bytesFreed!, referrers: referrers!, temp: temp!, uploads: uploads! };
}

/** Distribution 2.8's "N blobs marked, M blobs and K manifests eligible for deletion". */
function distributionCounts(r: RunResult): { marked: number; blobs: number; manifests: number } {
  const m = /(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion/.exec(r.stdout + r.stderr);
  if (!m) throw new Error(`no counts in Distribution's output:\n${r.stdout.slice(-3000)}`);
  return { marked: Number(m[1]), blobs: Number(m[2]), manifests: Number(m[3]) };
}

describe.skipIf(!available)('wharf garbage-collect, compared with Distribution 2.8', () => {
  let work: string;
  let source: string;
  const tagged: Tagged[] = [];
  let children: string[] = [];
  /** Blobs only the index's children reference (config shared with other images excluded later). */
  let childBlobs: string[] = [];
  let referrer = '';
  let oldTemp = '';
  let freshTemp = '';

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-gc-');
    source = join(work, 'source');
    await mkdir(source);
    const server = await startServer({ root: source, deleteEnabled: true });
    try {
      const c = new RegistryClient(server.url);
      const shared = randomBytes(3000);
      // team/app: v1 (shared layer), v2 moved from B to C (B stays as an untagged revision).
      const a = await c.pushImage('team/app', 'v1', [shared, randomBytes(2000)]);
      tagged.push({ repo: 'team/app', tag: 'v1' });
      await c.pushImage('team/app', 'v2', [randomBytes(1500)]);
      await c.pushImage('team/app', 'v2', [shared, randomBytes(1700)]);
      tagged.push({ repo: 'team/app', tag: 'v2' });
      // Pushed by digest only: untagged.
      const d = await c.pushImage('team/app', 'scratch', [randomBytes(1100)]);
      expect((await c.fetch('/v2/team/app/manifests/scratch', { method: 'DELETE' })).status).toBe(202);
      // Deleted by digest through the API: its blobs are garbage for both.
      const e = await c.pushImage('team/app', 'gone', [randomBytes(1300)]);
      expect((await c.fetch(`/v2/team/app/manifests/${e.digest}`, { method: 'DELETE' })).status).toBe(202);
      // A multi-platform index whose children are pushed by digest (untagged).
      const kids = [];
      for (const arch of ['amd64', 'arm64']) {
        const img = await c.pushImage('team/app', `tmp-${arch}`, [shared, randomBytes(1200)]);
        expect((await c.fetch(`/v2/team/app/manifests/tmp-${arch}`, { method: 'DELETE' })).status).toBe(202);
        kids.push({ mediaType: MT.ociManifest, digest: img.digest, size: img.body.length, platform: { os: 'linux', architecture: arch } });
        childBlobs.push(img.digest, ...img.manifest.layers.map((l) => l.digest).filter((l) => l !== sha256(shared)));
      }
      children = kids.map((k) => k.digest);
      const index = JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: kids });
      expect((await c.pushManifest('team/app', 'multi', index, MT.ociIndex)).status).toBe(201);
      tagged.push({ repo: 'team/app', tag: 'multi' });
      // An artifact whose subject is v1 (untagged, as referrers are) and one whose subject is gone.
      const art = ociArtifact({ mediaType: MT.ociManifest, digest: a.digest, size: a.body.length }, 'application/vnd.example.sbom', [randomBytes(900)]);
      for (const [digest, blob] of art.blobs) expect(await c.pushBlob('team/app', blob)).toBe(digest);
      expect((await c.pushManifest('team/app', art.manifestDigest, art.manifest.toString(), MT.ociManifest)).status).toBe(201);
      referrer = art.manifestDigest;
      const art2 = ociArtifact({ mediaType: MT.ociManifest, digest: d.digest, size: d.body.length }, 'application/vnd.example.sig', [randomBytes(800)]);
      for (const [, blob] of art2.blobs) await c.pushBlob('team/app', blob);
      expect((await c.pushManifest('team/app', art2.manifestDigest, art2.manifest.toString(), MT.ociManifest)).status).toBe(201);
      // team/other: a tagged image and an orphan blob; orphans/only: nothing but a blob.
      await c.pushImage('team/other', 'latest', [randomBytes(1000)]);
      tagged.push({ repo: 'team/other', tag: 'latest' });
      await c.pushBlob('team/other', randomBytes(4096));
      await c.pushBlob('orphans/only', randomBytes(5000));
      // An abandoned upload session.
      await c.startUpload('team/other');
    } finally {
      await server.close(true);
    }
    // A Docker schema 1 image as Distribution stored it (payload only), tagged.
    const s1 = schema1Manifest('legacy/old', 'old', [randomBytes(700), randomBytes(600)]);
    const put = async (rel: string, data: Buffer | string): Promise<void> => {
      await mkdir(dirname(join(source, V2, rel)), { recursive: true });
      await writeFile(join(source, V2, rel), data);
    };
    const blobRel = (digest: string): string => `blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}/data`;
    for (const [digest, data] of s1.layers) {
      await put(blobRel(digest), data);
      await put(`repositories/legacy/old/_layers/sha256/${digest.slice(7)}/link`, digest);
    }
    const s1Digest = sha256(s1.payload);
    await put(blobRel(s1Digest), s1.payload);
    await put(`repositories/legacy/old/_manifests/revisions/sha256/${s1Digest.slice(7)}/link`, s1Digest);
    await put(`repositories/legacy/old/_manifests/tags/old/current/link`, s1Digest);
    await put(`repositories/legacy/old/_manifests/tags/old/index/sha256/${s1Digest.slice(7)}/link`, s1Digest);
    tagged.push({ repo: 'legacy/old', tag: 'old' });
    // Temporary files a crash left: one old, one fresh.
    oldTemp = `repositories/team/app/_manifests/tags/v1/current/link~tmp-0123456789ab`;
    freshTemp = `repositories/team/app/_manifests/tags/v2/current/link~tmp-ba9876543210`;
    await put(oldTemp, 'sha256:');
    await put(freshTemp, 'sha256:');
    const past = new Date(Date.now() - 2 * 3600_000);
    await utimes(join(source, V2, oldTemp), past, past);
  }, 120_000);

  afterAll(async () => {
    if (work) await removeTree(work);
  });

  async function copyOf(name: string): Promise<string> {
    const dir = join(work, name);
    await cp(source, dir, { recursive: true, preserveTimestamps: true });
    return dir;
  }

  async function configFor(root: string): Promise<string> {
    const file = join(work, `${relative(work, root)}.yml`);
    await writeFile(
      file,
      [
        'version: 0.1',
        'storage:',
        `  filesystem: { rootdirectory: ${JSON.stringify(root)} }`,
        '  maintenance:',
        '    uploadpurging: { enabled: true, age: 1s, interval: 24h, dryrun: false }',
        '',
      ].join('\n'),
    );
    return file;
  }

  /** Every tagged image answers whole from a wharf on `root`: manifests, children, blobs, digests checked. */
  async function servesWhole(root: string): Promise<void> {
    const server = await startServer({ root, deleteEnabled: false });
    try {
      const fetchOk = async (path: string, accept?: string): Promise<Buffer> => {
        const res = await fetch(`${server.url}${path}`, accept ? { headers: { Accept: accept } } : {});
        expect(res.status, path).toBe(200);
        return Buffer.from(await res.arrayBuffer());
      };
      const accept = [MT.ociManifest, MT.ociIndex, MT.dockerManifest, MT.dockerList, 'application/vnd.docker.distribution.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v1+prettyjws'].join(', ');
      const check = async (repo: string, ref: string): Promise<void> => {
        const body = await fetchOk(`/v2/${repo}/manifests/${ref}`, accept);
        if (ref.startsWith('sha256:')) expect(sha256(body)).toBe(ref);
        const m = JSON.parse(body.toString()) as { config?: { digest: string }; layers?: { digest: string }[]; manifests?: { digest: string }[]; fsLayers?: { blobSum: string }[] };
        for (const child of m.manifests ?? []) await check(repo, child.digest);
        const blobDigests = [...(m.config ? [m.config.digest] : []), ...(m.layers ?? []).map((l) => l.digest), ...(m.fsLayers ?? []).map((l) => l.blobSum)];
        for (const digest of blobDigests) expect(sha256(await fetchOk(`/v2/${repo}/blobs/${digest}`)), `${repo} ${digest}`).toBe(digest);
      };
      for (const { repo, tag } of tagged) await check(repo, tag);
    } finally {
      await server.close(true);
    }
  }

  it('plain: removes exactly what Distribution removes, and --dry-run reports the same without deleting', async () => {
    const [mine, theirs, dry] = [await copyOf('plain-wharf'), await copyOf('plain-dist'), await copyOf('plain-dry')];
    await new Promise((r) => setTimeout(r, 1100)); // the upload session is older than the 1s purging age

    const before = await treeListing(dry);
    const dryRun = await wharfGc(await configFor(dry), ['--dry-run']);
    expect(dryRun.code, describeFailure(dryRun)).toBe(0);
    expect(await treeListing(dry)).toEqual(before);

    const gc = await wharfGc(await configFor(mine), []);
    expect(gc.code, describeFailure(gc)).toBe(0);
    const dist = await distributionGarbageCollect(theirs, { dryRun: false });
    expect(dist.code, describeFailure(dist)).toBe(0);

    const counts = summary(gc);
    expect(summary(dryRun)).toEqual(counts);
    expect(dryRun.stdout).toContain('dry run, nothing deleted');
    const distCounts = distributionCounts(dist);
    expect(counts.blobsMarked).toBe(distCounts.marked);
    expect(counts.blobsDeleted).toBe(distCounts.blobs);
    expect(counts.manifestsDeleted).toBe(0);
    expect(distCounts.manifests).toBe(0);
    expect(counts.blobsDeleted).toBeGreaterThan(0);
    expect(counts.bytesFreed).toBeGreaterThan(4096 + 5000);
    expect(counts.temp).toBe(1);
    expect(counts.uploads).toBe(1);

    const [w, d] = [await snapshot(mine), await snapshot(theirs)];
    expect(setDiff(w.blobs, d.blobs)).toEqual([]);
    expect(setDiff(d.blobs, w.blobs)).toEqual([]);
    expect(setDiff(w.links, d.links)).toEqual([]);
    expect(setDiff(d.links, w.links)).toEqual([]);
    // Kept referrers keep their index entries; crash leftovers: old temp file gone, fresh one kept.
    expect([...w.referrers].some((r) => r.endsWith(`${referrer.slice(7)}/link`))).toBe(true);
    await expect(stat(join(mine, V2, oldTemp))).rejects.toThrow();
    await stat(join(mine, V2, freshTemp));
    await servesWhole(mine);
  }, 180_000);

  it('--delete-untagged: as Distribution, except that the children of a tagged index stay', async () => {
    const [mine, theirs, dry] = [await copyOf('untagged-wharf'), await copyOf('untagged-dist'), await copyOf('untagged-dry')];

    const before = await treeListing(dry);
    const dryRun = await wharfGc(await configFor(dry), ['--dry-run', '--delete-untagged']);
    expect(dryRun.code, describeFailure(dryRun)).toBe(0);
    expect(await treeListing(dry)).toEqual(before);

    const gc = await wharfGc(await configFor(mine), ['--delete-untagged']);
    expect(gc.code, describeFailure(gc)).toBe(0);
    const dist = await distributionGarbageCollect(theirs, { dryRun: false, deleteUntagged: true });
    expect(dist.code, describeFailure(dist)).toBe(0);
    const counts = summary(gc);
    expect(summary(dryRun)).toEqual(counts);

    const [w, d] = [await snapshot(mine), await snapshot(theirs)];
    const childRevisions = children.map((c) => `team/app/_manifests/revisions/sha256/${c.slice(7)}/link`);
    // Distribution 2.8 deleted the index's children (the known 2.8 bug); wharf kept them, and nothing else differs.
    const distKeptChildren = childRevisions.filter((r) => d.links.has(r));
    const expectedExtraLinks = childRevisions.filter((r) => !d.links.has(r));
    const expectedExtraBlobs = childBlobs.filter((b) => !d.blobs.has(b)).sort();
    expect(setDiff(w.links, d.links)).toEqual(expectedExtraLinks.sort());
    expect(setDiff(d.links, w.links)).toEqual([]);
    expect(setDiff(w.blobs, d.blobs)).toEqual(expectedExtraBlobs);
    expect(setDiff(d.blobs, w.blobs)).toEqual([]);
    const distCounts = distributionCounts(dist);
    expect(counts.manifestsDeleted).toBe(distCounts.manifests - expectedExtraLinks.length);
    expect(counts.blobsDeleted).toBe(distCounts.blobs - expectedExtraBlobs.length);
    // The difference is real: 2.8 removed both children's revisions and their own layers (the
    // children's manifest bytes stay there too: the kept index references them).
    expect(distKeptChildren).toEqual([]);
    expect(expectedExtraBlobs).toEqual(childBlobs.filter((b) => !children.includes(b)).sort());
    expect(expectedExtraBlobs.length).toBe(2);
    // The untagged referrers went, with their _referrers entries (Distribution leaves those behind).
    expect(w.links.has(`team/app/_manifests/revisions/sha256/${referrer.slice(7)}/link`)).toBe(false);
    expect(w.referrers.size).toBe(0);
    expect(d.referrers.size).toBeGreaterThan(0);
    await servesWhole(mine);

    // wharf over the root Distribution collected: removes the referrer entries it left.
    const after = await wharfGc(await configFor(theirs), []);
    expect(after.code, describeFailure(after)).toBe(0);
    expect(summary(after).referrers).toBe(d.referrers.size);
    expect((await snapshot(theirs)).referrers.size).toBe(0);
  }, 180_000);

  it('reports configuration errors like serve', async () => {
    const file = join(work, 'bad.yml');
    await writeFile(file, 'version: 0.1\nstorage:\n  s3: { bucket: x }\n');
    const r = await wharfGc(file, []);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^wharf: configuration error: storage\.s3/);
  });
});
