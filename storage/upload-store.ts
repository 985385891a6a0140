// Blob upload sessions: _uploads/<id>/data grows by appends, and completing it moves the
// verified bytes to their content address.
//
// Hash state between requests: Node's crypto.Hash cannot be serialised, so the running
// SHA-256 of each session lives in this process's memory, keyed by session and tagged
// with the byte count it has consumed. A request that finds a state whose count equals
// the data file's size continues it (the common case: one client, one process). When
// there is none (another replica took the earlier PATCHes, a restart, eviction), the
// digest is computed by re-reading the data file once at completion. Correct always,
// cheap when it can be. The state is dropped whenever a write fails part-way.
import { randomUUID, type Hash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LRUCache } from 'lru-cache';
import { isPathNotFound, StorageUnavailableError, type StorageDriver } from './driver.js';
import { newHash, type Digest, type DigestAlgorithm } from './digest.js';
import { RegistryError } from './errors.js';
import { KeyedMutex } from './keyed-mutex.js';
import { holdAgainstGc } from './gc-markers.js';
import type { BlobStore } from './blob-store.js';
import type { LinkStore } from './link-store.js';
import { layerLink, uploadData, uploadDir, uploadStartedAt } from './paths.js';
import type { BlobInfo, UploadStatus } from './repository.js';

const UPLOAD_ID = /^[A-Za-z0-9_-]{8,128}$/;

interface HashState {
  hash: Hash;
  /** Bytes the hash has consumed. */
  size: number;
}

export interface ChunkSpec {
  /** Where the chunk must start (from Content-Range). */
  start?: number;
  /** How many bytes the chunk must hold (from Content-Range or Content-Length). */
  length?: number;
}

export class UploadStore {
  private readonly hashes = new LRUCache<string, HashState>({ max: 4096 });
  private readonly locks = new KeyedMutex();

  constructor(
    private readonly driver: StorageDriver,
    private readonly blobs: BlobStore,
    private readonly links: LinkStore,
  ) {}

  async start(repo: string): Promise<UploadStatus> {
    const id = randomUUID();
    const startedAt = new Date();
    // Session bookkeeping is not flushed: a power cut loses the session, and the client
    // starts a new one. The data file is created by the first write (status() reads a
    // missing one as empty).
    await this.driver.putContent(uploadStartedAt(repo, id), Buffer.from(startedAt.toISOString()), { durable: false });
    this.hashes.set(key(repo, id), { hash: newHash(), size: 0 });
    return { id, size: 0, startedAt };
  }

  async status(repo: string, id: string): Promise<UploadStatus> {
    if (!UPLOAD_ID.test(id)) throw unknownUpload(id);
    let startedAt: Date;
    try {
      // The file's time is its content's time (both are set once, at start): a stat is one
      // storage round trip where reading the content is several.
      startedAt = (await this.driver.stat(uploadStartedAt(repo, id))).modTime;
    } catch (err) {
      if (isPathNotFound(err)) throw unknownUpload(id);
      throw err;
    }
    return { id, size: await this.storedSize(repo, id), startedAt };
  }

  append(repo: string, id: string, body: Readable, chunk: ChunkSpec = {}): Promise<UploadStatus> {
    return this.locks.run(key(repo, id), async () => {
      const status = await this.status(repo, id);
      const written = await this.write(repo, status, body, chunk);
      return { ...status, size: status.size + written };
    });
  }

  complete(repo: string, id: string, digest: Digest, body?: Readable, chunk: ChunkSpec = {}): Promise<BlobInfo> {
    return this.locks.run(key(repo, id), async () => {
      const status = await this.status(repo, id);
      const size = status.size + (body ? await this.write(repo, status, body, chunk) : 0);
      const actual = await this.digestOf(repo, id, digest.algorithm, size);
      if (actual !== digest.hex) {
        await this.remove(repo, id);
        throw new RegistryError('DIGEST_INVALID', 'the uploaded content does not match the digest', {
          expected: digest.value,
          actual: `${digest.algorithm}:${actual}`,
        });
      }
      await this.blobs.ingest(uploadData(repo, id), digest, size);
      // Online garbage collection may be deleting this digest (until now unreferenced) right
      // now: the link written under its handshake is either seen by it, or it finished first.
      await holdAgainstGc(this.driver, digest, () => this.links.write(layerLink(repo, digest), digest));
      if ((await this.blobs.stored(digest)) === undefined) {
        throw new RegistryError('BLOB_UPLOAD_INVALID', 'the blob was garbage-collected while the upload completed; upload it again');
      }
      await this.remove(repo, id);
      return { digest, size };
    });
  }

