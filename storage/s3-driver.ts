// StorageDriver on an S3 bucket (AWS S3 or an S3-compatible server: Ceph RGW, MinIO, ...),
// with CNCF Distribution's s3 driver keys and key layout, so that a bucket written by
// Distribution is served as it is and the other way round.
//
// Keys: `<rootdirectory>/docker/registry/v2/...`, without a leading slash; with an empty
// rootdirectory, `docker/registry/v2/...` (Distribution's s3Path). Directories are implicit:
// a path is a directory when some key lies below it.
//
// Writers stream: bytes are gathered into part buffers of `chunksize` (default 10 MiB, at
// least 5 MiB, S3's minimum part size); a full buffer goes out as one UploadPart while the
// next one fills, so a writer holds at most two buffers whatever the file's size. A file
// smaller than one chunk is one PutObject at commit. Nothing is visible before commit()
// (readableWhileWriting is false), and commit() is atomic: CompleteMultipartUpload or PutObject.
//
// Appending: S3 objects cannot grow. A writer opened with `append` keeps the committed object
// as it is until its own commit replaces it: when the object is at least 5 MiB, the new
// multipart upload starts with UploadPartCopy parts of the object itself (server-side, no
// bytes through wharf), then the new bytes as further parts; a smaller object is read into
// the first part buffer (it fits: it is below the minimum part size) and rewritten with the
// new bytes. Distribution instead keeps an upload's data as an unfinished multipart upload;
// wharf's upload sessions are plain objects, so both kinds of session cannot be continued
// by the other server (blobs, links and manifests are the same).
//
// Move is CopyObject (multipart UploadPartCopy above `multipartcopythresholdsize`) and then
// DeleteObject: the destination appears atomically; for a moment both exist. The threshold's
// default depends on the server. AWS S3 (no `regionendpoint`, or one under amazonaws.com): 32 MiB,
// Distribution's, since AWS copies large objects faster as parallel parts than as one CopyObject.
// Any other endpoint (an S3-compatible server): 5 GiB, S3's largest single copy. Ceph RGW, the
// usual S3 on premises, makes a CopyObject by reference (the tail of the object is shared, no
// bytes move) but copies the bytes of every UploadPartCopy; in the S3 bench a 1 GiB push then
// wrote its bytes twice, and moving by multipart copy took longer than the upload itself.
// An explicit `multipartcopythresholdsize` always wins.
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable, Writable, addAbortSignal } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  UploadPartCopyCommand,
  type CompletedPart,
  type ServerSideEncryption,
  type StorageClass,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Agent as UndiciAgent, request as undiciRequest } from 'undici';
import {
  checkPath,
  PathNotFoundError,
  StorageUnavailableError,
  type FileInfo,
  type FileWriter,
  type RefillableStream,
  type StorageDriver,
} from './driver.js';

const MiB = 1 << 20;
/** S3's smallest part (all but the last part of a multipart upload). */
export const MIN_CHUNK_SIZE = 5 * MiB;
/** S3's largest part, also the largest single CopyObject. */
const MAX_PART_SIZE = 5 * 1024 * MiB;
const MAX_PARTS = 10_000;
/** DeleteObjects takes at most this many keys; ListObjectsV2 returns at most this many. */
const BATCH = 1000;

/** The driver's settings: Distribution's `storage.s3` keys, already parsed. */
export interface S3DriverOptions {
  /** Static credentials; without them the SDK's default chain (env, profile, instance role). */
  accesskey?: string;
  secretkey?: string;
  /** With temporary credentials: their session token. */
  sessiontoken?: string;
  region: string;
  /** An S3-compatible server's URL; a bare host gets http or https from `secure`. */
  regionendpoint?: string;
  /** Path-style URLs (`endpoint/bucket/key`), which S3-compatible servers mostly need. Default false, as in Distribution. */
  forcepathstyle?: boolean;
  bucket: string;
  /** Key prefix; '' or '/' for the bucket's top. */
  rootdirectory?: string;
  /** https for a `regionendpoint` without a scheme (default true). */
  secure?: boolean;
  /** Accept any TLS certificate (default false). */
  skipverify?: boolean;
  /** Signature V4 (default true); V2 signing is not available and `false` is refused. */
  v4auth?: boolean;
  /** Part size of streamed writes (default 10 MiB, at least 5 MiB). */
  chunksize?: number;
  /** Part size of multipart copies (default 32 MiB). */
  multipartcopychunksize?: number;
  /** Parts copied at once (default 100). */
  multipartcopymaxconcurrency?: number;
  /** Objects above this size are copied part by part (default 32 MiB on AWS, 5 GiB on other endpoints). */
  multipartcopythresholdsize?: number;
  /** Default STANDARD; 'NONE' sends no storage class (servers that know none). */
  storageclass?: string;
  /** Server-side encryption: AES256, or aws:kms with `keyid`. */
  encrypt?: boolean;
  keyid?: string;
  /** Attempts per request, retries included, with the SDK's standard backoff (default 3). */
  maxattempts?: number;
  /** Sockets per host (default 128: multipart copies run 100 parts at once). */
  maxsockets?: number;
  /** Milliseconds a request may go without a byte from S3 before it fails and is retried (default 60 s). */
  idletimeout?: number;
}

