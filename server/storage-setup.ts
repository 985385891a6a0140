// The storage driver a configuration names, built by name and wrapped for the registry
// (path checks, timing, one log line per availability change). `serve`, `garbage-collect`
// and `mirror warm` all get their driver here, so each works on every driver.
import { mkdir } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { StorageDriver } from '../storage/driver.js';
import { FilesystemDriver } from '../storage/filesystem-driver.js';
import { ObservedDriver, type DriverObserver } from '../storage/observed-driver.js';
// Imported eagerly on purpose, although a filesystem registry never uses it (~33 MB of RSS at
// start). Loaded only for storage: s3, a filesystem wharf that had taken pushes grew by ~90 MB
// during manifest GET load and answered 25-40 % fewer requests than a fresh one (npm run bench,
// full mode: peak RSS 204-214 MB against 131-136 MB; preloading the SDK alone restored both).
// The cause (perhaps how V8 sizes a smaller heap) is not found yet.
import { S3Driver } from '../storage/s3-driver.js';
import { ConfigError } from './config-keys.js';
import type { StorageDriverConfig } from './config-storage.js';

type Factory<D extends StorageDriverConfig['driver']> = (config: Extract<StorageDriverConfig, { driver: D }>) => Promise<StorageDriver>;

const FACTORIES: { [D in StorageDriverConfig['driver']]: Factory<D> } = {
  filesystem: async ({ filesystem }) => {
    await mkdir(filesystem.rootdirectory, { recursive: true });
    return new FilesystemDriver({ rootDirectory: filesystem.rootdirectory, fsync: filesystem.fsync });
  },
  s3: async ({ s3 }) => {
    try {
      return new S3Driver(s3);
    } catch (err) {
      // The driver checks its sizes and pairs itself; its messages start with `s3: `.
      throw new ConfigError(`storage.${(err as Error).message}`);
    }
  },
};

/** Where the driver stores, for log lines and command output (never credentials). */
export function describeStorage(config: StorageDriverConfig): string {
  if (config.driver === 'filesystem') return config.filesystem.rootdirectory;
  const root = (config.s3.rootdirectory ?? '').replace(/^\/+|\/+$/g, '');
  return `s3://${config.s3.bucket}/${root}${config.s3.regionendpoint ? ` at ${config.s3.regionendpoint}` : ''}`;
}

export interface StorageSetupOptions {
  logger?: Logger;
  /** Also told of every operation (metrics). */
  observer?: DriverObserver;
}

/** The configured driver, wrapped. */
export async function createStorageDriver(config: StorageDriverConfig, options: StorageSetupOptions = {}): Promise<ObservedDriver> {
  const inner = await (FACTORIES[config.driver] as Factory<StorageDriverConfig['driver']>)(config);
  const { logger, observer } = options;
  return new ObservedDriver(inner, {
    operation: observer?.operation,
    availability(available, error) {
      if (available) logger?.info({ storage: inner.name }, 'storage available again');
      else logger?.error({ storage: inner.name, err: error }, 'storage unavailable: requests that need it answer 503 until it is back');
      observer?.availability?.(available, error);
    },
  });
}
