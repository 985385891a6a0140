// Authentication to an upstream registry, as Docker clients do it: answer a 401's
// WWW-Authenticate challenge with Basic credentials, or with a Bearer token fetched from the
// challenge's realm (anonymously, or with the Basic credentials when configured). Tokens are
// cached per realm, service and scope; once a URL has challenged, later requests carry the
// credentials up front, so a warm client pays no 401 round trip.
import { LRUCache } from 'lru-cache';
import type { Dispatcher } from 'undici';
import { UpstreamDeniedError, UpstreamInvalidResponseError, UpstreamUnavailableError, redactUrl } from './upstream-errors.js';
import { describeNetworkError, readLimited } from './upstream-http.js';

export interface AuthChallenge {
  /** Lower-cased: `basic`, `bearer`. */
  scheme: string;
  /** Parameter names lower-cased; values unquoted. */
  params: Record<string, string>;
}

const TOKEN_CHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

/**
 * Parses WWW-Authenticate values (RFC 9110 §11.6.1): several challenges in one header or in
 * several headers, quoted values holding commas and escaped quotes. Never throws: garbage is
 * skipped, so a sloppy upstream still gets its realm read.
 */
export function parseChallenges(header: string | string[] | undefined): AuthChallenge[] {
  const text = Array.isArray(header) ? header.join(', ') : (header ?? '');
  const challenges: AuthChallenge[] = [];
  let current: AuthChallenge | undefined;
  let i = 0;
  const skipSpace = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t')) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < text.length && TOKEN_CHAR.test(text[i]!)) i++;
    return text.slice(start, i);
  };
  const readValue = (): string => {
    if (text[i] !== '"') {
      const start = i;
      while (i < text.length && text[i] !== ',' && text[i] !== ' ' && text[i] !== '\t') i++;
      return text.slice(start, i);
    }
    let value = '';
    for (i++; i < text.length && text[i] !== '"'; i++) value += text[i] === '\\' && i + 1 < text.length ? text[++i] : text[i];
    i++; // closing quote (or past the end of an unterminated one)
    return value;
  };
  while (i < text.length) {
    skipSpace();
    if (text[i] === ',') {
      i++;
      continue;
    }
    const word = readToken();
    if (word === '') {
      i++; // a character no grammar allows here
      continue;
    }
    skipSpace();
    if (text[i] === '=' && current !== undefined) {
      i++;
      skipSpace();
      current.params[word.toLowerCase()] = readValue();
    } else {
      current = { scheme: word.toLowerCase(), params: {} };
      challenges.push(current);
    }
  }
  return challenges;
}

export interface UpstreamCredentials {
  username: string;
  password: string;
}

interface CachedToken {
  token: string;
}

/** Seen from a URL: how it wants to be authenticated. */
type KnownScheme = { scheme: 'basic' } | { scheme: 'bearer'; realm: string; service: string };

export interface AuthenticatorOptions {
  credentials?: UpstreamCredentials;
  dispatcher: Dispatcher;
  /** Counts each token request (the client's stats). */
  onTokenRequest?: () => void;
  /** Tokens count as expired this long before their end (default 10 s, at most a quarter of their lifetime). */
  expiryMarginMs?: number;
  userAgent: string;
}

const DEFAULT_TOKEN_SECONDS = 60;
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

