// Health of the registry's dependencies, for /debug/health and /readyz on the debug address.
//
// The one check is Distribution's storage driver check: a stat of the storage root through
// the driver. A missing root is healthy (Distribution's rule: the driver creates paths on
// write); a root that is not a directory, or any other failure, is not; a stat that takes
// longer than the timeout counts as a failure. With health.storagedriver.enabled the check
// runs every `interval` and storage is reported unhealthy after `threshold` failures in a
// row (Distribution's threshold checker); one success makes it healthy again.
import type { StorageDriver } from '../storage/driver.js';
import { isPathNotFound } from '../storage/driver.js';

/** Distribution's name for the check: storagedriver_<driver>. */
export function storageCheckName(driver: StorageDriver): string {
  return `storagedriver_${driver.name}`;
}

/** Stats the storage root; resolves to undefined when healthy, else to the failure's text. */
export async function checkStorage(driver: StorageDriver, timeoutMs: number): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`storage did not answer within ${timeoutMs} ms`), timeoutMs);
    timer.unref();
  });
  const stat = driver.stat('/').then(
    (info) => (info.isDir ? undefined : 'the storage root is not a directory'),
    (err: unknown) => {
      if (!isPathNotFound(err)) return `storage error: ${errorText(err)}`;
      // Missing is fine (Distribution's rule), but not a file where a directory should be.
      return (err.cause as { code?: unknown } | undefined)?.code === 'ENOTDIR' ? 'the storage root is not a directory' : undefined;
    },
  );
  try {
    return await Promise.race([stat, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function errorText(err: unknown): string {
  const { code, message } = err as { code?: unknown; message?: unknown };
  return typeof code === 'string' ? code : typeof message === 'string' ? message : String(err);
}

export interface StorageHealthOptions {
  /** Between checks, ms. */
  interval: number;
  /** Consecutive failures before storage is reported unhealthy (at least 1). */
  threshold: number;
  /** A check that takes longer fails; default min(interval, 5 s). */
  timeoutMs?: number;
}

/** The periodic storage check with Distribution's threshold semantics. */
export class StorageHealth {
  readonly name: string;
  private consecutiveFailures = 0;
  private lastError: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly threshold: number;
  private readonly timeoutMs: number;
  private stopped = false;

  constructor(
    private readonly driver: StorageDriver,
    private readonly options: StorageHealthOptions,
  ) {
    this.name = storageCheckName(driver);
    this.threshold = Math.max(1, Math.floor(options.threshold));
    this.timeoutMs = options.timeoutMs ?? Math.min(options.interval, 5_000);
  }

  /** Checks now, then every interval. */
  start(): void {
    const tick = (): void => {
      void this.check().finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, this.options.interval).unref();
      });
    };
    tick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /** Runs one check (joins one under way). */
  check(): Promise<void> {
    this.running ??= checkStorage(this.driver, this.timeoutMs)
      .then((error) => {
        if (error === undefined) {
          this.consecutiveFailures = 0;
          this.lastError = undefined;
        } else {
          this.consecutiveFailures++;
          this.lastError = error;
        }
      })
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  get healthy(): boolean {
    return this.consecutiveFailures < this.threshold;
  }

  get failures(): number {
    return this.consecutiveFailures;
  }

  /** Failing checks by name, Distribution's /debug/health body; empty when healthy. */
  status(): Record<string, string> {
    return this.healthy ? {} : { [this.name]: this.lastError ?? 'failing' };
  }
}
