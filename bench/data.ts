// Test data. The large blob is random bytes generated once into a file; every push
// sends the file's bytes with a fresh 64-byte random tail, so each push is a new blob
// (the registry takes its first-push path: write, verify, move into place) while the
// expected digest costs only a copy of the precomputed SHA-256 state of the prefix plus
// 64 bytes. Small blobs work the same way on a 1 MiB buffer in memory.
import { createHash, randomBytes, randomFillSync, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';

const BIG_TAIL = 64;
const SMALL_TAIL = 32;

export interface BlobVariant {
  /** sha256:... of the whole blob. */
  digest: string;
  size: number;
}

interface BigVariant extends BlobVariant {
  tail: Buffer;
}

/** A large random blob on disk; `variant()` gives a unique blob of the same size. */
export class BigBlob {
  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly prefixHash: Hash,
  ) {}

  /** Writes `size` random bytes to `path` (16 MiB at a time) and hashes the prefix on the way. */
  static async create(path: string, size: number): Promise<BigBlob> {
    if (size <= BIG_TAIL) throw new Error('blob too small');
    const prefixLength = size - BIG_TAIL;
    const hash = createHash('sha256');
    const handle = await open(path, 'w');
    const chunk = Buffer.allocUnsafe(16 << 20);
    try {
      for (let written = 0; written < size; ) {
        const n = Math.min(chunk.length, size - written);
        const part = chunk.subarray(0, n);
        randomFillSync(part);
        const hashed = Math.max(0, Math.min(n, prefixLength - written));
        if (hashed > 0) hash.update(part.subarray(0, hashed));
        await handle.write(part, 0, n);
        written += n;
      }
    } finally {
      await handle.close();
    }
    return new BigBlob(path, size, hash);
  }

  /** The file itself as a blob (its own last 64 bytes as the tail), for the trivial server. */
  async fileVariant(): Promise<BlobVariant> {
    const handle = await open(this.path, 'r');
    try {
      const tail = Buffer.alloc(BIG_TAIL);
      await handle.read(tail, 0, BIG_TAIL, this.prefixLength);
      return { digest: `sha256:${this.prefixHash.copy().update(tail).digest('hex')}`, size: this.size };
    } finally {
      await handle.close();
    }
  }

  get prefixLength(): number {
    return this.size - BIG_TAIL;
  }

  variant(): BigVariant {
    const tail = randomBytes(BIG_TAIL);
    const hex = this.prefixHash.copy().update(tail).digest('hex');
    return { digest: `sha256:${hex}`, size: this.size, tail };
  }

  /** Bytes [start, end) of a variant, streamed from the file in 1 MiB reads. */
  body(variant: BigVariant, start = 0, end = this.size): () => AsyncIterable<Buffer> {
    const { path, prefixLength } = this;
    return async function* () {
      const fileEnd = Math.min(end, prefixLength);
      if (start < fileEnd) {
        yield* createReadStream(path, { start, end: fileEnd - 1, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>;
      }
      if (end > prefixLength) yield variant.tail.subarray(Math.max(0, start - prefixLength), end - prefixLength);
    };
  }
}

interface SmallVariant extends BlobVariant {
  chunks: Buffer[];
}

/** 1 MiB-ish blobs from one random buffer with unique tails. */
export class SmallBlobs {
  private readonly prefix: Buffer;
  private readonly prefixHash: Hash;

  constructor(readonly size: number) {
    this.prefix = randomBytes(size - SMALL_TAIL);
    this.prefixHash = createHash('sha256').update(this.prefix);
  }

  variant(): SmallVariant {
    const tail = randomBytes(SMALL_TAIL);
    const hex = this.prefixHash.copy().update(tail).digest('hex');
    return { digest: `sha256:${hex}`, size: this.size, chunks: [this.prefix, tail] };
  }
}

export const sha256Of = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
