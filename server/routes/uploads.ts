// Blob uploads: POST (start, monolithic, mount), PATCH (chunks), PUT (complete),
// GET (status), DELETE (cancel) under /v2/<name>/blobs/uploads/.
import { createHmac } from 'node:crypto';
import type Router from '@koa/router';
import type { Context } from 'koa';
import { parseDigest } from '../../storage/digest.js';
import { RegistryError } from '../../storage/errors.js';
import type { BlobInfo, Repository, UploadStatus } from '../../storage/repository.js';
import { parseContentRange, uploadRange } from '../http-range.js';
import { requestBody } from '../request-body.js';
import type { Access } from '../../auth/access.js';
import { checkAccess, emitEvent, repositoryFor, routeParam, sendEmpty, urlBase, type AppServices } from '../context.js';

const START = /^\/v2\/(.+)\/blobs\/uploads\/?$/;
const SESSION = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/;
/**
 * Smallest non-final PATCH chunk we ask clients for. The filesystem driver takes chunks
 * of any size; the S3 driver buffers small ones itself, so no client has to care.
 */
const CHUNK_MIN_LENGTH = 1;

export function uploadRoutes(router: Router, services: AppServices): void {
  const base = urlBase(services);

  const secret = services.config.http.secret;
  const sendStatus = (ctx: Context, repo: Repository, status: UploadStatus, code: number): void => {
    const state = secret ? `?_state=${encodeURIComponent(uploadStateToken(secret, repo.name, status))}` : '';
    ctx.set({
      Location: `${base}/v2/${repo.name}/blobs/uploads/${status.id}${state}`,
      Range: uploadRange(status.size),
      'Docker-Upload-UUID': status.id,
      'OCI-Chunk-Min-Length': String(CHUNK_MIN_LENGTH),
    });
    sendEmpty(ctx, code);
  };
  const sendCreated = (ctx: Context, repo: Repository, blob: BlobInfo, action: 'push' | 'mount'): void => {
    const digest = blob.digest.value;
    ctx.set({ Location: `${base}/v2/${repo.name}/blobs/${digest}`, 'Docker-Content-Digest': digest });
    sendEmpty(ctx, 201);
    const url = `${base}/v2/${repo.name}/blobs/${digest}`;
    emitEvent(ctx, services, { action, repository: repo.name, digest, mediaType: 'application/octet-stream', size: blob.size, url });
  };

  router.post(START, async (ctx) => {
    const { mount, from, digest } = ctx.query;
    const source = typeof mount === 'string' && typeof from === 'string' && from !== '' ? from : undefined;
    const repo = source === undefined ? await repositoryFor(ctx, services, ['pull', 'push']) : await mountAccess(ctx, source);
    // A mount without `from` links a blob from anywhere in the registry: only where everyone
    // may pull everything, or knowing a digest would grant its blob.
    const mountable = typeof mount === 'string' && (source !== undefined ? ctx.state.mountFrom === true : services.access.everyoneMayPull === true);
    if (mountable) {
      const mounted = await repo.blobs.mount(parseDigest(mount as string), source);
      if (mounted) return sendCreated(ctx, repo, mounted, 'mount');
    } else if (typeof mount === 'string' && source === undefined) {
      // Behind auth, a mount without `from` only confirms a blob this repository (which the
      // caller may pull) already holds.
      const held = await repo.blobs.stat(parseDigest(mount)).catch(() => undefined);
      if (held) return sendCreated(ctx, repo, held, 'mount');
    }
    // Not mountable: the spec says to fall back to a normal upload session.
    if (typeof digest === 'string') {
      const wanted = parseDigest(digest);
      const length = bodyLength(ctx);
      const session = await repo.uploads.start();
      let blob;
      try {
        blob = await repo.uploads.complete(session.id, wanted, requestBody(ctx), { length });
      } catch (err) {
        // Nobody knows this session's id: whatever it holds can never be resumed, and on a
        // full disk it would keep the space until upload purging (a week by default).
        await repo.uploads.cancel(session.id).catch(() => undefined);
        throw err;
      }
      return sendCreated(ctx, repo, blob, 'push');
    }
    sendStatus(ctx, repo, await repo.uploads.start(), 202);
  });

  /**
   * The target repository of a mount from `source`. Both scopes are asked in one check, so
   * that one challenge names both and the client's next token covers both; a caller who may
   * push here but not pull the source gets a plain upload session, not a refusal.
   */
  const mountAccess = async (ctx: Context, source: string): Promise<Repository> => {
    const name = routeParam(ctx, 0);
    const repo = services.registry.repository(name); // validates both names before any access check
    services.registry.repository(source);
    const target: Access = { type: 'repository', name, actions: ['pull', 'push'] };
    const both = await checkAccess(ctx, services, [target, { type: 'repository', name: source, actions: ['pull'] }]);
    if (both.allowed) {
      ctx.state.mountFrom = true;
      return repo;
    }
    if ((await checkAccess(ctx, services, [target])).allowed) return repo;
    if (both.challenge) ctx.set('WWW-Authenticate', both.challenge);
    if (both.retryAfterSeconds !== undefined) ctx.set('Retry-After', String(both.retryAfterSeconds));
    throw new RegistryError(both.reason, both.message);
  };

  router.get(SESSION, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    sendStatus(ctx, repo, await repo.uploads.status(routeParam(ctx, 1)), 204);
  });

  router.patch(SESSION, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull', 'push']);
    const id = routeParam(ctx, 1);
    const chunk = await chunkOf(ctx, repo, id);
    sendStatus(ctx, repo, await repo.uploads.append(id, requestBody(ctx), chunk), 202);
  });

  router.put(SESSION, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull', 'push']);
    const id = routeParam(ctx, 1);
    const digest = ctx.query.digest;
    if (typeof digest !== 'string') throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required');
    const wanted = parseDigest(digest);
    const hasBody = ctx.get('Transfer-Encoding') !== '' || (bodyLength(ctx) ?? 0) > 0;
    const chunk = hasBody ? await chunkOf(ctx, repo, id) : undefined;
    const blob = await repo.uploads.complete(id, wanted, hasBody ? requestBody(ctx) : undefined, chunk);
    sendCreated(ctx, repo, blob, 'push');
  });

  router.delete(SESSION, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull', 'push']);
    await repo.uploads.cancel(routeParam(ctx, 1));
    sendEmpty(ctx, 204);
  });
}

