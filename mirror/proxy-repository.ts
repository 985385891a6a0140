// A mirrored repository: the same Repository interface as a local one, answered from the
// local cache and filled from the upstream registry. Routes never know which they talk to.
//
// - Blobs are immutable: a cached blob is served locally; a missing one joins (or starts)
//   the single download of its digest (blob-downloads.ts). A blob already cached for
//   another repository is linked, not fetched again.
// - Manifests by digest are immutable: cached once, never revalidated.
// - Manifests by tag are trusted for `tagTtlMs` after the upstream last confirmed them;
//   after that a HEAD asks the upstream (Docker Hub does not count HEADs against its
//   pull limit) and the same digest means the cached bytes are served.
// - When the upstream cannot answer (down, 5xx, 429), whatever is cached is served,
//   stale tags included; anything else fails fast with 503 (never 429: dockerd treats a
//   429 from a mirror as final and does not fall back to the upstream itself).
// - Pushes and deletes are refused: a mirror's content belongs to its upstream.
import type { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { digestOf, isDigest, parseDigest, type Digest } from '../storage/digest.js';
import { RegistryError, isRegistryError } from '../storage/errors.js';
import type { LocalRegistry } from '../storage/local-registry.js';
import { MediaType, type Descriptor, type ParsedManifest } from '../storage/manifest.js';
import { isValidTag } from '../storage/names.js';
import { layerLink } from '../storage/paths.js';
import type {
  BlobInfo,
  BlobReadResult,
  BlobService,
  ByteRange,
  ManifestContent,
  ManifestService,
  ReferrerService,
  Repository,
  TagService,
  UploadService,
} from '../storage/repository.js';
import type { BlobDownloads, BlobResponse } from './blob-downloads.js';
import type { BandwidthLimit } from './bandwidth.js';
import type { CacheLimit } from './cache-limit.js';
import { isUpstreamDenied, isUpstreamUnavailable } from './upstream-errors.js';

/** A manifest as the upstream answered it. */
export interface UpstreamManifest {
  digest: Digest;
  mediaType: string;
  size: number;
  /** The bytes (GET only), already checked against `digest`. */
  content?: Buffer;
}

/** What the mirror needs of an upstream registry (mirror/upstream-client.ts implements it). */
export interface Upstream {
  /** Undefined when the upstream does not know the manifest. Throws when it cannot answer. */
  manifest(repo: string, reference: string, options: { method: 'GET' | 'HEAD'; accept: string[]; signal?: AbortSignal }): Promise<UpstreamManifest | undefined>;
  /** Undefined when the upstream does not have the blob. */
  blob(repo: string, digest: Digest, options: { offset?: number; signal?: AbortSignal }): Promise<BlobResponse | undefined>;
  /** The upstream's referrers index; undefined when it has no referrers API. */
  referrers(repo: string, subject: Digest, artifactType?: string): Promise<{ content: Buffer; filtered: boolean } | undefined>;
  /** Every tag; undefined when the repository does not exist upstream. */
  tags(repo: string): Promise<string[] | undefined>;
}



/** Every manifest type the mirror stores: it asks for all of them and never converts. */
export const ACCEPT_ALL_MANIFESTS = [
  MediaType.OciIndex,
  MediaType.OciManifest,
  MediaType.DockerManifestList,
  MediaType.DockerManifest,
  MediaType.DockerSchema1Signed,
  MediaType.DockerSchema1,
];

export interface MirrorCounters {
  hits: number;
  misses: number;
  staleServed: number;
  /** Requests that failed because the upstream did (and nothing was cached). */
  unserved: number;
}

/** What every ProxyRepository of one upstream shares. */
export interface MirrorContext {
  registry: LocalRegistry;
  upstream: Upstream;
  downloads: BlobDownloads;
  /** How long a tag is served from the cache before the upstream is asked again. */
  tagTtlMs: number;
  /** Tag freshness: `<local name>:<tag>` -> when the upstream last confirmed it. */
  tagCheckedAt: LRUCache<string, number>;
  /** Manifest fetches under way, for single-flight: `<local name>@<reference>`. */
  manifestFetches: Map<string, Promise<ManifestContent>>;
  counters: MirrorCounters;
  logger?: Logger;
  /** Layers of a manifest served cold start downloading before the client asks (bounded by the upstream pool). */
  prefetch: boolean;
  /** Told of every manifest served, to evict the least recently pulled images. */
  cacheLimit?: CacheLimit;
  /** The upstream's bandwidth cap, shared by its downloads. */
  bandwidth?: BandwidthLimit;
}

const refusePush = (upstreamName: string): never => {
  throw new RegistryError('UNSUPPORTED', `this repository mirrors ${upstreamName}; pushes and deletes are not accepted`);
};

export class ProxyRepository implements Repository {
  readonly blobs: BlobService;
  readonly uploads: UploadService;
  readonly manifests: ManifestService;
  readonly tags: TagService;
  readonly referrers: ReferrerService;

  /**
   * @param name the local repository name the cache is kept under
   * @param upstreamName the repository's name at the upstream (e.g. `library/busybox`)
   */
  constructor(
    readonly name: string,
    private readonly upstreamName: string,
    private readonly context: MirrorContext,
    upstreamHost: string,
  ) {
    const local = context.registry.repository(name);
    const refuse = (): never => refusePush(`${upstreamHost}/${upstreamName}`);

    this.blobs = {
      stat: async (digest): Promise<BlobInfo> => {
        const cached = await this.cachedBlob(digest);
        if (cached) return this.hit(cached);
        const download = this.download(digest);
        return { digest, size: await this.awaitSize(download.ready) };
      },
      open: async (digest, range?: ByteRange): Promise<BlobReadResult> => {
        const cached = await this.cachedBlob(digest);
        if (cached) {
          try {
            return this.hit(await local.blobs.open(digest, range));
          } catch (err) {
            // Evicted (or collected) since the stat: fetch it again rather than fail the pull.
            if (!isRegistryError(err) || err.code !== 'BLOB_UNKNOWN') throw err;
          }
        }
        const download = this.download(digest);
        const size = await this.awaitSize(download.ready);
        // Failed before this client got a byte: an error answer, not a cut connection.
        if (download.state === 'failed') throw this.clientError(download.error, 'BLOB_UNKNOWN');
        void download.done.then(() => this.linkAfter(download.repo, digest));
        return { digest, size, stream: download.reader(range?.start ?? 0, range?.end ?? size) };
      },
      delete: async () => refuse(),
      mount: async () => undefined,
    };

    this.uploads = {
      start: async () => refuse(),
      status: async () => refuse(),
      append: async () => refuse(),
      complete: async () => refuse(),
      cancel: async () => refuse(),
    };

    this.manifests = {
      get: (reference) => this.manifest(reference),
      put: async () => refuse(),
      delete: async () => refuse(),
    };

    // Listings come from the upstream when it answers, else from what is cached.
    this.tags = {
      list: async () => {
        try {
          const tags = await context.upstream.tags(upstreamName);
          if (tags) return [...new Set(tags)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        } catch (err) {
          if (!isUpstreamUnavailable(err) && !isUpstreamDenied(err)) throw this.clientError(err, 'MANIFEST_UNKNOWN');
        }
        return local.tags.list();
      },
    };
    this.referrers = {
      // Signatures and SBOMs of mirrored images: the upstream's index when it has the API.
      // The artifacts themselves are fetched (and cached, with their referrer links) when
      // clients ask for them by digest, so the local index answers when the upstream is down.
      list: async (subject, artifactType) => {
        try {
          const index = await context.upstream.referrers(upstreamName, subject, artifactType);
          if (index) {
            const manifests = (JSON.parse(index.content.toString('utf8')) as { manifests?: Descriptor[] }).manifests ?? [];
            return manifests.filter((d) => artifactType === undefined || index.filtered || d.artifactType === artifactType);
          }
        } catch (err) {
          if (!isUpstreamUnavailable(err) && !isUpstreamDenied(err)) throw this.clientError(err, 'MANIFEST_UNKNOWN');
        }
        return local.referrers.list(subject, artifactType);
      },
    };
  }

  /** The blob from the cache: linked here, or stored for another repository (then linked here). */
  private async cachedBlob(digest: Digest): Promise<BlobInfo | undefined> {
    const { registry } = this.context;
    try {
      return await registry.repository(this.name).blobs.stat(digest);
    } catch (err) {
      if (!isRegistryError(err) || err.code !== 'BLOB_UNKNOWN') throw err;
    }
    if (this.context.downloads.get(digest)) return undefined; // being fetched: join it
    const size = await registry.blobStore.stored(digest);
    if (size === undefined) return undefined;
    await registry.links.write(layerLink(this.name, digest), digest);
    return { digest, size };
  }

  private hit<T>(result: T): T {
    this.context.counters.hits++;
    return result;
  }

  private download(digest: Digest) {
    const { downloads, upstream, counters } = this.context;
    if (!downloads.get(digest)) counters.misses++;
    const { bandwidth } = this.context;
    return downloads.start(this.name, digest, async (offset, signal) => {
      const response = await upstream.blob(this.upstreamName, digest, { offset, signal });
      return response && bandwidth ? { ...response, body: bandwidth.throttle(response.body) } : response;
    });
  }

  private async linkAfter(downloadRepo: string, digest: Digest): Promise<void> {
    if (downloadRepo === this.name) return;
    const { registry } = this.context;
    if ((await registry.blobStore.stored(digest)) !== undefined) await registry.links.write(layerLink(this.name, digest), digest);
  }

  /** The blob's size once the upstream answered, with its failure translated for the client. */
  private async awaitSize(ready: Promise<number>): Promise<number> {
    try {
      return await ready;
    } catch (err) {
      throw this.clientError(err, 'BLOB_UNKNOWN');
    }
  }

  private clientError(err: unknown, unknown: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN'): Error {
    if (isRegistryError(err)) return err;
    this.context.counters.unserved++;
    if (isUpstreamUnavailable(err)) {
      return new RegistryError('UNAVAILABLE', `the upstream registry cannot be reached and the content is not cached`, undefined, { cause: err });
    }
    if (isUpstreamDenied(err)) {
      // Docker Hub answers a repository that does not exist this way too; either way the
      // client learns the content is not here and may try elsewhere.
      return new RegistryError(unknown, 'the upstream registry refused access: no such repository, or the mirror lacks credentials for it', undefined, { cause: err });
    }
    this.context.logger?.warn({ err, repository: this.name }, 'upstream fetch failed');
    return new RegistryError('UNAVAILABLE', 'the upstream registry failed to provide the content', { reason: unknown }, { cause: err });
  }

  private async manifest(reference: string): Promise<ManifestContent> {
    const key = `${this.name}@${reference}`;
    let fetching = this.context.manifestFetches.get(key);
    if (!fetching) {
      fetching = this.resolveManifest(reference).finally(() => this.context.manifestFetches.delete(key));
      this.context.manifestFetches.set(key, fetching);
    }
    const manifest = await fetching;
    void this.context.cacheLimit?.used(this.name, manifest.digest, manifest.content).catch(() => undefined);
    return manifest;
  }

  private async resolveManifest(reference: string): Promise<ManifestContent> {
    const { registry, counters } = this.context;
    if (isDigest(reference)) {
      const cached = await this.cachedManifest(reference);
      if (cached) {
        counters.hits++;
        return cached;
      }
      counters.misses++;
      return this.fetchManifest(parseDigest(reference));
    }
    if (!isValidTag(reference)) throw unknownManifest(reference);
    const tagKey = `${this.name}:${reference}`;
    const cachedDigest = await registry.manifestStore.resolve(this.name, reference);
    const checkedAt = this.context.tagCheckedAt.get(tagKey);
    if (cachedDigest && checkedAt !== undefined && Date.now() - checkedAt < this.context.tagTtlMs) {
      const cached = await this.cachedManifest(cachedDigest.value);
      if (cached) {
        counters.hits++;
        return cached;
      }
    }
    if (!cachedDigest) {
      // Nothing cached under this tag: one GET by tag, not a HEAD and then a GET by digest
      // (a round trip saved on every cold pull over a far link).
      counters.misses++;
      const manifest = await this.fetchManifest(reference);
      await registry.manifestStore.tag(this.name, reference, manifest.digest);
      this.context.tagCheckedAt.set(tagKey, Date.now());
      return manifest;
    }
    let head;
    try {
      head = await this.context.upstream.manifest(this.upstreamName, reference, { method: 'HEAD', accept: ACCEPT_ALL_MANIFESTS });
    } catch (err) {
      const stale = cachedDigest && (await this.cachedManifest(cachedDigest.value));
      if (stale) {
        counters.staleServed++;
        return stale;
      }
      throw this.clientError(err, 'MANIFEST_UNKNOWN');
    }
    if (!head) {
      // The upstream no longer has the tag: what was cached still pulls (a site may depend on it).
      const stale = cachedDigest && (await this.cachedManifest(cachedDigest.value));
      if (stale) {
        counters.staleServed++;
        this.context.logger?.info({ repository: this.name, tag: reference }, 'upstream no longer has this tag; serving the cached manifest');
        return stale;
      }
      throw unknownManifest(reference);
    }
    let manifest = await this.cachedManifest(head.digest.value);
    if (manifest) counters.hits++;
    else {
      counters.misses++;
      manifest = await this.fetchManifest(head.digest);
    }
    if (cachedDigest?.value !== head.digest.value) await registry.manifestStore.tag(this.name, reference, head.digest);
    this.context.tagCheckedAt.set(tagKey, Date.now());
    return manifest;
  }

  private async cachedManifest(reference: string): Promise<ManifestContent | undefined> {
    try {
      return await this.context.registry.repository(this.name).manifests.get(reference);
    } catch (err) {
      if (isRegistryError(err) && err.code === 'MANIFEST_UNKNOWN') return undefined;
      throw err;
    }
  }

  /**
   * Fetches a manifest by digest or tag, checks and caches it, and starts its layers
   * downloading. By tag, the digest is the one the upstream names, checked against the bytes.
   */
  private async fetchManifest(reference: Digest | string): Promise<ManifestContent> {
    const { registry, upstream } = this.context;
    const wanted = typeof reference === 'string' ? reference : reference.value;
    let fetched;
    try {
      fetched = await upstream.manifest(this.upstreamName, wanted, { method: 'GET', accept: ACCEPT_ALL_MANIFESTS });
    } catch (err) {
      throw this.clientError(err, 'MANIFEST_UNKNOWN');
    }
    if (!fetched?.content) throw unknownManifest(wanted);
    const content = fetched.content;
    const digest = typeof reference === 'string' ? fetched.digest : reference;
    if (digestOf(content, digest.algorithm).value !== digest.value) {
      throw new RegistryError('UNAVAILABLE', 'the upstream sent a manifest that does not match its digest', { digest: digest.value });
    }
    const parsed = await registry.manifestStore.putUnchecked(this.name, content, digest);
    if (this.context.prefetch) this.prefetch(parsed);
    return { digest, mediaType: parsed.mediaType, content };
  }

  /** Starts the downloads of an image's blobs; an index's children are fetched only when asked for. */
  private prefetch(manifest: ParsedManifest): void {
    if (manifest.kind !== 'image') return;
    for (const digest of manifest.blobs) {
      void this.cachedBlob(digest)
        .then((cached) => {
          if (!cached) {
            const download = this.download(digest);
            void download.done.then(() => this.linkAfter(download.repo, digest));
          }
        })
        .catch(() => undefined);
    }
  }
}

const unknownManifest = (reference: string): RegistryError =>
  new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown to registry', { reference: reference.slice(0, 200) });
