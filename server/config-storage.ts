// The storage section: which driver, and its settings. Distribution's keys:
//
//   storage:
//     filesystem: { rootdirectory: /var/lib/registry }     # the default driver
//   or
//     s3: { region, bucket, regionendpoint, accesskey, secretkey, rootdirectory, ... }
//     redirect: { disable: false }                         # s3: blob GETs go to presigned URLs
//
// Exactly one driver. `storage: s3` (or REGISTRY_STORAGE=s3) selects S3 with no settings,
// which stops start-up for the missing bucket: a configuration that names S3 must never
// write to a local disk instead.
import { resolve } from 'node:path';
import type { S3DriverOptions } from '../storage/s3-driver.js';
import { ConfigError } from './config-keys.js';

export type StorageDriverConfig =
  /** fsync is a wharf extension: flush data before renames make it visible (default true). */
  | { driver: 'filesystem'; filesystem: { rootdirectory: string; fsync: boolean }; s3?: undefined }
  | { driver: 's3'; s3: S3DriverOptions; filesystem?: undefined };

/** Settings of storage.s3 that wharf serves, by how their values are read. */
const S3_STRINGS = ['accesskey', 'secretkey', 'sessiontoken', 'region', 'regionendpoint', 'bucket', 'rootdirectory', 'storageclass', 'keyid'] as const;
const S3_BOOLS = ['forcepathstyle', 'secure', 'skipverify', 'v4auth', 'encrypt'] as const;
const S3_SIZES = ['chunksize', 'multipartcopychunksize', 'multipartcopymaxconcurrency', 'multipartcopythresholdsize'] as const;
/** Distribution's settings that change nothing wharf stores or serves. */
const S3_IGNORED: Record<string, string> = {
  useragent: 'wharf sends the AWS SDK user agent',
  loglevel: 'S3 calls are logged through wharf log.level',
};
/** Settings whose other values wharf cannot honour (the first value listed is harmless). */
const S3_ONLY: Record<string, { harmless: unknown[]; feature: string }> = {
  objectacl: { harmless: ['private'], feature: 'object ACLs other than private' },
  accelerate: { harmless: [false, 'false'], feature: 'S3 transfer acceleration' },
  usedualstack: { harmless: [false, 'false'], feature: 'dual-stack S3 endpoints' },
};

export interface IgnoredSetting {
  key: string;
  reason: string;
}

/**
 * The storage driver from the served values (`storage.filesystem.*` keys, the `storage.s3`
 * map). Ignored S3 settings are appended to `ignored`.
 */
export function buildStorageDriverConfig(
  values: Map<string, unknown>,
  read: { str(key: string, fallback: string): string; bool(key: string, fallback: boolean): boolean },
  ignored: IgnoredSetting[],
): StorageDriverConfig {
  const filesystemKeys = [...values.keys()].filter((k) => k.startsWith('storage.filesystem.'));
  if (!values.has('storage.s3')) {
    return {
      driver: 'filesystem',
      filesystem: {
        rootdirectory: resolve(read.str('storage.filesystem.rootdirectory', './data')),
        fsync: read.bool('storage.filesystem.fsync', true),
      },
    };
  }
  if (filesystemKeys.length > 0) {
    throw new ConfigError(`storage: both filesystem (${filesystemKeys.join(', ')}) and s3 are configured; configure one storage driver`);
  }
  return { driver: 's3', s3: s3Options(values.get('storage.s3'), ignored) };
}

function s3Options(value: unknown, ignored: IgnoredSetting[]): S3DriverOptions {
  const settings = value ?? {};
  if (typeof settings !== 'object' || Array.isArray(settings)) throw new ConfigError('storage.s3: expected a map of settings');
  const s = settings as Record<string, unknown>;
  const known = new Set<string>([...S3_STRINGS, ...S3_BOOLS, ...S3_SIZES, ...Object.keys(S3_IGNORED), ...Object.keys(S3_ONLY)]);
  for (const name of Object.keys(s)) {
    if (!known.has(name)) {
      throw new ConfigError(`storage.s3.${name}: unknown setting, not supported by this version of wharf (expected ${[...known].sort().join(', ')})`);
    }
  }
  for (const [name, reason] of Object.entries(S3_IGNORED)) if (isSet(s[name])) ignored.push({ key: `storage.s3.${name}`, reason });
  for (const [name, { harmless, feature }] of Object.entries(S3_ONLY)) {
    if (!isSet(s[name])) continue;
    if (!harmless.includes(s[name])) throw new ConfigError(`storage.s3.${name}: ${feature} are not supported by this version of wharf; remove the setting`);
  }

  const str = (name: string): string | undefined => {
    const v = s[name];
    if (!isSet(v)) return undefined;
    if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`storage.s3.${name}: expected a string`);
    return String(v);
  };
  const bool = (name: string): boolean | undefined => {
    const v = s[name];
    if (!isSet(v)) return undefined;
    if (typeof v === 'boolean') return v;
    if (typeof v === 'string' && /^(true|false)$/i.test(v.trim())) return v.trim().toLowerCase() === 'true';
    throw new ConfigError(`storage.s3.${name}: expected true or false, got ${JSON.stringify(v)}`);
  };
  const size = (name: string): number | undefined => {
    const v = s[name];
    if (!isSet(v)) return undefined;
    const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n) || n < 0) throw new ConfigError(`storage.s3.${name}: expected a whole number, got ${JSON.stringify(v)}`);
    return n;
  };

  const bucket = str('bucket');
  if (!bucket) throw new ConfigError('storage.s3.bucket: required (the bucket wharf stores everything in)');
  const region = str('region');
  if (!region) throw new ConfigError('storage.s3.region: required (for an S3-compatible server any name it accepts, often us-east-1)');
  const accesskey = str('accesskey');
  const secretkey = str('secretkey');
  if ((accesskey === undefined) !== (secretkey === undefined)) {
    throw new ConfigError('storage.s3: accesskey and secretkey go together (or set neither, for the AWS default credential chain)');
  }
  if (bool('v4auth') === false) {
    throw new ConfigError('storage.s3.v4auth: signature version 2 is not supported by this version of wharf; remove the setting (V4 is used)');
  }
  const options: S3DriverOptions = {
    accesskey,
    secretkey,
    sessiontoken: str('sessiontoken'),
    region,
    regionendpoint: str('regionendpoint'),
    forcepathstyle: bool('forcepathstyle'),
    bucket,
    rootdirectory: str('rootdirectory'),
    secure: bool('secure'),
    skipverify: bool('skipverify'),
    chunksize: size('chunksize'),
    multipartcopychunksize: size('multipartcopychunksize'),
    multipartcopymaxconcurrency: size('multipartcopymaxconcurrency'),
    multipartcopythresholdsize: size('multipartcopythresholdsize'),
    storageclass: str('storageclass'),
    encrypt: bool('encrypt'),
    keyid: str('keyid'),
  };
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as unknown as S3DriverOptions;
}

function isSet(value: unknown): boolean {
  return value !== undefined && value !== null && value !== '';
}
