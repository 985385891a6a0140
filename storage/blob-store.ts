// Content-addressed bytes shared by all repositories: blobs/<alg>/<xx>/<hex>/data.
//
// The bytes at a digest never change, but whether they exist does: garbage collection
// (Distribution's, later wharf's own), another replica or another process on the same
// root can delete a blob at any moment. So the in-memory facts kept here are split:
// - content (small blobs: manifests) is cached without expiry: it cannot change;
// - presence (a size) is a hint that expires after `presenceTtlMs`, like link reads,
//   and is dropped whenever storage says the blob is gone.
// Reads may trust the hints. Anything that acknowledges a write (upload completion, a
// mount, a manifest's reference check) asks storage through stored(), never a hint.
import type { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { isPathNotFound, type StorageDriver } from './driver.js';
import { digestOf, type Digest } from './digest.js';
import { blobData, blobDir } from './paths.js';

export interface BlobStoreOptions {
  /** Bytes of small blob content (manifests) kept in memory. */
  contentCacheBytes?: number;
  /** How long a blob seen in storage is believed present without asking again (0: always ask). */
  presenceTtlMs?: number;
}

export class BlobStore {
  // lru-cache allocates its index arrays for `max` entries up front (~30 bytes each), so
  // the bounds are sized for the hot set, not the whole registry.
  private readonly sizes: LRUCache<string, number> | undefined;
  private readonly contents: LRUCache<string, Buffer>;

  constructor(
    private readonly driver: StorageDriver,
    options: BlobStoreOptions = {},
  ) {
    const ttl = options.presenceTtlMs ?? 1000;
    this.sizes = ttl > 0 ? new LRUCache<string, number>({ max: 100_000, ttl }) : undefined;
    this.contents = new LRUCache<string, Buffer>({
      maxSize: options.contentCacheBytes ?? 64 * 1024 * 1024,
      sizeCalculation: (b) => Math.max(1, b.length),
    });
  }

  /** The blob's size, or undefined when it is not stored. May answer from a recent hint: for reads only. */
  async size(digest: Digest): Promise<number | undefined> {
    const known = this.sizes?.get(digest.value);
    if (known !== undefined) return known;
    return this.stored(digest);
  }

  /** The blob's size as storage says it now, or undefined: for decisions that acknowledge a write. */
  async stored(digest: Digest): Promise<number | undefined> {
    try {
      const info = await this.driver.stat(blobData(digest));
      this.sizes?.set(digest.value, info.size);
      return info.size;
    } catch (err) {
      if (isPathNotFound(err)) {
        this.forget(digest);
        return undefined;
      }
      throw err;
    }
  }

  /** Reads [start, end) of a stored blob. Throws PathNotFoundError when it is not stored. */
  async open(digest: Digest, start?: number, end?: number, signal?: AbortSignal): Promise<Readable> {
    try {
      return await this.driver.reader(blobData(digest), start, end, signal);
    } catch (err) {
      if (isPathNotFound(err)) this.forget(digest);
      throw err;
    }
  }

  /** The whole content of a small blob (a manifest), or undefined when it is not stored. */
  async read(digest: Digest): Promise<Buffer | undefined> {
    const cached = this.contents.get(digest.value);
    if (cached) return cached;
    try {
      const content = await this.driver.getContent(blobData(digest));
      this.contents.set(digest.value, content);
      this.sizes?.set(digest.value, content.length);
      return content;
    } catch (err) {
      if (isPathNotFound(err)) {
        this.forget(digest);
        return undefined;
      }
      throw err;
    }
  }

  /**
   * Stores small content under its digest. It is written even when a hint says it is
   * there: replacing a blob with identical bytes is atomic and harmless, and skipping the
   * write on a stale hint would acknowledge content that garbage collection just removed.
   */
  async put(content: Buffer, digest: Digest = digestOf(content)): Promise<Digest> {
    await this.driver.putContent(blobData(digest), content);
    this.sizes?.set(digest.value, content.length);
    this.contents.set(digest.value, content);
    return digest;
  }

  /**
   * Makes the verified file at `source` the blob `digest` by an atomic move, also when
   * the blob seems to exist already (another push won, or a hint is stale): the move
   * replaces identical bytes, so a reader sees the blob whole either way, and a blob
   * deleted meanwhile by garbage collection is restored instead of lost.
   */
  async ingest(source: string, digest: Digest, size: number): Promise<void> {
    await this.driver.move(source, blobData(digest));
    this.sizes?.set(digest.value, size);
  }

  /** Deletes a blob's bytes (eviction, garbage collection); false when it was not stored. */
  async delete(digest: Digest): Promise<boolean> {
    this.forget(digest);
    try {
      await this.driver.delete(blobDir(digest));
      return true;
    } catch (err) {
      if (isPathNotFound(err)) return false;
      throw err;
    } finally {
      this.forget(digest);
    }
  }

  /** Drops cached facts about a blob (storage says it is gone, or garbage collection deleted it). */
  forget(digest: Digest): void {
    this.sizes?.delete(digest.value);
    this.contents.delete(digest.value);
  }
}
