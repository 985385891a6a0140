// What wharf adds to Koa's context, and small response helpers shared by the routes.
import type { Context } from 'koa';
import type { Logger } from 'pino';
import type { AccessController, Access } from '../auth/access.js';
import type { Registry, Repository } from '../storage/repository.js';
import { RegistryError } from '../storage/errors.js';
import type { Config } from './config.js';

declare module 'koa' {
  interface DefaultContext {
    log: Logger;
    requestId: string;
  }
}

/** Everything a route needs, built once at start-up. */
export interface AppServices {
  config: Config;
  registry: Registry;
  access: AccessController;
  logger: Logger;
}

/** Asks the access controller; throws UNAUTHORIZED or DENIED with the challenge set. */
export async function requireAccess(ctx: Context, services: AppServices, access: Access[]): Promise<void> {
  const decision = await services.access.authorize(
    { authorization: ctx.get('Authorization') || undefined, remoteAddress: ctx.ip },
    access,
  );
  if (decision.allowed) return;
  if (decision.challenge) ctx.set('WWW-Authenticate', decision.challenge);
  throw new RegistryError(decision.reason, decision.message, access.map((a) => ({ Type: a.type, Name: a.name, Action: a.actions.join(',') })));
}

/** The repository named in the route, after its name was validated and access granted. */
export async function repositoryFor(
  ctx: Context,
  services: AppServices,
  actions: string[],
): Promise<Repository> {
  const name = routeParam(ctx, 0);
  const ns = ctx.query.ns;
  // Validates the name first; containerd's ?ns= may choose a mirror's upstream.
  const repository = services.registry.repository(name, typeof ns === 'string' ? { namespace: ns } : undefined);
  await requireAccess(ctx, services, [{ type: 'repository', name, actions }]);
  return repository;
}

/** The n-th capture of the route's pattern (0: repository name, 1: digest, reference or upload id). */
export function routeParam(ctx: Context, index: number): string {
  return ctx.captures?.[index] ?? '';
}

/** Ends the response with a status and no body (Content-Length: 0). */
export function sendEmpty(ctx: Context, status: number): void {
  ctx.body = null;
  ctx.status = status;
}

/** Path prefix for URLs the registry hands out (Location, Link). */
export function urlBase(services: AppServices): string {
  const { host, prefix } = services.config.http;
  return `${host ? host.replace(/\/+$/, '') : ''}${prefix}`;
}
