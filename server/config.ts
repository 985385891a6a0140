// Configuration: Distribution's config.yml keys (where wharf has the feature) plus a few
// wharf extensions, overridable by REGISTRY_* environment variables named by key path
// (REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY -> storage.filesystem.rootdirectory).
// Parsed once at start-up into a typed object; a bad value stops start-up with the key's
// name; an unknown key is reported as a warning and otherwise ignored.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Config {
  version: string;
  log: { level: LogLevel; accesslog: { disabled: boolean } };
  http: {
    addr: string;
    host?: string;
    prefix: string;
    secret?: string;
    tls?: { certificate: string; key: string };
    headers: Record<string, string[]>;
    relativeurls: boolean;
  };
  storage: {
    driver: 'filesystem';
    /** fsync is a wharf extension: flush data before renames make it visible (default true). */
    filesystem: { rootdirectory: string; fsync: boolean };
    delete: { enabled: boolean };
    maintenance: {
      uploadpurging: { enabled: boolean; age: number; interval: number; dryrun: boolean };
      readonly: { enabled: boolean };
    };
    /** wharf extension: how long tag and membership links are trusted from memory (ms). */
    cache: { linkttl: number };
    redirect: { disable: boolean };
  };
  /** Keys that were set but mean nothing to wharf (reported as warnings). */
  unknownKeys: string[];
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type Kind = 'string' | 'bool' | 'duration' | 'level' | 'headers' | 'any';
/** Every key wharf understands, by path. `any` accepts and ignores a subtree (known to Distribution). */
const SCHEMA: Record<string, Kind> = {
  version: 'string',
  'log.level': 'level',
  'log.formatter': 'string',
  'log.fields': 'any',
  'log.accesslog.disabled': 'bool',
  loglevel: 'level',
  'http.addr': 'string',
  'http.net': 'string',
  'http.host': 'string',
  'http.prefix': 'string',
  'http.secret': 'string',
  'http.relativeurls': 'bool',
  'http.draintimeout': 'duration',
  'http.tls.certificate': 'string',
  'http.tls.key': 'string',
  'http.headers': 'headers',
  'http.debug': 'any',
  'http.http2': 'any',
  'storage.filesystem.rootdirectory': 'string',
  'storage.filesystem.maxthreads': 'any',
  'storage.filesystem.fsync': 'bool',
  'storage.delete.enabled': 'bool',
  'storage.maintenance.uploadpurging.enabled': 'bool',
  'storage.maintenance.uploadpurging.age': 'duration',
  'storage.maintenance.uploadpurging.interval': 'duration',
  'storage.maintenance.uploadpurging.dryrun': 'bool',
  'storage.maintenance.readonly.enabled': 'bool',
  'storage.cache.blobdescriptor': 'any',
  'storage.cache.blobdescriptorsize': 'any',
  'storage.cache.linkttl': 'duration',
  'storage.redirect.disable': 'bool',
  'storage.tag.concurrencylimit': 'any',
  health: 'any',
};

export interface LoadOptions {
  /** Path of a config.yml; none means defaults plus environment. */
  file?: string;
  env?: Record<string, string | undefined>;
}

