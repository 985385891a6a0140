// The mirror's client for one upstream registry: keep-alive pools with timeouts and a
// connection cap (undici), failover across the upstream's URLs, Basic and Bearer auth,
// redirects that never carry the upstream's Authorization to another origin, a circuit breaker
// per URL, and counters. Operations answer undefined for 404 and throw UpstreamError subclasses
// for everything else that is not a success.
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { digestOf, isDigest, type Digest } from '../storage/digest.js';
import { MAX_MANIFEST_BYTES } from '../storage/manifest.js';
import { assertRepositoryName, assertTag } from '../storage/names.js';
import { CircuitBreaker, type BreakerState } from './breaker.js';
import { UpstreamAuthenticator } from './upstream-auth.js';
import {
  UpstreamDeniedError,
  UpstreamError,
  UpstreamInvalidResponseError,
  UpstreamUnavailableError,
  redactUrl,
} from './upstream-errors.js';
import {
  countedBody,
  describeNetworkError,
  dump,
  headerValue,
  nextPagePath,
  notFound,
  parseUpstreamDigest,
  readLimited,
  refuse,
  requestFollowingRedirects,
  type UpstreamResponse,
} from './upstream-http.js';

/** pino's shape, as much of it as the client uses. */
export interface UpstreamLogger {
  warn(fields: object, message: string): void;
  info(fields: object, message: string): void;
}

export interface UpstreamClientOptions {
  /** Base URLs of the same upstream (`https://registry-1.docker.io`); the first is the primary. No credentials in them. */
  urls: string[];
  username?: string;
  password?: string;
  /** Concurrent connections per upstream origin (undici's pool size). Default 16. */
  maxConnections?: number;
  /** Default 5 s. */
  connectTimeoutMs?: number;
  /** Time to the response headers. Default 30 s. */
  headersTimeoutMs?: number;
  /** Longest pause between two body chunks. Default 30 s. */
  bodyTimeoutMs?: number;
  /** Idle keep-alive sockets close after this. Default 30 s. */
  keepAliveTimeoutMs?: number;
  breaker?: { initialBackoffMs?: number; maxBackoffMs?: number };
  /** Called once per breaker state change of a URL. */
  onStateChange?: (url: string, state: BreakerState, reason: string) => void;
  /** Breaker state changes are logged here, once each. */
  logger?: UpstreamLogger;
  userAgent?: string;
}

export interface UpstreamManifest {
  digest: Digest;
  mediaType: string;
  size: number;
  /** The verified bytes (GET only). */
  content?: Buffer;
}

export interface UpstreamBlob {
  /** The bytes from the requested offset; the caller hashes them. */
  body: Readable;
  /** Bytes in `body`. */
  length: number;
  /** Size of the whole blob. */
  total: number;
}

export interface UpstreamReferrers {
  /** The upstream's OCI image index. */
  content: Buffer;
  mediaType: string;
  /** Whether the upstream applied the artifactType filter (OCI-Filters-Applied); if not, the caller filters. */
  filtered: boolean;
}

export interface UpstreamStats {
  /** HTTP requests sent, redirects and token requests included. */
  requests: number;
  tokenRequests: number;
  /** Body bytes of manifests, blobs and referrers received. */
  bytesReceived: number;
  /** Attempts that failed: unreachable, 5xx, 429, denied, invalid answers. */
  errors: number;
  /** Calls refused without network because every URL's breaker was open. */
  fastFailures: number;
  /** Breaker state per URL. */
  breakers: Record<string, BreakerState>;
}

const DOCKER_HUB_HOSTS = new Set(['registry-1.docker.io', 'index.docker.io', 'docker.io']);
const MAX_TAG_PAGES = 100;
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Docker Hub serves official images as `library/<name>`; clients write `busybox`. */
export function upstreamRepositoryName(remoteUrl: string, name: string): string {
  return DOCKER_HUB_HOSTS.has(new URL(remoteUrl).hostname) && !name.includes('/') ? `library/${name}` : name;
}

interface UpstreamUrl {
  /** Normalised base URL, the key of stats and callbacks. */
  base: string;
  url: URL;
  /** Path before `/v2/`, without a trailing slash ('' for most registries). */
  prefix: string;
  breaker: CircuitBreaker;
}

interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path and query below the base URL, starting with `/v2/`. */
  path: string;
  headers: Record<string, string>;
  /** The token scope to send a cached token for. */
  scope?: string;
  signal?: AbortSignal;
}

