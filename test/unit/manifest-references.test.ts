// A manifest PUT checks every blob it references in storage. With thousands of layer entries
// that must neither run thousands of checks at once (on S3 it queued ~6000 requests for ~20 s
// and stalled every other request) nor check one blob more than once.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseDigest } from '../../storage/digest.js';
import type { FileInfo, FileWriter, StorageDriver } from '../../storage/driver.js';
import { FilesystemDriver } from '../../storage/filesystem-driver.js';
import { LocalRegistry } from '../../storage/local-registry.js';
import { REFERENCE_CHECKS_AT_ONCE } from '../../storage/manifest-store.js';
import { RegistryError } from '../../storage/errors.js';

/** A driver that counts its calls and how many run at once; every call takes a little while, so that concurrency shows. */
class CountingDriver implements StorageDriver {
  readonly name: string;
  inFlight = 0;
  maxInFlight = 0;
  /** Paths written with putContent, one entry per call. */
  readonly puts: string[] = [];
  /** Paths read with getContent, one entry per call. */
  readonly gets: string[] = [];

  constructor(private readonly inner: StorageDriver) {
    this.name = inner.name;
  }

  reset(): void {
    this.maxInFlight = 0;
    this.puts.length = 0;
    this.gets.length = 0;
  }

  private async count<T>(call: () => Promise<T>): Promise<T> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return await call();
    } finally {
      this.inFlight--;
    }
  }

  stat(path: string): Promise<FileInfo> {
    return this.count(() => this.inner.stat(path));
  }
  getContent(path: string): Promise<Buffer> {
    this.gets.push(path);
    return this.count(() => this.inner.getContent(path));
  }
  putContent(path: string, content: Uint8Array, options?: { durable?: boolean }): Promise<void> {
    this.puts.push(path);
    return this.count(() => this.inner.putContent(path, content, options));
  }
  reader(path: string, offset?: number, end?: number, signal?: AbortSignal): Promise<Readable> {
    return this.count(() => this.inner.reader(path, offset, end, signal));
  }
  writer(path: string, append: boolean): Promise<FileWriter> {
    return this.count(() => this.inner.writer(path, append));
  }
  list(path: string): Promise<string[]> {
    return this.count(() => this.inner.list(path));
  }
  move(source: string, destination: string): Promise<void> {
    return this.count(() => this.inner.move(source, destination));
  }
  delete(path: string): Promise<void> {
    return this.count(() => this.inner.delete(path));
  }
}

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const LAYER = 'application/vnd.oci.image.layer.v1.tar';
const isLayerLink = (path: string): boolean => path.includes('/_layers/') && path.endsWith('/link');

describe('manifest reference checks', () => {
  let root: string;
  let driver: CountingDriver;
  let registry: LocalRegistry;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-refs-'));
    driver = new CountingDriver(new FilesystemDriver({ rootDirectory: root, fsync: false }));
    registry = new LocalRegistry(driver);
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function pushBlob(repo: string, data: Buffer): Promise<string> {
    const uploads = registry.repository(repo).uploads;
    const { id } = await uploads.start();
    const digest = sha256(data);
    await uploads.complete(id, parseDigest(digest), Readable.from([data]));
    return digest;
  }

  it(`checks each referenced blob once, at most ${REFERENCE_CHECKS_AT_ONCE} at a time, for a manifest of 2000 layer entries`, async () => {
    const repo = 'team/wide';
    const config = await pushBlob(repo, Buffer.from('{"architecture":"amd64","os":"linux"}'));
    const distinct: string[] = [];
    for (let i = 0; i < 40; i++) distinct.push(await pushBlob(repo, Buffer.from(`layer ${i}`)));
    // 2000 entries: the 40 distinct layers, each listed 50 times.
    const layers = Array.from({ length: 2000 }, (_, i) => ({ mediaType: LAYER, digest: distinct[i % 40]!, size: `layer ${i % 40}`.length }));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 37 },
        layers,
      }),
    );
    driver.reset();
    const put = await registry.repository(repo).manifests.put('v1', manifest, 'application/vnd.oci.image.manifest.v1+json');
    expect(put.digest.value).toBe(sha256(manifest));
    // The cap holds, and checks still overlap (one at a time would be slow on S3).
    expect(driver.maxInFlight).toBeLessThanOrEqual(REFERENCE_CHECKS_AT_ONCE);
    expect(driver.maxInFlight).toBeGreaterThan(1);
    // Each of the 41 blobs had its layer link read and re-written exactly once.
    const linkWrites = driver.puts.filter(isLayerLink);
    expect(linkWrites.length).toBe(41);
    expect(new Set(linkWrites).size).toBe(41);
    expect(driver.gets.filter(isLayerLink).length).toBe(41);
    // And it is served.
    const got = await registry.repository(repo).manifests.get('v1');
    expect(got.content.equals(manifest)).toBe(true);
  });

  it('reports a missing blob listed 2000 times once, after one check', async () => {
    const repo = 'team/missing';
    const config = await pushBlob(repo, Buffer.from('{}'));
    const missing = sha256(Buffer.from('never pushed'));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 2 },
        layers: Array.from({ length: 2000 }, () => ({ mediaType: LAYER, digest: missing, size: 12 })),
      }),
    );
    driver.reset();
    const refused = await registry
      .repository(repo)
      .manifests.put('v1', manifest, 'application/vnd.oci.image.manifest.v1+json')
      .then(() => undefined, (err: unknown) => err);
    expect(refused).toBeInstanceOf(RegistryError);
    expect(refused).toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN', detail: { digests: [missing] } });
    expect(driver.gets.filter((p) => isLayerLink(p) && p.includes(missing.slice(7))).length).toBe(1);
    expect(driver.maxInFlight).toBeLessThanOrEqual(REFERENCE_CHECKS_AT_ONCE);
  });

  it('checks a child an index lists for several platforms once', async () => {
    const repo = 'team/index';
    const config = await pushBlob(repo, Buffer.from('{}'));
    const layer = await pushBlob(repo, Buffer.from('layer'));
    const image = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 2 },
        layers: [{ mediaType: LAYER, digest: layer, size: 5 }],
      }),
    );
    const child = (await registry.repository(repo).manifests.put(sha256(image), image, 'application/vnd.oci.image.manifest.v1+json')).digest.value;
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: ['amd64', 'arm64', 'riscv64'].map((architecture) => ({
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: child,
          size: image.length,
          platform: { os: 'linux', architecture },
        })),
      }),
    );
    driver.reset();
    await registry.repository(repo).manifests.put('multi', index, 'application/vnd.oci.image.index.v1+json');
    const revisionReads = driver.gets.filter((p) => p.includes(`/_manifests/revisions/sha256/${child.slice(7)}/link`));
    expect(revisionReads.length).toBe(1);
  });
});
