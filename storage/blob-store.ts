// Content-addressed bytes shared by all repositories: blobs/<alg>/<xx>/<hex>/data.
// Content never changes under a digest, so sizes and small contents (manifests) are
// cached in memory without expiry; only garbage collection forgets them.
import type { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { isPathNotFound, type StorageDriver } from './driver.js';
import { digestOf, type Digest } from './digest.js';
import { blobData } from './paths.js';

export interface BlobStoreOptions {
  /** Bytes of small blob content (manifests) kept in memory. */
  contentCacheBytes?: number;
}

export class BlobStore {
  // lru-cache allocates its index arrays for `max` entries up front (~30 bytes each), so
  // the bounds are sized for the hot set, not the whole registry.
  private readonly sizes = new LRUCache<string, number>({ max: 100_000 });
  private readonly contents: LRUCache<string, Buffer>;

  constructor(
    private readonly driver: StorageDriver,
    options: BlobStoreOptions = {},
  ) {
    this.contents = new LRUCache<string, Buffer>({
      maxSize: options.contentCacheBytes ?? 64 * 1024 * 1024,
      sizeCalculation: (b) => Math.max(1, b.length),
    });
  }

  /** The blob's size, or undefined when it is not stored. */
  async size(digest: Digest): Promise<number | undefined> {
    const known = this.sizes.get(digest.value);
    if (known !== undefined) return known;
    try {
      const info = await this.driver.stat(blobData(digest));
      this.sizes.set(digest.value, info.size);
      return info.size;
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Reads [start, end) of a stored blob. Throws PathNotFoundError when it is not stored. */
  open(digest: Digest, start?: number, end?: number, signal?: AbortSignal): Promise<Readable> {
    return this.driver.reader(blobData(digest), start, end, signal);
  }

  /** The whole content of a small blob (a manifest), or undefined when it is not stored. */
  async read(digest: Digest): Promise<Buffer | undefined> {
    const cached = this.contents.get(digest.value);
    if (cached) return cached;
    try {
      const content = await this.driver.getContent(blobData(digest));
      this.contents.set(digest.value, content);
      this.sizes.set(digest.value, content.length);
      return content;
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Stores small content under its digest (idempotent). */
  async put(content: Buffer, digest: Digest = digestOf(content)): Promise<Digest> {
    if ((await this.size(digest)) === undefined) {
      await this.driver.putContent(blobData(digest), content);
    }
    this.sizes.set(digest.value, content.length);
    this.contents.set(digest.value, content);
    return digest;
  }

  /**
   * Makes the verified file at `source` the blob `digest` by an atomic move. When the
   * blob already exists (another push won), the source is deleted instead: content is
   * identical by definition.
   */
  async ingest(source: string, digest: Digest, size: number): Promise<void> {
    if ((await this.size(digest)) !== undefined) {
      await this.driver.delete(source).catch(() => undefined);
      return;
    }
    await this.driver.move(source, blobData(digest));
    this.sizes.set(digest.value, size);
  }

  /** Drops cached facts about a blob (after garbage collection deleted it). */
  forget(digest: Digest): void {
    this.sizes.delete(digest.value);
    this.contents.delete(digest.value);
  }
}