export class UpstreamClient {
  readonly stats: UpstreamStats = { requests: 0, tokenRequests: 0, bytesReceived: 0, errors: 0, fastFailures: 0, breakers: {} };
  private readonly agent: Agent;
  private readonly auth: UpstreamAuthenticator;
  private readonly upstreams: UpstreamUrl[];
  private readonly userAgent: string;

  constructor(private readonly options: UpstreamClientOptions) {
    if (options.urls.length === 0) throw new TypeError('UpstreamClient needs at least one URL');
    this.userAgent = options.userAgent ?? 'wharf-mirror';
    this.agent = new Agent({
      connections: options.maxConnections ?? 16,
      connect: { timeout: options.connectTimeoutMs ?? 5000 },
      headersTimeout: options.headersTimeoutMs ?? 30_000,
      bodyTimeout: options.bodyTimeoutMs ?? 30_000,
      keepAliveTimeout: options.keepAliveTimeoutMs ?? 30_000,
    });
    const credentials =
      options.username !== undefined ? { username: options.username, password: options.password ?? '' } : undefined;
    this.auth = new UpstreamAuthenticator({
      credentials,
      dispatcher: this.agent,
      userAgent: this.userAgent,
      onTokenRequest: () => {
        this.stats.tokenRequests++;
        this.stats.requests++;
      },
    });
    this.upstreams = options.urls.map((raw) => this.upstreamUrl(raw));
  }

