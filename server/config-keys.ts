// Every configuration key wharf knows, and what it does with each: serves it, ignores it
// (harmless, reported as a warning), or refuses to start. A key not in this table stops
// start-up too: a setting wharf does not know might be one that protects the registry
// (auth, TLS client certificates, a storage driver), and running without it would fail open.

/** A configuration that cannot be served as written; the message names the key. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** How a served key's value is parsed. */
export type ValueKind = 'string' | 'bool' | 'duration' | 'level' | 'int' | 'headers' | 'fields' | 'map' | 'list';

export type KeyRule =
  | { serve: ValueKind }
  /** Accepted with a warning; the text says why ignoring it changes nothing that matters. */
  | { ignore: string }
  /** Stops start-up: the feature (a function of the matched name for `*` entries) wharf lacks. */
  | { refuse: string | ((name: string) => string); hint?: string }
  /** Stops start-up: a value wharf cannot honour. */
  | { invalid: string }
  /** The rule depends on the value (e.g. `compatibility.schema1.enabled: false` is harmless). */
  | { byValue: (value: unknown) => KeyRule };

const schema1 = 'schema 1 manifest support';

/**
 * By dotted path; `*` as the last segment matches any name not listed beside it. A rule
 * covers everything below its path.
 */
export const CONFIG_KEYS: Record<string, KeyRule> = {
  version: { serve: 'string' },
  loglevel: { serve: 'level' },
  'log.level': { serve: 'level' },
  'log.accesslog.disabled': { serve: 'bool' },
  'log.fields': { serve: 'fields' },
  'log.formatter': { ignore: 'wharf always logs JSON lines' },
  'log.hooks': { ignore: 'log hooks (mail on error) are not implemented; errors are still logged' },
  'log.reportcaller': { ignore: 'wharf does not log the calling function' },

  'http.addr': { serve: 'string' },
  'http.net': { serve: 'string' },
  'http.host': { serve: 'string' },
  'http.prefix': { serve: 'string' },
  'http.secret': { serve: 'string' },
  'http.draintimeout': { serve: 'duration' },
  'http.headers': { serve: 'headers' },
  'http.tls.certificate': { serve: 'string' },
  'http.tls.key': { serve: 'string' },
  'http.tls.minimumtls': { serve: 'string' },
  'http.tls.clientcas': {
    refuse: 'client certificate authentication',
    hint: 'wharf would accept clients without a certificate',
  },
  'http.tls.ciphersuites': { refuse: 'choosing TLS cipher suites', hint: "wharf uses Node.js's default suites" },
  'http.tls.letsencrypt': { refuse: "Let's Encrypt", hint: 'use http.tls.certificate and http.tls.key' },
  'http.relativeurls': { ignore: 'Location URLs are always relative unless http.host is set' },
  // The debug address (server/debug-server.ts): health endpoints and Prometheus metrics.
  // Any other key below http.debug is unknown, so refused.
  'http.debug.addr': { serve: 'string' },
  'http.debug.prometheus.enabled': { serve: 'bool' },
  'http.debug.prometheus.path': { serve: 'string' },
  'http.http2': { ignore: 'wharf serves HTTP/1.1' },

  'storage.*': { refuse: (driver) => `the ${driver} storage driver`, hint: 'wharf stores on the filesystem or on S3' },
  // The S3 driver's settings, checked one by one in server/config-storage.ts.
  'storage.s3': { serve: 'map' },
  'storage.filesystem.rootdirectory': { serve: 'string' },
  'storage.filesystem.fsync': { serve: 'bool' },
  'storage.filesystem.maxthreads': { ignore: 'Node.js bounds concurrent filesystem calls itself' },
  'storage.delete.enabled': { serve: 'bool' },
  'storage.maintenance.uploadpurging.enabled': { serve: 'bool' },
  'storage.maintenance.uploadpurging.age': { serve: 'duration' },
  'storage.maintenance.uploadpurging.interval': { serve: 'duration' },
  'storage.maintenance.uploadpurging.dryrun': { serve: 'bool' },
  'storage.maintenance.readonly.enabled': { serve: 'bool' },
  'storage.cache.linkttl': { serve: 'duration' },
  'storage.cache.blobdescriptor': {
    byValue: (value) => {
      if (value === 'inmemory') return { ignore: 'wharf keeps its own in-memory caches' };
      if (value === 'redis') return { refuse: 'the redis blob descriptor cache' };
      return { invalid: `expected inmemory or redis, got ${JSON.stringify(value)}` };
    },
  },
  'storage.cache.blobdescriptorsize': { ignore: 'wharf sizes its own in-memory caches' },
  'storage.redirect.disable': { serve: 'bool' },
  'storage.tag.concurrencylimit': { ignore: 'wharf reads tags without a separate concurrency limit' },

  // Authentication (server/config-auth.ts checks each method's settings): Distribution's
  // htpasswd and token, and wharf's built-in token server. Any other method is refused.
  'auth.*': { refuse: (method) => `the ${method} authentication method` },
  'auth.htpasswd': { serve: 'map' },
  'auth.token': { serve: 'map' },
  'auth.tokenserver': { serve: 'map' },
  // The pull-through mirror: Distribution's keys, then wharf's (server/config-proxy.ts).
  'proxy.remoteurl': { serve: 'string' },
  'proxy.username': { serve: 'string' },
  'proxy.password': { serve: 'string' },
  'proxy.ttl': { serve: 'duration' },
  'proxy.upstreams': { serve: 'map' },
  'proxy.localnamespaces': { serve: 'list' },
  'proxy.prefetch': { serve: 'bool' },
  'proxy.cachesize': { serve: 'string' },
  'proxy.maxbandwidth': { serve: 'string' },
  'notifications.endpoints': { serve: 'list' },
  'notifications.events.includereferences': { ignore: 'wharf events carry no references' },
  redis: { refuse: 'redis' },
  middleware: { refuse: 'middleware' },
  reporting: { ignore: 'error reporting to Bugsnag or New Relic is not implemented; errors are still logged' },
  // Distribution's storage driver health check is served (server/health.ts); its file, HTTP
  // and TCP checks of other things are not run, which changes nothing the registry serves.
  'health.storagedriver.enabled': { serve: 'bool' },
  'health.storagedriver.interval': { serve: 'duration' },
  'health.storagedriver.threshold': { serve: 'int' },
  'health.file': { ignore: 'file health checks are not run (only health.storagedriver is)' },
  'health.http': { ignore: 'HTTP health checks are not run (only health.storagedriver is)' },
  'health.tcp': { ignore: 'TCP health checks are not run (only health.storagedriver is)' },
  policy: { ignore: 'repository classes only matter with token authentication, which wharf refuses' },

  'catalog.maxentries': { serve: 'int' },

  'compatibility.schema1.enabled': {
    byValue: (value) => {
      if (value === true || value === 'true') return { refuse: schema1 };
      if (value === false || value === 'false') return { ignore: 'schema 1 manifests stay refused' };
      return { invalid: `expected true or false, got ${JSON.stringify(value)}` };
    },
  },
  'compatibility.schema1.signingkeyfile': { refuse: schema1 },

  'validation.enabled': { ignore: 'it only switches validation.manifests, which wharf refuses' },
  'validation.disabled': { ignore: 'it only switches validation.manifests, which wharf refuses' },
  'validation.manifests': {
    refuse: 'manifest URL validation (allow/deny)',
    hint: 'wharf would accept manifests this section rejects',
  },
};

