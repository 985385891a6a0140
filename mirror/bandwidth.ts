// A cap on the bytes per second taken from one upstream, shared by all its downloads (a
// site's link to the internet is shared too). A token bucket: each chunk waits until the
// bucket holds enough tokens for it; the bucket holds at most a quarter second of traffic,
// so a pause does not become a burst.
import { Readable } from 'node:stream';

export class BandwidthLimit {
  private tokens: number;
  private last = Date.now();
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly bytesPerSecond: number) {
    this.tokens = bytesPerSecond / 4;
  }

  /** `source` at no more than the limit (together with every other stream of this limit). */
  throttle(source: Readable): Readable {
    const limit = this;
    async function* paced(): AsyncGenerator<Buffer> {
      for await (const chunk of source as AsyncIterable<Buffer>) {
        await limit.take(chunk.length);
        yield chunk;
      }
    }
    const paced$ = Readable.from(paced(), { objectMode: false });
    paced$.once('close', () => source.destroy());
    return paced$;
  }

  /** Resolves when `bytes` may pass; callers are served in order. */
  private take(bytes: number): Promise<void> {
    const turn = this.queue.then(async () => {
      for (;;) {
        const now = Date.now();
        this.tokens = Math.min(this.bytesPerSecond / 4, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
        this.last = now;
        // A chunk bigger than the bucket passes once the bucket is full, leaving a debt.
        if (this.tokens >= Math.min(bytes, this.bytesPerSecond / 4)) {
          this.tokens -= bytes;
          return;
        }
        const missing = Math.min(bytes, this.bytesPerSecond / 4) - this.tokens;
        await new Promise((resolve) => setTimeout(resolve, Math.max(5, (missing / this.bytesPerSecond) * 1000)));
      }
    });
    this.queue = turn;
    return turn;
  }
}
