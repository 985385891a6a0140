// Bearer token verification for Docker token auth, as Distribution's `auth.token` does it
// (https://distribution.github.io/distribution/spec/auth/jwt/): a JWT signed by the token
// server, its key found through the header the way tokens in the wild carry it (x5c chain
// to the root bundle, kid as libtrust fingerprint / RFC 7638 thumbprint / JWKS kid, or a
// jwk equal to a configured key), then iss, aud, exp/nbf/iat and the `access` claim.
// Verified tokens are remembered until they expire, so a pull of 50 layers verifies once.
import { createPublicKey, type JsonWebKey as NodeJwk, type KeyObject, type X509Certificate } from 'node:crypto';
import { decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { LRUCache } from 'lru-cache';
import type { Access } from './access.js';
import { jwkThumbprint, jwkThumbprintSync, libtrustKeyId, publicKeyOf } from './libtrust.js';
import { ChainError, parseCertificateBundle, verifyCertificateChain } from './x5c.js';

export { jwkThumbprint, libtrustKeyId };

export interface TokenVerifierOptions {
  /** `iss` must equal this exactly. */
  issuer: string;
  /** `aud` (a string or a list) must contain this. */
  service: string;
  /** PEM text with one or more certificates (Distribution's `rootcertbundle`). */
  rootCertBundle?: string;
  /** A JWKS (the content of Distribution's `auth.token.jwks` file, parsed). */
  jwks?: { keys: JsonWebKey[] };
  /** Further public keys, e.g. wharf's own token server key. */
  trustedKeys?: KeyObject[];
  /** Allowed `alg` values; default RS256 RS384 RS512 ES256 ES384 ES512 EdDSA. HS* and none are never allowed. */
  algorithms?: string[];
  /** Clock skew allowed for exp, nbf and iat; default 60 (Distribution's leeway). */
  leewaySeconds?: number;
  /** Current time in ms, for tests. */
  now?: () => number;
}

export interface VerifiedToken {
  /** `sub`; '' for an anonymous token. */
  subject: string;
  /** The `access` claim: what the token grants ([] when absent). */
  access: Access[];
  /** `exp`, in ms. */
  expiresAt: number;
}

/** The token was refused. `reason` is short, for logs; it never contains the token or key material. */
export class TokenInvalidError extends Error {
  readonly code = 'TOKEN_INVALID' as const;
  constructor(readonly reason: string) {
    super(`invalid token: ${reason}`);
    this.name = 'TokenInvalidError';
  }
}

export const DEFAULT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
/** Every asymmetric JWS algorithm wharf can verify; anything else in `algorithms` is a configuration error. */
const SUPPORTED_ALGORITHMS = new Set([...DEFAULT_ALGORITHMS, 'PS256', 'PS384', 'PS512', 'Ed25519']);
/** HMAC with a public key as secret is the classic key confusion attack; `none` is no signature at all. */
const NEVER_ALLOWED = /^(none|HS\d*)$/i;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** Far above real tokens (a 3-certificate x5c is ~7 KB), far below anything that costs to hash. */
const MAX_TOKEN_LENGTH = 32 * 1024;
const CACHE_ENTRIES = 1000;
/**
 * The cache's bound in characters of the tokens it holds: 1000 real tokens (0.5-7 KB) stay well
 * under it; 1000 tokens of the maximum length would not (32 MB).
 */
const CACHE_MAX_CHARS = 4 * 1024 * 1024;

interface TrustedKey {
  key: KeyObject;
  /** The JWKS entry's `alg`, if it named one: the key signs with nothing else. */
  alg?: string;
}

export class TokenVerifier {
  private readonly issuer: string;
  private readonly service: string;
  private readonly algorithms: Set<string>;
  private readonly leeway: number;
  private readonly now: () => number;
  private readonly roots: X509Certificate[];
  /** kid (libtrust id, RFC 7638 thumbprint or JWKS kid) -> keys it names. */
  private readonly byKid = new Map<string, TrustedKey[]>();
  /** RFC 7638 thumbprint -> key, to recognise a `jwk` header as a configured key. */
  private readonly byThumbprint = new Map<string, TrustedKey>();
  /**
   * The full token string -> what it verified to, for tokens that passed every check. Keyed by
   * the string itself, so a hit is the very token verified before. Not by a SHA-256 of it: that
   * was most of a cached check's CPU, and its per-request native Hash object made the token
   * wharf run several times as many full garbage collections as the open one (23 against 5 in
   * one measured run). Expiry is checked on every hit.
   */
  private readonly cache = new LRUCache<string, VerifiedToken>({
    max: CACHE_ENTRIES,
    maxSize: CACHE_MAX_CHARS,
    sizeCalculation: (_verified, token) => token.length,
  });

  constructor(options: TokenVerifierOptions) {
    if (!options.issuer) throw new Error('token auth: issuer is required');
    if (!options.service) throw new Error('token auth: service is required');
    this.issuer = options.issuer;
    this.service = options.service;
    this.leeway = options.leewaySeconds ?? 60;
    if (!Number.isFinite(this.leeway) || this.leeway < 0) throw new Error('token auth: leeway must be a non-negative number');
    this.now = options.now ?? Date.now;

    this.algorithms = new Set<string>();
    for (const alg of options.algorithms ?? DEFAULT_ALGORITHMS) {
      // Distribution accepts HS* names in its configuration; they can never verify with a public key.
      if (NEVER_ALLOWED.test(alg)) continue;
      if (!SUPPORTED_ALGORITHMS.has(alg)) throw new Error(`token auth: unsupported signing algorithm ${JSON.stringify(alg)}`);
      this.algorithms.add(alg);
    }
    if (this.algorithms.size === 0) throw new Error('token auth: no usable signing algorithm configured');

    this.roots = options.rootCertBundle === undefined ? [] : parseCertificateBundle(options.rootCertBundle);
    if (options.rootCertBundle !== undefined && this.roots.length === 0) {
      throw new Error('token auth: the root certificate bundle holds no certificate');
    }
    // A bundle certificate's key also signs tokens that name it by kid (Distribution 2.x and 3.x both do this).
    for (const root of this.roots) this.trust({ key: root.publicKey });
    (options.jwks?.keys ?? []).forEach((jwk, i) => this.trustJwk(jwk, i));
    for (const key of options.trustedKeys ?? []) this.trust({ key: publicKeyOf(key) });
    if (this.byThumbprint.size === 0) throw new Error('token auth: no token signing key configured');
  }

  async verify(token: string): Promise<VerifiedToken> {
    const cached = this.cached(token);
    if (cached) return cached;
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) {
      throw new TokenInvalidError('malformed token');
    }
    const verified = await this.verifyUncached(token);
    this.cache.set(token, verified);
    return verified;
  }

  /**
   * What `verify` answers for a token it verified before, synchronously: the remembered result
   * while the token has not expired (exp + leeway, checked now), TokenInvalidError once it has;
   * undefined for a token not in the cache (verify it). Only tokens that passed every check are
   * cached, under their full string, so a hit needs no other check.
   */
  cached(token: string): VerifiedToken | undefined {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) return undefined;
    const cached = this.cache.get(token);
    if (cached === undefined) return undefined;
    if (this.now() < cached.expiresAt + this.leeway * 1000) return cached;
    this.cache.delete(token);
    throw new TokenInvalidError('token expired');
  }

  private async verifyUncached(token: string): Promise<VerifiedToken> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      throw new TokenInvalidError('malformed token header');
    }
    const alg = header.alg;
    if (typeof alg !== 'string' || NEVER_ALLOWED.test(alg) || !this.algorithms.has(alg)) {
      throw new TokenInvalidError('signing algorithm not allowed');
    }
    const nowMs = this.now();
    const candidates = this.signingKeys(header, alg, nowMs);

    let payload: JWTPayload | undefined;
    for (const [i, candidate] of candidates.entries()) {
      try {
        ({ payload } = await jwtVerify(token, candidate, {
          algorithms: [alg],
          issuer: this.issuer,
          audience: this.service,
          requiredClaims: ['exp'],
          clockTolerance: this.leeway,
          currentDate: new Date(nowMs),
        }));
        break;
      } catch (err) {
        // Several keys can share a kid (a JWKS kid equal to another key's fingerprint): try each for the signature.
        if (err instanceof joseErrors.JWSSignatureVerificationFailed && i < candidates.length - 1) continue;
        throw refusal(err);
      }
    }
    if (!payload) throw new TokenInvalidError('signature verification failed');
    // jose checks iat only against a maximum age; a token issued in the future is refused like Distribution's nbf.
    if (typeof payload.iat === 'number' && payload.iat > nowMs / 1000 + this.leeway) {
      throw new TokenInvalidError('token issued in the future');
    }
    const subject = payload.sub ?? '';
    if (typeof subject !== 'string') throw new TokenInvalidError('bad sub claim');
    return Object.freeze({ subject, access: parseAccess(payload['access']), expiresAt: payload.exp! * 1000 });
  }

  /** The keys the header names, in Distribution's order of preference: x5c, then jwk, then kid. */
  private signingKeys(header: ReturnType<typeof decodeProtectedHeader>, alg: string, nowMs: number): KeyObject[] {
    if (header.x5c !== undefined) {
      try {
        return [verifyCertificateChain(header.x5c, this.roots, nowMs)];
      } catch (err) {
        throw new TokenInvalidError(err instanceof ChainError ? err.message : 'certificate chain not trusted');
      }
    }
    if (header.jwk !== undefined) {
      // An embedded key proves nothing by itself: it is used only when it is one of the configured keys.
      let thumbprint: string;
      try {
        thumbprint = jwkThumbprintSync(createPublicKey({ key: header.jwk as NodeJwk, format: 'jwk' }));
      } catch {
        throw new TokenInvalidError('malformed jwk header');
      }
      const trusted = this.byThumbprint.get(thumbprint);
      if (!trusted || !usableWith(trusted, alg)) throw new TokenInvalidError('jwk header is not a trusted key');
      return [trusted.key];
    }
    if (typeof header.kid === 'string' && header.kid !== '') {
      const named = this.byKid.get(header.kid);
      if (!named) throw new TokenInvalidError('unknown signing key id');
      const keys = named.filter((trusted) => usableWith(trusted, alg));
      if (keys.length === 0) throw new TokenInvalidError('signing key not for this algorithm');
      return keys.map((trusted) => trusted.key);
    }
    throw new TokenInvalidError('no signing key named in the token header');
  }

  private trust(trusted: TrustedKey, jwksKid?: string): void {
    const thumbprint = jwkThumbprintSync(trusted.key);
    if (!this.byThumbprint.has(thumbprint)) this.byThumbprint.set(thumbprint, trusted);
    const ids = new Set([libtrustKeyId(trusted.key), thumbprint]);
    if (jwksKid) ids.add(jwksKid);
    for (const id of ids) {
      const keys = this.byKid.get(id) ?? [];
      keys.push(trusted);
      this.byKid.set(id, keys);
    }
  }

  private trustJwk(jwk: JsonWebKey, index: number): void {
    if (jwk === null || typeof jwk !== 'object' || jwk.kty === 'oct') {
      throw new Error(`token auth: jwks key #${index + 1} is not a public key`);
    }
    let key: KeyObject;
    try {
      key = createPublicKey({ key: jwk as NodeJwk, format: 'jwk' });
    } catch {
      throw new Error(`token auth: jwks key #${index + 1} cannot be read`);
    }
    const { alg, kid } = jwk as Record<string, unknown>;
    this.trust(typeof alg === 'string' ? { key, alg } : { key }, typeof kid === 'string' && kid !== '' ? kid : undefined);
  }
}

