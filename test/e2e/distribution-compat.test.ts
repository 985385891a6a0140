// One storage directory, two registries: what CNCF Distribution 2.8 (Debian's docker-registry)
// wrote, wharf serves, and what wharf wrote, Distribution serves, its garbage collector
// included. Images go in with skopeo (OCI, Docker schema 2, a two-platform index), with plain
// HTTP in chunked and monolithic uploads, and with docker; they come out with the same clients.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, distributionGarbageCollect, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import {
  busyboxOciImage,
  catalog,
  filesEntries,
  getBlob,
  getManifest,
  importBaseImage,
  listTags,
  MT,
  ociImage,
  ociIndex,
  pushOciImageHttp,
  readOciLayoutBlob,
  requireBusybox,
  sha256,
  writeOciLayout,
  type DockerImage,
  type FetchedManifest,
  type OciImage,
  type OciIndex,
} from '../support/images.js';
import { Cleanup, removeTree, tempDir } from '../support/processes.js';
import { all, privateSkopeo, requireRoot, requireTool, requireTools, type ToolRunner } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(requireTool(DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE), requireTool('skopeo', 'skopeo'), requireBusybox());
const dockerAvailable = available && all(requireTools(DOCKERD_TOOLS), requireRoot('a private dockerd'));

/** What a registry serves for one image: every manifest reference and every blob. */
interface Expected {
  repo: string;
  tag: string;
  manifest: Buffer;
  mediaType: string;
  blobs: Map<string, Buffer>;
  /** Child manifests (for an index), by digest. */
  children: Map<string, Buffer>;
}

const blobsOf = (im: OciImage): Map<string, Buffer> =>
  new Map<string, Buffer>([[im.configDigest, im.config], ...im.layers.map((l): [string, Buffer] => [l.digest, l.blob])]);

function expectedImage(repo: string, tag: string, im: OciImage): Expected {
  return { repo, tag, manifest: im.manifest, mediaType: MT.ociManifest, blobs: blobsOf(im), children: new Map() };
}

function expectedIndex(repo: string, tag: string, idx: OciIndex): Expected {
  const blobs = new Map<string, Buffer>();
  for (const im of idx.images) for (const [d, b] of blobsOf(im)) blobs.set(d, b);
  return { repo, tag, manifest: idx.index, mediaType: MT.ociIndex, blobs, children: new Map(idx.images.map((im) => [im.manifestDigest, im.manifest])) };
}

/** Reads back, over HTTP, a manifest pushed by a client whose exact bytes we learn from the first registry. */
async function recordFrom(url: string, repo: string, tag: string): Promise<Expected> {
  const m = await getManifest(url, repo, tag);
  if (m.status !== 200) throw new Error(`${repo}:${tag} on ${url}: ${m.status}`);
  const manifest = JSON.parse(m.body.toString()) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const blobs = new Map<string, Buffer>();
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    const b = await getBlob(url, repo, d);
    if (b.status !== 200) throw new Error(`blob ${d} on ${url}: ${b.status}`);
    blobs.set(d, b.body);
  }
  return { repo, tag, manifest: m.body, mediaType: m.contentType ?? '', blobs, children: new Map() };
}

/** The registry at `url` serves `e` exactly: by tag, by digest, every child and blob. */
async function expectServes(url: string, e: Expected): Promise<void> {
  const digest = sha256(e.manifest);
  for (const ref of [e.tag, digest]) {
    const m: FetchedManifest = await getManifest(url, e.repo, ref);
    expect(m.status, `${e.repo}:${ref}`).toBe(200);
    expect(m.digest).toBe(digest);
    expect(m.contentType).toBe(e.mediaType);
    expect(m.body.equals(e.manifest), `${e.repo}:${ref} bytes`).toBe(true);
  }
  for (const [d, body] of e.children) {
    const m = await getManifest(url, e.repo, d);
    expect(m.status, `${e.repo}@${d}`).toBe(200);
    expect(m.body.equals(body)).toBe(true);
  }
  for (const [d, body] of e.blobs) {
    const b = await getBlob(url, e.repo, d);
    expect(b.status, `${e.repo} blob ${d}`).toBe(200);
    expect(b.body.equals(body), `${e.repo} blob ${d} bytes`).toBe(true);
  }
}

