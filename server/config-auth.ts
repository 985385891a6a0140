// The auth section: Distribution's htpasswd and token methods, and wharf's built-in token
// server. Exactly one method (Distribution allows one too). Every setting of a method is
// checked here; one wharf does not know stops start-up with its key, as everywhere.
//
//   auth:
//     htpasswd: { realm: basic-realm, path: /etc/wharf/htpasswd }
//   # or, behind an existing token server (Harbor, GitLab, docker_auth, Keycloak):
//   auth:
//     token:
//       realm: https://auth.example.com/token      # where clients get tokens (absolute)
//       service: registry.example.com              # the tokens' audience
//       issuer: auth.example.com                   # their issuer, exactly
//       rootcertbundle: /certs/token-ca.pem        # certificates whose keys sign them, and/or
//       jwks: /certs/jwks.json                     # a JWKS file
//       signingalgorithms: [ES256, RS256]          # default: RS*, ES*, EdDSA
//       autoredirect: false                        # true: realm host taken from the request
//   # or, with wharf as its own token server (one process is enough):
//   auth:
//     token: { realm: https://registry.example.com/auth/token, service: registry.example.com, issuer: wharf }
//     tokenserver:
//       htpasswd: /etc/wharf/htpasswd              # the users (bcrypt)
//       keydir: /var/lib/wharf/token               # signing key + certificate; default <rootdirectory>/wharf/token
//       expiration: 5m                             # access tokens
//       refreshexpiration: 2160h                   # refresh tokens (docker login's identity token)
//       groups: { admins: [alice] }
//       rules:
//         - { group: admins, repositories: ["**"], actions: ["*"], catalog: true }
//         - { account: bob, repositories: ["team/**"], actions: [pull, push] }
//         - { anonymous: true, repositories: ["public/**"], actions: [pull] }
import type { AccessRule } from '../auth/token-policy.js';
import { ConfigError } from './config-keys.js';

export interface HtpasswdAuthConfig {
  method: 'htpasswd';
  realm: string;
  path: string;
}

export interface TokenServerConfig {
  htpasswd: string;
  keydir: string;
  /** Access token lifetime (ms). */
  expiration: number;
  /** Refresh token lifetime (ms). */
  refreshexpiration: number;
  groups: Record<string, string[]>;
  rules: AuthRuleConfig[];
}

/** A token server rule, as auth/token-policy.ts applies it. */
export type AuthRuleConfig = AccessRule;

export interface TokenAuthConfig {
  method: 'token';
  realm: string;
  service: string;
  issuer: string;
  rootcertbundle?: string;
  jwks?: string;
  signingalgorithms?: string[];
  autoredirect: boolean;
  /** wharf's own token server, when configured. */
  server?: TokenServerConfig;
}

export type AuthConfig = HtpasswdAuthConfig | TokenAuthConfig;

const HTPASSWD_KEYS = ['realm', 'path'];
const TOKEN_KEYS = ['realm', 'service', 'issuer', 'rootcertbundle', 'jwks', 'signingalgorithms', 'autoredirect'];
const SERVER_KEYS = ['htpasswd', 'keydir', 'expiration', 'refreshexpiration', 'groups', 'rules'];
const RULE_KEYS = ['account', 'group', 'anonymous', 'repositories', 'actions', 'catalog'];
const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
const ACTIONS = ['pull', 'push', 'delete', '*'];

type Section = Record<string, unknown>;

function section(key: string, value: unknown, known: string[]): Section {
  if (value === null || value === undefined || value === '') return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(`${key}: expected a map of settings`);
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) {
      throw new ConfigError(`${key}.${name}: unknown setting, not supported by this version of wharf (expected ${known.join(', ')})`);
    }
  }
  return value as Section;
}

function required(key: string, value: unknown): string {
  if (value === undefined || value === null || value === '') throw new ConfigError(`${key}: required`);
  if (typeof value !== 'string' && typeof value !== 'number') throw new ConfigError(`${key}: expected a string`);
  return String(value);
}

function optional(key: string, value: unknown): string | undefined {
  return value === undefined || value === null || value === '' ? undefined : required(key, value);
}

function list(key: string, value: unknown): string[] {
  if (value === undefined || value === null) return [];
  const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter(Boolean) : value;
  if (!Array.isArray(items) || items.some((v) => typeof v !== 'string')) throw new ConfigError(`${key}: expected a list of strings`);
  return items as string[];
}

function bool(key: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined || value === null) return fallback;
  if (typeof value === 'boolean') return value;
  if (/^(true|false)$/i.test(String(value))) return String(value).toLowerCase() === 'true';
  throw new ConfigError(`${key}: expected true or false`);
}

function absoluteUrl(key: string, value: string): string {
  try {
    const url = new URL(value);
    if (url.protocol === 'https:' || url.protocol === 'http:') return value;
  } catch {
    // reported below
  }
  throw new ConfigError(`${key}: expected an absolute http(s) URL (clients are sent there), got ${JSON.stringify(value.slice(0, 200))}`);
}