/**
 * Distribution's `_state` token for an upload URL: base64url of HMAC-SHA256(http.secret,
 * json) followed by the json, in Go's padded URL alphabet. wharf keeps an upload's state in storage and ignores the
 * token; it hands one out so that, with the same http.secret, a client whose next request
 * lands on a Distribution sharing the storage can continue the upload there.
 */
export function uploadStateToken(secret: string, name: string, status: UploadStatus): string {
  const json = JSON.stringify({ Name: name, UUID: status.id, Offset: status.size, StartedAt: status.startedAt.toISOString() });
  const mac = createHmac('sha256', secret).update(json).digest();
  // Go's base64.URLEncoding: the URL alphabet with padding, which Distribution requires.
  return Buffer.concat([mac, Buffer.from(json)]).toString('base64').replaceAll('+', '-').replaceAll('/', '_');
}

function bodyLength(ctx: Context): number | undefined {
  const header = ctx.get('Content-Length');
  if (header === '') return undefined;
  if (!/^\d{1,15}$/.test(header)) throw new RegistryError('SIZE_INVALID', 'invalid Content-Length');
  return Number(header);
}

/**
 * The chunk a PATCH or PUT declares: its start from Content-Range, its length from either
 * header. The upload's size is read only to answer a bad header with the current Range.
 */
async function chunkOf(ctx: Context, repo: Repository, id: string): Promise<{ start?: number; length?: number }> {
  const length = bodyLength(ctx);
  const header = ctx.get('Content-Range') || undefined;
  const range = parseContentRange(header);
  if (range === 'invalid' || (range && length !== undefined && length !== range.length)) {
    const message = range === 'invalid' ? `invalid Content-Range ${JSON.stringify(header!.slice(0, 100))}` : 'Content-Range and Content-Length disagree';
    throw new RegistryError('RANGE_INVALID', message, { size: (await repo.uploads.status(id)).size });
  }
  return range ?? { length };
}