describe.skipIf(!available)('Distribution 2.8 and wharf on the same storage directory', () => {
  const cleanup = new Cleanup();
  let work: string;
  let skopeo: ToolRunner;
  let app: OciImage;
  let chunked: OciImage;
  let mono: OciImage;
  let doomed: OciImage;
  let multi: OciIndex;

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-compat-');
    cleanup.add('work dir', () => removeTree(work));
    skopeo = await privateSkopeo(join(work, 'skopeo'));
    app = await busyboxOciImage([
      [{ path: 'data/random.bin', data: randomBytes(4 * 1024 * 1024 + 11) }],
      [{ path: 'data/hello.txt', data: Buffer.from('hello, compat\n') }],
    ]);
    chunked = ociImage([filesEntries([{ path: 'data/chunked.bin', data: randomBytes(3 * 1024 * 1024 + 5) }])]);
    mono = ociImage([filesEntries([{ path: 'data/mono.bin', data: randomBytes(2 * 1024 * 1024 + 3) }])]);
    doomed = ociImage([filesEntries([{ path: 'data/doomed.bin', data: randomBytes(512 * 1024) }])]);
    const arm = ociImage([filesEntries([{ path: 'etc/platform', data: Buffer.from('linux/arm64\n') }])], { architecture: 'arm64' });
    const amd = ociImage([filesEntries([{ path: 'etc/platform', data: Buffer.from('linux/amd64\n') }])], { architecture: 'amd64' });
    multi = ociIndex([amd, arm]);
    await writeOciLayout(join(work, 'app'), 'v1', app);
    await writeOciLayout(join(work, 'multi'), 'multi', multi);
  }, 120_000);

  afterAll(() => cleanup.run(), 120_000);

  /** Puts everything into the registry at `host`/`url`; returns what it must serve afterwards. */
  async function populate(host: string, url: string): Promise<Expected[]> {
    await skopeo.ok(['copy', '--dest-tls-verify=false', '--preserve-digests', `oci:${join(work, 'app')}:v1`, `docker://${host}/compat/app:oci`]);
    await skopeo.ok(['copy', '--dest-tls-verify=false', '--format', 'v2s2', `oci:${join(work, 'app')}:v1`, `docker://${host}/compat/app:v2s2`]);
    await skopeo.ok(['copy', '--all', '--preserve-digests', '--dest-tls-verify=false', `oci:${join(work, 'multi')}:multi`, `docker://${host}/compat/multi:1`]);
    await pushOciImageHttp(url, 'compat/chunked', '1', chunked, { chunkSize: 1024 * 1024 });
    await pushOciImageHttp(url, 'compat/mono', '1', mono);
    return [
      expectedImage('compat/app', 'oci', app),
      await recordFrom(url, 'compat/app', 'v2s2'),
      expectedIndex('compat/multi', '1', multi),
      expectedImage('compat/chunked', '1', chunked),
      expectedImage('compat/mono', '1', mono),
    ];
  }

  const REPOS = ['compat/app', 'compat/chunked', 'compat/mono', 'compat/multi'];

  /** skopeo copies the OCI image out of `host` into an OCI layout equal to the original. */
  async function expectSkopeoCopiesOut(host: string, name: string): Promise<void> {
    const out = join(work, name);
    await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${host}/compat/app:oci`, `oci:${out}:v1`]);
    expect((await readOciLayoutBlob(out, app.manifestDigest)).equals(app.manifest)).toBe(true);
    for (const [d, b] of blobsOf(app)) expect((await readOciLayoutBlob(out, d)).equals(b)).toBe(true);
    const raw = await skopeo.ok(['inspect', '--raw', '--tls-verify=false', `docker://${host}/compat/multi:1`]);
    expect(Buffer.from(raw.stdout).equals(multi.index)).toBe(true);
  }

  describe('written by Distribution, served by wharf', () => {
    let root: string;
    let expected: Expected[];
    let wharf: WharfProcess;

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-d2w-');
      cleanup.add('d2w root', () => removeTree(root));
      const dist: DistributionProcess = await startDistribution({ root });
      cleanup.add('dist on d2w', () => dist.stop());
      try {
        expected = await populate(dist.host, dist.url);
        for (const e of expected) await expectServes(dist.url, e); // the reference itself agrees
      } finally {
        await dist.stop();
      }
      wharf = await startWharf({ root });
      cleanup.add('wharf on d2w', () => wharf.stop());
    }, 180_000);

    it('lists the same repositories and tags', async () => {
      expect(await catalog(wharf.url)).toEqual(REPOS);
      expect((await listTags(wharf.url, 'compat/app')).tags).toEqual(['oci', 'v2s2']);
      expect((await listTags(wharf.url, 'compat/multi')).tags).toEqual(['1']);
    });

    it('serves every manifest and blob byte for byte (skopeo OCI, v2s2, index; chunked and monolithic HTTP uploads)', async () => {
      for (const e of expected) await expectServes(wharf.url, e);
    }, 60_000);

    it('lets skopeo copy the images out again', async () => {
      await expectSkopeoCopiesOut(wharf.host, 'd2w-out');
    }, 120_000);

    it('accepts a chunked and a monolithic push on top of the Distribution data', async () => {
      await pushOciImageHttp(wharf.url, 'compat/chunked', '2', mono, { chunkSize: 700 * 1024 });
      await pushOciImageHttp(wharf.url, 'compat/mono', '2', chunked);
      await expectServes(wharf.url, expectedImage('compat/chunked', '2', mono));
      await expectServes(wharf.url, expectedImage('compat/mono', '2', chunked));
    }, 60_000);
  });

  describe('written by wharf, served by Distribution', () => {
    let root: string;
    let expected: Expected[];
    let dist: DistributionProcess;

    beforeAll(async () => {
      root = await tempDir('wharf-e2e-w2d-');
      cleanup.add('w2d root', () => removeTree(root));
      const wharf = await startWharf({ root });
      cleanup.add('wharf on w2d', () => wharf.stop({ keepRoot: true }));
      try {
        expected = await populate(wharf.host, wharf.url);
        // An image that is deleted again: Distribution must not see it either.
        await pushOciImageHttp(wharf.url, 'compat/doomed', '1', doomed);
        const del = await fetch(`${wharf.url}/v2/compat/doomed/manifests/${doomed.manifestDigest}`, { method: 'DELETE' });
        expect(del.status).toBe(202);
      } finally {
        await wharf.stop({ keepRoot: true });
      }
    }, 180_000);

    it('passes Distribution garbage-collect --dry-run, every pushed manifest and blob marked', async () => {
      const gc = await distributionGarbageCollect(root, { dryRun: true });
      expect(gc.code, `${gc.stdout}\n${gc.stderr}`).toBe(0);
      const out = gc.stdout + gc.stderr;
      expect(out).not.toMatch(/level=(error|fatal)|failed to/i);
      for (const e of expected) {
        expect(out).toContain(`${e.repo}: marking manifest ${sha256(e.manifest)}`);
        for (const d of e.blobs.keys()) expect(out).toContain(`marking blob ${d}`);
      }
      // Only the deleted image's blobs are garbage.
      const eligible = [...out.matchAll(/blob eligible for deletion: (sha256:[0-9a-f]{64})/g)].map((m) => m[1]).sort();
      expect(eligible).toEqual([...blobsOf(doomed).keys(), doomed.manifestDigest].sort());
    }, 120_000);

    it('is served by Distribution: same repositories, tags, manifests and blobs', async () => {
      dist = await startDistribution({ root });
      cleanup.add('dist on w2d', () => dist.stop());
      expect(await catalog(dist.url)).toEqual([...REPOS, 'compat/doomed'].sort());
      expect((await listTags(dist.url, 'compat/app')).tags).toEqual(['oci', 'v2s2']);
      for (const e of expected) await expectServes(dist.url, e);
      expect((await getManifest(dist.url, 'compat/doomed', doomed.manifestDigest)).status).toBe(404);
      expect((await getManifest(dist.url, 'compat/doomed', '1')).status).toBe(404);
    }, 60_000);

    it('lets skopeo copy the images out of Distribution', async () => {
      await expectSkopeoCopiesOut(dist.host, 'w2d-out');
    }, 120_000);

    it('accepts chunked and monolithic pushes into Distribution on the wharf data', async () => {
      await pushOciImageHttp(dist.url, 'compat/chunked', '2', mono, { chunkSize: 700 * 1024 });
      await pushOciImageHttp(dist.url, 'compat/mono', '2', chunked);
      await expectServes(dist.url, expectedImage('compat/chunked', '2', mono));
    }, 60_000);

    it('still serves everything from wharf after a real garbage-collect removed the deleted image', async () => {
      await dist.stop();
      const gc = await distributionGarbageCollect(root, { dryRun: false });
      expect(gc.code, `${gc.stdout}\n${gc.stderr}`).toBe(0);
      const wharf = await startWharf({ root });
      cleanup.add('wharf after gc', () => wharf.stop({ keepRoot: true }));
      try {
        for (const e of expected) await expectServes(wharf.url, e);
        await expectServes(wharf.url, expectedImage('compat/chunked', '2', mono));
        for (const d of [...blobsOf(doomed).keys()]) expect((await getBlob(wharf.url, 'compat/doomed', d)).status).toBe(404);
      } finally {
        await wharf.stop({ keepRoot: true });
      }
    }, 120_000);
  });
});

