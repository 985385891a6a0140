// Domain errors of the registry model. They carry the OCI error code (a name from
// the distribution spec) but never an HTTP status: server/errors.ts owns that table.

export type RegistryErrorCode =
  | 'BLOB_UNKNOWN'
  | 'BLOB_UPLOAD_INVALID'
  | 'BLOB_UPLOAD_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'MANIFEST_BLOB_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'SIZE_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'TAG_INVALID'
  | 'RANGE_INVALID'
  | 'PAGINATION_NUMBER_INVALID'
  | 'MANIFEST_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'NOT_FOUND';

/** An error the client caused or asked about; shown to the client with its code. */
export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  constructor(
    readonly code: RegistryErrorCode,
    message: string,
    readonly detail?: unknown,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const isRegistryError = (err: unknown): err is RegistryError => err instanceof RegistryError;
