// notifications (Distribution's keys): webhook endpoints for push, pull and delete events.
//
//   notifications:
//     endpoints:
//       - name: ci
//         url: https://ci.example.com/registry-events
//         headers: { Authorization: [Bearer secret] }
//         timeout: 1s          # per POST
//         threshold: 5         # accepted for Distribution configs; wharf backs off after the first failure
//         backoff: 1s          # first retry delay, doubling to 1m
//         ignoredmediatypes: [application/octet-stream]
//         ignore: { mediatypes: [...], actions: [pull] }
//         disabled: false
import { ConfigError } from './config-keys.js';
import type { NotificationEndpoint } from './notifications.js';

const ENDPOINT_KEYS = ['name', 'url', 'headers', 'timeout', 'threshold', 'backoff', 'ignoredmediatypes', 'ignore', 'disabled'];
const ACTIONS = ['push', 'pull', 'delete', 'mount'];

function strings(key: string, value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new ConfigError(`${key}: expected a list of strings`);
  return value as string[];
}

export function buildNotifications(
  values: Map<string, unknown>,
  parseDuration: (value: unknown) => number | undefined,
): NotificationEndpoint[] {
  const raw = values.get('notifications.endpoints');
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new ConfigError('notifications.endpoints: expected a list of endpoints');
  const endpoints: NotificationEndpoint[] = [];
  raw.forEach((entry: unknown, i) => {
    const key = `notifications.endpoints[${i}]`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ConfigError(`${key}: expected a map of settings`);
    const e = entry as Record<string, unknown>;
    for (const name of Object.keys(e)) {
      if (!ENDPOINT_KEYS.includes(name)) throw new ConfigError(`${key}.${name}: unknown setting, not supported by this version of wharf`);
    }
    if (e.disabled === true || e.disabled === 'true') return;
    if (typeof e.name !== 'string' || e.name === '') throw new ConfigError(`${key}.name: required`);
    let url: URL;
    try {
      url = new URL(String(e.url));
    } catch {
      throw new ConfigError(`${key}.url: expected an http(s) URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`${key}.url: expected an http(s) URL`);
    const duration = (name: string, fallback: number): number => {
      if (e[name] === undefined || e[name] === null) return fallback;
      const ms = parseDuration(e[name]);
      if (ms === undefined || ms <= 0) throw new ConfigError(`${key}.${name}: expected a duration like 1s or 500ms`);
      return ms;
    };
    const headers: Record<string, string[]> = {};
    if (e.headers !== undefined && e.headers !== null) {
      if (typeof e.headers !== 'object' || Array.isArray(e.headers)) throw new ConfigError(`${key}.headers: expected a map of header name to list of values`);
      for (const [name, v] of Object.entries(e.headers as Record<string, unknown>)) headers[name] = (Array.isArray(v) ? v : [v]).map(String);
    }
    const ignore = (e.ignore ?? {}) as Record<string, unknown>;
    if (typeof ignore !== 'object' || Array.isArray(ignore)) throw new ConfigError(`${key}.ignore: expected mediatypes and actions`);
    for (const name of Object.keys(ignore)) {
      if (name !== 'mediatypes' && name !== 'actions') throw new ConfigError(`${key}.ignore.${name}: unknown setting`);
    }
    const actions = strings(`${key}.ignore.actions`, ignore.actions);
    for (const action of actions) if (!ACTIONS.includes(action)) throw new ConfigError(`${key}.ignore.actions: unknown action ${JSON.stringify(action)}`);
    endpoints.push({
      name: e.name,
      url: url.toString(),
      headers,
      timeout: duration('timeout', 1000),
      backoff: duration('backoff', 1000),
      ignoredMediaTypes: [...strings(`${key}.ignoredmediatypes`, e.ignoredmediatypes), ...strings(`${key}.ignore.mediatypes`, ignore.mediatypes)],
      ignoredActions: actions,
    });
  });
  return endpoints;
}
