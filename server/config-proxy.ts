// The mirror's configuration: Distribution's `proxy` keys (remoteurl, username, password,
// ttl) and wharf's own for more upstreams and local namespaces:
//
//   proxy:
//     remoteurl: https://registry-1.docker.io   # the default upstream (plain registry-mirrors requests)
//     username: ... / password: ...              # its credentials
//     ttl: 5m                                    # how long a cached tag is served before a HEAD asks again
//     maxbandwidth: 50MB                         # the default upstream's cap, bytes per second
//     upstreams:                                 # chosen by containerd's ?ns=<host> or a /v2/<host>/... prefix
//       ghcr.io:
//         urls: [https://ghcr.io]                # tried in order (failover); default https://<host>
//         username: ... / password: ...
//         maxconnections: 16
//         maxbandwidth: 50MB                     # bytes per second from this upstream, all downloads together
//         repositories: ["org/*"]                # only these may be mirrored (globs; ** crosses /)
//     localnamespaces: [team/]                   # pushable like a normal registry
//     prefetch: true                             # a manifest served cold starts its layers downloading
//     cachesize: 50GiB                           # evict least recently pulled images above this (default: unbounded)
import { ConfigError } from './config-keys.js';

export interface UpstreamConfig {
  /** The registry host clients name: `docker.io`, `ghcr.io`, `registry.example.com:5000`. */
  host: string;
  urls: string[];
  username?: string;
  password?: string;
  maxconnections: number;
  /** Bytes per second taken from this upstream, all downloads together; undefined: no cap. */
  maxbandwidth?: number;
  repositories?: string[];
}

export interface ProxyConfig {
  /** Requests that name no upstream; undefined: those are local repositories. */
  defaultUpstream?: UpstreamConfig;
  upstreams: UpstreamConfig[];
  /** How long a cached tag is trusted without asking the upstream (ms). */
  ttl: number;
  localnamespaces: string[];
  prefetch: boolean;
  /** Largest size of the cached images in bytes; undefined: unbounded. */
  cachesize?: number;
}

const DEFAULT_TAG_TTL_MS = 5 * 60_000;
const DEFAULT_MAX_CONNECTIONS = 16;
const UPSTREAM_KEYS = new Set(['urls', 'username', 'password', 'maxconnections', 'maxbandwidth', 'repositories']);

/** Docker Hub's registry is reached at registry-1.docker.io but named docker.io by clients. */
export function hostOfUpstream(url: string): string {
  const host = new URL(url).host.toLowerCase();
  return host === 'registry-1.docker.io' || host === 'index.docker.io' ? 'docker.io' : host;
}

function checkUrl(key: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw new ConfigError(`${key}: expected an http(s) URL`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${key}: ${JSON.stringify(value.slice(0, 200))} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(`${key}: expected an http or https URL`);
  if (url.username || url.password) throw new ConfigError(`${key}: put credentials in username and password, not in the URL`);
  return value.replace(/\/+$/, '');
}

function optionalString(key: string, value: unknown): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string' && typeof value !== 'number') throw new ConfigError(`${key}: expected a string`);
  return String(value);
}

function stringList(key: string, value: unknown): string[] {
  if (value === undefined || value === null || value === '') return [];
  const list = typeof value === 'string' ? value.split(',') : value;
  if (!Array.isArray(list) || list.some((v) => typeof v !== 'string')) throw new ConfigError(`${key}: expected a list of strings`);
  return (list as string[]).map((v) => v.trim()).filter((v) => v !== '');
}

