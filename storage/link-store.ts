// Link files: small files holding a digest string, the way Distribution records that a
// blob or manifest belongs to a repository and where a tag points. Reads are cached for
// `ttlMs`: this process's own writes update the cache at once; writes by another
// process (another replica, a Distribution on the same directory) show after the TTL.
// The cache is a hint; the driver is the truth.
import { LRUCache } from 'lru-cache';
import { isPathNotFound, type StorageDriver } from './driver.js';
import { parseDigest, type Digest } from './digest.js';

export class LinkStore {
  private readonly cache: LRUCache<string, Digest> | undefined;

  constructor(
    private readonly driver: StorageDriver,
    ttlMs: number,
  ) {
    this.cache = ttlMs > 0 ? new LRUCache<string, Digest>({ max: 50_000, ttl: ttlMs }) : undefined;
  }

  /**
   * The digest in a link file, or undefined when there is no such link (or it is corrupt).
   * `fresh` asks storage instead of the cache: for checks that acknowledge a write.
   */
  async read(path: string, options?: { fresh?: boolean }): Promise<Digest | undefined> {
    const cached = options?.fresh ? undefined : this.cache?.get(path);
    if (cached) return cached;
    let content: Buffer;
    try {
      content = await this.driver.getContent(path);
    } catch (err) {
      if (isPathNotFound(err)) {
        this.cache?.delete(path);
        return undefined;
      }
      throw err;
    }
    let digest: Digest;
    try {
      digest = parseDigest(content.toString('utf8').trim());
    } catch {
      return undefined; // a torn or foreign link file counts as absent, never as a path
    }
    this.cache?.set(path, digest);
    return digest;
  }

  async write(path: string, digest: Digest): Promise<void> {
    await this.driver.putContent(path, Buffer.from(digest.value));
    this.cache?.set(path, digest);
  }

  /** Deletes the directory holding a link (or any path) and forgets cached links below it. */
  async remove(path: string): Promise<boolean> {
    this.forget(path);
    try {
      await this.driver.delete(path);
      return true;
    } catch (err) {
      if (isPathNotFound(err)) return false;
      throw err;
    } finally {
      this.forget(path);
    }
  }

  private forget(prefix: string): void {
    if (!this.cache) return;
    for (const key of this.cache.keys()) {
      if (key === prefix || key.startsWith(`${prefix}/`)) this.cache.delete(key);
    }
  }
}

/** Lists a directory, treating a missing one as empty. */
export async function listOrEmpty(driver: StorageDriver, path: string): Promise<string[]> {
  try {
    return await driver.list(path);
  } catch (err) {
    if (isPathNotFound(err)) return [];
    throw err;
  }
}

export const baseName = (path: string): string => path.slice(path.lastIndexOf('/') + 1);
