// The one table from OCI error codes to HTTP statuses, and the middleware that turns
// any thrown error into the spec's JSON body. Handlers and storage never pick statuses.
// Unexpected errors are logged with the request id and answered with a bare 500; their
// messages (paths, stack traces) never reach the client.
import type { Context, Next } from 'koa';
import { isRegistryError, RegistryError, type RegistryErrorCode } from '../storage/errors.js';
import { StorageUnavailableError } from '../storage/driver.js';

const STATUS: Record<RegistryErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  TAG_INVALID: 400,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  MANIFEST_TOO_LARGE: 413,
  UNAVAILABLE: 503,
  NOT_FOUND: 404,
};

/** Codes that are wharf's own names for a status; on the wire they use the spec's closest code. */
const WIRE_CODE: Partial<Record<RegistryErrorCode, string>> = {
  RANGE_INVALID: 'BLOB_UPLOAD_INVALID',
  MANIFEST_TOO_LARGE: 'MANIFEST_INVALID',
  NOT_FOUND: 'UNSUPPORTED',
};

export function statusOf(code: RegistryErrorCode): number {
  return STATUS[code];
}

export async function errorMiddleware(ctx: Context, next: Next): Promise<void> {
  try {
    await next();
  } catch (err) {
    const error = toRegistryError(err, ctx);
    let entry: Record<string, unknown>;
    if (error) {
      ctx.status = STATUS[error.code];
      if (error.code === 'RANGE_INVALID') {
        // An upload chunk out of order gets the upload's Range; a blob GET out of range
        // gets Content-Range with the blob's size (RFC 9110).
        const { size, blobSize } = (error.detail ?? {}) as { size?: number; blobSize?: number };
        if (size !== undefined) ctx.set('Range', `0-${Math.max(0, size - 1)}`);
        if (blobSize !== undefined) ctx.set('Content-Range', `bytes */${blobSize}`);
      }
      if (error.code === 'UNAVAILABLE') ctx.set('Retry-After', '5');
      entry = { code: WIRE_CODE[error.code] ?? error.code, message: error.message };
      const detail = detailText(error.detail);
      if (detail !== undefined) entry.detail = detail;
    } else {
      ctx.status = 500;
      entry = { code: 'UNKNOWN', message: 'internal server error' };
    }
    ctx.type = 'application/json';
    ctx.body = ctx.method === 'HEAD' ? null : { errors: [entry] };
  }
}

/**
 * The spec allows any JSON in `detail`, but clients in the wild (the OCI conformance
 * suite's among them) decode it as a string, so it is sent as one: a single fact as its
 * value, several as `key=value` pairs. Facts that only feed headers are left out.
 */
function detailText(detail: unknown): string | undefined {
  if (detail === undefined || detail === null) return undefined;
  if (typeof detail !== 'object') return String(detail);
  const facts = Object.entries(detail).filter(([key]) => key !== 'size' && key !== 'blobSize');
  const text = (value: unknown): string => (Array.isArray(value) ? value.join(', ') : typeof value === 'object' ? JSON.stringify(value) : String(value));
  if (Array.isArray(detail)) return detail.map(text).join('; ');
  if (facts.length === 0) return undefined;
  if (facts.length === 1) return text(facts[0]![1]);
  return facts.map(([key, value]) => `${key}=${text(value)}`).join(' ');
}

/** The client-facing error for `err`, or undefined for an unexpected failure (logged here). */
function toRegistryError(err: unknown, ctx: Context): RegistryError | undefined {
  if (isRegistryError(err)) return err;
  if (err instanceof StorageUnavailableError) {
    // The driver logs when storage goes down and comes back; each request's own line says 503.
    ctx.log.debug({ err }, 'storage unavailable');
    return new RegistryError('UNAVAILABLE', 'storage is unavailable, try again later');
  }
  const { status, expose } = err as { status?: number; expose?: boolean };
  // Errors Koa raises for malformed requests (e.g. a body over its limit).
  if (status === 413) return new RegistryError('SIZE_INVALID', 'request body too large');
  if (status && status >= 400 && status < 500 && expose) return new RegistryError('UNSUPPORTED', (err as Error).message);
  ctx.log.error({ err }, 'unexpected error');
  return undefined;
}
