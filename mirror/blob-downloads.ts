// One upstream fetch per blob, however many clients ask for it at once.
//
// The first request for a blob the cache lacks starts a Download: the upstream body is
// hashed and written into an upload session of the mirrored repository
// (`_uploads/<id>/data`, so a crash leaves an ordinary session that upload purging
// removes). Every client of that digest, first or late, whole or ranged, reads that file
// as it grows and waits at its end for more. The file becomes the cached blob only after
// its digest and length check; until then each reader holds back the blob's last byte,
// so a body that fails verification reaches no client whole: they see a cut connection,
// never corrupt bytes under a good digest.
//
// A download runs to its end even when every client has gone (their retry finds it done),
// bounded by the upstream client's idle timeouts. A transfer cut part-way is resumed with
// a Range request from where it stopped.
import { randomUUID } from 'node:crypto';
import { Readable, type Writable } from 'node:stream';
import type { Logger } from 'pino';
import { GrowingBlobReader } from './growing-blob-reader.js';
import { newHash, type Digest } from '../storage/digest.js';
import { RegistryError } from '../storage/errors.js';
import type { LocalRegistry } from '../storage/local-registry.js';
import { layerLink, uploadData, uploadDir, uploadStartedAt } from '../storage/paths.js';

/** An upstream response for a blob, from `offset` on. */
export interface BlobResponse {
  body: Readable;
  /** Bytes in this response. */
  length: number;
  /** The blob's whole size. */
  total: number;
}

/** Fetches a blob's bytes from `offset`; undefined when the upstream does not have it. */
export type BlobFetcher = (offset: number, signal: AbortSignal) => Promise<BlobResponse | undefined>;

/** How often a cut transfer is resumed before the download fails. */
const MAX_RESUMES = 5;

export interface DownloadCounters {
  downloadsStarted: number;
  downloadsFailed: number;
  resumes: number;
}

export class Download {
  /** The blob's size, once the upstream answered. */
  total: number | undefined;
  /** Bytes on the temporary file that readers may read. */
  written = 0;
  state: 'running' | 'complete' | 'failed' = 'running';
  error: Error | undefined;
  /** Resolves with the size once the upstream answered; rejects when the download fails first. */
  readonly ready: Promise<number>;
  /** Settles when the download has ended either way. */
  readonly done: Promise<void>;
  readonly tempPath: string;
  private readonly tempDir: string;
  private wake: (() => void)[] = [];
  private resolveReady!: (size: number) => void;
  private rejectReady!: (err: Error) => void;

