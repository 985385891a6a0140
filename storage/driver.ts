// The storage driver seam: bytes and small files at paths, nothing registry-specific.
// The filesystem driver implements it now; the S3 driver implements it next. Every
// method's contract is written here; drivers must not add meaning of their own.
//
// Paths are absolute, '/'-separated, made of segments of [A-Za-z0-9._:-] (never '.' or
// '..'), relative to the driver's root. checkPath() enforces that for every driver
// (ObservedDriver checks every call before a driver sees it).
//
// Directories are implicit: a directory exists while some file lies below it, and is
// created and removed with its files (S3 has no directories at all). Callers never create
// one, and must not rely on an empty directory surviving.
import type { Readable, Writable } from 'node:stream';

export interface FileInfo {
  path: string;
  /** Bytes; 0 for directories. */
  size: number;
  modTime: Date;
  isDir: boolean;
}

/** Thrown (never returned) when a path does not exist. */
export class PathNotFoundError extends Error {
  override readonly name = 'PathNotFoundError';
  readonly code = 'PATH_NOT_FOUND';
  constructor(readonly path: string, options?: { cause?: unknown }) {
    super(`path not found: ${path}`, options);
  }
}

/** Thrown for a path that breaks the path grammar: a bug in the caller, never user input. */
export class InvalidPathError extends Error {
  override readonly name = 'InvalidPathError';
  readonly code = 'INVALID_PATH';
  constructor(readonly path: string) {
    super(`invalid storage path: ${JSON.stringify(path.slice(0, 300))}`);
  }
}

/** Thrown when the backend is unreachable or failing (disk full, I/O error, S3 down). */
export class StorageUnavailableError extends Error {
  override readonly name = 'StorageUnavailableError';
  readonly code = 'STORAGE_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export const isPathNotFound = (err: unknown): err is PathNotFoundError => err instanceof PathNotFoundError;

/**
 * A stream of a file's bytes that can also fill buffers its consumer owns. A sender that
 * reuses two buffers for a whole multi-GB blob allocates nothing per chunk, so the garbage
 * collector stays idle (with a fresh buffer per chunk it took ~40% of a pull's CPU).
 * Use either the stream or readInto, never both.
 */
export interface RefillableStream extends Readable {
  /** Reads the next bytes into `buffer`; resolves to the count, 0 at the end. */
  readInto(buffer: Buffer): Promise<number>;
}

export const isRefillable = (stream: Readable): stream is RefillableStream =>
  typeof (stream as Partial<RefillableStream>).readInto === 'function';

/**
 * A file being written. Exactly one of commit() or cancel() must be called, also after
 * an error (callers use try/finally). Until commit() resolves, the written bytes are not
 * guaranteed to be readable. When the caller's source fails and the stream is destroyed (a
 * client gone mid-upload), commit() still keeps a prefix of the bytes written, as many as
 * the driver had taken in (the file's size says how many), so that an upload can resume;
 * it rejects only for a failure of the storage itself.
 */
export interface FileWriter {
  /** The stream to write into; honours backpressure. */
  readonly stream: Writable;
  /** Flushes and keeps everything written. */
  commit(): Promise<void>;
  /** Discards the whole file, including bytes present before an append. */
  cancel(): Promise<void>;
}

export interface StorageDriver {
  /** The driver's name as it appears in config (`filesystem`, `s3`). */
  readonly name: string;

  /**
   * Whether bytes a writer's stream has accepted (its write callback was called) can be
   * read with reader() before commit(). The mirror streams a blob to late clients from the
   * file it is downloading into when this holds; otherwise they wait for the commit.
   */
  readonly readableWhileWriting?: boolean;

  /** Size, time and kind of a path. Throws PathNotFoundError. */
  stat(path: string): Promise<FileInfo>;

  /** The whole content of a small file. Throws PathNotFoundError. */
  getContent(path: string): Promise<Buffer>;

  /**
   * Replaces a file's content atomically: readers see the old or the new bytes, never a mix.
   * The content is durable when the promise resolves, unless `options.durable` is false:
   * for bookkeeping whose loss in a power cut costs a retry, never data (upload sessions).
   */
  putContent(path: string, content: Uint8Array, options?: { durable?: boolean }): Promise<void>;

  /**
   * A stream of the file's bytes from `offset` (inclusive) to `end` (exclusive; default: EOF).
   * Throws PathNotFoundError. The signal aborts the stream.
   */
  reader(path: string, offset?: number, end?: number, signal?: AbortSignal): Promise<Readable>;

  /** Opens a file for writing; `append` continues an existing file (or starts an empty one). */
  writer(path: string, append: boolean): Promise<FileWriter>;

  /** Full paths of the direct children of a directory, unsorted. Throws PathNotFoundError. */
  list(path: string): Promise<string[]>;

  /** Moves a file atomically, replacing the destination. Throws PathNotFoundError for the source. */
  move(source: string, destination: string): Promise<void>;

  /** Deletes a file or a directory with everything below it. Throws PathNotFoundError. */
  delete(path: string): Promise<void>;

  /**
   * A URL from which a client can GET the file's bytes directly (S3: a presigned URL), valid
   * for `expiresInSeconds`. Drivers that cannot hand out URLs leave this undefined, and the
   * registry serves the bytes itself.
   */
  redirectUrl?(path: string, options: { expiresInSeconds: number }): Promise<string>;

  /**
   * Ends writes below `path` that a crashed process left unfinished (S3: multipart uploads
   * begun before `startedBefore`, whose parts cost storage but never became a file).
   * Returns how many were ended. Drivers whose writes leave nothing behind omit it.
   */
  abortUnfinishedWrites?(path: string, startedBefore: Date): Promise<number>;
}

const SEGMENT = /^[A-Za-z0-9._:-]+$/;

/** Throws InvalidPathError unless `path` is an absolute driver path with safe segments. */
export function checkPath(path: string): void {
  if (path.length === 0 || path.length > 4096 || path[0] !== '/') throw new InvalidPathError(path);
  if (path === '/') return;
  for (const segment of path.slice(1).split('/')) {
    if (segment === '.' || segment === '..' || !SEGMENT.test(segment)) throw new InvalidPathError(path);
  }
}
