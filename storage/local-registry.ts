// The registry on a storage driver: repositories whose blobs, uploads, manifests, tags
// and referrers live in Distribution's layout (see paths.ts).
import { LRUCache } from 'lru-cache';
import { isPathNotFound, type StorageDriver } from './driver.js';
import type { Digest } from './digest.js';
import { RegistryError } from './errors.js';
import { assertRepositoryName } from './names.js';
import { isSchema1MediaType, type Descriptor } from './manifest.js';
import { BlobStore } from './blob-store.js';
import { baseName, LinkStore, listOrEmpty } from './link-store.js';
import { ManifestStore } from './manifest-store.js';
import { UploadStore } from './upload-store.js';
import { holdAgainstGc } from './gc-markers.js';
import { blobData, layerDir, layerLink, referrersDir, repoDir, REPOSITORIES, revisionLink } from './paths.js';
import type {
  BlobInfo,
  BlobReadResult,
  BlobService,
  ByteRange,
  ManifestService,
  Registry,
  ReferrerService,
  Repository,
  TagService,
  UploadService,
} from './repository.js';

export interface LocalRegistryOptions {
  /** How long link reads (tags, repository membership) are trusted from memory. */
  linkCacheTtlMs?: number;
  /** Whether blobs and manifests may be deleted (Distribution's storage.delete.enabled). */
  deleteEnabled?: boolean;
}

export class LocalRegistry implements Registry {
  readonly blobStore: BlobStore;
  readonly links: LinkStore;
  readonly manifestStore: ManifestStore;
  readonly uploadStore: UploadStore;
  readonly deleteEnabled: boolean;
  private readonly repositories = new LRUCache<string, LocalRepository>({ max: 1000 });

  constructor(
    readonly driver: StorageDriver,
    options: LocalRegistryOptions = {},
  ) {
    this.blobStore = new BlobStore(driver, { presenceTtlMs: options.linkCacheTtlMs ?? 1000 });
    this.links = new LinkStore(driver, options.linkCacheTtlMs ?? 1000);
    this.manifestStore = new ManifestStore(driver, this.blobStore, this.links);
    this.uploadStore = new UploadStore(driver, this.blobStore, this.links);
    this.deleteEnabled = options.deleteEnabled ?? false;
  }

  repository(name: string): LocalRepository {
    // Repositories hold no state of their own, so one object per name serves every request.
    let repository = this.repositories.get(name);
    if (!repository) {
      assertRepositoryName(name);
      repository = new LocalRepository(this, name);
      this.repositories.set(name, repository);
    }
    return repository;
  }

  async catalog(limit: number, last?: string): Promise<string[]> {
    const names = await this.repositoryNames();
    const after = last === undefined ? names : names.filter((n) => n > last);
    return after.slice(0, limit);
  }

  /** Every repository, sorted: directories that hold `_manifests` or `_layers`. */
  async repositoryNames(): Promise<string[]> {
    const found: string[] = [];
    const walk = async (path: string, name: string): Promise<void> => {
      const children = await listOrEmpty(this.driver, path);
      const bases = children.map(baseName);
      if (name && (bases.includes('_manifests') || bases.includes('_layers'))) found.push(name);
      await Promise.all(
        children
          .filter((child) => !baseName(child).startsWith('_'))
          .map((child) => walk(child, name ? `${name}/${baseName(child)}` : baseName(child))),
      );
    };
    await walk(REPOSITORIES, '');
    return found.sort();
  }
}

export class LocalRepository implements Repository {
  readonly blobs: BlobService;
  readonly uploads: UploadService;
  readonly manifests: ManifestService;
  readonly tags: TagService;
  readonly referrers: ReferrerService;