export class S3Driver implements StorageDriver {
  readonly name = 's3';
  /** Nothing is readable before commit(). */
  readonly readableWhileWriting = false;
  readonly client: S3Client;
  /** The same client for blob reads (reader()), whose bodies come through undici (see UndiciHandler). */
  private readonly readClient: S3Client;
  readonly bucket: string;
  /** Key prefix of the driver's '/': '' or '<rootdirectory>/'. */
  private readonly rootPrefix: string;
  private readonly rootDirectory: string;
  readonly chunkSize: number;
  private readonly copyChunkSize: number;
  private readonly copyConcurrency: number;
  private readonly copyThreshold: number;
  readonly writeParams: { StorageClass?: StorageClass; ServerSideEncryption?: ServerSideEncryption; SSEKMSKeyId?: string };

  constructor(options: S3DriverOptions) {
    if (options.v4auth === false) throw new Error('s3: v4auth: false (signature V2) is not supported');
    if (!options.bucket) throw new Error('s3: bucket is required');
    if (!options.region) throw new Error('s3: region is required');
    if ((options.accesskey === undefined) !== (options.secretkey === undefined)) {
      throw new Error('s3: accesskey and secretkey go together');
    }
    this.bucket = options.bucket;
    this.rootDirectory = (options.rootdirectory ?? '').replace(/\/+$/, '');
    this.rootPrefix = this.s3Path('/');
    this.chunkSize = options.chunksize ?? 2 * MIN_CHUNK_SIZE;
    if (!Number.isInteger(this.chunkSize) || this.chunkSize < MIN_CHUNK_SIZE || this.chunkSize > MAX_PART_SIZE) {
      throw new Error(`s3: chunksize must be between ${MIN_CHUNK_SIZE} and ${MAX_PART_SIZE}`);
    }
    this.copyChunkSize = options.multipartcopychunksize ?? 32 * MiB;
    this.copyConcurrency = options.multipartcopymaxconcurrency ?? 100;
    this.copyThreshold = options.multipartcopythresholdsize ?? (isAws(options.regionendpoint) ? 32 * MiB : MAX_PART_SIZE);
    if (this.copyChunkSize < MIN_CHUNK_SIZE || this.copyChunkSize > MAX_PART_SIZE) {
      throw new Error(`s3: multipartcopychunksize must be between ${MIN_CHUNK_SIZE} and ${MAX_PART_SIZE}`);
    }
    if (!(this.copyConcurrency >= 1)) throw new Error('s3: multipartcopymaxconcurrency must be at least 1');
    if (!(this.copyThreshold >= 0) || this.copyThreshold > MAX_PART_SIZE) {
      throw new Error(`s3: multipartcopythresholdsize must be between 0 and ${MAX_PART_SIZE}`);
    }
    const storageClass = options.storageclass ?? 'STANDARD';
    this.writeParams = {};
    if (storageClass !== 'NONE') this.writeParams.StorageClass = storageClass as StorageClass;
    if (options.encrypt) {
      this.writeParams.ServerSideEncryption = options.keyid ? 'aws:kms' : 'AES256';
      if (options.keyid) this.writeParams.SSEKMSKeyId = options.keyid;
    }

    let endpoint = options.regionendpoint;
    if (endpoint && !/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint)) endpoint = `${options.secure === false ? 'http' : 'https'}://${endpoint}`;
    const maxSockets = options.maxsockets ?? 128;
    const common = {
      region: options.region,
      ...(endpoint ? { endpoint } : {}),
      forcePathStyle: options.forcepathstyle ?? false,
      ...(options.accesskey !== undefined
        ? { credentials: { accessKeyId: options.accesskey, secretAccessKey: options.secretkey!, ...(options.sessiontoken ? { sessionToken: options.sessiontoken } : {}) } }
        : {}),
      // S3-compatible servers do not all know the flexible checksums (x-amz-checksum-*):
      // send and check them only where an operation requires one.
      requestChecksumCalculation: 'WHEN_REQUIRED' as const,
      responseChecksumValidation: 'WHEN_REQUIRED' as const,
      maxAttempts: options.maxattempts ?? 3,
      retryMode: 'standard',
    };
    this.client = new S3Client({
      ...common,
      requestHandler: {
        httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
        httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets, rejectUnauthorized: !options.skipverify }),
        connectionTimeout: 10_000,
        // A server that accepts the connection and then goes silent would hold the request,
        // and the client's behind it, for ever. An idle limit, not a total one: a transfer
        // takes as long as it takes while bytes flow. 60 s (botocore's read timeout) leaves
        // room for server-side copies, which RGW answers only when done (UploadPartCopy).
        socketTimeout: options.idletimeout ?? 60_000,
      },
    });
    this.readClient = new S3Client({
      ...common,
      // Idle limits, as on the write client: the storage silent for this long while a read waits
      // for a head or body bytes. undici does not count time a paused body (a slow client's
      // pull holding back) spends waiting, so a slow pull is never cut.
      requestHandler: new UndiciHandler(
        new UndiciAgent({
          connections: maxSockets,
          headersTimeout: options.idletimeout ?? 60_000,
          bodyTimeout: options.idletimeout ?? 60_000,
          connect: { timeout: 10_000, rejectUnauthorized: !options.skipverify },
        }),
      ),
    });
    // DeleteObjects needs a body checksum; older S3-compatible servers only know Content-MD5.
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const request = args.request as { headers?: Record<string, string>; body?: unknown };
        if (context.commandName === 'DeleteObjectsCommand' && request.headers && !hasHeader(request.headers, 'content-md5')) {
          const body = request.body;
          if (typeof body === 'string' || body instanceof Uint8Array) {
            request.headers['content-md5'] = createHash('md5').update(body).digest('base64');
          }
        }
        return next(args);
      },
      { step: 'build', priority: 'low', name: 'wharfContentMd5' },
    );
  }

  /** Distribution's s3Path: the root directory and the path joined, without a leading '/'. */
  s3Path(path: string): string {
    return `${this.rootDirectory}${path}`.replace(/^\/+/, '');
  }

  private key(path: string): string {
    checkPath(path);
    if (path === '/') throw new PathNotFoundError(path); // the root is a directory, never an object
    return this.s3Path(path);
  }

  /** The key prefix of everything below a directory path. */
  private dirPrefix(path: string): string {
    checkPath(path);
    return path === '/' ? this.rootPrefix : `${this.s3Path(path)}/`;
  }

  /** The driver path of a key under the root. */
  private toPath(key: string): string {
    return `/${key.slice(this.rootPrefix.length)}`;
  }

  async stat(path: string): Promise<FileInfo> {
    checkPath(path);
    if (path !== '/') {
      const key = this.s3Path(path);
      try {
        const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
        return { path, size: head.ContentLength ?? 0, modTime: head.LastModified ?? new Date(0), isDir: false };
      } catch (err) {
        const e = translate(err, path, this.bucket);
        if (!(e instanceof PathNotFoundError)) throw e;
      }
    }
    const prefix = this.dirPrefix(path);
    const listed = await this.call(path, () => this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: 1 })));
    if ((listed.KeyCount ?? listed.Contents?.length ?? 0) === 0) throw new PathNotFoundError(path);
    return { path, size: 0, modTime: listed.Contents?.[0]?.LastModified ?? new Date(0), isDir: true };
  }

  async getContent(path: string): Promise<Buffer> {
    const key = this.key(path);
    const res = await this.call(path, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key })));
    try {
      const bytes = await res.Body!.transformToByteArray();
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (err) {
      // The body comes from S3 alone: a failure reading it is the connection's.
      throw new StorageUnavailableError(`s3: reading ${path} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  async putContent(path: string, content: Uint8Array): Promise<void> {
    // A PutObject replaces an object atomically and is durable when S3 answers.
    const key = this.key(path);
    await this.call(path, () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: content, ContentLength: content.byteLength, ...this.writeParams })));
  }

  async reader(path: string, offset = 0, end?: number, signal?: AbortSignal): Promise<Readable> {
    const key = this.key(path);
    if (offset < 0 || (end !== undefined && end < 0)) throw new RangeError(`bad range ${offset}-${end} for ${path}`);
    if (end !== undefined && end <= offset) {
      await this.stat(path).then((info) => {
        if (info.isDir) throw new PathNotFoundError(path);
      });
      return Readable.from([]);
    }
    const range = offset > 0 || end !== undefined ? `bytes=${offset}-${end === undefined ? '' : end - 1}` : undefined;
    let res;
    try {
      res = await this.readClient.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: range }), { abortSignal: signal });
    } catch (err) {
      // Reading from at or past the end: the object exists, there is nothing to read.
      if (errorName(err) === 'InvalidRange' || statusOf(err) === 416) return Readable.from([]);
      throw translate(err, path, this.bucket);
    }
    const body = res.Body as unknown as Readable;
    if (signal) addAbortSignal(signal, body);
    return withReadInto(body);
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    const key = this.key(path);
    let existing: FileInfo | undefined;
    let prefix: Buffer | undefined;
    if (append) {
      try {
        existing = await this.stat(path);
      } catch (err) {
        if (!(err instanceof PathNotFoundError)) throw err;
      }
      if (existing?.isDir) throw new PathNotFoundError(path);
      if (existing && existing.size < MIN_CHUNK_SIZE) prefix = await this.getContent(path);
    }
    return new S3Writer(this, path, key, existing?.size ?? 0, prefix, existing !== undefined);
  }

  async list(path: string): Promise<string[]> {
    const prefix = this.dirPrefix(path);
    const children: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.call(path, () => this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, Delimiter: '/', MaxKeys: BATCH, ContinuationToken: token })));
      for (const object of page.Contents ?? []) {
        if (object.Key !== undefined && object.Key !== prefix) children.push(this.toPath(object.Key));
      }
      for (const common of page.CommonPrefixes ?? []) {
        if (common.Prefix !== undefined) children.push(this.toPath(common.Prefix.slice(0, -1)));
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    if (children.length === 0 && path !== '/') throw new PathNotFoundError(path);
    return children;
  }

  async move(source: string, destination: string): Promise<void> {
    const from = this.key(source);
    const to = this.key(destination);
    const head = await this.call(source, () => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: from })));
    if (from === to) return; // copying an object onto itself is refused, and the delete would lose it
    const size = head.ContentLength ?? 0;
    if (size <= this.copyThreshold) {
      await this.call(source, () => this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: to, CopySource: this.copySource(from), ...this.writeParams })));
    } else {
      await this.multipartCopy(source, from, to, size);
    }
    await this.call(source, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: from })));
  }

  /** CopySource: bucket and key, URL-encoded. */
  copySource(key: string): string {
    return `${this.bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  /** Copies `from` to `to` (size bytes) with UploadPartCopy, `copyConcurrency` parts at a time. */
  private async multipartCopy(path: string, from: string, to: string, size: number): Promise<void> {
    const chunk = Math.max(this.copyChunkSize, Math.ceil(size / MAX_PARTS));
    const ranges = copyRanges(size, chunk);
    const created = await this.call(path, () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: to, ...this.writeParams })));
    const uploadId = created.UploadId!;
    try {
      const parts: CompletedPart[] = new Array(ranges.length);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < ranges.length) {
          const i = next++;
          const [start, end] = ranges[i]!;
          const res = await this.call(path, () => this.client.send(new UploadPartCopyCommand({
              Bucket: this.bucket,
              Key: to,
              UploadId: uploadId,
              PartNumber: i + 1,
              CopySource: this.copySource(from),
              CopySourceRange: `bytes=${start}-${end - 1}`,
            })));
          parts[i] = { PartNumber: i + 1, ETag: res.CopyPartResult?.ETag };
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.copyConcurrency, ranges.length) }, worker));
      await this.call(path, () => this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: to, UploadId: uploadId, MultipartUpload: { Parts: parts } })));
    } catch (err) {
      await this.abortUpload(to, uploadId);
      throw err;
    }
  }

  /** A presigned GET URL of the object (its existence is the caller's to check). */
  async redirectUrl(path: string, options: { expiresInSeconds: number }): Promise<string> {
    const key = this.key(path);
    return this.call(path, () => getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: options.expiresInSeconds }));
  }

  /**
   * Aborts multipart uploads below `path` begun before `startedBefore`: what a writer killed
   * mid-write leaves (its parts are billed but never become an object).
   */
  async abortUnfinishedWrites(path: string, startedBefore: Date): Promise<number> {
    const prefix = this.dirPrefix(path);
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      const page = await this.call(path, () => this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker, MaxUploads: BATCH })));
      for (const upload of page.Uploads ?? []) {
        if (upload.Key === undefined || upload.UploadId === undefined) continue;
        if (upload.Initiated && upload.Initiated >= startedBefore) continue;
        await this.call(path, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId })));
        aborted++;
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return aborted;
  }

  /** Best effort: an unfinished upload left behind costs storage until a lifecycle rule ends it. */
  async abortUpload(key: string, uploadId: string): Promise<void> {
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
  }

  async delete(path: string): Promise<void> {
    checkPath(path);
    // Distribution's way: one listing finds the object itself and everything below it.
    const exact = path === '/' ? undefined : this.s3Path(path);
    const prefix = exact ?? this.rootPrefix;
    let found = 0;
    let token: string | undefined;
    do {
      const page = await this.call(path, () => this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: BATCH, ContinuationToken: token })));
      const keys = (page.Contents ?? [])
        .map((o) => o.Key)
        .filter((k): k is string => k !== undefined && (exact === undefined || k === exact || k.startsWith(`${exact}/`)));
      found += keys.length;
      if (keys.length > 0) await this.deleteKeys(path, keys);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    if (found === 0) throw new PathNotFoundError(path);
  }

  /** DeleteObjects for up to BATCH keys; a key that is already gone is fine. */
  private async deleteKeys(path: string, keys: string[]): Promise<void> {
    const res = await this.call(path, () => this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } })));
    const failed = (res.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
    if (failed.length > 0) {
      const first = failed[0]!;
      throw new StorageUnavailableError(`s3: deleting ${failed.length} objects under ${path} failed: ${first.Key}: ${first.Code} ${first.Message ?? ''}`);
    }
  }

  /** Runs one SDK call; errors translated for `path`. */
  async call<T>(path: string, request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (err) {
      throw translate(err, path, this.bucket);
    }
  }

  /** Closes idle sockets. */
  destroy(): void {
    this.client.destroy();
    this.readClient.destroy();
  }
}

