// Distribution's token method: Bearer JWTs issued by a token server (wharf's own or an
// existing one), verified by TokenVerifier; the token's `access` claim says what it grants.
// Refusals are 401 with the spec's challenge: the realm and service to get a token from,
// the scope needed, and error="invalid_token" or error="insufficient_scope".
//
// This runs on every request of a token-protected registry, so the usual case, a token
// verified before, is cheap: no regular expression, no hashing, no allocation but the
// token's slice of the header and the decision. Every check still holds per request: the
// token is the very string that passed the signature, iss, aud, exp/nbf/iat checks
// (TokenVerifier.cached), its expiry is checked now, and its scope against the request's.
import type { Access, AccessController, AccessDecision, AccessRequest } from './access.js';
import { bearerChallenge, parseBearer } from './challenge.js';
import { grantsAll, type TokenVerifier, type VerifiedToken } from './token-verifier.js';

export interface TokenAccessOptions {
  /** Absolute URL of the token endpoint clients are sent to. */
  realm: string;
  service: string;
  /** Distribution's autoredirect: the realm's scheme and host follow the request's. */
  autoredirect?: boolean;
}

const BEARER_PREFIX = 'Bearer ';

export class TokenAccessController implements AccessController {
  constructor(
    private readonly verifier: TokenVerifier,
    private readonly options: TokenAccessOptions,
  ) {}

  async authorize(request: AccessRequest, access: Access[]): Promise<AccessDecision> {
    const authorization = request.authorization;
    let verified: VerifiedToken | undefined;
    try {
      // "Bearer <token>" as clients write it, for a token verified before. A cached token is a
      // compact JWS (no spaces, only base64url characters and dots), so this is exactly the
      // token parseBearer would find; anything else takes the general path below.
      if (authorization !== undefined && authorization.startsWith(BEARER_PREFIX)) {
        verified = this.verifier.cached(authorization.slice(BEARER_PREFIX.length));
      }
      if (verified === undefined) {
        const token = parseBearer(authorization);
        if (token) verified = await this.verifier.verify(token);
      }
    } catch {
      return {
        allowed: false,
        reason: 'UNAUTHORIZED',
        message: 'the token is invalid or expired',
        challenge: this.challenge(request, access, 'invalid_token'),
      };
    }
    if (verified === undefined) {
      return { allowed: false, reason: 'UNAUTHORIZED', message: 'authentication required', challenge: this.challenge(request, access) };
    }
    if (grantsAll(verified, access)) return { allowed: true, subject: verified.subject };
    return {
      allowed: false,
      reason: 'UNAUTHORIZED',
      message: 'the token does not grant this access',
      challenge: this.challenge(request, access, 'insufficient_scope'),
    };
  }

  private challenge(request: AccessRequest, access: Access[], error?: 'invalid_token' | 'insufficient_scope'): string {
    return bearerChallenge({ realm: this.realmFor(request), service: this.options.service, access, error });
  }

  private realmFor(request: AccessRequest): string {
    if (!this.options.autoredirect || !request.host) return this.options.realm;
    const url = new URL(this.options.realm);
    return `${request.protocol ?? url.protocol.replace(':', '')}://${request.host}${url.pathname}${url.search}`;
  }
}
