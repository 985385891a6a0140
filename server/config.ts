// Configuration: Distribution's config.yml keys (where wharf has the feature) plus a few
// wharf extensions, overridable by REGISTRY_* environment variables named by key path
// (REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY -> storage.filesystem.rootdirectory).
// Parsed once at start-up into a typed object. It fails closed: a key wharf does not
// implement, or does not know at all, stops start-up with the key's name, because running
// without a setting that protects the registry (auth, client certificates, a storage
// driver) would serve something else than the operator configured. Keys that only tune
// something harmless are accepted and reported as ignored. server/config-keys.ts has the table.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { CONFIG_KEYS, ConfigError, NAMED_BY_STRING, isServiceLinkVariable, type KeyRule } from './config-keys.js';
import { buildAuthConfig, type AuthConfig } from './config-auth.js';
import { buildNotifications } from './config-notifications.js';
import type { NotificationEndpoint } from './notifications.js';
import { buildProxyConfig, type ProxyConfig } from './config-proxy.js';
import { buildStorageDriverConfig, type StorageDriverConfig } from './config-storage.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Config {
  version: string;
  log: {
    level: LogLevel;
    accesslog: { disabled: boolean };
    /** Static fields added to every log line. */
    fields: Record<string, unknown>;
  };
  http: {
    /** host:port for tcp, the socket's path for unix. */
    addr: string;
    net: 'tcp' | 'unix';
    host?: string;
    prefix: string;
    secret?: string;
    /** How long in-flight requests may finish after SIGTERM/SIGINT (ms). */
    draintimeout: number;
    tls?: { certificate: string; key: string; minimumtls: 'TLSv1.2' | 'TLSv1.3' };
    headers: Record<string, string[]>;
    /** The debug address (health endpoints, metrics); undefined: no debug server. */
    debug?: { addr: string; prometheus: { enabled: boolean; path: string } };
  };
  /** Distribution's storage driver health check, reported by /debug/health and /readyz. */
  health: { storagedriver: { enabled: boolean; interval: number; threshold: number } };
  storage: StorageDriverConfig & {
    /** Whether blob GETs answer with the driver's URL for the bytes (S3: a presigned URL). */
    redirect: { disable: boolean };
    delete: { enabled: boolean };
    maintenance: {
      uploadpurging: { enabled: boolean; age: number; interval: number; dryrun: boolean };
      readonly: { enabled: boolean };
    };
    /** wharf extension: how long tag and membership links are trusted from memory (ms). */
    cache: { linkttl: number };
  };
  /** Largest `n` the catalog serves in one page. */
  catalog: { maxentries: number };
  /** The pull-through mirror; undefined: a plain registry. */
  proxy?: ProxyConfig;
  /** Who may do what; undefined: an open registry. */
  auth?: AuthConfig;
  /** Webhook endpoints for push, pull and delete events. */
  notifications: NotificationEndpoint[];
  /** Keys that were set but change nothing that matters (reported as warnings at start-up). */
  ignoredKeys: IgnoredKey[];
}

export interface IgnoredKey {
  /** The key's path, or the variable's name when it is not configuration at all. */
  key: string;
  reason: string;
}

export { ConfigError };

export interface LoadOptions {
  /** Path of a config.yml; none means defaults plus environment. */
  file?: string;
  env?: Record<string, string | undefined>;
}

/** The config file's path: main.ts reads it, it is no key. */
const CONFIGURATION_PATH_VARIABLE = 'REGISTRY_CONFIGURATION_PATH';
const DEFAULT_DRAIN_MS = 25_000;
const DEFAULT_CATALOG_MAX_ENTRIES = 10_000;
const DEFAULT_METRICS_PATH = '/metrics';
/** Distribution checks every 10 s by default. */
const DEFAULT_HEALTH_INTERVAL_MS = 10_000;
/** Paths the debug server answers itself (server/debug-server.ts). */
const DEBUG_PATHS = new Set(['/debug/health', '/healthz', '/readyz']);