  constructor(
    private readonly registry: LocalRegistry,
    readonly repo: string,
    readonly digest: Digest,
    private readonly fetch: BlobFetcher,
    private readonly counters: DownloadCounters,
    private readonly logger: Logger | undefined,
  ) {
    const id = randomUUID();
    this.tempPath = uploadData(repo, id);
    this.tempDir = uploadDir(repo, id);
    this.ready = new Promise<number>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => undefined); // a download nobody waits on may fail quietly
    this.done = this.run(uploadStartedAt(repo, id));
  }

  /** Resolves at the next progress or state change. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.wake.push(resolve));
  }

  private notify(): void {
    const waiting = this.wake;
    this.wake = [];
    for (const resolve of waiting) resolve();
  }

  /** Stops the download (shutdown); readers get an error. */
  abort(): void {
    this.abortController.abort(new Error('the mirror is shutting down'));
  }

  private readonly abortController = new AbortController();

  private async run(startedAtPath: string): Promise<void> {
    const { driver, blobStore, links } = this.registry;
    this.counters.downloadsStarted++;
    const abort = this.abortController;
    let writer;
    try {
      await driver.putContent(startedAtPath, Buffer.from(new Date().toISOString()), { durable: false });
      writer = await driver.writer(this.tempPath, false);
      const hash = newHash(this.digest.algorithm);
      let received = 0;
      for (let attempt = 0; ; attempt++) {
        if (abort.signal.aborted) throw abort.signal.reason;
        let response: BlobResponse | undefined;
        try {
          response = await this.fetch(received, abort.signal);
        } catch (err) {
          if (received === 0 || attempt >= MAX_RESUMES) throw err;
          this.counters.resumes++;
          continue;
        }
        if (!response) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to the upstream registry', { digest: this.digest.value });
        if (this.total === undefined) {
          this.total = response.total;
          this.resolveReady(response.total);
        } else if (response.total !== this.total) {
          response.body.destroy();
          throw new Error(`upstream size of ${this.digest.value} changed from ${this.total} to ${response.total}`);
        }
        try {
          for await (const chunk of response.body as AsyncIterable<Buffer>) {
            received += chunk.length;
            if (received > this.total) throw new Error(`upstream sent more than the ${this.total} bytes of ${this.digest.value}`);
            hash.update(chunk);
            await this.append(writer.stream, chunk);
          }
        } catch (err) {
          if (received >= this.total || attempt >= MAX_RESUMES || (err as Error).message.startsWith('upstream sent more')) throw err;
          this.counters.resumes++;
          this.logger?.info({ digest: this.digest.value, received, total: this.total }, 'upstream transfer cut, resuming with Range');
          continue;
        }
        if (received === this.total) break;
        if (attempt >= MAX_RESUMES) throw new Error(`upstream ended ${this.digest.value} at ${received} of ${this.total} bytes`);
        this.counters.resumes++;
      }
      await writer.commit();
      const actual = hash.digest('hex');
      if (actual !== this.digest.hex) {
        throw new RegistryError('BLOB_UNKNOWN', 'the upstream sent content that does not match its digest', {
          digest: this.digest.value,
          actual: `${this.digest.algorithm}:${actual}`,
        });
      }
      await blobStore.ingest(this.tempPath, this.digest, this.total!);
      this.state = 'complete';
      this.notify();
      await links.write(layerLink(this.repo, this.digest), this.digest);
    } catch (err) {
      abort.abort();
      this.error = err instanceof Error ? err : new Error(String(err));
      this.state = 'failed';
      this.counters.downloadsFailed++;
      this.rejectReady(this.error);
      await writer?.cancel().catch(() => undefined);
      this.notify();
    } finally {
      await driver.delete(this.tempDir).catch(() => undefined);
      this.notify();
    }
  }

  /** Writes a chunk; readers may read it once the writer has taken it. Waits out backpressure. */
  private append(stream: Writable, chunk: Buffer): Promise<void> {
    const more = stream.write(chunk, (err) => {
      if (err) return;
      this.written += chunk.length;
      this.notify();
    });
    if (more) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        stream.off('error', onError);
        resolve();
      };
      const onError = (err: Error): void => {
        stream.off('drain', onDrain);
        reject(err);
      };
      stream.once('drain', onDrain);
      stream.once('error', onError);
    });
  }

  /**
   * The bytes [start, end) of the blob as they arrive. Ends with an error when the download
   * fails; the last byte comes only after the whole blob was verified and stored.
   */
  reader(start: number, end: number): Readable {
    return new GrowingBlobReader(this.registry, this, start, end);
  }
}

/** The running downloads, by digest: at most one each. */
export class BlobDownloads {
  private readonly running = new Map<string, Download>();
  readonly counters: DownloadCounters = { downloadsStarted: 0, downloadsFailed: 0, resumes: 0 };

  constructor(
    private readonly registry: LocalRegistry,
    private readonly logger?: Logger,
    /** Called when a download's blob is in the cache. */
    private readonly onStored?: (digest: Digest, size: number) => void,
  ) {}

  /** The running download of `digest`, or a new one into `repo` fetched with `fetch`. */
  start(repo: string, digest: Digest, fetch: BlobFetcher): Download {
    const existing = this.running.get(digest.value);
    if (existing && existing.state !== 'failed') return existing; // a failed one is being cleared away: start anew
    const download = new Download(this.registry, repo, digest, fetch, this.counters, this.logger);
    this.running.set(digest.value, download);
    void download.done.then(() => {
      if (this.running.get(digest.value) === download) this.running.delete(digest.value);
      if (download.state === 'complete') this.onStored?.(digest, download.total!);
    });
    return download;
  }

  /** The download of `digest` that readers may join (running or just completed). */
  get(digest: Digest): Download | undefined {
    const download = this.running.get(digest.value);
    return download?.state === 'failed' ? undefined : download;
  }

  /** Aborts every download and waits until each has cleaned up (shutdown). */
  async close(): Promise<void> {
    const all = [...this.running.values()];
    for (const download of all) download.abort();
    await Promise.all(all.map((d) => d.done));
  }

  /** Digests being downloaded now (never evicted). */
  inProgress(): string[] {
    return [...this.running.keys()];
  }
}
