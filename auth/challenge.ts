// WWW-Authenticate challenges, exactly as the Docker token spec and RFC 7235 write them.
// Clients parse these strictly: containers/image retries with a new token only on
// error="insufficient_scope" with a single scope parameter (scopes joined by spaces).
import { formatScope, type Access } from './access.js';

const quote = (value: string): string => `"${value.replace(/["\\]/g, '\\$&')}"`;

export function bearerChallenge(options: { realm: string; service: string; access?: Access[]; error?: 'invalid_token' | 'insufficient_scope' }): string {
  const parts = [`realm=${quote(options.realm)}`, `service=${quote(options.service)}`];
  const scopes = (options.access ?? []).filter((a) => a.actions.length > 0).map(formatScope);
  if (scopes.length > 0) parts.push(`scope=${quote(scopes.join(' '))}`);
  if (options.error) parts.push(`error=${quote(options.error)}`);
  return `Bearer ${parts.join(',')}`;
}

export function basicChallenge(realm: string): string {
  return `Basic realm=${quote(realm)},charset="UTF-8"`;
}

/** The user and password of a Basic Authorization header, or undefined. */
export function parseBasic(authorization: string | undefined): { username: string; password: string } | undefined {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(authorization ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** The token of a Bearer Authorization header, or undefined. */
export function parseBearer(authorization: string | undefined): string | undefined {
  return /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(authorization ?? '')?.[1];
}