function rules(key: string, value: unknown): AuthRuleConfig[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ConfigError(`${key}: expected a list of rules`);
  return value.map((raw, i) => {
    const where = `${key}[${i}]`;
    const r = section(where, raw, RULE_KEYS);
    const who = [r.account !== undefined, r.group !== undefined, r.anonymous === true].filter(Boolean).length;
    if (who !== 1) throw new ConfigError(`${where}: give exactly one of account, group or anonymous: true`);
    const actions = list(`${where}.actions`, r.actions);
    for (const action of actions) {
      if (!ACTIONS.includes(action)) throw new ConfigError(`${where}.actions: unknown action ${JSON.stringify(action)} (expected ${ACTIONS.join(', ')})`);
    }
    return {
      account: optional(`${where}.account`, r.account),
      group: optional(`${where}.group`, r.group),
      anonymous: r.anonymous === true ? true : undefined,
      repositories: list(`${where}.repositories`, r.repositories),
      actions,
      catalog: bool(`${where}.catalog`, r.catalog, false) || undefined,
    };
  });
}

function groups(key: string, value: unknown): Record<string, string[]> {
  const g = section(key, value, Object.keys((value as object | null) ?? {}));
  return Object.fromEntries(Object.entries(g).map(([name, members]) => [name, list(`${key}.${name}`, members)]));
}

function defaultKeydir(rootdirectory: string | undefined): string {
  // On S3 there is no local root to keep it in, and each replica would make its own key:
  // every replica must be given the same one (a mounted Secret).
  if (rootdirectory === undefined) {
    throw new ConfigError('auth.tokenserver.keydir: required with S3 storage (every replica must sign with the same key; mount it from a secret)');
  }
  return `${rootdirectory.replace(/\/+$/, '')}/wharf/token`;
}

/**
 * The auth section from the served values (`auth.htpasswd`, `auth.token`,
 * `auth.tokenserver`, each a map), or undefined for an open registry.
 */
export function buildAuthConfig(
  values: Map<string, unknown>,
  parseDuration: (value: unknown) => number | undefined,
  /** The filesystem root, under which the signing key is kept by default; undefined on S3. */
  rootdirectory: string | undefined,
): AuthConfig | undefined {
  const has = (key: string): boolean => values.has(key);
  if (has('auth.htpasswd') && (has('auth.token') || has('auth.tokenserver'))) {
    throw new ConfigError('auth: configure one method, htpasswd or token (with or without tokenserver), not both');
  }
  if (has('auth.htpasswd')) {
    const h = section('auth.htpasswd', values.get('auth.htpasswd'), HTPASSWD_KEYS);
    return { method: 'htpasswd', realm: required('auth.htpasswd.realm', h.realm), path: required('auth.htpasswd.path', h.path) };
  }
  if (has('auth.tokenserver') && !has('auth.token')) {
    throw new ConfigError('auth.tokenserver: set auth.token too (its realm, service and issuer are what the token server signs for)');
  }
  if (!has('auth.token')) return undefined;
  const t = section('auth.token', values.get('auth.token'), TOKEN_KEYS);
  const algorithms = t.signingalgorithms === undefined ? undefined : list('auth.token.signingalgorithms', t.signingalgorithms);
  for (const alg of algorithms ?? []) {
    if (!ALGORITHMS.includes(alg)) throw new ConfigError(`auth.token.signingalgorithms: ${JSON.stringify(alg)} is not supported (expected some of ${ALGORITHMS.join(', ')})`);
  }
  let server: TokenServerConfig | undefined;
  if (has('auth.tokenserver')) {
    const s = section('auth.tokenserver', values.get('auth.tokenserver'), SERVER_KEYS);
    const asDuration = (name: string, fallback: number): number => {
      if (s[name] === undefined || s[name] === null) return fallback;
      const ms = parseDuration(s[name]);
      if (ms === undefined) throw new ConfigError(`auth.tokenserver.${name}: expected a duration like 5m or 2160h, got ${JSON.stringify(s[name])}`);
      return ms;
    };
    server = {
      htpasswd: required('auth.tokenserver.htpasswd', s.htpasswd),
      keydir: optional('auth.tokenserver.keydir', s.keydir) ?? defaultKeydir(rootdirectory),
      expiration: asDuration('expiration', 5 * 60_000),
      refreshexpiration: asDuration('refreshexpiration', 90 * 24 * 3600_000),
      groups: groups('auth.tokenserver.groups', s.groups),
      rules: rules('auth.tokenserver.rules', s.rules),
    };
    if (server.expiration < 60_000) throw new ConfigError('auth.tokenserver.expiration: at least 1m (clients expect tokens to live 60 s or more)');
  }
  const rootcertbundle = optional('auth.token.rootcertbundle', t.rootcertbundle);
  const jwks = optional('auth.token.jwks', t.jwks);
  if (!server && !rootcertbundle && !jwks) {
    throw new ConfigError('auth.token: set rootcertbundle or jwks (the keys that sign tokens), or auth.tokenserver to issue them');
  }
  return {
    method: 'token',
    realm: absoluteUrl('auth.token.realm', required('auth.token.realm', t.realm)),
    service: required('auth.token.service', t.service),
    issuer: required('auth.token.issuer', t.issuer),
    rootcertbundle,
    jwks,
    signingalgorithms: algorithms,
    autoredirect: bool('auth.token.autoredirect', t.autoredirect, false),
    server,
  };
}