/**
 * A streamed write into one key. Bytes fill a part buffer of chunkSize; a full buffer is
 * uploaded as the next part while the following one fills (at most one in flight, so at most
 * two buffers). commit() sends the rest: as one PutObject when no part went out, else as the
 * last part and CompleteMultipartUpload.
 */
class S3Writer implements FileWriter {
  readonly stream: Writable;
  private buffer: Buffer | undefined;
  private fill = 0;
  private readonly spare: Buffer[] = [];
  private uploadId: string | undefined;
  private readonly parts: CompletedPart[] = [];
  private inFlight: Promise<void> | undefined;
  private written = 0;
  private settled = false;
  private readonly aborter = new AbortController();
  /** The last accept() the stream started; rejects with the writer's own failure. */
  private accepting: Promise<void> = Promise.resolve();

  constructor(
    private readonly driver: S3Driver,
    private readonly path: string,
    private readonly key: string,
    /** Size of the object being appended to (0 when not appending). */
    private readonly existingSize: number,
    /** An appended object below the minimum part size: rewritten as the start of the first part. */
    prefix: Buffer | undefined,
    /** Whether an append found an object (commit without new bytes leaves it as it is). */
    private readonly existed: boolean,
  ) {
    if (prefix && prefix.length > 0) {
      this.buffer = Buffer.allocUnsafe(driver.chunkSize);
      prefix.copy(this.buffer);
      this.fill = prefix.length;
    }
    const accept = (chunks: Buffer[], callback: (error?: Error | null) => void): void => {
      const accepting = this.accept(chunks);
      this.accepting = accepting;
      accepting.then(() => callback(), (err: Error) => callback(translate(err, this.path, this.driver.bucket)));
    };
    this.stream = new Writable({
      highWaterMark: 256 << 10,
      write: (chunk: Buffer, _encoding, callback) => accept([chunk], callback),
      writev: (chunks, callback) => accept(chunks.map((c) => c.chunk as Buffer), callback),
    });
  }

