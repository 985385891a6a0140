// The registry model as the HTTP layer sees it. The local store implements these
// interfaces (local-repository.ts); the mirror's ProxyRepository implements the same
// ones around a local repository, so routes never know which one they talk to.
import type { Readable } from 'node:stream';
import type { Digest } from './digest.js';
import type { Descriptor } from './manifest.js';

export interface BlobInfo {
  digest: Digest;
  size: number;
}

/** A byte range [start, end) of a blob; `end` is exclusive. */
export interface ByteRange {
  start: number;
  end: number;
}

export interface BlobReadResult extends BlobInfo {
  /** The requested range's bytes (the whole blob without a range). */
  stream: Readable;
}

export interface BlobService {
  /** Size of a blob linked into this repository. Throws BLOB_UNKNOWN. */
  stat(digest: Digest): Promise<BlobInfo>;
  /** Opens a blob linked into this repository. Throws BLOB_UNKNOWN. */
  open(digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<BlobReadResult>;
  /** Unlinks a blob from this repository (the bytes stay until garbage collection). */
  delete(digest: Digest): Promise<void>;
  /**
   * Links an existing blob into this repository without copying it: from `from` if it
   * holds the blob, or (without `from`) from anywhere in the registry. Returns undefined
   * when the blob cannot be mounted, so the caller starts a normal upload.
   */
  mount(digest: Digest, from?: string): Promise<BlobInfo | undefined>;
  /**
   * A URL from which the client can fetch a blob linked into this repository directly
   * (S3: presigned, valid `expiresInSeconds`), or undefined where storage hands out none.
   * Callers stat() the blob first.
   */
  redirectUrl?(digest: Digest, expiresInSeconds: number): Promise<string | undefined>;
}

export interface UploadStatus {
  id: string;
  /** Bytes received so far. */
  size: number;
  startedAt: Date;
}

export interface UploadService {
  start(): Promise<UploadStatus>;
  /** Throws BLOB_UPLOAD_UNKNOWN. */
  status(id: string): Promise<UploadStatus>;
  /**
   * Appends a chunk. With `start`, the chunk must begin exactly at the current size
   * (else RANGE_INVALID, carrying the current size); with `length`, it must hold exactly
   * that many bytes.
   */
  append(id: string, body: Readable, chunk?: { start?: number; length?: number }): Promise<UploadStatus>;
  /**
   * Appends an optional last chunk, verifies the digest and makes the blob part of the
   * repository. A mismatch throws DIGEST_INVALID and discards the upload.
   */
  complete(id: string, digest: Digest, body?: Readable, chunk?: { start?: number; length?: number }): Promise<BlobInfo>;
  cancel(id: string): Promise<void>;
}

export interface ManifestContent {
  digest: Digest;
  mediaType: string;
  content: Buffer;
}

export interface PutManifestResult {
  digest: Digest;
  /** The subject the manifest refers to (OCI 1.1), echoed in the OCI-Subject header. */
  subject?: Digest;
}

export interface ManifestService {
  /** By tag or digest. Throws MANIFEST_UNKNOWN. */
  get(reference: string): Promise<ManifestContent>;
  /** Stores a manifest under a tag or its digest. Throws MANIFEST_INVALID, MANIFEST_BLOB_UNKNOWN, DIGEST_INVALID. */
  put(reference: string, content: Buffer, contentType: string | undefined): Promise<PutManifestResult>;
  /** By digest: removes the manifest and every tag pointing at it. By tag: removes the tag only. */
  delete(reference: string): Promise<void>;
}

export interface TagService {
  /** All tags, sorted. Throws NAME_UNKNOWN for a repository that does not exist. */
  list(): Promise<string[]>;
}

export interface ReferrerService {
  /** Descriptors of the manifests whose subject is `subject`, optionally of one artifact type. */
  list(subject: Digest, artifactType?: string): Promise<Descriptor[]>;
}

export interface Repository {
  readonly name: string;
  readonly blobs: BlobService;
  readonly uploads: UploadService;
  readonly manifests: ManifestService;
  readonly tags: TagService;
  readonly referrers: ReferrerService;
}

/** What a request says besides the name that may choose the repository (a mirror's upstream). */
export interface RepositoryHints {
  /** containerd's `?ns=<registry host>`: the registry the client meant to reach. */
  namespace?: string;
}

export interface Registry {
  /** A repository by validated name (it need not exist yet). Throws NAME_INVALID. */
  repository(name: string, hints?: RepositoryHints): Repository;
  /** Repository names in lexical order, after `last`, at most `limit`. */
  catalog(limit: number, last?: string): Promise<string[]>;
}
