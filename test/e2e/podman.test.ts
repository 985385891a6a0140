// podman against wharf: load an image from an oci-archive, push it as OCI, as Docker schema 2
// and with zstd layers, forget it, pull it back by tag and by digest, and run it offline.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxOciImage, getBlob, getManifest, listTags, MT, requireBusybox, sha256, writeOciArchive, type OciImage } from '../support/images.js';
import { Cleanup, removeTree, tempDir } from '../support/processes.js';
import { all, privatePodman, requireRoot, requireTools, type PodmanRunner } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(
  requireTools([
    ['podman', 'podman'],
    ['conmon', 'conmon'],
    ['runc', 'runc'],
  ]),
  requireBusybox(),
  requireRoot('rootful podman with private storage'),
);

interface ImageManifest {
  mediaType: string;
  config: { digest: string };
  layers: Array<{ mediaType: string; digest: string; size: number }>;
}

describe.skipIf(!available)('podman push and pull against wharf', () => {
  const cleanup = new Cleanup();
  let wharf: WharfProcess;
  let podman: PodmanRunner;
  let work: string;
  let image: OciImage;
  let repo: string;
  const digests: Record<string, string> = {};
  const RUN = ['run', '--rm', '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024'];
  const LOCAL = 'localhost/wharf-e2e/app:1';

  beforeAll(async () => {
    wharf = await startWharf();
    cleanup.add('wharf', () => wharf.stop());
    work = await tempDir('wharf-e2e-podman-');
    cleanup.add('work dir', () => removeTree(work));
    podman = await privatePodman(work);
    cleanup.add('podman', () => podman.cleanup());
    repo = `${wharf.host}/pod/app`;
    image = await busyboxOciImage([
      [{ path: 'data/random.bin', data: randomBytes(6 * 1024 * 1024 + 7) }],
      [{ path: 'data/hello.txt', data: Buffer.from(`hello from podman ${randomBytes(4).toString('hex')}\n`) }],
    ]);
    const archive = join(work, 'app.oci.tar');
    await writeOciArchive(archive, 'wharf-e2e/app:1', image);
    const load = await podman.ok(['load', '--signature-policy', podman.policy, '-i', archive]);
    expect(load.stdout).toContain(LOCAL);
  }, 120_000);

  afterAll(() => cleanup.run(), 120_000);

  async function push(
    tag: string,
    extra: string[],
    blobInfoCache?: string,
  ): Promise<{ digest: string; manifest: ImageManifest; contentType: string | null }> {
    const digestFile = join(work, `${tag}.digest`);
    const args = ['push', '--signature-policy', podman.policy, '--tls-verify=false', '--digestfile', digestFile, ...extra, LOCAL, `${repo}:${tag}`];
    await podman.ok(args, blobInfoCache === undefined ? {} : { blobInfoCache });
    const digest = (await readFile(digestFile, 'utf8')).trim();
    const m = await getManifest(wharf.url, 'pod/app', tag);
    expect(m.status).toBe(200);
    expect(m.digest).toBe(digest);
    expect(sha256(m.body)).toBe(digest);
    const manifest = JSON.parse(m.body.toString()) as ImageManifest;
    // Whatever the compression, the image unpacks to the layers we built.
    const config = JSON.parse((await getBlob(wharf.url, 'pod/app', manifest.config.digest)).body.toString()) as { rootfs: { diff_ids: string[] } };
    expect(config.rootfs.diff_ids).toEqual(image.layers.map((l) => l.diffId));
    for (const layer of manifest.layers) {
      const blob = await getBlob(wharf.url, 'pod/app', layer.digest);
      expect(blob.status).toBe(200);
      expect(sha256(blob.body)).toBe(layer.digest);
    }
    digests[tag] = digest;
    return { digest, manifest, contentType: m.contentType };
  }

  async function forgetAll(): Promise<void> {
    await podman.ok(['rmi', '--all', '--force']);
    expect((await podman.ok(['images', '--quiet'])).stdout.trim()).toBe('');
  }

  async function expectRuns(ref: string): Promise<void> {
    const sums = (await podman.ok([...RUN, ref, 'sha256sum', '/data/random.bin', '/data/hello.txt'])).stdout;
    expect(sums).toContain(`${image.files['/data/random.bin']}  /data/random.bin`);
    expect(sums).toContain(`${image.files['/data/hello.txt']}  /data/hello.txt`);
    const hello = (await podman.ok([...RUN, ref, 'cat', '/data/hello.txt'])).stdout;
    expect(sha256(Buffer.from(hello))).toBe(`sha256:${image.files['/data/hello.txt']}`);
  }

  it('pushes an OCI image', async () => {
    const { manifest, contentType } = await push('oci', ['--format', 'oci']);
    expect(contentType).toBe(MT.ociManifest);
    expect(manifest.layers).toHaveLength(3);
  }, 120_000);

  it('pushes the same image as Docker schema 2', async () => {
    const { manifest, contentType } = await push('v2s2', ['--format', 'v2s2']);
    expect(contentType).toBe(MT.dockerManifest);
    expect(manifest.layers.map((l) => l.mediaType)).toEqual([MT.dockerLayerGzip, MT.dockerLayerGzip, MT.dockerLayerGzip]);
  }, 120_000);

  it('pushes it with zstd-compressed layers', async () => {
    // A fresh blob-info cache: podman would otherwise reuse the gzip layers pushed above.
    const { manifest } = await push('zstd', ['--format', 'oci', '--compression-format', 'zstd'], join(work, 'bic-zstd'));
    expect(manifest.layers.map((l) => l.mediaType)).toEqual(Array(3).fill('application/vnd.oci.image.layer.v1.tar+zstd'));
    expect((await listTags(wharf.url, 'pod/app')).tags).toEqual(['oci', 'v2s2', 'zstd']);
  }, 120_000);

  it('pulls the OCI image back by tag and runs it', async () => {
    await forgetAll();
    await podman.ok(['pull', '--signature-policy', podman.policy, '--tls-verify=false', `${repo}:oci`]);
    const digest = (await podman.ok(['image', 'inspect', '--format', '{{.Digest}}', `${repo}:oci`])).stdout.trim();
    expect(digest).toBe(digests.oci);
    await expectRuns(`${repo}:oci`);
  }, 180_000);

  it('pulls the Docker schema 2 image by digest and runs it', async () => {
    await forgetAll();
    await podman.ok(['pull', '--signature-policy', podman.policy, '--tls-verify=false', `${repo}@${digests.v2s2}`]);
    await expectRuns(`${repo}@${digests.v2s2}`);
  }, 180_000);

  it('pulls the zstd image and runs it', async () => {
    await forgetAll();
    await podman.ok(['pull', '--signature-policy', podman.policy, '--tls-verify=false', `${repo}:zstd`]);
    await expectRuns(`${repo}:zstd`);
  }, 180_000);
});
