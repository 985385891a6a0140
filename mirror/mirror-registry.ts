// A registry that mirrors one or more upstreams and may keep local namespaces of its own.
//
// Which repository a request names, in order:
// 1. a local namespace (a configured name prefix): an ordinary repository, pushable;
// 2. containerd's `?ns=<registry host>`: that upstream, the path name unchanged;
// 3. a configured upstream host as the first path segment (`/v2/ghcr.io/org/app/...`, what
//    podman and CRI-O mirrors send): that upstream, the rest of the path as the name. Only
//    configured hosts count, since `ghcr.io/org/app` is also a valid local name;
// 4. the default upstream (`proxy.remoteurl`: plain `registry-mirrors` requests from dockerd);
// 5. without a default upstream: a local repository.
// The cache of a named upstream lives under `<host>/<name>`; the default upstream's under
// the name itself, as Distribution's proxy keeps it.
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { RegistryError } from '../storage/errors.js';
import type { LocalRegistry } from '../storage/local-registry.js';
import { assertRepositoryName } from '../storage/names.js';
import type { Registry, Repository, RepositoryHints } from '../storage/repository.js';
import type { BandwidthLimit } from './bandwidth.js';
import { BlobDownloads } from './blob-downloads.js';
import { CacheLimit } from './cache-limit.js';
import { ProxyRepository, type MirrorContext, type MirrorCounters, type Upstream } from './proxy-repository.js';

export interface MirroredUpstream {
  /** The registry host clients name (`docker.io`, `ghcr.io`, `registry.example.com:5000`). */
  host: string;
  upstream: Upstream;
  /** Maps a requested name to the upstream's (Docker Hub's `busybox` -> `library/busybox`). */
  upstreamName(name: string): string;
  /** Repository globs that may be mirrored; undefined: all. */
  repositories?: string[];
  /** Shared cap on the bytes per second downloaded from this upstream. */
  bandwidth?: BandwidthLimit;
}

export interface MirrorRegistryOptions {
  /** Used for requests that name no upstream. */
  defaultUpstream?: MirroredUpstream;
  /** Chosen by `?ns=` or by a path prefix. */
  upstreams: MirroredUpstream[];
  /** Name prefixes served as a normal registry (`team/` matches `team/app`). */
  localNamespaces: string[];
  tagTtlMs: number;
  prefetch?: boolean;
  /** Largest size of the cached images; undefined: unbounded. */
  cacheMaxBytes?: number;
  /** Images pulled this recently are not evicted (default 60 s). */
  cacheGraceMs?: number;
  logger?: Logger;
}

export class MirrorRegistry implements Registry {
  readonly counters: MirrorCounters = { hits: 0, misses: 0, staleServed: 0, unserved: 0 };
  readonly downloads: BlobDownloads;
  /** Keeps the cache under proxy.cachesize; undefined: unbounded. */
  readonly cacheLimit: CacheLimit | undefined;
  private readonly contexts = new Map<MirroredUpstream, MirrorContext>();
  private readonly byHost = new Map<string, MirroredUpstream>();

  constructor(
    readonly local: LocalRegistry,
    private readonly options: MirrorRegistryOptions,
  ) {
    this.cacheLimit =
      options.cacheMaxBytes === undefined
        ? undefined
        : new CacheLimit(local, options.cacheMaxBytes, (name) => this.isLocal(name), () => new Set(this.downloads.inProgress()), options.logger, options.cacheGraceMs);
    this.downloads = new BlobDownloads(local, options.logger, (digest, size) => void this.cacheLimit?.stored(digest, size));
    for (const upstream of options.upstreams) this.byHost.set(upstream.host.toLowerCase(), upstream);
    if (options.defaultUpstream && !this.byHost.has(options.defaultUpstream.host.toLowerCase())) {
      this.byHost.set(options.defaultUpstream.host.toLowerCase(), options.defaultUpstream);
    }
  }

  repository(name: string, hints: RepositoryHints = {}): Repository {
    assertRepositoryName(name);
    if (this.isLocal(name)) return this.local.repository(name);
    if (hints.namespace !== undefined) {
      const upstream = this.byHost.get(hints.namespace.toLowerCase());
      if (!upstream) throw new RegistryError('NAME_UNKNOWN', `this mirror has no upstream for ${hints.namespace.slice(0, 100)}`, { name });
      return this.proxy(upstream, name);
    }
    const slash = name.indexOf('/');
    const prefixed = slash > 0 ? this.byHost.get(name.slice(0, slash).toLowerCase()) : undefined;
    if (prefixed && prefixed !== this.options.defaultUpstream) return this.proxy(prefixed, name.slice(slash + 1));
    if (this.options.defaultUpstream) return this.proxy(this.options.defaultUpstream, name);
    return this.local.repository(name);
  }

  catalog(limit: number, last?: string): Promise<string[]> {
    return this.local.catalog(limit, last);
  }

  private isLocal(name: string): boolean {
    return this.options.localNamespaces.some((prefix) => name === prefix.replace(/\/$/, '') || name.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`));
  }

  private proxy(upstream: MirroredUpstream, name: string): Repository {
    if (upstream.repositories && !upstream.repositories.some((glob) => globMatch(glob, name))) {
      throw new RegistryError('DENIED', `${name} is not mirrored from ${upstream.host}`, { name });
    }
    const cacheName = upstream === this.options.defaultUpstream ? name : `${upstream.host.toLowerCase()}/${name}`;
    assertRepositoryName(cacheName);
    return new ProxyRepository(cacheName, upstream.upstreamName(name), this.context(upstream), upstream.host);
  }

  private context(upstream: MirroredUpstream): MirrorContext {
    let context = this.contexts.get(upstream);
    if (!context) {
      context = {
        registry: this.local,
        upstream: upstream.upstream,
        bandwidth: upstream.bandwidth,
        downloads: this.downloads,
        tagTtlMs: this.options.tagTtlMs,
        tagCheckedAt: new LRUCache<string, number>({ max: 10_000 }),
        manifestFetches: new Map(),
        counters: this.counters,
        logger: this.options.logger,
        prefetch: this.options.prefetch ?? true,
        cacheLimit: this.cacheLimit,
      };
      this.contexts.set(upstream, context);
    }
    return context;
  }
}

/** `*` matches within one path segment, `**` across segments. */
export function globMatch(glob: string, name: string): boolean {
  const pattern = glob
    .split(/(\*\*|\*)/)
    .map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${pattern}$`).test(name);
}
