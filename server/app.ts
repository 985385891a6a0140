// The Koa application: request id + access log + metrics -> body draining -> errors -> common headers -> /v2 routes.
// Routes are registered once; each handler parses the request, asks the repository,
// and writes the response.
import Koa from 'koa';
import Router from '@koa/router';
import { RegistryError } from '../storage/errors.js';
import { errorMiddleware } from './errors.js';
import { installRequestLogging } from './logger.js';
import { discardUnreadBody } from './request-body.js';
import { requireAccess, type AppServices } from './context.js';
import { blobRoutes } from './routes/blobs.js';
import { uploadRoutes } from './routes/uploads.js';
import { manifestRoutes } from './routes/manifests.js';
import { listingRoutes } from './routes/listings.js';
import { tokenRoutes } from './routes/token.js';

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export function createApp(services: AppServices): Koa {
  const { config } = services;
  const app = new Koa();
  app.silent = true; // errors are logged by errorMiddleware with the request id

  const router = new Router({ prefix: config.http.prefix || undefined });
  router.get('/v2/', async (ctx) => {
    await requireAccess(ctx, services, []);
    ctx.body = {};
  });
  uploadRoutes(router, services);
  blobRoutes(router, services);
  manifestRoutes(router, services);
  listingRoutes(router, services);
  if (services.tokenServer) tokenRoutes(router, services.tokenServer);

  const extraHeaders = Object.entries(config.http.headers);
  // First, so that the access line and the metrics time and count everything, body draining
  // and errors included.
  installRequestLogging(app, services.logger, !config.log.accesslog.disabled, services.metrics);
  app.use(discardUnreadBody);
  app.use((ctx, next) => {
    ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
    for (const [name, values] of extraHeaders) ctx.set(name, values);
    return next();
  });
  app.use(errorMiddleware);
  if (config.storage.maintenance.readonly.enabled) {
    app.use(async (ctx, next) => {
      // Registry writes only: logging in (POST /auth/token) still works.
      if (WRITE_METHODS.has(ctx.method) && ctx.path.includes('/v2/')) throw new RegistryError('UNSUPPORTED', 'the registry is in read-only mode');
      await next();
    });
  }
  app.use(router.routes());
  app.use(async (ctx) => {
    // No route took the request. A known path with another method is 405 with Allow, as the
    // spec and Distribution answer; anything else is 404. Both in the spec's error shape.
    const matched = router.match(ctx.path, ctx.method);
    const allowed = [...new Set(matched.path.flatMap((layer) => layer.methods))].sort();
    if (allowed.length > 0) {
      ctx.set('Allow', allowed.join(', '));
      throw new RegistryError('UNSUPPORTED', `method ${ctx.method} is not allowed on this endpoint`, { allow: allowed.join(', ') });
    }
    throw new RegistryError('NOT_FOUND', 'no such endpoint', { path: ctx.path.slice(0, 300) });
  });
  return app;
}