function usableWith(trusted: TrustedKey, alg: string): boolean {
  return trusted.alg === undefined || trusted.alg === alg;
}

/** A jose failure as a short reason; jose's errors carry the payload, so none is passed on. */
function refusal(err: unknown): TokenInvalidError {
  if (err instanceof TokenInvalidError) return err;
  if (err instanceof joseErrors.JWTExpired) return new TokenInvalidError('token expired');
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return new TokenInvalidError(`missing ${claimName(err.claim)} claim`);
    if (err.claim === 'iss') return new TokenInvalidError('untrusted issuer');
    if (err.claim === 'aud') return new TokenInvalidError('token intended for another audience');
    if (err.claim === 'nbf') return new TokenInvalidError('token not yet valid');
    return new TokenInvalidError(`bad ${claimName(err.claim)} claim`);
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new TokenInvalidError('signature verification failed');
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return new TokenInvalidError('signing algorithm not allowed');
  if (err instanceof joseErrors.JWTInvalid || err instanceof joseErrors.JWSInvalid) return new TokenInvalidError('malformed token');
  // e.g. an EC key named for an RS256 token: the key cannot check this signature.
  return new TokenInvalidError('signing key does not match the algorithm');
}

/** Claim names jose reports come from a fixed set; anything else is not echoed into logs. */
function claimName(claim: string): string {
  return ['iss', 'aud', 'exp', 'nbf', 'iat', 'sub'].includes(claim) ? claim : 'a';
}