function upstreamEntry(host: string, value: unknown): UpstreamConfig {
  const key = `proxy.upstreams.${host}`;
  if (!/^[a-z0-9.-]+(:\d{1,5})?$/i.test(host)) throw new ConfigError(`${key}: expected a registry host name (host or host:port)`);
  const entry = value ?? {};
  if (typeof entry !== 'object' || Array.isArray(entry)) throw new ConfigError(`${key}: expected a map of settings`);
  for (const name of Object.keys(entry)) {
    if (!UPSTREAM_KEYS.has(name)) throw new ConfigError(`${key}.${name}: unknown upstream setting (expected ${[...UPSTREAM_KEYS].join(', ')})`);
  }
  const e = entry as Record<string, unknown>;
  const urls = stringList(`${key}.urls`, e.urls).map((u, i) => checkUrl(`${key}.urls[${i}]`, u));
  const max = e.maxconnections === undefined ? DEFAULT_MAX_CONNECTIONS : Number(e.maxconnections);
  if (!Number.isInteger(max) || max < 1) throw new ConfigError(`${key}.maxconnections: expected a whole number of at least 1`);
  const repositories = e.repositories === undefined ? undefined : stringList(`${key}.repositories`, e.repositories);
  return {
    host: host.toLowerCase(),
    urls: urls.length > 0 ? urls : [`https://${host.toLowerCase() === 'docker.io' ? 'registry-1.docker.io' : host}`],
    username: optionalString(`${key}.username`, e.username),
    password: optionalString(`${key}.password`, e.password),
    maxconnections: max,
    maxbandwidth: e.maxbandwidth === undefined ? undefined : parseSize(`${key}.maxbandwidth`, e.maxbandwidth),
    repositories,
  };
}

/** The proxy section from the served values, or undefined when no upstream is configured. */
export function buildProxyConfig(values: Map<string, unknown>, duration: (key: string, fallback: number) => number): ProxyConfig | undefined {
  const remoteurl = values.get('proxy.remoteurl');
  const upstreamMap = values.get('proxy.upstreams');
  const localnamespaces = stringList('proxy.localnamespaces', values.get('proxy.localnamespaces'));
  const hasUpstreams = upstreamMap !== undefined && upstreamMap !== null && Object.keys(upstreamMap as object).length > 0;
  if ((remoteurl === undefined || remoteurl === '') && !hasUpstreams) {
    for (const key of ['proxy.username', 'proxy.password', 'proxy.localnamespaces', 'proxy.ttl']) {
      if (values.has(key)) throw new ConfigError(`${key}: set proxy.remoteurl or proxy.upstreams too (without an upstream there is nothing to mirror)`);
    }
    return undefined;
  }
  if (hasUpstreams && (typeof upstreamMap !== 'object' || Array.isArray(upstreamMap))) {
    throw new ConfigError('proxy.upstreams: expected a map of registry host to settings');
  }
  const upstreams = hasUpstreams ? Object.entries(upstreamMap as Record<string, unknown>).map(([host, v]) => upstreamEntry(host, v)) : [];
  let defaultUpstream: UpstreamConfig | undefined;
  if (remoteurl !== undefined && remoteurl !== '') {
    const url = checkUrl('proxy.remoteurl', remoteurl);
    defaultUpstream = {
      host: hostOfUpstream(url),
      urls: [url],
      username: optionalString('proxy.username', values.get('proxy.username')),
      password: optionalString('proxy.password', values.get('proxy.password')),
      maxconnections: DEFAULT_MAX_CONNECTIONS,
      maxbandwidth: values.has('proxy.maxbandwidth') ? parseSize('proxy.maxbandwidth', values.get('proxy.maxbandwidth')) : undefined,
    };
  }
  if (!defaultUpstream) {
    for (const key of ['proxy.username', 'proxy.password', 'proxy.maxbandwidth']) {
      if (values.has(key)) throw new ConfigError(`${key}: belongs to proxy.remoteurl, which is not set; give upstream credentials under proxy.upstreams`);
    }
  }
  const prefetch = values.get('proxy.prefetch');
  if (prefetch !== undefined && typeof prefetch !== 'boolean' && !/^(true|false)$/i.test(String(prefetch))) {
    throw new ConfigError('proxy.prefetch: expected true or false');
  }
  return {
    defaultUpstream,
    upstreams,
    ttl: duration('proxy.ttl', DEFAULT_TAG_TTL_MS),
    localnamespaces,
    prefetch: prefetch === undefined ? true : String(prefetch).toLowerCase() === 'true',
    cachesize: values.has('proxy.cachesize') ? parseSize('proxy.cachesize', values.get('proxy.cachesize')) : undefined,
  };
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
  k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40,
};

/** `500MB`, `20GiB`, `1073741824`: bytes. */
export function parseSize(key: string, value: unknown): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(String(value));
  const unit = match ? SIZE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new ConfigError(`${key}: expected a size like 500MB or 20GiB, got ${JSON.stringify(value)}`);
  const bytes = Math.floor(Number(match[1]) * unit);
  if (bytes < 1) throw new ConfigError(`${key}: must be more than 0 bytes`);
  return bytes;
}
