// GET / HEAD / DELETE /v2/<name>/blobs/<digest>
import type Router from '@koa/router';
import { parseDigest } from '../../storage/digest.js';
import { parseRange } from '../http-range.js';
import { emitEvent, repositoryFor, routeParam, sendEmpty, type AppServices } from '../context.js';
import { sendBody } from '../send-body.js';

const BLOB = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
/** How long a redirect URL stays valid: Distribution's 20 minutes, long enough for a slow layer. */
const REDIRECT_EXPIRY_SECONDS = 20 * 60;

export function blobRoutes(router: Router, services: AppServices): void {
  router.head(BLOB, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    const info = await repo.blobs.stat(parseDigest(routeParam(ctx, 1)));
    ctx.status = 200;
    ctx.set({
      'Content-Length': String(info.size),
      'Content-Type': 'application/octet-stream',
      'Docker-Content-Digest': info.digest.value,
      'Accept-Ranges': 'bytes',
      ETag: `"${info.digest.value}"`,
      'Cache-Control': 'max-age=31536000',
    });
  });

  router.get(BLOB, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    const digest = parseDigest(routeParam(ctx, 1));
    const info = await repo.blobs.stat(digest);
    // Distribution's storage.redirect: the client fetches the bytes from storage itself.
    const url = services.config.storage.redirect.disable ? undefined : await repo.blobs.redirectUrl?.(digest, REDIRECT_EXPIRY_SECONDS);
    if (url !== undefined) {
      emitEvent(ctx, services, { action: 'pull', repository: repo.name, digest: digest.value, mediaType: 'application/octet-stream', size: info.size, url: ctx.path });
      ctx.set('Docker-Content-Digest', digest.value);
      ctx.status = 307;
      ctx.set('Location', url);
      return;
    }
    const range = parseRange(ctx.get('Range') || undefined, info.size);
    const blob = await repo.blobs.open(digest, range);
    ctx.status = range ? 206 : 200;
    ctx.set({
      'Content-Type': 'application/octet-stream',
      'Docker-Content-Digest': digest.value,
      'Accept-Ranges': 'bytes',
      ETag: `"${digest.value}"`,
      'Cache-Control': 'max-age=31536000',
    });
    if (ctx.fresh) {
      blob.stream.destroy();
      ctx.status = 304;
      return;
    }
    if (range) ctx.set('Content-Range', `bytes ${range.start}-${range.end - 1}/${info.size}`);
    // Distribution counts every blob GET as a pull, ranged ones too.
    emitEvent(ctx, services, { action: 'pull', repository: repo.name, digest: digest.value, mediaType: 'application/octet-stream', size: info.size, url: ctx.path });
    await sendBody(ctx, blob.stream, range ? range.end - range.start : info.size);
  });

  router.delete(BLOB, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['delete']);
    const digest = parseDigest(routeParam(ctx, 1));
    await repo.blobs.delete(digest);
    sendEmpty(ctx, 202);
    emitEvent(ctx, services, { action: 'delete', repository: repo.name, digest: digest.value });
  });
}