  private upstreamUrl(raw: string): UpstreamUrl {
    const url = new URL(raw);
    // Credentials in a URL would end up in logs and stats keys.
    if (url.username || url.password) throw new TypeError('upstream URLs must not hold credentials; use username/password');
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError(`upstream URL must be http(s): ${redactUrl(url)}`);
    const base = `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
    this.stats.breakers[base] = 'up';
    const breaker = new CircuitBreaker({
      ...this.options.breaker,
      onStateChange: (state, reason) => {
        this.stats.breakers[base] = state;
        this.options.onStateChange?.(base, state, reason);
        if (state === 'down') this.options.logger?.warn({ upstream: base, reason }, 'upstream down: failing fast until a probe succeeds');
        else this.options.logger?.info({ upstream: base }, 'upstream up again');
      },
    });
    const parsed = new URL(base);
    return { base, url: parsed, prefix: parsed.pathname.replace(/\/+$/, ''), breaker };
  }

  /** A manifest by tag or digest; GET returns its bytes, verified against the digest. */
  async manifest(
    repo: string,
    reference: string,
    opts: { method?: 'GET' | 'HEAD'; accept: string[]; signal?: AbortSignal },
  ): Promise<UpstreamManifest | undefined> {
    const method = opts.method ?? 'GET';
    checkNames(repo, reference);
    return this.call(opts.signal, async (up) => {
      const name = upstreamRepositoryName(up.base, repo);
      const { res, url } = await this.send(up, {
        method,
        path: `/v2/${name}/manifests/${reference}`,
        headers: { accept: opts.accept.join(', ') },
        scope: pullScope(name),
        signal: opts.signal,
      });
      if (res.statusCode === 404) return notFound(res);
      if (res.statusCode !== 200) return refuse(res, url, 'manifest');
      const where = redactUrl(url);
      const mediaType = (headerValue(res.headers['content-type']) ?? '').split(';')[0]!.trim();
      const expected = [headerValue(res.headers['docker-content-digest']), isDigest(reference) ? reference : undefined]
        .filter((d): d is string => d !== undefined)
        .map((d) => parseUpstreamDigest(d, where));
      if (method === 'HEAD') {
        await dump(res);
        const size = Number(headerValue(res.headers['content-length']));
        if (expected.length === 0 || !Number.isSafeInteger(size)) throw new UpstreamInvalidResponseError('manifest HEAD without digest or length', where);
        if (expected.some((d) => d.value !== expected[0]!.value)) throw new UpstreamInvalidResponseError('manifest digest differs from the reference', where);
        return { digest: expected[0]!, mediaType, size };
      }
      if (Number(headerValue(res.headers['content-length'])) > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new UpstreamInvalidResponseError(`manifest larger than ${MAX_MANIFEST_BYTES} bytes`, where);
      }
      const content = await this.readBody(res, where, opts.signal);
      const actual = digestOf(content, expected[0]?.algorithm ?? 'sha256');
      // The upstream's digest header and a digest reference are both claims; the bytes decide.
      for (const claim of expected) {
        const check = claim.algorithm === actual.algorithm ? actual : digestOf(content, claim.algorithm);
        if (check.value !== claim.value) throw new UpstreamInvalidResponseError(`manifest bytes do not match ${claim.value}`, where);
      }
      return { digest: actual, mediaType, size: content.length, content };
    });
  }

  /** A blob's bytes from `offset` (Range: bytes=offset-). */
  async blob(repo: string, digest: Digest, opts: { offset?: number; signal?: AbortSignal } = {}): Promise<UpstreamBlob | undefined> {
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid blob offset ${offset}`);
    checkNames(repo);
    return this.call(opts.signal, async (up) => {
      const name = upstreamRepositoryName(up.base, repo);
      const { res, url } = await this.send(up, {
        method: 'GET',
        path: `/v2/${name}/blobs/${digest.value}`,
        headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        scope: pullScope(name),
        signal: opts.signal,
      });
      if (res.statusCode === 404) return notFound(res);
      const where = redactUrl(url);
      if (res.statusCode === 200) {
        // An upstream that ignores Range sends everything: skip what the caller has.
        const total = Number(headerValue(res.headers['content-length']) ?? NaN);
        if (!Number.isSafeInteger(total) || total < offset) {
          await dump(res);
          throw new UpstreamInvalidResponseError(`blob answer without a length covering offset ${offset}`, where);
        }
        return { body: countedBody(res.body, offset, this.countBytes), length: total - offset, total };
      }
      if (res.statusCode === 206 && offset > 0) {
        // The caller needs the blob's size to know when it has all of it: `*` will not do.
        const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(headerValue(res.headers['content-range']) ?? '');
        if (range === null || Number(range[1]) !== offset || Number(range[2]) + 1 !== Number(range[3])) {
          await dump(res);
          throw new UpstreamInvalidResponseError(`blob range answer is not bytes ${offset}- of the whole blob`, where);
        }
        return { body: countedBody(res.body, 0, this.countBytes), length: Number(range[3]) - offset, total: Number(range[3]) };
      }
      if (res.statusCode === 416) {
        await dump(res);
        throw new UpstreamInvalidResponseError(`blob offset ${offset} not satisfiable`, where);
      }
      return refuse(res, url, 'blob');
    });
  }

  /** A blob's size, or undefined when the upstream does not have it. */
  async blobHead(repo: string, digest: Digest, opts: { signal?: AbortSignal } = {}): Promise<number | undefined> {
    checkNames(repo);
    return this.call(opts.signal, async (up) => {
      const name = upstreamRepositoryName(up.base, repo);
      const { res, url } = await this.send(up, {
        method: 'HEAD',
        path: `/v2/${name}/blobs/${digest.value}`,
        headers: {},
        scope: pullScope(name),
        signal: opts.signal,
      });
      if (res.statusCode === 404) return notFound(res);
      if (res.statusCode !== 200) return refuse(res, url, 'blob HEAD');
      await dump(res);
      const size = Number(headerValue(res.headers['content-length']));
      if (!Number.isSafeInteger(size) || size < 0) throw new UpstreamInvalidResponseError('blob HEAD without a length', redactUrl(url));
      return size;
    });
  }

  /** The upstream's referrers index for `subject`; undefined when it has no referrers API (404). */
  async referrers(repo: string, subject: Digest, artifactType?: string, opts: { signal?: AbortSignal } = {}): Promise<UpstreamReferrers | undefined> {
    checkNames(repo);
    return this.call(opts.signal, async (up) => {
      const name = upstreamRepositoryName(up.base, repo);
      const query = artifactType === undefined ? '' : `?artifactType=${encodeURIComponent(artifactType)}`;
      const { res, url } = await this.send(up, {
        method: 'GET',
        path: `/v2/${name}/referrers/${subject.value}${query}`,
        headers: { accept: OCI_INDEX },
        scope: pullScope(name),
        signal: opts.signal,
      });
      if (res.statusCode === 404) return notFound(res);
      if (res.statusCode !== 200) return refuse(res, url, 'referrers');
      const filters = headerValue(res.headers['oci-filters-applied']) ?? '';
      const mediaType = (headerValue(res.headers['content-type']) ?? OCI_INDEX).split(';')[0]!.trim();
      const content = await this.readBody(res, redactUrl(url), opts.signal);
      return { content, mediaType, filtered: artifactType === undefined || filters.split(',').some((f) => f.trim() === 'artifactType') };
    });
  }

  /** All tags of a repository (following `Link` pages), or undefined when it does not exist upstream. */
  async tags(repo: string, opts: { signal?: AbortSignal } = {}): Promise<string[] | undefined> {
    checkNames(repo);
    return this.call(opts.signal, async (up) => {
      const name = upstreamRepositoryName(up.base, repo);
      const tags: string[] = [];
      let path: string | undefined = `/v2/${name}/tags/list`;
      for (let page = 0; path !== undefined && page < MAX_TAG_PAGES; page++) {
        const { res, url }: UpstreamResponse = await this.send(up, { method: 'GET', path, headers: { accept: 'application/json' }, scope: pullScope(name), signal: opts.signal });
        if (res.statusCode === 404) return notFound(res);
        if (res.statusCode !== 200) return refuse(res, url, 'tags');
        const link = headerValue(res.headers.link);
        const text = (await this.readBody(res, redactUrl(url), opts.signal)).toString('utf8');
        let body: { tags?: unknown };
        try {
          body = JSON.parse(text) as typeof body;
        } catch {
          throw new UpstreamInvalidResponseError('tag list is not JSON', redactUrl(url));
        }
        if (Array.isArray(body.tags)) tags.push(...body.tags.filter((t): t is string => typeof t === 'string'));
        path = nextPagePath(link, url, up.url.origin, up.prefix);
      }
      return tags;
    });
  }

  private readonly countBytes = (n: number): void => {
    this.stats.bytesReceived += n;
  };

  /** Closes the pools; in-flight requests finish first. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  /**
   * Runs `attempt` against each URL in order, skipping URLs whose breaker is open. Only
   * unavailability moves on to the next URL; any answer (404, denial) is the upstream's word.
   */
  private async call<T>(signal: AbortSignal | undefined, attempt: (up: UpstreamUrl) => Promise<T>): Promise<T> {
    let lastFailure: UpstreamUnavailableError | undefined;
    for (const up of this.upstreams) {
      const permit = up.breaker.tryAcquire();
      if (permit === undefined) continue;
      try {
        const result = await attempt(up);
        up.breaker.succeeded(permit);
        return result;
      } catch (err) {
        if (signal?.aborted || !(err instanceof UpstreamError)) {
          up.breaker.released(permit);
          throw err;
        }
        this.stats.errors++;
        if (!(err instanceof UpstreamUnavailableError)) {
          up.breaker.succeeded(permit);
          throw err;
        }
        up.breaker.failed(permit, err.message);
        lastFailure = err;
      }
    }
    if (lastFailure) throw lastFailure;
    this.stats.fastFailures++;
    const retryInMs = Math.min(...this.upstreams.map((up) => up.breaker.retryInMs()));
    throw new UpstreamUnavailableError(`upstream unavailable (circuit open); next probe in ${retryInMs} ms`, this.upstreams[0]!.base);
  }

  /** One request with authentication: a 401 is answered from its challenge and the request sent once more. */
  private async send(up: UpstreamUrl, req: UpstreamRequest): Promise<UpstreamResponse> {
    const sent = this.auth.authorizationFor(up.base, req.scope);
    const first = await this.follow(up, req, sent);
    if (first.res.statusCode !== 401 || first.url.origin !== up.url.origin) return first;
    const challenge = first.res.headers['www-authenticate'];
    await dump(first.res);
    const authorization = await this.auth.answer(up.base, challenge, sent);
    const second = await this.follow(up, req, authorization);
    if (second.res.statusCode === 401) {
      await dump(second.res);
      throw new UpstreamDeniedError(`upstream refused the credentials for ${req.method} ${redactUrl(second.url)}`, redactUrl(second.url));
    }
    return second;
  }

  /** The request to the upstream's URL, following redirects; Authorization only to the upstream's origin. */
  private follow(up: UpstreamUrl, req: UpstreamRequest, authorization: string | undefined): Promise<UpstreamResponse> {
    const url = new URL(up.prefix + req.path, up.url.origin);
    const headers = { 'user-agent': this.userAgent, ...req.headers };
    return requestFollowingRedirects(this.agent, { method: req.method, url, headers, authorization, signal: req.signal }, () => {
      this.stats.requests++;
    });
  }

  /** A small body whole (manifests, indexes, tag lists), at most 4 MiB; a broken stream is unavailability. */
  private async readBody(res: Dispatcher.ResponseData, where: string, signal?: AbortSignal): Promise<Buffer> {
    try {
      return await readLimited(res.body, MAX_MANIFEST_BYTES, this.countBytes);
    } catch (err) {
      if (err instanceof UpstreamError || signal?.aborted) throw err;
      throw new UpstreamUnavailableError(`reading ${where}: ${describeNetworkError(err)}`, where, { cause: err });
    }
  }
}

const pullScope = (name: string): string => `repository:${name}:pull`;

/** Names go into URL paths: a bad one is refused before it can change the path (NAME_INVALID, TAG_INVALID). */
function checkNames(repo: string, reference?: string): void {
  assertRepositoryName(repo);
  if (reference !== undefined && !isDigest(reference)) assertTag(reference);
}