  /** Copies chunks into the part buffer, sending each buffer that fills up. */
  private async accept(chunks: Buffer[]): Promise<void> {
    for (const chunk of chunks) {
      let offset = 0;
      while (offset < chunk.length) {
        if (this.settled && this.aborter.signal.aborted) throw new Error('writer cancelled');
        this.buffer ??= this.spare.pop() ?? Buffer.allocUnsafe(this.driver.chunkSize);
        const copied = chunk.copy(this.buffer, this.fill, offset);
        this.fill += copied;
        offset += copied;
        this.written += copied;
        if (this.fill === this.buffer.length) await this.sendPart();
      }
    }
  }

  /** Starts the upload (with copies of an appended object) unless it has started. */
  private async start(): Promise<string> {
    if (this.uploadId !== undefined) return this.uploadId;
    const d = this.driver;
    const signal = this.aborter.signal;
    const created = await d.call(this.path, () => d.client.send(new CreateMultipartUploadCommand({ Bucket: d.bucket, Key: this.key, ...d.writeParams }), { abortSignal: signal }));
    const uploadId = created.UploadId!;
    this.uploadId = uploadId;
    if (this.existingSize >= MIN_CHUNK_SIZE) {
      // Appending to a large object: its bytes become the first parts, copied in S3.
      const ranges = copyRanges(this.existingSize, Math.max(MAX_PART_SIZE / 2, Math.ceil(this.existingSize / 1000)));
      for (const [start, end] of ranges) {
        const partNumber = this.parts.length + 1;
        const res = await d.call(this.path, () => d.client.send(new UploadPartCopyCommand({
            Bucket: d.bucket,
            Key: this.key,
            UploadId: uploadId,
            PartNumber: partNumber,
            CopySource: d.copySource(this.key),
            CopySourceRange: `bytes=${start}-${end - 1}`,
          }), { abortSignal: signal }));
        this.parts.push({ PartNumber: partNumber, ETag: res.CopyPartResult?.ETag });
      }
    }
    return uploadId;
  }

