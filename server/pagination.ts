// `n` / `last` pagination of tag lists and the catalog, with the RFC 8288 Link header.
import type { Context } from 'koa';
import { RegistryError } from '../storage/errors.js';

export interface Page {
  limit: number;
  last: string | undefined;
  /** Whether the client asked for a page size (Link is only sent then). */
  explicit: boolean;
}

export function parsePage(ctx: Context, defaultLimit: number, maxLimit: number): Page {
  const n = ctx.query.n;
  const last = typeof ctx.query.last === 'string' ? ctx.query.last : undefined;
  if (n === undefined) return { limit: defaultLimit, last, explicit: false };
  if (typeof n !== 'string' || !/^\d{1,9}$/.test(n)) {
    throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer', { n });
  }
  return { limit: Math.min(Number(n), maxLimit), last, explicit: true };
}

/** Takes one page of sorted `items` and sets the Link header when more follow. */
export function paginate(ctx: Context, items: string[], page: Page, path: string): string[] {
  const after = page.last === undefined ? items : items.filter((item) => item > page.last!);
  const result = after.slice(0, page.limit);
  if (result.length > 0 && after.length > result.length) {
    const next = new URLSearchParams({ last: result[result.length - 1]!, n: String(page.limit) });
    ctx.set('Link', `<${path}?${next.toString()}>; rel="next"`);
  }
  return result;
}