/**
 * The `access` claim. Missing means no access (the token still opens /v2/). Entries of
 * resource types wharf has no use for (`repository(plugin)`, vendor types) are dropped;
 * a claim of the wrong shape refuses the token, as Distribution's JSON decoding does.
 */
function parseAccess(claim: unknown): Access[] {
  if (claim === undefined || claim === null) return [];
  if (!Array.isArray(claim)) throw new TokenInvalidError('bad access claim');
  const access: Access[] = [];
  for (const entry of claim) {
    if (entry === null || typeof entry !== 'object') throw new TokenInvalidError('bad access claim');
    const { type, name, actions = [] } = entry as Record<string, unknown>;
    const actionList = actions === null ? [] : actions;
    if (typeof type !== 'string' || typeof name !== 'string' || !Array.isArray(actionList)
      || !actionList.every((action) => typeof action === 'string')) {
      throw new TokenInvalidError('bad access claim');
    }
    if (type !== 'repository' && type !== 'registry') continue;
    access.push(Object.freeze({ type, name, actions: Object.freeze([...actionList]) as string[] }));
  }
  return Object.freeze(access) as Access[];
}

/**
 * Whether the token grants every action of `wanted`: the same answer as
 * `missingAccess(token, wanted).length === 0`, without building anything (it runs on every
 * request). An action is granted when an entry of the same type and name lists it or '*'.
 */