  /** Sends the full buffer as the next part once the previous part is done. */
  private async sendPart(): Promise<void> {
    const uploadId = await this.start();
    if (this.inFlight) await this.inFlight;
    const buffer = this.buffer!;
    const length = this.fill;
    this.buffer = undefined;
    this.fill = 0;
    const partNumber = this.parts.length + 1;
    const part: CompletedPart = { PartNumber: partNumber };
    this.parts.push(part);
    const d = this.driver;
    const signal = this.aborter.signal;
    const inFlight = d
      .call(this.path, () =>
        d.client.send(
          new UploadPartCommand({
            Bucket: d.bucket,
            Key: this.key,
            UploadId: uploadId,
            PartNumber: partNumber,
            Body: buffer.subarray(0, length),
            ContentLength: length,
          }),
          { abortSignal: signal },
        ),
      )
      .then((res) => {
        part.ETag = res.ETag;
        if (buffer.length === d.chunkSize) this.spare.push(buffer);
      });
    this.inFlight = inFlight;
    // Keep a failure from going unhandled before the next part or commit awaits it.
    inFlight.catch(() => undefined);
  }

  async commit(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    const d = this.driver;
    try {
      if (this.stream.destroyed) {
        // The caller's source failed (a client gone mid-PATCH) and its pipeline destroyed the
        // stream. What was accepted is kept, as on the filesystem, so that the upload resumes
        // from the size stored; only a failure of the writer's own fails the commit.
        await this.accepting;
      } else {
        await endStream(this.stream);
      }
      if (this.inFlight) await this.inFlight;
      if (this.uploadId === undefined && this.written === 0 && this.existed) return; // an append of nothing
      if (this.uploadId === undefined && this.existingSize < MIN_CHUNK_SIZE) {
        const body = this.buffer ? this.buffer.subarray(0, this.fill) : Buffer.alloc(0);
        await d.call(this.path, () => d.client.send(new PutObjectCommand({ Bucket: d.bucket, Key: this.key, Body: body, ContentLength: body.length, ...d.writeParams })));
        return;
      }
      if (this.fill > 0 || this.uploadId === undefined) {
        await this.sendPart();
        await this.inFlight;
      }
      await d.call(this.path, () => d.client.send(new CompleteMultipartUploadCommand({ Bucket: d.bucket, Key: this.key, UploadId: this.uploadId!, MultipartUpload: { Parts: this.parts } })));
      this.uploadId = undefined;
    } catch (err) {
      if (this.uploadId !== undefined) await d.abortUpload(this.key, this.uploadId);
      throw translate(err, this.path, d.bucket);
    } finally {
      this.release();
    }
  }

