// docker against wharf: a private dockerd pushes a three-layer image (one layer is 50 MiB of
// random data) to wharf, forgets it, pulls it back by tag and by digest, and runs it; a second
// tag and a second repository reuse the blobs already there.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import { buildMultiLayerImage, getBlob, getManifest, listTags, catalog, MT, requireBusybox, sha256, type DockerImage } from '../support/images.js';
import { Cleanup } from '../support/processes.js';
import { all, requireRoot, requireTools } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(requireTools(DOCKERD_TOOLS), requireBusybox(), requireRoot('a private dockerd'));

const BIG = 50 * 1024 * 1024;

/** `1.0: digest: sha256:... size: 1234` from `docker push` output. */
function pushedDigest(output: string): string {
  const m = /digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(output);
  if (!m) throw new Error(`no digest in docker push output:\n${output}`);
  return m[1]!;
}

const count = (text: string, needle: string): number => text.split(needle).length - 1;

describe.skipIf(!available)('docker push and pull against wharf', () => {
  const cleanup = new Cleanup();
  let wharf: WharfProcess;
  let d: Dockerd;
  let image: DockerImage;
  let repo: string; // 127.0.0.1:PORT/team/app
  let digest: string;

  beforeAll(async () => {
    wharf = await startWharf();
    cleanup.add('wharf', () => wharf.stop());
    d = await startDockerd();
    cleanup.add('dockerd', () => d.stop());
    image = await buildMultiLayerImage(d, 'wharf-e2e/app:1.0', { bigBytes: BIG });
    repo = `${wharf.host}/team/app`;
  }, 240_000);

  afterAll(() => cleanup.run(), 120_000);

  /** Removes every image from the private daemon so that a pull has to download everything. */
  async function forgetAllImages(): Promise<void> {
    // Top-level images first; their untagged parents (classic-builder steps) go with them.
    for (let round = 0; round < 5; round++) {
      const ids = (await d.dockerOk(['images', '-aq'])).stdout.split('\n').filter(Boolean);
      if (ids.length === 0) break;
      await d.docker(['rmi', '-f', ...new Set(ids)]);
    }
    expect((await d.dockerOk(['images', '-aq'])).stdout.trim()).toBe('');
  }

  /** Runs the image offline and checks every file against the checksums taken when it was made. */
  async function expectContents(ref: string): Promise<void> {
    const paths = Object.keys(image.files);
    const out = (await d.dockerOk(['run', '--rm', '--network', 'none', ref, 'sha256sum', ...paths])).stdout;
    for (const path of paths) expect(out).toContain(`${image.files[path]}  ${path}`);
    const big = (await d.dockerOk(['run', '--rm', '--network', 'none', ref, 'sha256sum', '/data/random.bin'])).stdout;
    expect(big.trim()).toBe(`${image.files['/data/random.bin']}  /data/random.bin`);
  }

  it('pushes a three-layer image with a 50 MiB layer', async () => {
    await d.dockerOk(['tag', image.ref, `${repo}:1.0`]);
    const push = await d.dockerOk(['push', `${repo}:1.0`]);
    expect(count(push.stdout, ': Pushed')).toBe(3);
    digest = pushedDigest(push.stdout);

    // What the registry now serves is what docker pushed, byte for byte.
    const m = await getManifest(wharf.url, 'team/app', '1.0');
    expect(m.status).toBe(200);
    expect(m.digest).toBe(digest);
    expect(sha256(m.body)).toBe(digest);
    expect(m.contentType).toBe(MT.dockerManifest);
    const manifest = JSON.parse(m.body.toString()) as { config: { digest: string }; layers: Array<{ digest: string; size: number }> };
    expect(manifest.layers).toHaveLength(3);
    expect(Math.max(...manifest.layers.map((l) => l.size))).toBeGreaterThanOrEqual(BIG);
    for (const desc of [manifest.config, ...manifest.layers]) {
      const blob = await getBlob(wharf.url, 'team/app', desc.digest);
      expect(blob.status).toBe(200);
      expect(sha256(blob.body)).toBe(desc.digest);
    }
  }, 180_000);

  it('pulls it back by tag after every local copy is gone, and it runs with the same data', async () => {
    await forgetAllImages();
    const pull = await d.dockerOk(['pull', `${repo}:1.0`]);
    expect(count(pull.stdout, ': Pull complete')).toBe(3);
    expect(pull.stdout).toContain(`Digest: ${digest}`);
    const repoDigest = (await d.dockerOk(['inspect', '--format', '{{index .RepoDigests 0}}', `${repo}:1.0`])).stdout.trim();
    expect(repoDigest).toBe(`${repo}@${digest}`);
    await expectContents(`${repo}:1.0`);
  }, 180_000);

  it('pulls it by digest', async () => {
    await forgetAllImages();
    const pull = await d.dockerOk(['pull', `${repo}@${digest}`]);
    expect(count(pull.stdout, ': Pull complete')).toBe(3);
    await expectContents(`${repo}@${digest}`);
  }, 180_000);

  it('pushes a second tag without uploading a layer again', async () => {
    // The image is present locally (pulled by digest); give it two tags.
    await d.dockerOk(['tag', `${repo}@${digest}`, `${repo}:1.1`]);
    const push = await d.dockerOk(['push', `${repo}:1.1`]);
    expect(count(push.stdout, ': Layer already exists')).toBe(3);
    expect(count(push.stdout, ': Pushed')).toBe(0);
    expect(pushedDigest(push.stdout)).toBe(digest);
    expect((await listTags(wharf.url, 'team/app')).tags).toEqual(['1.0', '1.1']);
    expect((await getManifest(wharf.url, 'team/app', '1.1')).digest).toBe(digest);
  }, 120_000);

  it('pushes to another repository by mounting the blobs from the first', async () => {
    await d.dockerOk(['tag', `${repo}@${digest}`, `${wharf.host}/team/other:1.0`]);
    const push = await d.dockerOk(['push', `${wharf.host}/team/other:1.0`]);
    expect(count(push.stdout, ': Mounted from team/app')).toBe(3);
    expect(pushedDigest(push.stdout)).toBe(digest);
    expect(await catalog(wharf.url)).toEqual(['team/app', 'team/other']);

    await forgetAllImages();
    await d.dockerOk(['pull', `${wharf.host}/team/other:1.0`]);
    await expectContents(`${wharf.host}/team/other:1.0`);
  }, 180_000);

  it('reports an unknown tag as not found', async () => {
    const pull = await d.docker(['pull', `${repo}:no-such-tag`]);
    expect(pull.code).not.toBe(0);
    expect(pull.stderr).toMatch(/manifest unknown|not found/i);
  }, 60_000);
});
