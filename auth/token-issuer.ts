// The built-in Docker token server's logic, without HTTP: access tokens in the form CNCF
// Distribution verifies (ES256 JWT whose libtrust kid names a `rootcertbundle` key), and the long-lived refresh
// tokens `docker login` stores as an identity token. The integrator mounts it on routes; the
// policy (token-policy.ts), signing key (signing-key.ts) and login limiter (rate-limit.ts) are
// re-exported here so one import serves.
import { randomBytes } from 'node:crypto';
import { errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import type { Access } from './access.js';
import type { SigningKey } from './signing-key.js';

export { libtrustKeyId, loadOrCreateSigningKey, SIGNING_CERT_FILE, SIGNING_KEY_FILE, type SigningKey } from './signing-key.js';
export { globMatches, grantAccess, isValidScopeName, parseScopes, validatePolicy, type AccessRule, type TokenPolicy } from './token-policy.js';
export { LoginRateLimiter, type LoginRateLimiterOptions, type RateLimitDecision } from './rate-limit.js';

export const DEFAULT_ACCESS_TTL_SECONDS = 300;
export const DEFAULT_REFRESH_TTL_SECONDS = 90 * 24 * 3600;

/**
 * Refresh tokens differ from access tokens in three ways, so that neither can pass for the other
 * with any verifier: header `typ` (RFC 8725 explicit typing), a `token_use` claim, and an
 * audience no registry accepts (Distribution checks `aud`, not `typ`).
 */
const REFRESH_TYP = 'wharf-refresh+jwt';
const REFRESH_USE = 'refresh';
const refreshAudience = (service: string): string => `${service}#refresh`;
/** Clock skew tolerated when checking refresh tokens (Distribution allows 60 s on access tokens). */
const LEEWAY_SECONDS = 60;

export interface AccessTokenRequest {
  issuer: string;
  /** The `service` of the token request; becomes `aud`. */
  service: string;
  /** The account name; undefined or '' for an anonymous token (`sub` is then ''). */
  subject?: string;
  /** What was granted (grantAccess), possibly nothing: a token for `GET /v2/` alone. */
  access: Access[];
  /** Default 300. */
  ttlSeconds?: number;
}

export interface IssuedToken {
  token: string;
  /** Seconds, for the response's `expires_in`. */
  expiresIn: number;
  /** RFC 3339, for the response's `issued_at`. */
  issuedAt: string;
}

/** A signed access token, as the token response's `token` / `access_token`. */
export async function issueAccessToken(key: SigningKey, request: AccessTokenRequest): Promise<IssuedToken> {
  const ttl = wholeSeconds(request.ttlSeconds ?? DEFAULT_ACCESS_TTL_SECONDS, 'ttlSeconds');
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({
    iss: request.issuer,
    sub: request.subject ?? '',
    aud: request.service, // a string: Distribution 2.8 reads `aud` as one string
    exp: now + ttl,
    nbf: now - 1,
    iat: now,
    jti: randomBytes(16).toString('base64url'),
    access: request.access.map(({ type, name, actions }) => ({ type, name, actions: [...actions] })),
  })
    // kid alone (libtrust form): Distribution finds the key among its rootcertbundle's
    // certificates by it. An x5c chain would triple the token, which clients send with every
    // request (measured: -7% manifest GETs/s for the header size alone).
    .setProtectedHeader({ typ: 'JWT', alg: 'ES256', kid: key.kid })
    .sign(key.privateKey);
  return { token, expiresIn: ttl, issuedAt: rfc3339(now) };
}

export interface RefreshTokenRequest {
  issuer: string;
  subject: string;
  service: string;
  /** Default 90 days. */
  ttlSeconds?: number;
}

/**
 * A refresh token for `subject`: what the token endpoint returns as `refresh_token` to
 * `POST /token` with `access_type=offline`, and clients present again with
 * `grant_type=refresh_token`. Not rotated on use (swarm nodes share one); the caller should still
 * check that the subject exists when it is presented (a removed user's token must stop working).
 */
export async function issueRefreshToken(key: SigningKey, request: RefreshTokenRequest): Promise<IssuedToken> {
  if (request.subject === '') throw new Error('a refresh token needs a subject');
  const ttl = wholeSeconds(request.ttlSeconds ?? DEFAULT_REFRESH_TTL_SECONDS, 'ttlSeconds');
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({
    iss: request.issuer,
    sub: request.subject,
    aud: refreshAudience(request.service),
    exp: now + ttl,
    iat: now,
    jti: randomBytes(16).toString('base64url'),
    token_use: REFRESH_USE,
  })
    .setProtectedHeader({ typ: REFRESH_TYP, alg: 'ES256', kid: key.kid })
    .sign(key.privateKey);
  return { token, expiresIn: ttl, issuedAt: rfc3339(now) };
}

/** Why a refresh token was refused; the message never contains the token. */
export class InvalidRefreshTokenError extends Error {
  constructor(readonly reason: 'expired' | 'invalid') {
    super(reason === 'expired' ? 'refresh token expired' : 'invalid refresh token');
    this.name = 'InvalidRefreshTokenError';
  }
}

/**
 * The subject of a refresh token this key issued for this issuer and service. Throws
 * InvalidRefreshTokenError for anything else: bad signature, another key, expired, an access
 * token, another service.
 */
export async function verifyRefreshToken(key: SigningKey, token: string, expected: { issuer: string; service: string }): Promise<string> {
  let payload: Record<string, unknown>;
  try {
    ({ payload } = await jwtVerify(token, key.publicKey, {
      algorithms: ['ES256'],
      typ: REFRESH_TYP,
      issuer: expected.issuer,
      audience: refreshAudience(expected.service),
      requiredClaims: ['sub', 'exp', 'iat'],
      clockTolerance: LEEWAY_SECONDS,
    }));
  } catch (err) {
    throw new InvalidRefreshTokenError(err instanceof joseErrors.JWTExpired ? 'expired' : 'invalid');
  }
  if (payload.token_use !== REFRESH_USE || 'access' in payload) throw new InvalidRefreshTokenError('invalid');
  if (typeof payload.sub !== 'string' || payload.sub === '') throw new InvalidRefreshTokenError('invalid');
  return payload.sub;
}

function wholeSeconds(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`${what} must be a positive whole number of seconds`);
  return value;
}

/** `2024-05-01T12:00:00Z`: RFC 3339 without the fraction iat does not have. */
function rfc3339(epochSeconds: number): string {
  return new Date(epochSeconds * 1000).toISOString().replace('.000Z', 'Z');
}