  async cancel(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    this.aborter.abort();
    if (!this.stream.destroyed) this.stream.destroy();
    await this.inFlight?.catch(() => undefined);
    if (this.uploadId !== undefined) await this.driver.abortUpload(this.key, this.uploadId);
    this.release();
    // The contract: the whole file goes, bytes from before an append included.
    await this.driver.call(this.path, () => this.driver.client.send(new DeleteObjectCommand({ Bucket: this.driver.bucket, Key: this.key })));
  }

  private release(): void {
    this.buffer = undefined;
    this.spare.length = 0;
  }
}

/** What the SDK hands a request handler (@smithy/protocol-http's HttpRequest), as far as it is used here. */
interface SdkHttpRequest {
  method: string;
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query?: Record<string, string | string[] | null>;
  headers: Record<string, string>;
  body?: unknown;
}

/**
 * The SDK's request handler interface on undici, for blob reads. node:http's client copies every
 * body chunk it parses into a new buffer (a second allocation per 64 KiB socket read, on top of
 * the read's own); undici parses in place and hands out slices of the socket's reads. For a
 * GetObject body that is about 40 % less CPU per byte (measured against the RGW of the S3
 * bench), which a registry serving blob bytes itself pays for every pull. Signing, retries and
 * error parsing stay the SDK's; only the transport differs. Used for GETs only: writes keep
 * node:http (undici refuses the `Expect: 100-continue` the SDK sends with large bodies).
 */
