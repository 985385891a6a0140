// Request bodies, and answers that leave part of one unread.
//
// A registry often answers before it has read the body: a manifest over the size limit,
// a chunk longer than it declared, a full disk, and (with auth) 401 and 403 before any
// byte is read. The answer must still reach the client. Two things break that:
// - destroying the request (what `pipeline` and an abandoned `for await` do to their
//   source on an error) closes the socket while the client is still sending, so the
//   client's kernel gets a reset, its write fails (EPIPE) and the answer is lost;
// - leaving the rest of the body unread stalls the connection.
// So handlers never hand the request itself to a consumer that may destroy it: they get
// requestBody(), a stream of their own, and before the answer is sent whatever is left
// of the body is read and discarded, up to a bound in bytes and time, keeping the
// connection usable.
import type { IncomingMessage } from 'node:http';
import { PassThrough, type Readable } from 'node:stream';
import type { Context, Next } from 'koa';

/** At most this much of an unread body is discarded before the answer... */
const DISCARD_MAX_BYTES = 64 * 1024 * 1024;
/** ...and for at most this long. */
const DISCARD_MAX_MS = 30_000;

/** The request's body as a stream whose destruction leaves the request itself intact. */
export function requestBody(ctx: Context): Readable {
  const req = ctx.req;
  const body = new PassThrough({ highWaterMark: 64 << 10 });
  const aborted = (): void => {
    // The client went away before the body ended: consumers must see an interrupted body,
    // never a short one that looks complete.
    if (!req.complete && !body.destroyed) body.destroy(Object.assign(new Error('the client closed the connection'), { code: 'ECONNRESET' }));
  };
  // Consumers see errors through their own listeners (pipeline); this one only keeps a body
  // nobody reads yet, or any more, from taking the process down with an unhandled 'error'.
  body.on('error', () => undefined);
  req.once('close', aborted);
  body.once('close', () => req.off('close', aborted));
  req.pipe(body); // pipe, unlike pipeline, unpipes when `body` is destroyed and leaves `req` alone
  return body;
}

/**
 * Middleware: before the answer is sent, reads and discards what is left of the request
 * body, up to a bound in bytes and time. A body past the bound gets its answer with
 * `Connection: close`: the client may then see its write fail, but it sent over 64 MiB
 * after being refused.
 */
export async function discardUnreadBody(ctx: Context, next: Next): Promise<void> {
  try {
    await next();
  } finally {
    const { req } = ctx;
    if (!req.complete && !req.destroyed && !(await drain(req))) ctx.set('Connection', 'close');
  }
}

/** Reads the rest of the body into nothing; resolves whether it ended within the bound. */
function drain(req: IncomingMessage): Promise<boolean> {
  return new Promise((resolve) => {
    let discarded = 0;
    const finish = (ended: boolean): void => {
      clearTimeout(timer);
      req.off('data', count);
      req.off('end', onEnd);
      req.off('close', onClose);
      if (!ended) req.pause();
      resolve(ended);
    };
    const count = (data: Buffer): void => {
      discarded += data.length;
      if (discarded > DISCARD_MAX_BYTES) finish(false);
    };
    const onEnd = (): void => finish(true);
    const onClose = (): void => finish(req.complete);
    const timer = setTimeout(() => finish(false), DISCARD_MAX_MS);
    timer.unref();
    req.unpipe(); // a consumer that failed may have left it piped into a destroyed stream
    req.on('data', count);
    req.once('end', onEnd);
    req.once('close', onClose);
    req.resume();
  });
}
