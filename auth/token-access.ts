// Distribution's token method: Bearer JWTs issued by a token server (wharf's own or an
// existing one), verified by TokenVerifier; the token's `access` claim says what it grants.
// Refusals are 401 with the spec's challenge: the realm and service to get a token from,
// the scope needed, and error="invalid_token" or error="insufficient_scope".
import type { Access, AccessController, AccessDecision, AccessRequest } from './access.js';
import { bearerChallenge, parseBearer } from './challenge.js';
import { missingAccess, type TokenVerifier } from './token-verifier.js';

export interface TokenAccessOptions {
  /** Absolute URL of the token endpoint clients are sent to. */
  realm: string;
  service: string;
  /** Distribution's autoredirect: the realm's scheme and host follow the request's. */
  autoredirect?: boolean;
}

export class TokenAccessController implements AccessController {
  constructor(
    private readonly verifier: TokenVerifier,
    private readonly options: TokenAccessOptions,
  ) {}

  async authorize(request: AccessRequest, access: Access[]): Promise<AccessDecision> {
    const realm = this.realmFor(request);
    const service = this.options.service;
    const token = parseBearer(request.authorization);
    if (!token) {
      return { allowed: false, reason: 'UNAUTHORIZED', message: 'authentication required', challenge: bearerChallenge({ realm, service, access }) };
    }
    let verified;
    try {
      verified = await this.verifier.verify(token);
    } catch {
      return {
        allowed: false,
        reason: 'UNAUTHORIZED',
        message: 'the token is invalid or expired',
        challenge: bearerChallenge({ realm, service, access, error: 'invalid_token' }),
      };
    }
    if (missingAccess(verified, access).length === 0) return { allowed: true, subject: verified.subject };
    return {
      allowed: false,
      reason: 'UNAUTHORIZED',
      message: 'the token does not grant this access',
      challenge: bearerChallenge({ realm, service, access, error: 'insufficient_scope' }),
    };
  }

  private realmFor(request: AccessRequest): string {
    if (!this.options.autoredirect || !request.host) return this.options.realm;
    const url = new URL(this.options.realm);
    return `${request.protocol ?? url.protocol.replace(':', '')}://${request.host}${url.pathname}${url.search}`;
  }
}
