// Builds the pull-through mirror from its configuration: one upstream client per
// configured upstream, routed by MirrorRegistry.
import type { Logger } from 'pino';
import type { LocalRegistry } from '../storage/local-registry.js';
import { BandwidthLimit } from '../mirror/bandwidth.js';
import { MirrorRegistry, type MirroredUpstream } from '../mirror/mirror-registry.js';
import { UpstreamClient, upstreamRepositoryName } from '../mirror/upstream-client.js';
import type { ProxyConfig, UpstreamConfig } from './config-proxy.js';

/** The mirror's counters in one place (the summary log line; the metrics endpoint later). */
export interface MirrorStats {
  hits: number;
  misses: number;
  staleServed: number;
  unserved: number;
  downloadsStarted: number;
  downloadsFailed: number;
  downloadsRunning: number;
  resumes: number;
  bytesFromUpstream: number;
  upstreamRequests: number;
  upstreamErrors: number;
  upstreamFastFailures: number;
  evictedManifests: number;
  evictedBlobs: number;
  evictedBytes: number;
  /** Bytes of the cached images, when proxy.cachesize bounds them. */
  cacheBytes?: number;
  /** Circuit breaker state per upstream URL: up or down. */
  breakers: Record<string, string>;
}

export interface Mirror {
  registry: MirrorRegistry;
  clients: UpstreamClient[];
  stats(): MirrorStats;
  close(): Promise<void>;
}

const SUMMARY_INTERVAL_MS = 60_000;

export function createMirror(local: LocalRegistry, config: ProxyConfig, logger: Logger): Mirror {
  const clients: UpstreamClient[] = [];
  const mirrored = (upstream: UpstreamConfig): MirroredUpstream => {
    const client = new UpstreamClient({
      urls: upstream.urls,
      username: upstream.username,
      password: upstream.password,
      maxConnections: upstream.maxconnections,
      logger: logger.child({ upstreamHost: upstream.host }),
    });
    clients.push(client);
    return {
      host: upstream.host,
      upstream: client,
      // The client maps Docker Hub's short names itself; here only for messages.
      upstreamName: (name) => upstreamRepositoryName(upstream.urls[0]!, name),
      repositories: upstream.repositories,
      bandwidth: upstream.maxbandwidth === undefined ? undefined : new BandwidthLimit(upstream.maxbandwidth),
    };
  };
  const registry = new MirrorRegistry(local, {
    defaultUpstream: config.defaultUpstream && mirrored(config.defaultUpstream),
    upstreams: config.upstreams.map(mirrored),
    localNamespaces: config.localnamespaces,
    tagTtlMs: config.ttl,
    prefetch: config.prefetch,
    cacheMaxBytes: config.cachesize,
    logger,
  });
  logger.info(
    {
      defaultUpstream: config.defaultUpstream?.host,
      upstreams: config.upstreams.map((u) => u.host),
      localNamespaces: config.localnamespaces,
      tagTtlMs: config.ttl,
      cacheMaxBytes: config.cachesize,
    },
    'mirroring',
  );
  const stats = (): MirrorStats => {
    const upstreams = clients.map((c) => c.stats);
    return {
      ...registry.counters,
      ...registry.downloads.counters,
      ...(registry.cacheLimit?.counters ?? { evictedManifests: 0, evictedBlobs: 0, evictedBytes: 0 }),
      cacheBytes: registry.cacheLimit?.bytes,
      downloadsRunning: registry.downloads.inProgress().length,
      bytesFromUpstream: upstreams.reduce((n, u) => n + u.bytesReceived, 0),
      upstreamRequests: upstreams.reduce((n, u) => n + u.requests, 0),
      upstreamErrors: upstreams.reduce((n, u) => n + u.errors, 0),
      upstreamFastFailures: upstreams.reduce((n, u) => n + u.fastFailures, 0),
      breakers: Object.assign({}, ...upstreams.map((u) => u.breakers)) as Record<string, string>,
    };
  };
  // One summary line a minute while the mirror is used; nothing while it idles.
  let lastSummary = '';
  const summary = setInterval(() => {
    const now = stats();
    const key = JSON.stringify({ ...now, downloadsRunning: 0 });
    if (key !== lastSummary) logger.info(now, 'mirror summary');
    lastSummary = key;
  }, SUMMARY_INTERVAL_MS).unref();
  return {
    registry,
    clients,
    stats,
    close: async () => {
      clearInterval(summary);
      await registry.downloads.close();
      await registry.cacheLimit?.settle();
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}
