// Structured logs (pino, JSON lines) and the per-request middleware: a request id
// (the client's X-Request-Id if sane, else a new one), a child logger, and one access
// line per request with method, path, status, bytes and duration.
//
// Cost matters here: at 20k+ manifest requests/s the access line is most of a request's
// work. So the per-request child logger is built only when a handler logs something, the
// access line is written by the root logger with the id as a field, and redaction uses
// exact paths (pino's wildcard redaction walks every logged object).
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type Koa from 'koa';
import type { Context, Next } from 'koa';
import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from './config.js';

/** `fields` (config log.fields) go on every line, after wharf's own `service`, so they may replace it. */
export function createLogger(level: LogLevel, fields: Record<string, unknown> = {}, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'wharf', ...fields },
    // Credentials never reach the logs: nothing logs headers or config secrets today, and
    // these paths keep it so if someone logs a request or its headers.
    redact: { paths: ['req.headers.authorization', 'headers.authorization', 'headers.cookie'], censor: '[redacted]' },
  };
  // Without a destination pino writes to stdout its own (fastest) way.
  return destination ? pino(options, destination) : pino(options);
}

const SANE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const CHILD = Symbol('child logger');

/** The status logged and counted for a request whose client left before the answer. */
const CLIENT_CLOSED = 499;

/**
 * Told about every request on the registry address, by the same middleware and the same
 * listener as the access line (server/metrics.ts): one middleware frame and one listener per
 * request instead of two of each.
 */
export interface RequestObserver {
  /** Synchronous with the request's headers, before any middleware reads the body. */
  begin(req: IncomingMessage): void;
  /**
   * Once the response is complete or the connection closed; `ms` since begin. `status` is
   * the one sent, or 499 (nginx's "client closed request") when the client left before it.
   */
  end(ctx: Context, ms: number, status: number): void;
}

/**
 * Adds ctx.requestId, a lazily built ctx.log, and the access line to every request. First in
 * the chain, so the time includes draining unread bodies and error answers.
 */
export function installRequestLogging(app: Koa, logger: Logger, accessLog: boolean, observer?: RequestObserver): void {
  // On the context prototype, so that request contexts keep one shape.
  Object.defineProperty(app.context, 'log', {
    get(this: Context & { [CHILD]?: Logger }): Logger {
      return (this[CHILD] ??= logger.child({ reqId: this.requestId }));
    },
  });
  app.use(requestLogging(logger, accessLog, observer));
}

function requestLogging(logger: Logger, accessLog: boolean, observer: RequestObserver | undefined) {
  const watch = accessLog || observer !== undefined;
  // Not async: returning next()'s promise saves a frame per request.
  return (ctx: Context, next: Next): Promise<void> => {
    const started = performance.now();
    observer?.begin(ctx.req);
    const given = ctx.get('X-Request-Id');
    const requestId = SANE_ID.test(given) ? given : randomUUID();
    ctx.requestId = requestId;
    ctx.set('X-Request-Id', requestId);
    if (watch) {
      // A ServerResponse emits 'close' once, after 'finish' or when the connection drops.
      ctx.res.once('close', () => {
        const ms = performance.now() - started;
        const res = ctx.res;
        const status = res.headersSent ? res.statusCode : CLIENT_CLOSED;
        observer?.end(ctx, ms, status);
        if (accessLog) logAccess(logger, ctx, requestId, ms, status);
      });
    }
    return next();
  };
}

function logAccess(logger: Logger, ctx: Context, requestId: string, ms: number, status: number): void {
  const res = ctx.res;
  logger.info(
    {
      reqId: requestId,
      method: ctx.method,
      path: ctx.path,
      status,
      bytesIn: Number(ctx.get('Content-Length') || 0),
      bytesOut: Number(res.getHeader('Content-Length') ?? 0),
      ms,
      aborted: !res.writableFinished,
      remote: ctx.ip,
      user: (ctx.state as { subject?: string }).subject,
      grant: (ctx.state as { grant?: string }).grant,
      ua: ctx.get('User-Agent') || undefined,
    },
    'request',
  );
}
