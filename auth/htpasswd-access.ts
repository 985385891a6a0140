// Distribution's htpasswd method: Basic credentials checked against a bcrypt htpasswd file;
// any user it holds may do everything (as in Distribution; per-repository rules need tokens).
//
// bcrypt is slow on purpose, and clients send the credentials on every request of a push,
// so a successful check is remembered for a few seconds, keyed by a hash of the header
// (never the password itself). A changed file takes effect within that time.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Access, AccessController, AccessDecision, AccessRequest } from './access.js';
import { basicChallenge, parseBasic } from './challenge.js';
import type { HtpasswdFile } from './htpasswd.js';
import type { LoginRateLimiter } from './rate-limit.js';

const VERIFIED_TTL_MS = 10_000;

export class HtpasswdAccessController implements AccessController {
  private readonly verified = new LRUCache<string, string>({ max: 10_000, ttl: VERIFIED_TTL_MS });

  constructor(
    private readonly users: HtpasswdFile,
    private readonly realm: string,
    private readonly limiter: LoginRateLimiter,
  ) {}

  async authorize(request: AccessRequest, _access: Access[]): Promise<AccessDecision> {
    const challenge = basicChallenge(this.realm);
    const credentials = parseBasic(request.authorization);
    if (!credentials) return { allowed: false, reason: 'UNAUTHORIZED', message: 'authentication required', challenge };
    const key = createHash('sha256').update(request.authorization!).digest('base64');
    const known = this.verified.get(key);
    if (known !== undefined) return { allowed: true, subject: known };
    const address = request.remoteAddress ?? '';
    const gate = this.limiter.check(credentials.username, address);
    if (!gate.allowed) {
      return { allowed: false, reason: 'TOOMANYREQUESTS', message: 'too many failed logins; try again later', retryAfterSeconds: gate.retryAfterSeconds };
    }
    if (!(await this.users.verify(credentials.username, credentials.password))) {
      this.limiter.failed(credentials.username, address, key);
      return { allowed: false, reason: 'UNAUTHORIZED', message: 'invalid username or password', challenge };
    }
    this.limiter.succeeded(credentials.username, address);
    this.verified.set(key, credentials.username);
    return { allowed: true, subject: credentials.username };
  }
}