  cancel(repo: string, id: string): Promise<void> {
    return this.locks.run(key(repo, id), async () => {
      await this.status(repo, id);
      await this.remove(repo, id);
    });
  }

  private async remove(repo: string, id: string): Promise<void> {
    this.hashes.delete(key(repo, id));
    try {
      await this.driver.delete(uploadDir(repo, id));
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
    }
  }

  /** Appends `body` after checking the chunk spec; returns the bytes written. */
  private async write(repo: string, status: UploadStatus, body: Readable, chunk: ChunkSpec): Promise<number> {
    if (chunk.start !== undefined && chunk.start !== status.size) {
      throw new RegistryError('RANGE_INVALID', `chunk starts at ${chunk.start} but the upload holds ${status.size} bytes`, {
        size: status.size,
      });
    }
    const k = key(repo, status.id);
    const known = this.hashes.get(k);
    const state = known && known.size === status.size ? known : undefined;
    this.hashes.delete(k); // invalid until this write succeeds
    const limit = chunk.length;
    let count = 0;
    const meter = new Transform({
      // Passes chunks through; the writer behind it does the buffering.
      highWaterMark: 64 << 10,
      transform(data: Buffer, _encoding, callback) {
        count += data.length;
        if (limit !== undefined && count > limit) {
          callback(new RegistryError('RANGE_INVALID', `chunk is longer than the declared ${limit} bytes`, { size: status.size }));
          return;
        }
        state?.hash.update(data);
        callback(null, data);
      },
    });
    const writer = await this.driver.writer(uploadData(repo, status.id), true);
    try {
      await pipeline(body, meter, writer.stream);
    } catch (err) {
      await writer.commit().catch(() => undefined);
      const error = asUploadError(err);
      if (error instanceof RegistryError && error.code === 'RANGE_INVALID') {
        // Part of the over-long chunk was kept: the Range the client gets must say what is
        // stored now, so that it can resume from there.
        const stored = await this.storedSize(repo, status.id).catch(() => undefined);
        if (stored !== undefined) throw new RegistryError('RANGE_INVALID', error.message, { size: stored }, { cause: error.cause });
      }
      throw error;
    }
    await writer.commit();
    if (limit !== undefined && count !== limit) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', `chunk held ${count} bytes, ${limit} were declared`);
    }
    if (state) this.hashes.set(k, { hash: state.hash, size: status.size + count });
    return count;
  }

  /** Bytes in the upload's data file (0 before the first write). */
  private async storedSize(repo: string, id: string): Promise<number> {
    try {
      return (await this.driver.stat(uploadData(repo, id))).size;
    } catch (err) {
      if (isPathNotFound(err)) return 0;
      throw err;
    }
  }

  /** The hex digest of the upload's data: from the running hash if it covers every byte, else by re-reading. */
  private async digestOf(repo: string, id: string, algorithm: DigestAlgorithm, size: number): Promise<string> {
    const state = this.hashes.get(key(repo, id));
    if (algorithm === 'sha256' && state && state.size === size) return state.hash.copy().digest('hex');
    const hash = newHash(algorithm);
    await pipeline(await this.driver.reader(uploadData(repo, id)), async function (source: AsyncIterable<Buffer>) {
      for await (const data of source) hash.update(data);
    });
    return hash.digest('hex');
  }
}

const key = (repo: string, id: string): string => `${repo}\n${id}`;

const unknownUpload = (id: string): RegistryError =>
  new RegistryError('BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry', { uuid: id.slice(0, 128) });

function asUploadError(err: unknown): Error {
  if (err instanceof RegistryError || err instanceof StorageUnavailableError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  // Drivers report their own failures as StorageUnavailableError; what is left of the
  // request stream's errors means the client went away.
  if (code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNRESET' || code === 'ABORT_ERR') {
    return new RegistryError('BLOB_UPLOAD_INVALID', 'the upload was interrupted before the body ended', undefined, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}