export function loadConfig(options: LoadOptions = {}): Config {
  const values = new Map<string, unknown>();
  const unknownKeys: string[] = [];
  if (options.file) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(options.file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read configuration ${options.file}: ${(err as Error).message}`);
    }
    if (doc !== null && doc !== undefined) flatten(doc, '', values, unknownKeys);
  }
  for (const [name, raw] of Object.entries(options.env ?? process.env)) {
    if (!name.startsWith('REGISTRY_') || raw === undefined) continue;
    const key = name.slice('REGISTRY_'.length).toLowerCase().replaceAll('_', '.');
    const kind = kindOf(key);
    if (!kind) {
      unknownKeys.push(name);
      continue;
    }
    values.set(key, raw);
  }
  return build(values, unknownKeys);
}

function kindOf(key: string): Kind | undefined {
  if (SCHEMA[key]) return SCHEMA[key];
  for (const [path, kind] of Object.entries(SCHEMA)) {
    if ((kind === 'any' || kind === 'headers') && key.startsWith(`${path}.`)) return 'any';
  }
  return undefined;
}

function flatten(node: unknown, prefix: string, out: Map<string, unknown>, unknown: string[]): void {
  const kind = prefix ? kindOf(prefix) : undefined;
  if (kind) {
    out.set(prefix, node);
    return;
  }
  if (typeof node === 'object' && node !== null && !Array.isArray(node)) {
    for (const [k, v] of Object.entries(node)) flatten(v, prefix ? `${prefix}.${k}` : k, out, unknown);
    return;
  }
  // A value that is null under a known section (e.g. `storage: { filesystem: }`) is fine.
  if (node === null && Object.keys(SCHEMA).some((p) => p.startsWith(`${prefix}.`))) return;
  unknown.push(prefix);
}

function build(values: Map<string, unknown>, unknownKeys: string[]): Config {
  const str = (key: string, fallback: string): string => {
    const v = values.get(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`${key}: expected a string`);
    return String(v);
  };
  const optStr = (key: string): string | undefined => (values.has(key) ? str(key, '') || undefined : undefined);
  const bool = (key: string, fallback: boolean): boolean => {
    const v = values.get(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v === 'boolean') return v;
    if (typeof v === 'string' && /^(true|false)$/i.test(v.trim())) return v.trim().toLowerCase() === 'true';
    throw new ConfigError(`${key}: expected true or false, got ${JSON.stringify(v)}`);
  };
  const duration = (key: string, fallback: number): number => {
    const v = values.get(key);
    if (v === undefined || v === null) return fallback;
    const ms = parseDuration(v);
    if (ms === undefined) throw new ConfigError(`${key}: expected a duration like 10s, 5m or 168h, got ${JSON.stringify(v)}`);
    return ms;
  };
  const level = str('log.level', str('loglevel', 'info')).toLowerCase();
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) {
    throw new ConfigError(`log.level: expected one of error, warn, info, debug, got ${JSON.stringify(level)}`);
  }
  const addr = str('http.addr', ':5000');
  parseListenAddress(addr, 'http.addr');
  const prefix = str('http.prefix', '/').replace(/\/+$/, '');
  const certificate = optStr('http.tls.certificate');
  const key = optStr('http.tls.key');
  if ((certificate === undefined) !== (key === undefined)) {
    throw new ConfigError('http.tls: both certificate and key must be set');
  }
  const headers = values.get('http.headers') ?? {};
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) {
    throw new ConfigError('http.headers: expected a map of header name to list of values');
  }
  const headerMap: Record<string, string[]> = {};
  for (const [name, v] of Object.entries(headers as Record<string, unknown>)) {
    headerMap[name] = (Array.isArray(v) ? v : [v]).map(String);
  }
  const rootdirectory = resolve(str('storage.filesystem.rootdirectory', './data'));
  return {
    version: str('version', '0.1'),
    log: { level: level as LogLevel, accesslog: { disabled: bool('log.accesslog.disabled', false) } },
    http: {
      addr,
      host: optStr('http.host'),
      prefix,
      secret: optStr('http.secret'),
      tls: certificate && key ? { certificate, key } : undefined,
      headers: headerMap,
      relativeurls: bool('http.relativeurls', false),
    },
    storage: {
      driver: 'filesystem',
      filesystem: { rootdirectory, fsync: bool('storage.filesystem.fsync', true) },
      delete: { enabled: bool('storage.delete.enabled', false) },
      maintenance: {
        uploadpurging: {
          enabled: bool('storage.maintenance.uploadpurging.enabled', true),
          age: duration('storage.maintenance.uploadpurging.age', 168 * 3600_000),
          interval: duration('storage.maintenance.uploadpurging.interval', 24 * 3600_000),
          dryrun: bool('storage.maintenance.uploadpurging.dryrun', false),
        },
        readonly: { enabled: bool('storage.maintenance.readonly.enabled', false) },
      },
      cache: { linkttl: duration('storage.cache.linkttl', 1000) },
      redirect: { disable: bool('storage.redirect.disable', false) },
    },
    unknownKeys,
  };
}

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go-style durations ("1h30m", "10s", "250ms"); a bare number is seconds. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value * 1000;
  if (typeof value !== 'string') return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) return undefined;
  return parts.reduce((sum, p) => sum + Number(p[1]) * UNIT_MS[p[2]!]!, 0);
}

/** `:5000`, `0.0.0.0:5000`, `[::1]:5000`, `localhost:5000` -> host (undefined = all) and port. */
export function parseListenAddress(addr: string, key = 'http.addr'): { host: string | undefined; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(addr.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw new ConfigError(`${key}: expected host:port or :port, got ${JSON.stringify(addr)}`);
  const host = match[1] ?? match[2];
  return { host: host ? host : undefined, port };
}
