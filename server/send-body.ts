// Sends a blob's bytes as a response body.
//
// A stream that can fill buffers we own (the filesystem driver's) is sent with two 1 MiB
// buffers reused for the whole body: read into one while the other is being written, and
// refill a buffer only once the socket has taken its bytes. Piping a stream instead
// allocates a fresh buffer per chunk, and for a multi-GB pull the garbage collector then
// took ~40% of the CPU. Any other stream (a future S3 or mirror body) is piped as usual.
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Context } from 'koa';
import { isRefillable, type RefillableStream } from '../storage/driver.js';

const CHUNK = 1 << 20;
/** Buffers kept for reuse between responses (each response takes two). */
const SPARE_LIMIT = 16;
const spare: Buffer[] = [];

/** Sends `length` bytes from `stream` as the body, with the status and headers already set on ctx. */
export async function sendBody(ctx: Context, stream: Readable, length: number): Promise<void> {
  ctx.length = length;
  if (!isRefillable(stream) || length === 0) {
    ctx.body = stream;
    return;
  }
  ctx.respond = false; // the body is written here, not by Koa
  await pump(ctx, stream, length);
}

async function pump(ctx: Context, source: RefillableStream, length: number): Promise<void> {
  const res = ctx.res;
  const buffers = [spare.pop() ?? Buffer.allocUnsafeSlow(CHUNK), spare.pop() ?? Buffer.allocUnsafeSlow(CHUNK)];
  const writes: (Promise<void> | undefined)[] = [undefined, undefined];
  let sent = 0;
  let clean = false;
  try {
    for (let turn = 0; sent < length; turn ^= 1) {
      await writes[turn]; // this buffer's previous bytes are in the socket: it may be refilled
      const buffer = buffers[turn]!;
      const count = await source.readInto(length - sent < CHUNK ? buffer.subarray(0, length - sent) : buffer);
      if (count === 0) throw new Error(`the blob ended after ${sent} of ${length} bytes`);
      sent += count;
      writes[turn] = writeChunk(res, count === buffer.length ? buffer : buffer.subarray(0, count));
      writes[turn]!.catch(() => undefined); // awaited on its next turn or below
    }
    await Promise.all(writes);
    clean = true;
    res.end();
  } catch (err) {
    // The status line went out with the first bytes: the only signal left is to cut the
    // connection, so the client sees a short body and never a wrong one.
    if (!res.destroyed) {
      ctx.log.warn({ err, sent, length }, 'blob response cut short');
      res.destroy();
    }
  } finally {
    source.destroy();
    // After a failure a write may still hold a buffer: those are left to the collector.
    if (clean) for (const buffer of buffers) if (spare.length < SPARE_LIMIT) spare.push(buffer);
  }
}

/** Resolves once the socket has taken the chunk (its buffer may then be reused). */
function writeChunk(res: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onClose = (): void => reject(new Error('the client closed the connection'));
    res.once('close', onClose);
    res.write(chunk, (err) => {
      res.off('close', onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}