class UndiciHandler {
  readonly metadata = { handlerProtocol: 'http/1.1' };

  constructor(private readonly dispatcher: UndiciAgent) {}

  // The SDK's AbortSignal type is its own interface; a real one is what arrives.
  async handle(request: SdkHttpRequest, options: { abortSignal?: unknown } = {}): Promise<{ response: unknown }> {
    const query = request.query ? buildQueryString(request.query) : '';
    const host = request.hostname.includes(':') && !request.hostname.startsWith('[') ? `[${request.hostname}]` : request.hostname;
    const url = `${request.protocol}//${host}${request.port ? `:${request.port}` : ''}${request.path}${query ? `?${query}` : ''}`;
    let res: Awaited<ReturnType<typeof undiciRequest>>;
    try {
      res = await undiciRequest(url, {
        method: request.method as 'GET',
        headers: request.headers,
        body: request.body as Buffer | undefined,
        dispatcher: this.dispatcher,
        signal: options.abortSignal as AbortSignal | undefined,
      });
    } catch (err) {
      throw transientTransportError(err);
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(res.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(',') : value;
    }
    return { response: { statusCode: res.statusCode, headers, body: res.body } };
  }

  updateHttpClientConfig(): void {}

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  destroy(): void {
    void this.dispatcher.destroy().catch(() => undefined);
  }
}

/**
 * undici's connection and timeout errors, named as the SDK's retry strategy knows transient
 * ones (it retries TimeoutError and ECONNRESET-like codes, not undici's UND_ERR_* codes), so a
 * read retries exactly as a request on the node:http client would.
 */
function transientTransportError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return Object.assign(new Error(`S3 read: ${(err as Error).message}`, { cause: err }), { name: 'TimeoutError', code: 'ETIMEDOUT' });
  }
  if (code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CLOSED') {
    return Object.assign(new Error(`S3 read: ${(err as Error).message}`, { cause: err }), { code: 'ECONNRESET' });
  }
  return err;
}

/** The SDK's query string (@smithy's buildQueryString): what it signed, byte for byte. */
function buildQueryString(query: Record<string, string | string[] | null>): string {
  const escape = (text: string): string => encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const parts: string[] = [];
  for (const key of Object.keys(query).sort()) {
    const value = query[key];
    if (Array.isArray(value)) for (const v of value) parts.push(`${escape(key)}=${escape(v)}`);
    else parts.push(value || typeof value === 'string' ? `${escape(key)}=${escape(value)}` : escape(key));
  }
  return parts.join('&');
}

/**
 * Lets a GetObject body fill buffers its consumer owns (RefillableStream). The body arrives in
 * the socket's reads (64 KiB each); a blob response sent straight from them is one socket
 * write per read. Copied into the sender's two reused 1 MiB buffers instead (server/send-body.ts),
 * a pull makes a sixteenth of the writes and their callbacks: in the S3 bench, wharf's CPU per
 * pulled byte was five times Distribution's before. The body stays an ordinary stream for
 * everyone else (use one or the other, never both, as the contract says).
 */
function withReadInto(body: Readable): RefillableStream {
  let target: { buffer: Buffer; filled: number; resolve: (n: number) => void; reject: (err: Error) => void } | undefined;
  let leftover: Buffer | undefined;
  let ended = false;
  let failure: Error | undefined;
  let listening = false;
  const settle = (): void => {
    const t = target;
    if (!t) return;
    target = undefined;
    if (failure && t.filled === 0) t.reject(failure);
    else t.resolve(t.filled);
  };
  const listen = (): void => {
    listening = true;
    body.on('data', (chunk: Buffer) => {
      const t = target;
      if (!t) {
        // Not asked for (a read past a pause): kept for the next call.
        leftover = leftover ? Buffer.concat([leftover, chunk]) : chunk;
        body.pause();
        return;
      }
      const n = chunk.copy(t.buffer, t.filled);
      t.filled += n;
      if (n < chunk.length) leftover = chunk.subarray(n);
      if (t.filled === t.buffer.length) {
        body.pause();
        settle();
      }
    });
    body.once('end', () => {
      ended = true;
      settle();
    });
    body.once('error', (err: Error) => {
      failure = err;
      settle();
    });
    body.once('close', () => {
      if (!ended) failure ??= new Error('the object body ended before its last byte');
      settle();
    });
  };
  const readInto = (buffer: Buffer): Promise<number> => {
    let filled = 0;
    if (leftover) {
      const n = leftover.copy(buffer);
      filled = n;
      leftover = n < leftover.length ? leftover.subarray(n) : undefined;
    }
    if (filled === buffer.length || (ended && !leftover)) return Promise.resolve(filled);
    if (failure) return filled > 0 ? Promise.resolve(filled) : Promise.reject(failure);
    return new Promise<number>((resolve, reject) => {
      target = { buffer, filled, resolve, reject };
      if (!listening) listen();
      body.resume();
    });
  };
  return Object.assign(body, { readInto });
}