export function grantsAll(token: VerifiedToken, wanted: readonly Access[]): boolean {
  for (let w = 0; w < wanted.length; w++) {
    const want = wanted[w]!;
    for (let a = 0; a < want.actions.length; a++) {
      if (!grants(token.access, want, want.actions[a]!)) return false;
    }
  }
  return true;
}

function grants(entries: readonly Access[], want: Access, action: string): boolean {
  for (let e = 0; e < entries.length; e++) {
    const entry = entries[e]!;
    if (entry.type === want.type && entry.name === want.name && (entry.actions.includes(action) || entry.actions.includes('*'))) return true;
  }
  return false;
}

/**
 * Which of `wanted` the token does not grant (empty: all granted), per action: a token entry
 * grants an action when its type and name are equal and it lists the action or '*'.
 * Entries for the same resource add up, as in Distribution's accessSet.
 */
export function missingAccess(token: VerifiedToken, wanted: Access[]): Access[] {
  const missing: Access[] = [];
  for (const want of wanted) {
    const granted = new Set<string>();
    for (const entry of token.access) {
      if (entry.type === want.type && entry.name === want.name) entry.actions.forEach((action) => granted.add(action));
    }
    const absent = granted.has('*') ? [] : want.actions.filter((action) => !granted.has(action));
    if (absent.length > 0) missing.push({ type: want.type, name: want.name, actions: absent });
  }
  return missing;
}