export function loadConfig(options: LoadOptions = {}): Config {
  const settings: Settings = new Map();
  const ignoredKeys: IgnoredKey[] = [];
  if (options.file) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(options.file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read configuration ${options.file}: ${(err as Error).message}`);
    }
    if (doc !== null && doc !== undefined && !isMap(doc)) {
      throw new ConfigError(`${options.file}: expected a map of configuration sections`);
    }
    collect(KEY_TREE, doc, [], settings, undefined);
  }
  // Sorted, as Distribution does, so that a variable naming a whole section (REGISTRY_STORAGE)
  // comes before the keys inside it (REGISTRY_STORAGE_DELETE_ENABLED).
  const env = Object.entries(options.env ?? process.env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [name, raw] of env) {
    if (!name.startsWith('REGISTRY_') || raw === undefined || name === CONFIGURATION_PATH_VARIABLE) continue;
    if (isServiceLinkVariable(name, raw)) {
      ignoredKeys.push({ key: name, reason: 'a Kubernetes or Docker service link variable, not configuration' });
      continue;
    }
    applyVariable(name, raw, settings);
  }
  return build(applyRules(settings, ignoredKeys), ignoredKeys);
}

// ---------------------------------------------------------------------------------------
// Which rule governs a key: CONFIG_KEYS as a tree of sections.

type KeyNode = Section | { rule: KeyRule };
interface Section {
  children: Map<string, KeyNode>;
  /** The `*` entry: any other name. */
  other?: KeyNode;
}

const KEY_TREE = buildKeyTree(CONFIG_KEYS);

function buildKeyTree(keys: Record<string, KeyRule>): Section {
  const root: Section = { children: new Map() };
  for (const [path, rule] of Object.entries(keys)) {
    const segments = path.split('.');
    const last = segments.pop()!;
    let section = root;
    for (const segment of segments) {
      let next = section.children.get(segment);
      if (next === undefined) section.children.set(segment, (next = { children: new Map() }));
      if ('rule' in next) throw new Error(`CONFIG_KEYS: ${path} lies below the rule for ${segment}`);
      section = next;
    }
    if (last === '*') section.other = { rule };
    else section.children.set(last, { rule });
  }
  return root;
}

/** One key as set by the file or the environment; `rule` undefined: an unknown key. */
interface Setting {
  value: unknown;
  rule: KeyRule | undefined;
  /** The variable that set it, if the environment did. */
  variable?: string;
  /** Matched by a `*` entry: its name alone matters (`auth: { htpasswd: }` selects htpasswd). */
  named?: boolean;
}
type Settings = Map<string, Setting>;

/** Records `value` found at `path` (governed by `node`) as settings, one per rule or unknown key. */
function collect(node: KeyNode, value: unknown, path: string[], out: Settings, variable: string | undefined, named = false): void {
  const key = path.join('.');
  if ('rule' in node) {
    out.set(key, { value, rule: node.rule, variable, named });
    return;
  }
  if (value === null || value === undefined || value === '') return; // an empty section
  if (typeof value === 'string' && NAMED_BY_STRING.has(key)) value = { [value]: null };
  if (!isMap(value)) {
    out.set(key, { value, rule: { invalid: 'expected a map of settings' }, variable });
    return;
  }
  for (const [name, child] of Object.entries(value)) {
    const childNode = node.children.get(name) ?? node.other;
    if (childNode) collect(childNode, child, [...path, name], out, variable, !node.children.has(name));
    else out.set([...path, name].join('.'), { value: child, rule: undefined, variable });
  }
}

/** REGISTRY_A_B_C sets a.b.c; values of maps and sections are YAML, as in Distribution. */
function applyVariable(name: string, raw: string, out: Settings): void {
  const segments = name.slice('REGISTRY_'.length).toLowerCase().split('_');
  let node: KeyNode = KEY_TREE;
  let depth = 0;
  let named = false;
  while (!('rule' in node) && depth < segments.length) {
    const next: KeyNode | undefined = node.children.get(segments[depth]!) ?? node.other;
    if (next === undefined) {
      out.set(segments.join('.'), { value: raw, rule: undefined, variable: name });
      return;
    }
    named = !node.children.has(segments[depth]!);
    node = next;
    depth++;
  }
  const path = segments.slice(0, depth);
  const key = path.join('.');
  const rest = segments.slice(depth);
  if (!('rule' in node)) {
    // The variable names a whole section: its value replaces the section, as in Distribution.
    for (const existing of [...out.keys()]) if (existing === key || existing.startsWith(`${key}.`)) out.delete(existing);
    collect(node, parseVariable(name, raw), path, out, name);
    return;
  }
  const { rule } = node;
  if ('serve' in rule && (rule.serve === 'headers' || rule.serve === 'fields' || rule.serve === 'map')) {
    const value = parseVariable(name, raw);
    if (rest.length === 0) {
      out.set(key, { value, rule, variable: name });
      return;
    }
    // REGISTRY_HTTP_HEADERS_X_FRAME_OPTIONS: one entry of the map, added to the file's.
    const entry = rule.serve === 'headers' ? canonicalHeaderName(rest.join('-')) : rest.join('_');
    const current = out.get(key)?.value;
    const map = Object.fromEntries(
      Object.entries(isMap(current) ? current : {}).filter(([k]) => k.toLowerCase() !== entry.toLowerCase()),
    );
    map[entry] = value;
    out.set(key, { value: map, rule, variable: name });
    return;
  }
  if ('serve' in rule) {
    if (rest.length > 0) out.set(segments.join('.'), { value: raw, rule: undefined, variable: name });
    else out.set(key, { value: rule.serve === 'list' ? parseVariable(name, raw) : raw, rule, variable: name });
    return;
  }
  // Ignored or refused: which key is set is what counts; byValue rules read the value.
  const value = rest.length > 0 ? { [rest.join('_')]: raw } : parseVariable(name, raw);
  out.set(key, { value, rule, variable: name, named });
}

function parseVariable(name: string, raw: string): unknown {
  try {
    return parseYaml(raw);
  } catch (err) {
    throw new ConfigError(`${name}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
}

/**
 * Applies each setting's rule: served values are returned by key, ignored ones reported;
 * anything refused, unknown or invalid stops start-up, all of them named at once.
 */
function applyRules(settings: Settings, ignoredKeys: IgnoredKey[]): Map<string, unknown> {
  const values = new Map<string, unknown>();
  const problems: string[] = [];
  for (const [key, setting] of settings) {
    const where = setting.variable ? `${key} (${setting.variable})` : key;
    const remedy = setting.variable
      ? `unset ${setting.variable}`
      : `remove the ${isMap(setting.value) ? 'section' : 'key'}`;
    let rule = setting.rule;
    if (rule === undefined) {
      problems.push(
        `${where}: unknown configuration key, not supported by this version of wharf ` +
          `(a typo, or a setting of a newer Distribution); ${remedy} or correct its name`,
      );
      continue;
    }
    if ('serve' in rule) {
      values.set(key, setting.value);
      continue;
    }
    // `proxy:` or `clientcas: []` configure nothing; a named entry (`auth: { silly: }`) does.
    if (!setting.named && isUnset(setting.value)) continue;
    while ('byValue' in rule) rule = rule.byValue(setting.value);
    if ('serve' in rule) values.set(key, setting.value);
    else if ('ignore' in rule) ignoredKeys.push({ key, reason: rule.ignore });
    else if ('invalid' in rule) problems.push(`${where}: ${rule.invalid}`);
    else {
      const feature = typeof rule.refuse === 'function' ? rule.refuse(key.slice(key.lastIndexOf('.') + 1)) : rule.refuse;
      const hint = rule.hint ? ` (${rule.hint})` : '';
      problems.push(`${where}: ${feature} is not supported by this version of wharf${hint}; ${remedy} or run a wharf that supports it`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems.join('\n'));
  return values;
}

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isUnset(value: unknown): boolean {
  if (value === null || value === undefined || value === '') return true;
  if (Array.isArray(value)) return value.length === 0;
  return isMap(value) && Object.keys(value).length === 0;
}

/** x-frame-options -> X-Frame-Options, as Go's http.Header spells names. */
function canonicalHeaderName(name: string): string {
  return name.toLowerCase().replace(/(^|-)([a-z])/g, (_, dash: string, letter: string) => dash + letter.toUpperCase());
}

// ---------------------------------------------------------------------------------------
// Served values into the typed Config.

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const TLS_VERSIONS: Record<string, 'TLSv1.2' | 'TLSv1.3'> = { 'tls1.2': 'TLSv1.2', 'tls1.3': 'TLSv1.3' };
/** Keys pino writes itself on every line; a static field must not shadow them. */
const LOG_OWN_KEYS = new Set(['level', 'time', 'msg']);

function build(values: Map<string, unknown>, ignoredKeys: IgnoredKey[]): Config {
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
  const map = (key: string, expected: string): Record<string, unknown> => {
    const v = values.get(key) ?? {};
    if (!isMap(v)) throw new ConfigError(`${key}: expected ${expected}`);
    return v;
  };

  const version = str('version', '0.1');
  if (version !== '0.1') throw new ConfigError(`version: only configuration version 0.1 is supported, got ${JSON.stringify(version)}`);
  const level = str('log.level', str('loglevel', 'info')).toLowerCase();
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) {
    throw new ConfigError(`log.level: expected one of error, warn, info, debug, got ${JSON.stringify(level)}`);
  }
  const fields = map('log.fields', 'a map of field name to value');
  for (const name of Object.keys(fields)) {
    if (LOG_OWN_KEYS.has(name)) throw new ConfigError(`log.fields.${name}: wharf writes this field itself; choose another name`);
  }

  const net = str('http.net', 'tcp') || 'tcp';
  if (net !== 'tcp' && net !== 'unix') throw new ConfigError(`http.net: expected tcp or unix, got ${JSON.stringify(net)}`);
  const addr = str('http.addr', ':5000');
  if (net === 'tcp') parseListenAddress(addr, 'http.addr');
  else if (!values.has('http.addr') || addr.trim() === '') {
    throw new ConfigError('http.addr: with http.net: unix, set it to the path of the socket');
  }
  const prefix = str('http.prefix', '/').replace(/\/+$/, '');
  const certificate = optStr('http.tls.certificate');
  const key = optStr('http.tls.key');
  if ((certificate === undefined) !== (key === undefined)) {
    throw new ConfigError('http.tls: both certificate and key must be set');
  }
  const minimumtls = str('http.tls.minimumtls', 'tls1.2').toLowerCase();
  if (minimumtls === 'tls1.0' || minimumtls === 'tls1.1') {
    throw new ConfigError(
      `http.tls.minimumtls: ${minimumtls} is not supported by this version of wharf (it serves TLS 1.2 and 1.3 only); set tls1.2 or tls1.3`,
    );
  }
  const minVersion = TLS_VERSIONS[minimumtls];
  if (!minVersion) throw new ConfigError(`http.tls.minimumtls: expected tls1.2 or tls1.3, got ${JSON.stringify(minimumtls)}`);

  const headers: Record<string, string[]> = {};
  for (const [name, v] of Object.entries(map('http.headers', 'a map of header name to list of values'))) {
    if (!HEADER_NAME.test(name)) throw new ConfigError(`http.headers: ${JSON.stringify(name)} is not a valid header name`);
    const list = (Array.isArray(v) ? v : [v]).map((item) => {
      if (typeof item !== 'string' && typeof item !== 'number' && typeof item !== 'boolean') {
        throw new ConfigError(`http.headers.${name}: expected a list of strings`);
      }
      const text = String(item);
      // Node would refuse such a value on every response.
      if (/[\0\r\n]/.test(text)) throw new ConfigError(`http.headers.${name}: a value contains a line break or NUL`);
      return text;
    });
    headers[name] = list;
  }

  const maxentriesValue = values.get('catalog.maxentries');
  let maxentries = DEFAULT_CATALOG_MAX_ENTRIES;
  if (maxentriesValue !== undefined && maxentriesValue !== null) {
    const n = Number(maxentriesValue);
    if (typeof maxentriesValue === 'boolean' || !Number.isInteger(n)) {
      throw new ConfigError(`catalog.maxentries: expected a whole number, got ${JSON.stringify(maxentriesValue)}`);
    }
    // As in Distribution, zero or less means the default.
    if (n > 0) maxentries = n;
  }

  const debugAddr = optStr('http.debug.addr');
  if (debugAddr !== undefined) parseListenAddress(debugAddr, 'http.debug.addr');
  const prometheusEnabled = bool('http.debug.prometheus.enabled', false);
  const prometheusPath = str('http.debug.prometheus.path', DEFAULT_METRICS_PATH) || DEFAULT_METRICS_PATH;
  if (!prometheusPath.startsWith('/') || /[?#\s]/.test(prometheusPath)) {
    throw new ConfigError(`http.debug.prometheus.path: expected a path like /metrics, got ${JSON.stringify(prometheusPath)}`);
  }
  if (DEBUG_PATHS.has(prometheusPath)) {
    throw new ConfigError(`http.debug.prometheus.path: ${prometheusPath} is a health endpoint of the debug address; choose another path`);
  }
  if (debugAddr === undefined && prometheusEnabled) {
    // As in Distribution, metrics are served on the debug address only.
    ignoredKeys.push({ key: 'http.debug.prometheus', reason: 'http.debug.addr is not set, so no debug server serves the metrics' });
  }
  const thresholdValue = values.get('health.storagedriver.threshold');
  let threshold = 1;
  if (thresholdValue !== undefined && thresholdValue !== null) {
    const n = Number(thresholdValue);
    if (typeof thresholdValue === 'boolean' || thresholdValue === '' || !Number.isInteger(n) || n < 0) {
      throw new ConfigError(`health.storagedriver.threshold: expected a whole number of failures, got ${JSON.stringify(thresholdValue)}`);
    }
    // As in Distribution, 0 means the first failure counts.
    threshold = Math.max(1, n);
  }
  // As in Distribution, an interval of 0 means the default.
  const interval = duration('health.storagedriver.interval', DEFAULT_HEALTH_INTERVAL_MS) || DEFAULT_HEALTH_INTERVAL_MS;

  const driver = buildStorageDriverConfig(values, { str, bool }, ignoredKeys);
  return {
    version,
    log: { level: level as LogLevel, accesslog: { disabled: bool('log.accesslog.disabled', false) }, fields },
    http: {
      addr,
      net,
      host: optStr('http.host'),
      prefix,
      secret: optStr('http.secret'),
      draintimeout: duration('http.draintimeout', DEFAULT_DRAIN_MS),
      tls: certificate && key ? { certificate, key, minimumtls: minVersion } : undefined,
      headers,
      debug: debugAddr === undefined ? undefined : { addr: debugAddr, prometheus: { enabled: prometheusEnabled, path: prometheusPath } },
    },
    health: { storagedriver: { enabled: bool('health.storagedriver.enabled', false), interval, threshold } },
    storage: {
      ...driver,
      redirect: { disable: bool('storage.redirect.disable', false) },
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
    },
    catalog: { maxentries },
    proxy: buildProxyConfig(values, duration),
    auth: buildAuthConfig(values, parseDuration, driver.driver === 'filesystem' ? driver.filesystem.rootdirectory : undefined),
    notifications: buildNotifications(values, parseDuration),
    ignoredKeys,
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
