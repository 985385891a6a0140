// The HTTP underneath the upstream client: requests that follow redirects, header access,
// bodies read whole under a limit or streamed with a byte count, statuses turned into errors.
import { Transform, pipeline, type Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { parseDigest, type Digest } from '../storage/digest.js';
import { UpstreamDeniedError, UpstreamInvalidResponseError, UpstreamUnavailableError, redactUrl } from './upstream-errors.js';

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;

export interface UpstreamResponse {
  res: Dispatcher.ResponseData;
  /** Where the final answer came from (after redirects). */
  url: URL;
}

export interface RedirectingRequest {
  method: 'GET' | 'HEAD';
  url: URL;
  headers: Record<string, string>;
  /** Sent to `url`'s origin only, never to an origin a redirect leads to. */
  authorization?: string;
  signal?: AbortSignal;
}

/**
 * Sends a request and follows up to 5 redirects itself, so that it controls the headers: the
 * upstream's Authorization never goes to another origin (scheme, host, port). Object storage
 * behind a redirect gets a presigned URL and refuses a second authentication mechanism, and
 * must never see our credentials anyway. Network failures become UpstreamUnavailableError.
 */
export async function requestFollowingRedirects(dispatcher: Dispatcher, req: RedirectingRequest, onRequest: () => void): Promise<UpstreamResponse> {
  const authorizedOrigin = req.url.origin;
  let url = req.url;
  for (let hops = 0; ; hops++) {
    const headers = { ...req.headers };
    if (req.authorization !== undefined && url.origin === authorizedOrigin) headers.authorization = req.authorization;
    const res = await send(dispatcher, url, req.method, headers, req.signal, onRequest);
    if (!REDIRECT_STATUSES.has(res.statusCode)) return { res, url };
    const location = headerValue(res.headers.location);
    await dump(res);
    const where = redactUrl(url);
    if (location === undefined) throw new UpstreamInvalidResponseError(`redirect without Location from ${where}`, where);
    if (hops >= MAX_REDIRECTS) throw new UpstreamInvalidResponseError(`more than ${MAX_REDIRECTS} redirects from ${redactUrl(req.url)}`, where);
    let next: URL;
    try {
      next = new URL(location, url);
    } catch {
      throw new UpstreamInvalidResponseError(`redirect to an invalid URL from ${where}`, where);
    }
    if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new UpstreamInvalidResponseError(`redirect to a non-http URL from ${where}`, where);
    url = next;
  }
}

async function send(
  dispatcher: Dispatcher,
  url: URL,
  method: string,
  headers: Record<string, string>,
  signal: AbortSignal | undefined,
  onRequest: () => void,
): Promise<Dispatcher.ResponseData> {
  onRequest();
  try {
    // undici closes the connection after every HEAD (against servers that send a body anyway);
    // registries do not, and the mirror HEADs manifests often: keep those connections alive.
    const reset = method === 'HEAD' ? false : undefined;
    return await dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method, headers, signal, reset });
  } catch (err) {
    // The caller's abort is no failure of the upstream; an invalid argument is our bug.
    if (signal?.aborted || (err as { code?: unknown }).code === 'UND_ERR_INVALID_ARG') throw err;
    const where = redactUrl(url);
    throw new UpstreamUnavailableError(`${method} ${where}: ${describeNetworkError(err)}`, where, { cause: err });
  }
}

export function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Discards a body we do not use, so its connection goes back to the pool. */
export async function dump(res: Dispatcher.ResponseData): Promise<void> {
  await res.body.dump().catch(() => undefined);
}

export async function notFound(res: Dispatcher.ResponseData): Promise<undefined> {
  await dump(res);
  return undefined;
}

/** Any status an operation does not expect, as the error it means. */
export async function refuse(res: Dispatcher.ResponseData, url: URL, what: string): Promise<never> {
  await dump(res);
  const status = res.statusCode;
  const where = redactUrl(url);
  const message = `${what}: ${where} answered ${status}`;
  if (status >= 500 || status === 429) throw new UpstreamUnavailableError(message, where);
  if (status === 401 || status === 403) throw new UpstreamDeniedError(message, where);
  throw new UpstreamInvalidResponseError(message, where);
}

export function parseUpstreamDigest(value: string, where: string): Digest {
  try {
    return parseDigest(value.trim());
  } catch {
    throw new UpstreamInvalidResponseError('upstream sent an invalid digest', where);
  }
}

/** The path (below the prefix) of a `Link: <...>; rel="next"` page, if it stays on the upstream. */
export function nextPagePath(link: string | undefined, current: URL, origin: string, prefix: string): string | undefined {
  const match = link === undefined ? null : /<([^>]+)>\s*;\s*rel="?next"?/.exec(link);
  if (match === null) return undefined;
  const next = new URL(match[1]!, current);
  if (next.origin !== origin || !next.pathname.startsWith(`${prefix}/v2/`)) return undefined;
  return next.pathname.slice(prefix.length) + next.search;
}

/** Reads a small body whole; more than `limit` bytes is an invalid response. */
export async function readLimited(body: Dispatcher.ResponseData['body'], limit: number, onBytes?: (n: number) => void): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    onBytes?.(chunk.length);
    if (size > limit) {
      body.destroy();
      throw new UpstreamInvalidResponseError(`upstream response larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** The body as the caller's stream, counting bytes and dropping the first `skip` of them. */
export function countedBody(body: Readable, skip: number, onBytes: (n: number) => void): Readable {
  let toSkip = skip;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      onBytes(chunk.length);
      if (toSkip > 0) {
        const dropped = Math.min(toSkip, chunk.length);
        toSkip -= dropped;
        chunk = chunk.subarray(dropped);
        if (chunk.length === 0) return done();
      }
      done(null, chunk);
    },
  });
  // pipeline carries errors (timeouts, resets) to the caller's stream and destroys the
  // upstream body when the caller destroys theirs.
  pipeline(body, counter, () => undefined);
  return counter;
}

/** A network error's code and message, for error messages (undici's never hold headers). */
export function describeNetworkError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
