// Errors of the upstream registry client. They are not RegistryErrors: the mirror decides
// what a client sees (stale content, 404, 503), never the upstream's status. Messages name
// the upstream by origin and path only: no credentials, tokens or presigned query strings.

export type UpstreamErrorCode = 'UPSTREAM_UNAVAILABLE' | 'UPSTREAM_DENIED' | 'UPSTREAM_INVALID';

export abstract class UpstreamError extends Error {
  abstract readonly code: UpstreamErrorCode;
  constructor(
    message: string,
    /** The upstream URL (origin and path) the failure came from, when known. */
    readonly url?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Refused or timed-out connections, 5xx, 429, or an open circuit breaker: the upstream cannot
 * answer now. Callers serve what they have or answer quickly; they never pass a 429 on.
 */
export class UpstreamUnavailableError extends UpstreamError {
  override readonly name = 'UpstreamUnavailableError';
  readonly code = 'UPSTREAM_UNAVAILABLE';
}

/** 401/403 after authenticating (or no credentials configured for a Basic challenge). */
export class UpstreamDeniedError extends UpstreamError {
  override readonly name = 'UpstreamDeniedError';
  readonly code = 'UPSTREAM_DENIED';
}

/** The upstream answered, but wrongly: digest mismatch, oversized manifest, bad Content-Range, redirect loop. */
export class UpstreamInvalidResponseError extends UpstreamError {
  override readonly name = 'UpstreamInvalidResponseError';
  readonly code = 'UPSTREAM_INVALID';
}

/**
 * By code, not class: the mirror talks to any implementation of its Upstream interface, and an
 * upstream's errors need only carry the code.
 */
export const isUpstreamUnavailable = (err: unknown): boolean => (err as { code?: unknown } | null)?.code === 'UPSTREAM_UNAVAILABLE';
/** Refused the mirror's credentials (or, like Docker Hub, a repository that does not exist). */
export const isUpstreamDenied = (err: unknown): boolean => (err as { code?: unknown } | null)?.code === 'UPSTREAM_DENIED';

/** `scheme://host:port/path` of a URL: what messages and logs may show of it. */
export function redactUrl(url: string | URL): string {
  try {
    const u = typeof url === 'string' ? new URL(url) : url;
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}