/** Ends a writable and waits for every write; rejects with the stream's error. */
function endStream(stream: Writable): Promise<void> {
  if (stream.writableFinished) return Promise.resolve();
  if (stream.destroyed) return Promise.reject(stream.errored ?? new Error('writer stream destroyed'));
  return new Promise<void>((resolve, reject) => {
    stream.once('error', reject);
    stream.end((err?: Error | null) => (err ? reject(err) : resolve()));
  });
}

/**
 * [start, end) ranges of `size` bytes in pieces of `chunk`, each at least MIN_CHUNK_SIZE
 * (a short tail joins the piece before it): the parts of a multipart copy.
 */
export function copyRanges(size: number, chunk: number): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  for (let start = 0; start < size; start += chunk) ranges.push([start, Math.min(size, start + chunk)]);
  const last = ranges[ranges.length - 1];
  if (ranges.length > 1 && last && last[1] - last[0] < MIN_CHUNK_SIZE) {
    ranges.pop();
    ranges[ranges.length - 1]![1] = size;
  }
  return ranges;
}

/** Whether the driver talks to AWS S3 itself: no endpoint, or one of AWS's own (VPC endpoints, FIPS, ...). */
function isAws(endpoint: string | undefined): boolean {
  if (!endpoint) return true;
  let host: string;
  try {
    host = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `https://${endpoint}`).hostname;
  } catch {
    return false;
  }
  return /(^|\.)amazonaws\.com(\.cn)?$/i.test(host);
}

function hasHeader(headers: Record<string, string>, name: string): boolean {
  return Object.keys(headers).some((h) => h.toLowerCase() === name);
}

/**
 * Whether an error came from S3 or the connection to it: every error out of client.send()
 * carries `$metadata` (the SDK's retry step adds it to network errors and timeouts too), and a
 * credentials provider that fails is the SDK's. A client's ECONNRESET carries neither, though
 * its code is the same as a gateway's.
 */
function fromS3(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  return '$metadata' in err || '$fault' in err || (err as { name?: unknown }).name === 'CredentialsProviderError';
}

const errorName = (err: unknown): string | undefined => (err as { name?: string; Code?: string })?.Code ?? (err as { name?: string })?.name;
const statusOf = (err: unknown): number | undefined => (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;

/**
 * S3 errors as the driver contract's: a missing key is PathNotFoundError; a missing bucket,
 * refused credentials, throttling, 5xx, timeouts and network failures (after the SDK's
 * retries) are StorageUnavailableError; an abort by the caller stays an AbortError. Any error
 * that did not come from S3 (a writer's source that failed, a bug) is returned as it is: a
 * client that hangs up mid-upload must never read as S3 being down.
 */
export function translate(err: unknown, path: string, bucket: string): Error {
  if (err instanceof PathNotFoundError || err instanceof StorageUnavailableError) return err;
  const name = errorName(err);
  const status = statusOf(err);
  if (name === 'AbortError') return err as Error;
  if (!fromS3(err)) return err instanceof Error ? err : new Error(String(err));
  if (name === 'NoSuchBucket') return new StorageUnavailableError(`s3: bucket ${bucket} does not exist`, { cause: err });
  if (name === 'NoSuchKey' || name === 'NotFound' || (status === 404 && name !== 'NoSuchUpload')) {
    return new PathNotFoundError(path, { cause: err });
  }
  const message = (err as Error)?.message ?? String(err);
  if (status === undefined || status >= 500 || status === 401 || status === 403 || status === 429 || status === 408) {
    return new StorageUnavailableError(`s3: ${name ?? 'error'}${status ? ` (${status})` : ''} at ${path}: ${message}`, { cause: err });
  }
  return new Error(`s3: ${name ?? 'error'} (${status}) at ${path}: ${message}`, { cause: err });
}
