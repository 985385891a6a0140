// A size limit for the mirror's cache (proxy.cachesize), kept by evicting whole images,
// least recently pulled first.
//
// The unit of eviction is a cached manifest of a mirrored repository: evicting one removes
// its revision (and the tags pointing at it), then deletes each blob it referenced that no
// remaining cached manifest references. So a layer that several cached images share is
// stored once and stays while any of them is cached, and an image is never left half
// there (an offline site could not pull it). Never evicted: local namespaces, anything
// pulled within the last GRACE_MS (a client that just got a manifest is about to ask for
// its blobs), and blobs being downloaded. A client already reading an evicted blob keeps
// reading it (an open file outlives its unlink); one that asks after eviction gets it
// fetched from the upstream again. Nothing a client was promised is lost.
import type { Logger } from 'pino';
import { parseDigest, type Digest } from '../storage/digest.js';
import { baseName, listOrEmpty } from '../storage/link-store.js';
import type { LocalRegistry } from '../storage/local-registry.js';
import { parseStoredManifest } from '../storage/manifest.js';
import { layerDir, revisionsDir } from '../storage/paths.js';

/** A manifest pulled this recently is not evicted (default). */
const GRACE_MS = 60_000;
/** Eviction brings the cache down to this share of the limit, so it does not run on every download. */
const LOW_WATER = 0.9;

interface CachedManifest {
  repo: string;
  digest: Digest;
  /** The manifest's own bytes plus the blobs it references. */
  blobs: Digest[];
  lastUsed: number;
}

export interface CacheLimitCounters {
  evictedManifests: number;
  evictedBlobs: number;
  evictedBytes: number;
}

export class CacheLimit {
  private readonly manifests = new Map<string, CachedManifest>();
  /** Blob digest -> size, for every blob a cached manifest references. */
  private readonly sizes = new Map<string, number>();
  private total = 0;
  private evicting: Promise<void> | undefined;
  private overLimit = false;
  private loaded: Promise<void>;
  readonly counters: CacheLimitCounters = { evictedManifests: 0, evictedBlobs: 0, evictedBytes: 0 };

  constructor(
    private readonly registry: LocalRegistry,
    private readonly maxBytes: number,
    private readonly isLocal: (name: string) => boolean,
    private readonly inProgress: () => Set<string>,
    private readonly logger?: Logger,
    private readonly graceMs = GRACE_MS,
  ) {
    this.loaded = this.load().catch((err: unknown) => logger?.error({ err }, 'could not read the mirror cache for its size limit'));
  }

  /** Bytes the cached images hold now. */
  get bytes(): number {
    return this.total;
  }

  /** Records that a manifest was served (or cached) for `repo`; evicts if the cache is over its limit. */
  async used(repo: string, digest: Digest, content: Buffer): Promise<void> {
    await this.loaded;
    const key = `${repo}@${digest.value}`;
    const known = this.manifests.get(key);
    if (known) {
      known.lastUsed = Date.now();
      return;
    }
    const blobs = referencedBlobs(digest, content);
    this.manifests.set(key, { repo, digest, blobs, lastUsed: Date.now() });
    for (const blob of blobs) await this.account(blob);
    this.scheduleEviction();
  }

  /** Records a blob now in the cache (a download completed). */
  async stored(digest: Digest, size: number): Promise<void> {
    await this.loaded;
    if (!this.sizes.has(digest.value)) {
      this.sizes.set(digest.value, size);
      this.total += size;
    }
    this.scheduleEviction();
  }

  /** Waits for any eviction under way (tests, shutdown). */
  async settle(): Promise<void> {
    await this.loaded;
    while (this.evicting) await this.evicting;
  }

  private async account(blob: Digest): Promise<void> {
    if (this.sizes.has(blob.value)) return;
    const size = await this.registry.blobStore.stored(blob);
    if (size === undefined) return; // not downloaded yet: stored() counts it when it is
    this.sizes.set(blob.value, size);
    this.total += size;
  }

  private scheduleEviction(): void {
    if (this.total <= this.maxBytes || this.evicting) return;
    this.evicting = this.evict()
      .catch((err: unknown) => this.logger?.error({ err }, 'mirror cache eviction failed'))
      .finally(() => {
        this.evicting = undefined;
      });
  }

  private async evict(): Promise<void> {
    const target = this.maxBytes * LOW_WATER;
    const before = this.total;
    const busy = this.inProgress();
    const candidates = [...this.manifests.values()].filter((m) => Date.now() - m.lastUsed >= this.graceMs).sort((a, b) => a.lastUsed - b.lastUsed);
    let evicted = 0;
    for (const victim of candidates) {
      if (this.total <= target) break;
      this.manifests.delete(`${victim.repo}@${victim.digest.value}`);
      try {
        await this.registry.manifestStore.delete(victim.repo, victim.digest.value);
      } catch {
        // already gone (deleted by another process): its blobs are judged below all the same
      }
      this.counters.evictedManifests++;
      evicted++;
      const stillUsed = new Set<string>();
      for (const m of this.manifests.values()) for (const b of m.blobs) stillUsed.add(b.value);
      for (const blob of victim.blobs) {
        if (stillUsed.has(blob.value) || busy.has(blob.value)) continue;
        const size = this.sizes.get(blob.value);
        await this.registry.blobStore.delete(blob);
        await this.registry.links.remove(layerDir(victim.repo, blob));
        if (size !== undefined) {
          this.sizes.delete(blob.value);
          this.total -= size;
          this.counters.evictedBytes += size;
        }
        this.counters.evictedBlobs++;
      }
    }
    if (evicted > 0) {
      this.logger?.info({ evictedManifests: evicted, bytesBefore: before, bytesAfter: this.total, limit: this.maxBytes }, 'mirror cache evicted least recently pulled images');
    }
    // Said once per state change, not on every request while it lasts.
    const over = this.total > this.maxBytes;
    if (over && !this.overLimit) {
      this.logger?.warn({ bytes: this.total, limit: this.maxBytes }, 'mirror cache is over its limit, but all of it was pulled too recently to evict');
    }
    this.overLimit = over;
  }

  /** Reads every cached manifest of the mirrored repositories and the sizes of their blobs. */
  private async load(): Promise<void> {
    const { driver, blobStore } = this.registry;
    for (const repo of await this.registry.repositoryNames()) {
      if (this.isLocal(repo)) continue;
      for (const algDir of await listOrEmpty(driver, revisionsDir(repo))) {
        for (const entry of await listOrEmpty(driver, algDir)) {
          let digest: Digest;
          try {
            digest = parseDigest(`${baseName(algDir)}:${baseName(entry)}`);
          } catch {
            continue;
          }
          const content = await blobStore.read(digest);
          if (!content) continue;
          let lastUsed = 0;
          try {
            lastUsed = (await driver.stat(`${entry}/link`)).modTime.getTime();
          } catch {
            // no link file: oldest
          }
          const blobs = referencedBlobs(digest, content);
          this.manifests.set(`${repo}@${digest.value}`, { repo, digest, blobs, lastUsed });
          for (const blob of blobs) await this.account(blob);
        }
      }
    }
    this.logger?.info({ manifests: this.manifests.size, bytes: this.total, limit: this.maxBytes }, 'mirror cache size read');
    this.scheduleEviction();
  }
}

/** The manifest's own blob and the blobs it references (an index's children are manifests of their own). */
function referencedBlobs(digest: Digest, content: Buffer): Digest[] {
  try {
    return [digest, ...parseStoredManifest(content).blobs];
  } catch {
    return [digest];
  }
}
