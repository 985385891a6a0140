// A circuit breaker for one upstream URL. After a failure the URL is "down": callers fail fast
// without touching the network until a backoff passes (1 s, doubling to 30 s); then exactly one
// probe goes through, and its success brings the URL back up. Only state changes are reported,
// so a dead upstream under load costs one log line, not one per request.

export type BreakerState = 'up' | 'down';

/** What tryAcquire granted: an ordinary call (URL up) or the one probe of a down URL. */
export type BreakerPermit = 'call' | 'probe';

export interface BreakerOptions {
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Called on every change of state (never on repeated failures while down). */
  onStateChange?: (state: BreakerState, reason: string) => void;
  /** Clock in ms; injectable for tests. */
  now?: () => number;
}

export interface BreakerSnapshot {
  state: BreakerState;
  /** Failures since the URL was last up. */
  consecutiveFailures: number;
  /** When down: epoch ms at which the next probe may go. */
  retryAt?: number;
  /** When down: why it went down (or why the last probe failed). */
  reason?: string;
}

export class CircuitBreaker {
  private state: BreakerState = 'up';
  private backoffMs = 0;
  private retryAt = 0;
  private probeInFlight = false;
  private consecutiveFailures = 0;
  private reason: string | undefined;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly now: () => number;

  constructor(private readonly options: BreakerOptions = {}) {
    this.initialBackoffMs = options.initialBackoffMs ?? 1000;
    this.maxBackoffMs = options.maxBackoffMs ?? 30_000;
    this.now = options.now ?? Date.now;
  }

  /**
   * Whether a call may go to the network now: undefined while down, except once per backoff
   * period (the probe). The caller reports the outcome with the permit: succeeded(), failed()
   * or released().
   */
  tryAcquire(): BreakerPermit | undefined {
    if (this.state === 'up') return 'call';
    if (this.probeInFlight || this.now() < this.retryAt) return undefined;
    this.probeInFlight = true;
    return 'probe';
  }

  /** Milliseconds until the next probe may go (0 when up). */
  retryInMs(): number {
    return this.state === 'up' ? 0 : Math.max(0, this.retryAt - this.now());
  }

  /** The URL answered (any answer that is not an unavailability counts). */
  succeeded(permit: BreakerPermit): void {
    if (permit === 'probe') this.probeInFlight = false;
    this.consecutiveFailures = 0;
    if (this.state === 'up') return;
    this.state = 'up';
    this.backoffMs = 0;
    this.reason = undefined;
    this.options.onStateChange?.('up', 'upstream answered');
  }

  /** The URL failed (refused, timed out, 5xx, 429). */
  failed(permit: BreakerPermit, reason: string): void {
    // Calls let through while the URL was up may fail after it went down; only the first
    // failure and failed probes move the backoff, or a burst of 10 would jump it to 30 s.
    if (this.state === 'down' && permit === 'call') return;
    if (permit === 'probe') this.probeInFlight = false;
    this.consecutiveFailures++;
    this.reason = reason;
    this.backoffMs = this.backoffMs === 0 ? this.initialBackoffMs : Math.min(this.backoffMs * 2, this.maxBackoffMs);
    this.retryAt = this.now() + this.backoffMs;
    if (this.state === 'down') return;
    this.state = 'down';
    this.options.onStateChange?.('down', reason);
  }

  /** The call ended without a verdict (the caller aborted it): free the probe slot. */
  released(permit: BreakerPermit): void {
    if (permit === 'probe') this.probeInFlight = false;
  }

  snapshot(): BreakerSnapshot {
    if (this.state === 'up') return { state: 'up', consecutiveFailures: this.consecutiveFailures };
    return { state: 'down', consecutiveFailures: this.consecutiveFailures, retryAt: this.retryAt, reason: this.reason };
  }
}
