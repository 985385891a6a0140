// Structured logs (pino, JSON lines) and the per-request middleware: a request id
// (the client's X-Request-Id if sane, else a new one), a child logger, and one access
// line per request with method, path, status, bytes and duration.
import { randomUUID } from 'node:crypto';
import type { Context, Next } from 'koa';
import { pino, type Logger } from 'pino';
import type { LogLevel } from './config.js';

export function createLogger(level: LogLevel): Logger {
  return pino({
    level,
    base: { service: 'wharf' },
    // Credentials never reach the logs, whatever logs a request object.
    redact: { paths: ['req.headers.authorization', 'headers.authorization', '*.password', '*.secret'], censor: '[redacted]' },
  });
}

const SANE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestLogging(logger: Logger, accessLog: boolean) {
  return async (ctx: Context, next: Next): Promise<void> => {
    const started = process.hrtime.bigint();
    const given = ctx.get('X-Request-Id');
    ctx.requestId = SANE_ID.test(given) ? given : randomUUID();
    ctx.log = logger.child({ reqId: ctx.requestId });
    ctx.set('X-Request-Id', ctx.requestId);
    if (accessLog) {
      const done = (): void => {
        ctx.res.off('finish', done);
        ctx.res.off('close', done);
        ctx.log.info(
          {
            method: ctx.method,
            path: ctx.path,
            status: ctx.res.statusCode,
            bytesIn: Number(ctx.get('Content-Length') || 0),
            bytesOut: Number(ctx.res.getHeader('Content-Length') ?? 0),
            ms: Number(process.hrtime.bigint() - started) / 1e6,
            aborted: !ctx.res.writableFinished,
            remote: ctx.ip,
            ua: ctx.get('User-Agent') || undefined,
          },
          'request',
        );
      };
      ctx.res.once('finish', done);
      ctx.res.once('close', done);
    }
    await next();
  };
}