export class UpstreamAuthenticator {
  private readonly basic: string | undefined;
  private readonly known = new Map<string, KnownScheme>();
  private readonly tokens = new LRUCache<string, CachedToken>({ max: 1000 });
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly options: AuthenticatorOptions) {
    const c = options.credentials;
    this.basic = c ? `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` : undefined;
  }

  /** The Authorization to send up front to `baseUrl` for `scope`, from what it asked before. */
  authorizationFor(baseUrl: string, scope: string | undefined): string | undefined {
    const known = this.known.get(baseUrl);
    if (known?.scheme === 'basic') return this.basic;
    if (known?.scheme === 'bearer' && scope !== undefined) {
      const cached = this.tokens.get(tokenKey(known.realm, known.service, scope));
      if (cached) return `Bearer ${cached.token}`;
    }
    return undefined;
  }

  /**
   * The Authorization answering a 401 from `baseUrl`. `rejected` is what that request carried:
   * a cached token the upstream refused is dropped and fetched anew; refused Basic
   * credentials are final. Throws UpstreamDeniedError when nothing can answer the challenge.
   */
  async answer(baseUrl: string, header: string | string[] | undefined, rejected: string | undefined): Promise<string> {
    const challenges = parseChallenges(header);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    if (bearer) {
      const realm = bearer.params.realm!;
      const service = bearer.params.service ?? '';
      const scope = bearer.params.scope ?? '';
      this.known.set(baseUrl, { scheme: 'bearer', realm, service });
      const key = tokenKey(realm, service, scope);
      const cached = this.tokens.get(key);
      if (cached && `Bearer ${cached.token}` === rejected) this.tokens.delete(key);
      else if (cached) return `Bearer ${cached.token}`;
      return `Bearer ${await this.token(baseUrl, realm, service, scope)}`;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      this.known.set(baseUrl, { scheme: 'basic' });
      if (this.basic === undefined) throw new UpstreamDeniedError('upstream requires credentials and none are configured', redactUrl(baseUrl));
      if (rejected === this.basic) throw new UpstreamDeniedError('upstream refused the configured credentials', redactUrl(baseUrl));
      return this.basic;
    }
    throw new UpstreamDeniedError('upstream answered 401 without a usable challenge', redactUrl(baseUrl));
  }

  /**
   * One token request per key at a time: a burst of 401s shares it. It takes no caller's
   * signal (it is shared); the dispatcher's timeouts bound it.
   */
  private token(baseUrl: string, realm: string, service: string, scope: string): Promise<string> {
    const key = tokenKey(realm, service, scope);
    let pending = this.pending.get(key);
    if (pending === undefined) {
      pending = this.fetchToken(baseUrl, realm, service, scope).finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return pending;
  }

  private async fetchToken(baseUrl: string, realm: string, service: string, scope: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new UpstreamInvalidResponseError('upstream token realm is not a URL', redactUrl(baseUrl));
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new UpstreamInvalidResponseError('upstream token realm is not http(s)', redactUrl(baseUrl));
    }
    if (service) url.searchParams.append('service', service);
    for (const s of scope.split(' ').filter(Boolean)) url.searchParams.append('scope', s);
    const headers: Record<string, string> = { 'user-agent': this.options.userAgent, accept: 'application/json' };
    // Credentials go to the realm as Docker sends them, but never in clear when the registry itself is https.
    const downgrade = url.protocol === 'http:' && new URL(baseUrl).protocol === 'https:';
    if (this.basic !== undefined && !downgrade) headers.authorization = this.basic;
    const where = redactUrl(url);
    this.options.onTokenRequest?.();
    let res: Dispatcher.ResponseData;
    try {
      res = await this.options.dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method: 'GET', headers });
    } catch (err) {
      throw new UpstreamUnavailableError(`token request to ${where} failed: ${describeNetworkError(err)}`, where, { cause: err });
    }
    const status = res.statusCode;
    if (status !== 200) {
      await res.body.dump().catch(() => undefined);
      if (status === 401 || status === 403) throw new UpstreamDeniedError(`token server ${where} refused: ${status}`, where);
      if (status >= 500 || status === 429) throw new UpstreamUnavailableError(`token server ${where} answered ${status}`, where);
      throw new UpstreamInvalidResponseError(`token server ${where} answered ${status}`, where);
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      const text = await readLimited(res.body, MAX_TOKEN_RESPONSE_BYTES);
      body = JSON.parse(text.toString('utf8')) as typeof body;
    } catch (err) {
      if (err instanceof UpstreamInvalidResponseError) throw err;
      throw new UpstreamInvalidResponseError(`token server ${where} sent no JSON`, where);
    }
    const token = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof token !== 'string' || token === '') throw new UpstreamInvalidResponseError(`token server ${where} sent no token`, where);
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    const lifetimeMs = seconds * 1000;
    const ttl = Math.floor(lifetimeMs - Math.min(this.options.expiryMarginMs ?? 10_000, lifetimeMs / 4));
    this.tokens.set(tokenKey(realm, service, scope), { token }, { ttl });
    return token;
  }
}

const tokenKey = (realm: string, service: string, scope: string): string => `${realm}\n${service}\n${scope}`;