describe.skipIf(!dockerAvailable)('docker across Distribution 2.8 and wharf', () => {
  const cleanup = new Cleanup();
  let d: Dockerd;
  let image: DockerImage;

  beforeAll(async () => {
    d = await startDockerd();
    cleanup.add('dockerd', () => d.stop());
    image = await importBaseImage(d, 'wharf-e2e/compat:1');
  }, 180_000);

  afterAll(() => cleanup.run(), 120_000);

  it('pulls from wharf what docker pushed to Distribution, and from Distribution what it pushed to wharf', async () => {
    const distRoot = await tempDir('wharf-e2e-dd-');
    cleanup.add('dist root', () => removeTree(distRoot));
    const wharfRoot = await tempDir('wharf-e2e-dw-');
    cleanup.add('wharf root', () => removeTree(wharfRoot));

    const dist = await startDistribution({ root: distRoot });
    cleanup.add('dist', () => dist.stop());
    const wharf = await startWharf({ root: wharfRoot });
    cleanup.add('wharf', () => wharf.stop({ keepRoot: true }));
    const pushed: Record<string, string> = {};
    try {
      for (const [name, host] of [['dist', dist.host], ['wharf', wharf.host]] as const) {
        await d.dockerOk(['tag', image.ref, `${host}/docker/app:1`]);
        const push = await d.dockerOk(['push', `${host}/docker/app:1`]);
        pushed[name] = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)?.[1] ?? 'none';
      }
    } finally {
      await dist.stop();
      await wharf.stop({ keepRoot: true });
    }
    expect(pushed.dist).toBe(pushed.wharf); // same image, same manifest

    // Swap: wharf serves Distribution's directory and the other way round.
    const wharf2 = await startWharf({ root: distRoot });
    cleanup.add('wharf on dist root', () => wharf2.stop());
    const dist2 = await startDistribution({ root: wharfRoot });
    cleanup.add('dist on wharf root', () => dist2.stop());
    const ids = (await d.dockerOk(['images', '-aq'])).stdout.split('\n').filter(Boolean);
    await d.dockerOk(['rmi', '-f', ...new Set(ids)]);
    for (const host of [wharf2.host, dist2.host]) {
      const pull = await d.dockerOk(['pull', `${host}/docker/app:1`]);
      expect(pull.stdout).toContain(`Digest: ${pushed.dist}`);
      const out = (await d.dockerOk(['run', '--rm', '--network', 'none', `${host}/docker/app:1`, 'sha256sum', '/data/small.bin'])).stdout;
      expect(out.trim()).toBe(`${image.files['/data/small.bin']}  /data/small.bin`);
    }
  }, 180_000);
});