  constructor(
    private readonly registry: LocalRegistry,
    readonly name: string,
  ) {
    const { blobStore, links, manifestStore, uploadStore, driver } = registry;
    const requireDelete = (): void => {
      if (!registry.deleteEnabled) throw new RegistryError('UNSUPPORTED', 'deletion is disabled (storage.delete.enabled)');
    };
    const linkedSize = async (digest: Digest): Promise<number> => {
      if (await links.read(layerLink(name, digest))) {
        const size = await blobStore.size(digest);
        if (size !== undefined) return size;
      }
      throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest: digest.value });
    };

    this.blobs = {
      stat: async (digest): Promise<BlobInfo> => ({ digest, size: await linkedSize(digest) }),
      open: async (digest, range?: ByteRange, signal?: AbortSignal): Promise<BlobReadResult> => {
        const size = await linkedSize(digest);
        try {
          const stream = await blobStore.open(digest, range?.start, range?.end, signal);
          return { digest, size, stream };
        } catch (err) {
          if (isPathNotFound(err)) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest: digest.value });
          throw err;
        }
      },
      delete: async (digest) => {
        requireDelete();
        if (!(await links.remove(layerDir(name, digest)))) {
          throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest: digest.value });
        }
      },
      // A mount acknowledges a blob the client will not upload: ask storage, not the caches.
      mount: async (digest, from) => {
        if (from !== undefined) {
          assertRepositoryName(from);
          if (!(await links.read(layerLink(from, digest), { fresh: true }))) return undefined;
        }
        if ((await blobStore.stored(digest)) === undefined) return undefined;
        // The link goes in under online garbage collection's handshake (gc-markers.ts); if the
        // collector deleted the blob meanwhile, the client uploads it instead.
        await holdAgainstGc(driver, digest, () => links.write(layerLink(name, digest), digest));
        const size = await blobStore.stored(digest);
        if (size === undefined) {
          await links.remove(layerDir(name, digest)).catch(() => undefined);
          return undefined;
        }
        return { digest, size };
      },
      redirectUrl: async (digest, expiresInSeconds) => driver.redirectUrl?.(blobData(digest), { expiresInSeconds }),
    };

    this.uploads = {
      start: () => uploadStore.start(name),
      status: (id) => uploadStore.status(name, id),
      append: (id, body, chunk) => uploadStore.append(name, id, body, chunk),
      complete: (id, digest, body, chunk) => uploadStore.complete(name, id, digest, body, chunk),
      cancel: (id) => uploadStore.cancel(name, id),
    };

    this.manifests = {
      get: (reference) => manifestStore.get(name, reference),
      put: (reference, content, contentType) => manifestStore.put(name, reference, content, contentType),
      delete: async (reference) => {
        requireDelete();
        await manifestStore.delete(name, reference);
      },
    };

    this.tags = {
      list: async () => {
        try {
          await driver.stat(repoDir(name));
        } catch (err) {
          if (isPathNotFound(err)) throw new RegistryError('NAME_UNKNOWN', 'repository name not known to registry', { name });
          throw err;
        }
        return manifestStore.tags(name);
      },
    };

    this.referrers = {
      list: async (subject, artifactType) => {
        const entries: Descriptor[] = [];
        for (const algDir of await listOrEmpty(driver, referrersDir(name, subject))) {
          for (const entry of await listOrEmpty(driver, algDir)) {
            const digest = await links.read(`${entry}/link`);
            const descriptor = digest && (await this.describe(digest));
            if (descriptor && (artifactType === undefined || descriptor.artifactType === artifactType)) entries.push(descriptor);
          }
        }
        return entries.sort((a, b) => (a.digest < b.digest ? -1 : 1));
      },
    };
  }

  /** A descriptor of a manifest in this repository, for the referrers index. */
  private async describe(digest: Digest): Promise<Descriptor | undefined> {
    const { links, blobStore, manifestStore } = this.registry;
    if (!(await links.read(revisionLink(this.name, digest)))) return undefined;
    const content = await blobStore.read(digest);
    if (!content) return undefined;
    let manifest;
    try {
      manifest = manifestStore.parse(digest, content);
    } catch {
      return undefined; // bytes that are no manifest cannot refer to anything
    }
    if (isSchema1MediaType(manifest.mediaType)) return undefined; // schema 1 has no subject
    const descriptor: Descriptor = { mediaType: manifest.mediaType, digest: digest.value, size: content.length };
    if (manifest.artifactType !== undefined) descriptor.artifactType = manifest.artifactType;
    if (manifest.annotations !== undefined) descriptor.annotations = manifest.annotations;
    return descriptor;
  }
}

