// Range (blob GET) and Content-Range (chunked upload PATCH) headers.
import { RegistryError } from '../storage/errors.js';
import type { ByteRange } from '../storage/repository.js';

/**
 * A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range against a blob of `size` bytes.
 * Returns undefined for no header (or one we ignore, as RFC 9110 allows: multiple ranges,
 * other units); throws RANGE_INVALID (416) for a range outside the blob.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (!header) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    start = Math.max(0, size - suffix);
    end = size;
    if (suffix === 0) throw unsatisfiable(size);
  } else {
    start = Number(match[1]);
    end = match[2] === '' ? size : Math.min(size, Number(match[2]) + 1);
    if (match[2] !== '' && Number(match[2]) < start) throw unsatisfiable(size);
  }
  if (!Number.isSafeInteger(start) || start >= size) throw unsatisfiable(size);
  return { start, end };
}

const unsatisfiable = (size: number): RegistryError =>
  new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { blobSize: size });

/**
 * `Content-Range: <start>-<end>` of an upload chunk (inclusive end). Also accepts the
 * HTTP form `bytes <start>-<end>/<total|*>` some clients send. Returns 'invalid' for a
 * malformed header: the caller answers it with the upload's current Range.
 */
export function parseContentRange(header: string | undefined): { start: number; length: number } | 'invalid' | undefined {
  if (header === undefined || header === '') return undefined;
  const match = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  const start = match ? Number(match[1]) : NaN;
  const end = match ? Number(match[2]) : NaN;
  if (!match || !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) {
    return 'invalid';
  }
  return { start, length: end - start + 1 };
}

/** The upload `Range` header value for `size` bytes received (`0-0` when empty, as Distribution does). */
export function uploadRange(size: number): string {
  return `0-${Math.max(0, size - 1)}`;
}
