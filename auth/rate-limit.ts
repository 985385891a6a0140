// Slows password guessing at the login (token) endpoint: after too many failed logins in a
// window, further attempts for that user name, or from that address, are refused for a while.
// Counted separately so that neither spraying one password over many names from one address nor
// guessing one name from many addresses gets far. Memory is bounded: the oldest records go first.
import { LRUCache } from 'lru-cache';

export interface LoginRateLimiterOptions {
  /** Failures per user name within `windowMs` that lock it. Default 5. */
  maxFailures?: number;
  /**
   * Failures per client address within `windowMs` that lock it. Default 4 × maxFailures: several
   * people behind one NAT mistyping must not lock each other out as fast as one name is locked.
   */
  maxFailuresPerAddress?: number;
  /** Default 60 s. */
  windowMs?: number;
  /** How long a lock lasts, from the failure that set it. Default 60 s. */
  lockMs?: number;
  /** Records kept per kind (names, addresses). Default 10 000. */
  maxEntries?: number;
  /** Clock, for tests. */
  now?: () => number;
}

export interface RateLimitDecision {
  allowed: boolean;
  /** When refused: seconds until an attempt may succeed (for Retry-After). */
  retryAfterSeconds?: number;
}

interface FailureRecord {
  windowStart: number;
  failures: number;
  lockedUntil: number;
}

class FailureCounter {
  private readonly records: LRUCache<string, FailureRecord>;

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
    private readonly lockMs: number,
    maxEntries: number,
  ) {
    this.records = new LRUCache({ max: maxEntries });
  }

  /** Milliseconds the key stays locked; 0 when not locked. */
  lockedFor(key: string, now: number): number {
    const record = this.records.peek(key); // a refused attempt does not make the record younger
    return record !== undefined && record.lockedUntil > now ? record.lockedUntil - now : 0;
  }

  failed(key: string, now: number): void {
    let record = this.records.get(key);
    if (record === undefined || now - record.windowStart >= this.windowMs) {
      record = { windowStart: now, failures: 0, lockedUntil: 0 };
      this.records.set(key, record);
    }
    record.failures += 1;
    if (record.failures >= this.maxFailures) {
      record.lockedUntil = now + this.lockMs;
      // After the lock a fresh window starts: one more failure does not lock again at once.
      record.windowStart = record.lockedUntil;
      record.failures = 0;
    }
  }

  clear(key: string): void {
    this.records.delete(key);
  }
}

export class LoginRateLimiter {
  private readonly users: FailureCounter;
  private readonly addresses: FailureCounter;
  private readonly now: () => number;
  /**
   * Attempts (a hash of name and password) that already failed in this window. Clients retry a
   * refused password several times within one operation (containerd sends it five times per
   * pull): a repeat is not a new guess, and counting it would lock a user out for one typo.
   */
  private readonly seenAttempts: LRUCache<string, true>;

  constructor(options: LoginRateLimiterOptions = {}) {
    const maxFailures = positive(options.maxFailures ?? 5, 'maxFailures');
    const maxPerAddress = positive(options.maxFailuresPerAddress ?? 4 * maxFailures, 'maxFailuresPerAddress');
    const windowMs = positive(options.windowMs ?? 60_000, 'windowMs');
    const lockMs = positive(options.lockMs ?? 60_000, 'lockMs');
    const maxEntries = positive(options.maxEntries ?? 10_000, 'maxEntries');
    this.users = new FailureCounter(maxFailures, windowMs, lockMs, maxEntries);
    this.addresses = new FailureCounter(maxPerAddress, windowMs, lockMs, maxEntries);
    this.now = options.now ?? Date.now;
    this.seenAttempts = new LRUCache({ max: maxEntries, ttl: windowMs, perf: { now: () => this.now() } });
  }

  /** Whether a login attempt for `username` from `ip` may be checked at all. */
  check(username: string, ip: string): RateLimitDecision {
    const now = this.now();
    const wait = Math.max(this.users.lockedFor(username, now), this.addresses.lockedFor(ip, now));
    return wait > 0 ? { allowed: false, retryAfterSeconds: Math.ceil(wait / 1000) } : { allowed: true };
  }

  /** Counts a failed login; `attempt` (a hash of the credentials tried) counts once per window. */
  failed(username: string, ip: string, attempt?: string): void {
    if (attempt !== undefined) {
      if (this.seenAttempts.has(attempt)) return;
      this.seenAttempts.set(attempt, true);
    }
    const now = this.now();
    this.users.failed(username, now);
    this.addresses.failed(ip, now);
  }

  /**
   * Clears the user name's failures. The address keeps its count: otherwise one valid account
   * would let an address reset its counter between guesses at other names.
   */
  succeeded(username: string, _ip: string): void {
    this.users.clear(username);
  }
}

function positive(value: number, what: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`LoginRateLimiter: ${what} must be a positive number`);
  return value;
}
