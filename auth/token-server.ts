// wharf's built-in Docker token server, so that one process is enough: what GET and POST
// /auth/token answer, without HTTP (server/routes/token.ts maps requests and answers).
//
// - GET with Basic credentials (docker, podman, skopeo) or none (anonymous): a token for
//   what the rules allow of the requested scopes. A partial grant is a success; a request
//   with no scope at all (docker login) gets a token for nothing, proving the password.
//   `offline_token=true` with credentials also returns a refresh token.
// - POST, OAuth2 (containerd and helm try it first; docker uses it for identity tokens):
//   grant_type=password (username and password in the form) or refresh_token.
// Responses carry both `token` and `access_token`, `expires_in` and `issued_at`. Refresh
// tokens live long and are not rotated on use: swarm nodes keep the one --with-registry-auth
// gave them and never refresh it.
import { createHash } from 'node:crypto';
import type { Access } from './access.js';
import type { HtpasswdFile } from './htpasswd.js';
import type { LoginRateLimiter } from './rate-limit.js';
import type { SigningKey } from './signing-key.js';
import { grantAccess, parseScopes, type TokenPolicy } from './token-policy.js';
import { issueAccessToken, issueRefreshToken, verifyRefreshToken } from './token-issuer.js';

export interface TokenServerOptions {
  users: HtpasswdFile;
  key: SigningKey;
  issuer: string;
  service: string;
  policy: TokenPolicy;
  accessTtlSeconds: number;
  refreshTtlSeconds: number;
  limiter: LoginRateLimiter;
}

export interface TokenGrant {
  token: string;
  access_token: string;
  expires_in: number;
  issued_at: string;
  refresh_token?: string;
  scope?: string;
}

/** Why a token request is refused; the route maps it to a status. */
export class TokenRequestError extends Error {
  override readonly name = 'TokenRequestError';
  constructor(
    readonly kind: 'unauthorized' | 'invalid_request' | 'unsupported_grant_type' | 'too_many_requests',
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** A token response's body, and who got it (for the access log; never in the body). */
export interface TokenAnswer {
  body: TokenGrant;
  /** The user; undefined for an anonymous token. */
  subject?: string;
  /** How the client authenticated: basic, anonymous, password or refresh_token. */
  grant: string;
}

export interface TokenGetRequest {
  credentials?: { username: string; password: string };
  service?: string;
  scopes: string[];
  offlineToken: boolean;
  remoteAddress: string;
}

export interface TokenPostRequest {
  grantType?: string;
  username?: string;
  password?: string;
  refreshToken?: string;
  service?: string;
  scopes: string[];
  /** OAuth2 access_type=offline: also return a refresh token (docker login asks for one). */
  offline: boolean;
  remoteAddress: string;
}

export class TokenServer {
  constructor(private readonly options: TokenServerOptions) {}

  /** The public keys other services verify wharf's tokens with. */
  jwks(): { keys: JsonWebKey[] } {
    return this.options.key.jwks();
  }

  async get(request: TokenGetRequest): Promise<TokenAnswer> {
    this.checkService(request.service);
    const subject = request.credentials ? await this.login(request.credentials.username, request.credentials.password, request.remoteAddress) : undefined;
    const grant = await this.grant(subject, parseScopes(request.scopes));
    if (subject !== undefined && request.offlineToken) grant.refresh_token = await this.refreshTokenFor(subject);
    return { body: grant, subject, grant: subject === undefined ? 'anonymous' : 'basic' };
  }

  async post(request: TokenPostRequest): Promise<TokenAnswer> {
    this.checkService(request.service);
    let subject: string;
    let fromRefresh = false;
    if (request.grantType === 'password') {
      if (request.username === undefined || request.password === undefined) {
        throw new TokenRequestError('invalid_request', 'username and password are required for grant_type=password');
      }
      subject = await this.login(request.username, request.password, request.remoteAddress);
    } else if (request.grantType === 'refresh_token') {
      if (!request.refreshToken) throw new TokenRequestError('invalid_request', 'refresh_token is required for grant_type=refresh_token');
      subject = await this.subjectOfRefreshToken(request.refreshToken);
      fromRefresh = true;
    } else {
      throw new TokenRequestError('unsupported_grant_type', 'grant_type must be password or refresh_token');
    }
    const grant = await this.grant(subject, parseScopes(request.scopes));
    // A password grant always gets a refresh token when asked for one (docker login's
    // identity token); a refresh grant hands back the same token, not a rotated one.
    if (fromRefresh) grant.refresh_token = request.refreshToken;
    else if (request.offline) grant.refresh_token = await this.refreshTokenFor(subject);
    grant.scope = request.scopes.join(' ');
    return { body: grant, subject, grant: request.grantType! };
  }

  private checkService(service: string | undefined): void {
    if (service !== undefined && service !== this.options.service) {
      throw new TokenRequestError('invalid_request', `this token server issues tokens for service ${this.options.service}`);
    }
  }

  /** Checks a password (rate limited per user and address); resolves to the user name. */
  private async login(username: string, password: string, address: string): Promise<string> {
    const gate = this.options.limiter.check(username, address);
    if (!gate.allowed) throw new TokenRequestError('too_many_requests', 'too many failed logins; try again later', gate.retryAfterSeconds);
    if (!(await this.options.users.verify(username, password))) {
      // The same wrong password retried (a client's own retries) counts once.
      const attempt = createHash('sha256').update(`${username}\n${password}`).digest('base64');
      this.options.limiter.failed(username, address, attempt);
      throw new TokenRequestError('unauthorized', 'invalid username or password');
    }
    this.options.limiter.succeeded(username, address);
    return username;
  }

  private async subjectOfRefreshToken(token: string): Promise<string> {
    let subject: string;
    try {
      subject = await verifyRefreshToken(this.options.key, token, { issuer: this.options.issuer, service: this.options.service });
    } catch {
      throw new TokenRequestError('unauthorized', 'the refresh token is invalid or expired');
    }
    // A user removed from the htpasswd file loses access at the next refresh.
    if (!(await this.options.users.has(subject))) throw new TokenRequestError('unauthorized', 'the refresh token is invalid or expired');
    return subject;
  }

  private async refreshTokenFor(subject: string): Promise<string> {
    const { key, issuer, service, refreshTtlSeconds } = this.options;
    return (await issueRefreshToken(key, { issuer, service, subject, ttlSeconds: refreshTtlSeconds })).token;
  }

  private async grant(subject: string | undefined, requested: Access[]): Promise<TokenGrant> {
    const { key, issuer, service, policy, accessTtlSeconds } = this.options;
    const access = grantAccess(policy, subject, requested);
    const issued = await issueAccessToken(key, { issuer, service, subject: subject ?? '', access, ttlSeconds: accessTtlSeconds });
    return { token: issued.token, access_token: issued.token, expires_in: issued.expiresIn, issued_at: issued.issuedAt };
  }
}
