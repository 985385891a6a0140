// skopeo against wharf: copy an image in from a docker-archive (as Docker schema 2) and from
// an OCI layout (as OCI), copy it back out to oci: and dir: and compare every layer, inspect,
// list tags, delete by digest, and push a two-platform OCI image index with --all.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  busyboxOciImage,
  filesEntries,
  getBlob,
  getManifest,
  listTags,
  MT,
  ociImage,
  ociIndex,
  readOciLayoutBlob,
  requireBusybox,
  sha256,
  sha256hex,
  tarFiles,
  writeOciLayout,
  type OciImage,
  type OciIndex,
} from '../support/images.js';
import { Cleanup, removeTree, tempDir } from '../support/processes.js';
import { all, privateSkopeo, requireTool, type ToolRunner } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(requireTool('skopeo', 'skopeo'), requireBusybox());

interface Inspect {
  Digest: string;
  RepoTags: string[];
  Architecture: string;
  Os: string;
  Layers: string[];
}

interface ImageManifest {
  mediaType: string;
  config: { mediaType: string; digest: string; size: number };
  layers: Array<{ mediaType: string; digest: string; size: number }>;
}

describe.skipIf(!available)('skopeo against wharf', () => {
  const cleanup = new Cleanup();
  let wharf: WharfProcess;
  let work: string;
  let skopeo: ToolRunner;
  let image: OciImage;
  let srcLayout: string;
  let archive: string;
  let v2s2Digest: string;

  const ref = (repoAndTag: string): string => `docker://${wharf.host}/${repoAndTag}`;
  const inspect = async (r: string): Promise<Inspect> =>
    JSON.parse((await skopeo.ok(['inspect', '--tls-verify=false', r])).stdout) as Inspect;
  const inspectRaw = async (r: string): Promise<Buffer> => {
    const res = await skopeo.ok(['inspect', '--raw', '--tls-verify=false', r]);
    return Buffer.from(res.stdout, 'utf8');
  };

  beforeAll(async () => {
    wharf = await startWharf();
    cleanup.add('wharf', () => wharf.stop());
    work = await tempDir('wharf-e2e-skopeo-');
    cleanup.add('work dir', () => removeTree(work));
    skopeo = await privateSkopeo(work);
    image = await busyboxOciImage([
      [{ path: 'data/random.bin', data: randomBytes(8 * 1024 * 1024 + 123) }],
      [{ path: 'data/hello.txt', data: Buffer.from(`hello ${randomBytes(4).toString('hex')}\n`) }],
    ]);
    srcLayout = join(work, 'src');
    await writeOciLayout(srcLayout, 'v1', image);
    archive = join(work, 'app.tar');
    await skopeo.ok(['copy', `oci:${srcLayout}:v1`, `docker-archive:${archive}:wharf-e2e/app:v1`]);
  }, 120_000);

  afterAll(() => cleanup.run(), 60_000);

  it('copies a docker-archive in as Docker schema 2 and back out to dir: with the same layer contents', async () => {
    await skopeo.ok(['copy', '--dest-tls-verify=false', '--format', 'v2s2', `docker-archive:${archive}`, ref('skopeo/app:v2s2')]);

    const m = await getManifest(wharf.url, 'skopeo/app', 'v2s2');
    expect(m.status).toBe(200);
    expect(m.contentType).toBe(MT.dockerManifest);
    v2s2Digest = sha256(m.body);
    expect(m.digest).toBe(v2s2Digest);
    const manifest = JSON.parse(m.body.toString()) as ImageManifest;
    expect(manifest.mediaType).toBe(MT.dockerManifest);
    expect(manifest.layers.map((l) => l.mediaType)).toEqual([MT.dockerLayerGzip, MT.dockerLayerGzip, MT.dockerLayerGzip]);
    // The layers were recompressed, but what they unpack to is what we built.
    const config = JSON.parse((await getBlob(wharf.url, 'skopeo/app', manifest.config.digest)).body.toString()) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids).toEqual(image.layers.map((l) => l.diffId));

    const info = await inspect(ref('skopeo/app:v2s2'));
    expect(info.Digest).toBe(v2s2Digest);
    expect(info.Architecture).toBe(image.platform.architecture);
    expect(info.Layers).toEqual(manifest.layers.map((l) => l.digest));

    const out = join(work, 'out-dir');
    await skopeo.ok(['copy', '--src-tls-verify=false', ref('skopeo/app:v2s2'), `dir:${out}`]);
    expect(sha256(await readFile(join(out, 'manifest.json')))).toBe(v2s2Digest);
    for (const [i, layer] of manifest.layers.entries()) {
      const blob = await readFile(join(out, layer.digest.slice('sha256:'.length)));
      expect(sha256(blob)).toBe(layer.digest);
      expect(blob.length).toBe(layer.size);
      const tar = gunzipSync(blob);
      expect(sha256(tar)).toBe(image.layers[i]!.diffId);
    }
    const files = tarFiles(gunzipSync(await readFile(join(out, manifest.layers[1]!.digest.slice(7)))));
    expect(sha256hex(files.get('data/random.bin')!)).toBe(image.files['/data/random.bin']);
  }, 120_000);

  it('copies an OCI layout in as OCI unchanged and back out to oci: byte for byte', async () => {
    // --preserve-digests: otherwise skopeo's blob-info cache may swap in the recompressed
    // layers the v2s2 copy already put in this repository, and rewrite the manifest.
    const digestFile = join(work, 'oci.digest');
    await skopeo.ok([
      'copy', '--dest-tls-verify=false', '--format', 'oci', '--preserve-digests', '--digestfile', digestFile,
      `oci:${srcLayout}:v1`, ref('skopeo/app:oci'),
    ]);
    expect((await readFile(digestFile, 'utf8')).trim()).toBe(image.manifestDigest);

    expect((await inspectRaw(ref('skopeo/app:oci'))).equals(image.manifest)).toBe(true);
    const m = await getManifest(wharf.url, 'skopeo/app', 'oci');
    expect(m.contentType).toBe(MT.ociManifest);
    expect(m.digest).toBe(image.manifestDigest);
    const info = await inspect(ref('skopeo/app:oci'));
    expect(info.Digest).toBe(image.manifestDigest);
    expect(info.Layers).toEqual(image.layers.map((l) => l.digest));

    const out = join(work, 'out-oci');
    await skopeo.ok(['copy', '--src-tls-verify=false', ref('skopeo/app:oci'), `oci:${out}:copied`]);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    expect(index.manifests.map((d) => d.digest)).toEqual([image.manifestDigest]);
    expect((await readOciLayoutBlob(out, image.manifestDigest)).equals(image.manifest)).toBe(true);
    expect((await readOciLayoutBlob(out, image.configDigest)).equals(image.config)).toBe(true);
    for (const layer of image.layers) expect((await readOciLayoutBlob(out, layer.digest)).equals(layer.blob)).toBe(true);
  }, 120_000);

  it('lists the tags', async () => {
    const tags = JSON.parse((await skopeo.ok(['list-tags', '--tls-verify=false', ref('skopeo/app')])).stdout) as { Tags: string[] };
    expect([...tags.Tags].sort()).toEqual(['oci', 'v2s2']);
    expect([...(await inspect(ref('skopeo/app:oci'))).RepoTags].sort()).toEqual(['oci', 'v2s2']);
  }, 60_000);

  it('copies between two repositories of wharf', async () => {
    const copy = await skopeo.ok(['copy', '--preserve-digests', '--src-tls-verify=false', '--dest-tls-verify=false', ref('skopeo/app:oci'), ref('skopeo/copy:1')]);
    expect(copy.code).toBe(0);
    expect((await inspectRaw(ref('skopeo/copy:1'))).equals(image.manifest)).toBe(true);
    for (const layer of image.layers) {
      const blob = await getBlob(wharf.url, 'skopeo/copy', layer.digest);
      expect(blob.status).toBe(200);
      expect(blob.body.equals(layer.blob)).toBe(true);
    }
  }, 120_000);

  it('deletes a manifest by digest; it and its tag are gone, the other tag stays', async () => {
    await skopeo.ok(['delete', '--tls-verify=false', ref(`skopeo/app@${v2s2Digest}`)]);

    const gone = await skopeo(['inspect', '--tls-verify=false', ref(`skopeo/app@${v2s2Digest}`)]);
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toMatch(/manifest unknown|not found/i);
    expect((await getManifest(wharf.url, 'skopeo/app', v2s2Digest)).status).toBe(404);
    expect((await getManifest(wharf.url, 'skopeo/app', 'v2s2')).status).toBe(404);
    expect((await listTags(wharf.url, 'skopeo/app')).tags).toEqual(['oci']);
    expect((await inspect(ref('skopeo/app:oci'))).Digest).toBe(image.manifestDigest);
  }, 60_000);

  describe('a two-platform OCI image index', () => {
    let index: OciIndex;
    let arm: OciImage;

    beforeAll(async () => {
      arm = ociImage([filesEntries([{ path: 'etc/platform', data: Buffer.from('linux/arm64\n') }])], { architecture: 'arm64' });
      const amd = image.platform.architecture === 'arm64' ? ociImage([filesEntries([{ path: 'etc/platform', data: Buffer.from('linux/amd64\n') }])], { architecture: 'amd64' }) : image;
      index = ociIndex([amd, arm]);
      await writeOciLayout(join(work, 'multi'), 'multi', index);
    });

    it('copies it with --all and serves the index byte for byte', async () => {
      await skopeo.ok(['copy', '--all', '--preserve-digests', '--dest-tls-verify=false', `oci:${join(work, 'multi')}:multi`, ref('skopeo/multi:1')]);

      expect((await inspectRaw(ref('skopeo/multi:1'))).equals(index.index)).toBe(true);
      const m = await getManifest(wharf.url, 'skopeo/multi', '1');
      expect(m.contentType).toBe(MT.ociIndex);
      expect(m.digest).toBe(index.indexDigest);
      for (const child of index.images) {
        expect((await inspectRaw(ref(`skopeo/multi@${child.manifestDigest}`))).equals(child.manifest)).toBe(true);
      }
      // A client on arm64 resolves the index to the arm64 image.
      const armInfo = JSON.parse(
        (await skopeo.ok(['--override-arch', 'arm64', '--override-os', 'linux', 'inspect', '--tls-verify=false', ref('skopeo/multi:1')])).stdout,
      ) as Inspect;
      expect(armInfo.Architecture).toBe('arm64');
      expect(armInfo.Digest).toBe(index.indexDigest); // skopeo reports the digest one pulls by: the index's
      expect(armInfo.Layers).toEqual(arm.layers.map((l) => l.digest));
    }, 120_000);

    it('copies it back out with --all, every platform included', async () => {
      const out = join(work, 'multi-out');
      await skopeo.ok(['copy', '--all', '--src-tls-verify=false', ref('skopeo/multi:1'), `oci:${out}:multi`]);
      const top = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; mediaType: string }> };
      expect(top.manifests.map((d) => [d.mediaType, d.digest])).toEqual([[MT.ociIndex, index.indexDigest]]);
      expect((await readOciLayoutBlob(out, index.indexDigest)).equals(index.index)).toBe(true);
      for (const child of index.images) {
        expect((await readOciLayoutBlob(out, child.manifestDigest)).equals(child.manifest)).toBe(true);
        for (const layer of child.layers) expect((await readOciLayoutBlob(out, layer.digest)).equals(layer.blob)).toBe(true);
      }
    }, 120_000);
  });
});
