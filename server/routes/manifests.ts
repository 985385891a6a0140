// GET / HEAD / PUT / DELETE /v2/<name>/manifests/<tag or digest>
import type Router from '@koa/router';
import type { Context } from 'koa';
import { RegistryError } from '../../storage/errors.js';
import { MAX_MANIFEST_BYTES, MediaType } from '../../storage/manifest.js';
import type { ManifestContent, Repository } from '../../storage/repository.js';
import { requestBody } from '../request-body.js';
import { emitEvent, repositoryFor, routeParam, sendEmpty, urlBase, type AppServices } from '../context.js';

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;

export function manifestRoutes(router: Router, services: AppServices): void {
  const base = urlBase(services);

  const send = async (ctx: Context, withBody: boolean): Promise<void> => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    const manifest = await negotiate(repo, await repo.manifests.get(routeParam(ctx, 1)), ctx.get('Accept'));
    ctx.status = 200;
    ctx.set({
      'Content-Type': manifest.mediaType,
      'Docker-Content-Digest': manifest.digest.value,
      ETag: `"${manifest.digest.value}"`,
    });
    if (ctx.fresh) {
      ctx.status = 304; // If-None-Match with the digest the client already has
      return;
    }
    if (withBody) ctx.body = manifest.content;
    else ctx.set('Content-Length', String(manifest.content.length));
    if (withBody) {
      const reference = routeParam(ctx, 1);
      emitEvent(ctx, services, {
        action: 'pull',
        repository: repo.name,
        digest: manifest.digest.value,
        mediaType: manifest.mediaType,
        size: manifest.content.length,
        tag: reference.includes(':') ? undefined : reference,
        url: `${base}/v2/${repo.name}/manifests/${manifest.digest.value}`,
      });
    }
  };
  router.head(MANIFEST, (ctx) => send(ctx, false));
  router.get(MANIFEST, (ctx) => send(ctx, true));

  router.put(MANIFEST, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull', 'push']);
    const content = await readBody(ctx, MAX_MANIFEST_BYTES);
    const result = await repo.manifests.put(routeParam(ctx, 1), content, ctx.get('Content-Type') || undefined);
    ctx.set({
      Location: `${base}/v2/${repo.name}/manifests/${result.digest.value}`,
      'Docker-Content-Digest': result.digest.value,
    });
    if (result.subject) ctx.set('OCI-Subject', result.subject.value);
    sendEmpty(ctx, 201);
    const reference = routeParam(ctx, 1);
    emitEvent(ctx, services, {
      action: 'push',
      repository: repo.name,
      digest: result.digest.value,
      mediaType: (ctx.get('Content-Type') || '').split(';')[0]!.trim() || undefined,
      size: content.length,
      tag: reference.includes(':') ? undefined : reference,
      url: `${base}/v2/${repo.name}/manifests/${result.digest.value}`,
    });
  });

  router.delete(MANIFEST, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['delete']);
    const reference = routeParam(ctx, 1);
    await repo.manifests.delete(reference);
    sendEmpty(ctx, 202);
    emitEvent(ctx, services, reference.includes(':') ? { action: 'delete', repository: repo.name, digest: reference } : { action: 'delete', repository: repo.name, tag: reference });
  });
}

/**
 * Content negotiation. The stored manifest is returned as it is, except for a client
 * that names the media types it accepts, excludes index types and receives an index:
 * like Distribution, it gets the linux/amd64 image of the index instead (old clients
 * that cannot read manifest lists still pull).
 */
async function negotiate(repo: Repository, manifest: ManifestContent, accept: string): Promise<ManifestContent> {
  if (!accept) return manifest;
  const accepted = accept.split(',').map((part) => part.split(';')[0]!.trim().toLowerCase());
  if (accepted.includes(manifest.mediaType) || accepted.includes('*/*')) return manifest;
  const isIndex = manifest.mediaType === MediaType.OciIndex || manifest.mediaType === MediaType.DockerManifestList;
  const wantsImage = accepted.includes(MediaType.DockerManifest) || accepted.includes(MediaType.OciManifest);
  if (!isIndex || !wantsImage) return manifest;
  const index = JSON.parse(manifest.content.toString('utf8')) as {
    manifests?: { digest: string; platform?: { os?: string; architecture?: string } }[];
  };
  const amd64 = index.manifests?.find((m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64');
  return amd64 ? repo.manifests.get(amd64.digest) : manifest;
}

async function readBody(ctx: Context, limit: number): Promise<Buffer> {
  const declared = Number(ctx.get('Content-Length') || '0');
  if (declared > limit) throw new RegistryError('MANIFEST_TOO_LARGE', `manifest exceeds ${limit} bytes`);
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const part of requestBody(ctx) as AsyncIterable<Buffer>) {
      size += part.length;
      if (size > limit) throw new RegistryError('MANIFEST_TOO_LARGE', `manifest exceeds ${limit} bytes`);
      parts.push(part);
    }
  } catch (err) {
    // The client hung up part-way (Node aborts the request): its fault, not a server failure.
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ABORT_ERR') {
      throw new RegistryError('MANIFEST_INVALID', 'the manifest body ended before it was complete');
    }
    throw err;
  }
  return Buffer.concat(parts, size);
}
