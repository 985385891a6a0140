// Listings: tags of a repository, the catalog, and OCI 1.1 referrers.
import type Router from '@koa/router';
import { parseDigest } from '../../storage/digest.js';
import { MediaType } from '../../storage/manifest.js';
import { paginate, parsePage } from '../pagination.js';
import { repositoryFor, routeParam, requireAccess, urlBase, type AppServices } from '../context.js';

const TAGS = /^\/v2\/(.+)\/tags\/list$/;
const REFERRERS = /^\/v2\/(.+)\/referrers\/([^/]+)$/;
/** Largest page served; a bigger `n` gets this many and a Link to the rest. */
const MAX_PAGE = 10_000;
const CATALOG_DEFAULT_PAGE = 1000;

export function listingRoutes(router: Router, services: AppServices): void {
  const base = urlBase(services);
  const catalogMax = services.config.catalog.maxentries;

  router.get('/v2/_catalog', async (ctx) => {
    await requireAccess(ctx, services, [{ type: 'registry', name: 'catalog', actions: ['*'] }]);
    const page = parsePage(ctx, Math.min(CATALOG_DEFAULT_PAGE, catalogMax), catalogMax);
    const names = await services.registry.catalog(page.limit + 1, page.last);
    ctx.body = { repositories: paginate(ctx, names, { ...page, last: undefined }, `${base}/v2/_catalog`) };
  });

  router.get(TAGS, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    const page = parsePage(ctx, Number.MAX_SAFE_INTEGER, MAX_PAGE);
    const tags = await repo.tags.list();
    ctx.body = { name: repo.name, tags: paginate(ctx, tags, page, `${base}/v2/${repo.name}/tags/list`) };
  });

  router.get(REFERRERS, async (ctx) => {
    const repo = await repositoryFor(ctx, services, ['pull']);
    const subject = parseDigest(routeParam(ctx, 1));
    const artifactType = typeof ctx.query.artifactType === 'string' ? ctx.query.artifactType : undefined;
    const manifests = await repo.referrers.list(subject, artifactType);
    if (artifactType !== undefined) ctx.set('OCI-Filters-Applied', 'artifactType');
    ctx.type = MediaType.OciIndex;
    ctx.body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
  });
}