/**
 * Sections Distribution also accepts as a bare name (`storage: s3`, `REGISTRY_STORAGE=s3`,
 * `auth: silly`), meaning that one entry with no parameters.
 */
export const NAMED_BY_STRING = new Set(['storage', 'auth']);

/**
 * Variables Kubernetes (a Service named `registry`) and Docker links (`--link x:registry`)
 * put into the environment: not configuration; Distribution ignores them too.
 */
export function isServiceLinkVariable(name: string, value: string): boolean {
  if (name === 'REGISTRY_PORT' || /^REGISTRY_PORT_\d+_(TCP|UDP|SCTP)$/.test(name)) {
    return /^(tcp|udp|sctp):\/\/\S+:\d+$/.test(value);
  }
  if (/^REGISTRY_PORT_\d+_(TCP|UDP|SCTP)_PROTO$/.test(name)) return /^(tcp|udp|sctp)$/.test(value);
  if (/^REGISTRY_PORT_\d+_(TCP|UDP|SCTP)_PORT$/.test(name) || /^REGISTRY_SERVICE_PORT(_[A-Z0-9_]+)?$/.test(name)) {
    return /^\d+$/.test(value);
  }
  if (/^REGISTRY_PORT_\d+_(TCP|UDP|SCTP)_ADDR$/.test(name) || name === 'REGISTRY_SERVICE_HOST') {
    return /^[0-9a-fA-F.:]+$/.test(value);
  }
  return false;
}
