// The bytes [start, end) of a blob being downloaded, for one client: read from the file
// the download writes as it grows, waiting at its end for more, and from the cached blob
// once the download completed. It can fill buffers its consumer owns (readInto), so a
// client pulling a cold multi-GB blob is sent through two reused buffers like a cached one
// (server/send-body.ts), not a fresh buffer per chunk.
//
// The blob's last byte is held back until the download verified the whole blob: a body
// that fails verification reaches no client whole.
import { Readable } from 'node:stream';
import { isPathNotFound, isRefillable, type RefillableStream } from '../storage/driver.js';
import type { Download } from './blob-downloads.js';
import type { LocalRegistry } from '../storage/local-registry.js';

/** Bytes a stream-mode read asks for (consumers that do not use readInto). */
const STREAM_CHUNK = 256 << 10;

export class GrowingBlobReader extends Readable implements RefillableStream {
  private position: number;
  private source: Readable | undefined;
  /** Where the open source ends. */
  private sourceEnd = 0;

  constructor(
    private readonly registry: LocalRegistry,
    private readonly download: Download,
    start: number,
    private readonly end: number,
  ) {
    super({ highWaterMark: STREAM_CHUNK });
    this.position = start;
  }

  async readInto(buffer: Buffer): Promise<number> {
    for (;;) {
      if (this.position >= this.end) {
        this.closeSource();
        return 0;
      }
      if (this.source && this.position < this.sourceEnd) {
        const n = await readFrom(this.source, buffer.subarray(0, Math.min(buffer.length, this.sourceEnd - this.position)));
        if (n > 0) {
          this.position += n;
          return n;
        }
      }
      this.closeSource();
      await this.openNext();
    }
  }

  /** Opens the next readable stretch, or waits until there is one. */
  private async openNext(): Promise<void> {
    const { download } = this;
    const { blobStore, driver } = this.registry;
    if (download.state === 'failed') throw download.error;
    if (download.state === 'complete') {
      this.source = await blobStore.open(download.digest, this.position, this.end);
      this.sourceEnd = this.end;
      return;
    }
    // Without reads of a file being written, clients wait for the whole verified blob.
    const written = driver.readableWhileWriting ? download.written : 0;
    const readable = Math.min(this.end, written, (download.total ?? 0) - 1);
    if (readable <= this.position) {
      await download.changed();
      return;
    }
    try {
      this.source = await driver.reader(download.tempPath, this.position, readable);
      this.sourceEnd = readable;
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
      await download.changed(); // moved into place (or removed) meanwhile: the state says which
    }
  }

  private closeSource(): void {
    this.source?.destroy();
    this.source = undefined;
  }

  override _read(): void {
    const buffer = Buffer.allocUnsafe(STREAM_CHUNK);
    this.readInto(buffer).then(
      (n) => this.push(n > 0 ? buffer.subarray(0, n) : null),
      (err: Error) => this.destroy(err),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.closeSource();
    callback(error);
  }
}

/** One read into `buffer` from a driver stream: readInto where it has it, else its next chunk (rest kept). */
async function readFrom(source: Readable, buffer: Buffer): Promise<number> {
  if (isRefillable(source)) return source.readInto(buffer);
  for (;;) {
    const chunk = source.read() as Buffer | null;
    if (chunk) {
      const n = Math.min(chunk.length, buffer.length);
      chunk.copy(buffer, 0, 0, n);
      if (n < chunk.length) source.unshift(chunk.subarray(n));
      return n;
    }
    if (source.readableEnded || source.destroyed) return 0;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        source.off('readable', done);
        source.off('end', done);
        source.off('error', fail);
        resolve();
      };
      const fail = (err: Error): void => {
        source.off('readable', done);
        source.off('end', done);
        reject(err);
      };
      source.once('readable', done);
      source.once('end', done);
      source.once('error', fail);
    });
  }
}
