// A StorageDriver wrapped for the registry: every call's path is checked against the path
// grammar before any driver sees it, every call is timed for metrics, and the backend's
// availability is tracked so that a change (S3 down, S3 back) is reported once, not on
// every failing request. Drivers stay small: they implement storage/driver.ts and nothing else.
import type { Readable } from 'node:stream';
import { checkPath, StorageUnavailableError, type FileInfo, type FileWriter, type StorageDriver } from './driver.js';

export interface DriverObserver {
  /** One driver call ended: its method, seconds taken, and the error if it failed. */
  operation?(method: string, seconds: number, error?: unknown): void;
  /** The backend failed as unavailable after working, or answered again after failing. */
  availability?(available: boolean, error?: StorageUnavailableError): void;
}

export class ObservedDriver implements StorageDriver {
  readonly name: string;
  readonly readableWhileWriting?: boolean;
  private available = true;

  constructor(
    readonly inner: StorageDriver,
    private readonly observer: DriverObserver = {},
  ) {
    this.name = inner.name;
    this.readableWhileWriting = inner.readableWhileWriting;
    if (inner.redirectUrl) this.redirectUrl = (path, options) => this.run('redirectUrl', path, () => inner.redirectUrl!(path, options));
    if (inner.abortUnfinishedWrites) {
      this.abortUnfinishedWrites = (path, startedBefore) => this.run('abortUnfinishedWrites', path, () => inner.abortUnfinishedWrites!(path, startedBefore));
    }
  }

  redirectUrl?: StorageDriver['redirectUrl'];
  abortUnfinishedWrites?: StorageDriver['abortUnfinishedWrites'];

  private async run<T>(method: string, path: string, call: () => Promise<T>): Promise<T> {
    checkPath(path);
    const started = performance.now();
    try {
      const result = await call();
      this.succeeded();
      this.observer.operation?.(method, (performance.now() - started) / 1000);
      return result;
    } catch (err) {
      this.failed(err);
      this.observer.operation?.(method, (performance.now() - started) / 1000, err);
      throw err;
    }
  }

  private succeeded(): void {
    if (this.available) return;
    this.available = true;
    this.observer.availability?.(true);
  }

  private failed(err: unknown): void {
    if (!(err instanceof StorageUnavailableError)) {
      // A missing path is an answer: the backend works.
      this.succeeded();
      return;
    }
    if (!this.available) return;
    this.available = false;
    this.observer.availability?.(false, err);
  }

  /** Whether the last call reached a working backend. */
  get isAvailable(): boolean {
    return this.available;
  }

  stat(path: string): Promise<FileInfo> {
    return this.run('stat', path, () => this.inner.stat(path));
  }

  getContent(path: string): Promise<Buffer> {
    return this.run('getContent', path, () => this.inner.getContent(path));
  }

  putContent(path: string, content: Uint8Array, options?: { durable?: boolean }): Promise<void> {
    return this.run('putContent', path, () => this.inner.putContent(path, content, options));
  }

  reader(path: string, offset?: number, end?: number, signal?: AbortSignal): Promise<Readable> {
    return this.run('reader', path, () => this.inner.reader(path, offset, end, signal));
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    const writer = await this.run('writer', path, () => this.inner.writer(path, append));
    return {
      stream: writer.stream,
      commit: () => this.run('commit', path, () => writer.commit()),
      cancel: () => this.run('cancel', path, () => writer.cancel()),
    };
  }

  list(path: string): Promise<string[]> {
    return this.run('list', path, () => this.inner.list(path));
  }

  move(source: string, destination: string): Promise<void> {
    checkPath(destination);
    return this.run('move', source, () => this.inner.move(source, destination));
  }

  delete(path: string): Promise<void> {
    return this.run('delete', path, () => this.inner.delete(path));
  }
}
