// The fault suite's view of the store: walks Distribution's layout (storage/paths.ts)
// through wharf's own storage drivers (a directory, or an S3 bucket), without a running
// wharf, to check that what is stored is whole and consistent; snapshots it; runs CNCF
// Distribution's garbage collector over it; opens the storage a suite runs on (a temp dir or
// a throwaway Ceph RADOS Gateway); mounts small filesystems; and makes reproducible
// pseudo-random data.
import { execFile, execFileSync } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkPath, isPathNotFound, type StorageDriver } from '../../storage/driver.js';
import { FilesystemDriver } from '../../storage/filesystem-driver.js';
import type { S3Driver } from '../../storage/s3-driver.js';

export const V2 = 'docker/registry/v2';
export const DISTRIBUTION_BINARY = '/usr/bin/docker-registry';

// ---------------------------------------------------------------------------------------
// Reproducible randomness.

/** mulberry32: a small seeded PRNG; `next()` is uniform in [0, 1). */
export class Rng {
  private state: number;
  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** Pseudo-random bytes determined by this generator's next values. */
  bytes(size: number): Buffer {
    return seededBytes(`${this.int(0, 2 ** 31)}-${this.int(0, 2 ** 31)}`, size);
  }
}

/** `size` bytes determined by `seed` (AES-CTR keystream: fast for megabytes). */
export function seededBytes(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

export const seedFromEnv = (name: string, fallback: number): number => {
  const raw = process.env[name];
  return raw && /^\d+$/.test(raw) ? Number(raw) : fallback;
};

// ---------------------------------------------------------------------------------------
// Walking the store.

/** Every regular file below `dir`, as paths relative to it; `skip` prunes directories by name. */
export async function listFiles(dir: string, skip: (name: string) => boolean = () => false): Promise<string[]> {
  const found: string[] = [];
  const walk = async (relative: string): Promise<void> => {
    const list = await readdir(join(dir, relative), { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw err;
    });
    for (const entry of list) {
      const path = relative ? `${relative}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        if (!skip(entry.name)) await walk(path);
      } else {
        found.push(path);
      }
    }
  };
  await walk('');
  return found.sort();
}

export async function hashFile(path: string, algorithm = 'sha256'): Promise<string> {
  const hash = createHash(algorithm);
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const TEMP = '~tmp-';
const HEX: Record<string, RegExp> = { sha256: /^[a-f0-9]{64}$/, sha512: /^[a-f0-9]{128}$/ };
/** The layout's top as a driver path. */
const V2_PATH = `/${V2}`;

// ---------------------------------------------------------------------------------------
// The storage under test: a directory or an S3 bucket, read through wharf's own drivers
// (constructed here, never through a running wharf), so that both get the same checks.

export type StorageKind = 'filesystem' | 's3';

/** Where Distribution's tools find a store: a filesystem root, or the settings of its `storage.s3` section. */
export type DistributionStorage = string | { s3: Record<string, string | boolean> };

export interface FaultStorage {
  kind: StorageKind;
  /** A driver over the same storage wharf uses, for checks that bypass wharf. */
  driver: StorageDriver;
  /** REGISTRY_* variables that point wharf at this storage (spawnWharf's `storageEnv`). */
  env: Record<string, string>;
  /** The filesystem root; '' on S3. */
  root: string;
  /** The same store for Distribution's garbage collector. */
  distribution: DistributionStorage;
  /** Strings no answer may contain: where the data lives and how it is reached. */
  internals: string[];
  /**
   * Whether a write becomes visible all at once when it ends (S3: each append commits one
   * whole new object), rather than byte by byte as it arrives (a file).
   */
  atomicAppends: boolean;
  /** For messages: `filesystem <root>` or `s3 <endpoint>/<bucket><rootdirectory>`. */
  label: string;
  /** Stops what openFaultStorage started (the gateway, with the bucket's contents). Idempotent. */
  close(): Promise<void>;
}

/**
 * Storage for one fault-suite file. Filesystem: `<work>/data` (the caller removes `work`).
 * S3: a throwaway Ceph RADOS Gateway (test/support/s3.ts, ~4 s to start) and a fresh key
 * prefix; blob GETs are redirected to presigned URLs (Distribution's default on S3).
 */
export async function openFaultStorage(kind: StorageKind, work: string): Promise<FaultStorage> {
  if (kind === 'filesystem') {
    const root = join(work, 'data');
    return {
      kind,
      driver: new FilesystemDriver({ rootDirectory: root, fsync: false }),
      env: { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: root },
      root,
      distribution: root,
      internals: [work],
      atomicAppends: false,
      label: `filesystem ${root}`,
      close: async () => undefined,
    };
  }
  // Imported here: the filesystem-only fault tests need neither the SDK nor the gateway.
  const [{ startRgw, s3Env }, { S3Driver }] = await Promise.all([import('./s3.js'), import('../../storage/s3-driver.js')]);
  const rgw = await startRgw();
  const rootdirectory = `/fault-${randomBytes(4).toString('hex')}`;
  const driver = new S3Driver({
    region: rgw.region,
    regionendpoint: rgw.endpoint,
    forcepathstyle: true,
    bucket: rgw.bucket,
    accesskey: rgw.accessKey,
    secretkey: rgw.secretKey,
    rootdirectory,
    secure: false,
  });
  let closing: Promise<void> | undefined;
  return {
    kind,
    driver,
    env: s3Env(rgw, { rootdirectory, redirect: true }),
    root: '',
    distribution: {
      s3: {
        region: rgw.region,
        regionendpoint: rgw.endpoint,
        bucket: rgw.bucket,
        accesskey: rgw.accessKey,
        secretkey: rgw.secretKey,
        rootdirectory,
        forcepathstyle: true,
        secure: false,
        v4auth: true,
      },
    },
    internals: [new URL(rgw.endpoint).host, rootdirectory.slice(1), rgw.secretKey],
    atomicAppends: true,
    label: `s3 ${rgw.endpoint}/${rgw.bucket}${rootdirectory} (Ceph RGW, started in ${(rgw.startMs / 1000).toFixed(1)} s)`,
    close: () => {
      closing ??= (async () => {
        driver.destroy();
        await rgw.stop();
      })();
      return closing;
    },
  };
}

const asDriver = (store: string | StorageDriver): StorageDriver =>
  typeof store === 'string' ? new FilesystemDriver({ rootDirectory: store, fsync: false }) : store;

// ---------------------------------------------------------------------------------------
// Walking the store through a driver.

export interface StoredFile {
  /** The driver path (`/docker/registry/v2/...`). */
  path: string;
  size: number;
  /** S3: the object's ETag, which changes whenever the object is written with other bytes. */
  etag?: string;
  /** A name the driver's path grammar refuses (checkPath): reported, never read. */
  invalid?: boolean;
}

/**
 * Every file below the driver path `dir` ([] when there is none), unsorted. On S3, one listing
 * of the key prefix (1000 keys a request, where a walk costs requests per entry); on the
 * filesystem, the entries the driver's list() gives (`~tmp-` files hidden), typed by readdir
 * instead of a stat() each (a tenth of the time); any other driver: list() and stat().
 */
export async function walkStore(driver: StorageDriver, dir: string): Promise<StoredFile[]> {
  const files: StoredFile[] = [];
  const valid = (path: string): boolean => {
    try {
      checkPath(path);
      return true;
    } catch {
      return false;
    }
  };
  if (driver.name === 's3') {
    const s3 = driver as S3Driver;
    const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
    const rootPrefix = s3.s3Path('/');
    const prefix = dir === '/' ? rootPrefix : `${s3.s3Path(dir)}/`;
    let token: string | undefined;
    do {
      const page = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const object of page.Contents ?? []) {
        const path = `/${object.Key!.slice(rootPrefix.length)}`;
        files.push({ path, size: object.Size ?? 0, ...(object.ETag ? { etag: object.ETag } : {}), ...(valid(path) ? {} : { invalid: true }) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return files;
  }
  if (driver instanceof FilesystemDriver) {
    // The same entries list() gives (temp files hidden), typed by readdir: no stat per entry.
    const walkDisk = async (path: string): Promise<void> => {
      const entries = await readdir(join(driver.root, path), { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return [];
        throw err;
      });
      await Promise.all(
        entries.map(async (entry) => {
          if (entry.name.includes(TEMP)) return;
          const child = path === '/' ? `/${entry.name}` : `${path}/${entry.name}`;
          if (!valid(child)) files.push({ path: child, size: 0, invalid: true });
          else if (entry.isDirectory()) await walkDisk(child);
          else files.push({ path: child, size: (await stat(join(driver.root, child)).catch(() => undefined))?.size ?? 0 });
        }),
      );
    };
    await walkDisk(dir);
    return files;
  }
  const walk = async (path: string): Promise<void> => {
    let children: string[];
    try {
      children = await driver.list(path);
    } catch (err) {
      if (isPathNotFound(err)) return;
      throw err;
    }
    for (const child of children) {
      if (!valid(child)) {
        files.push({ path: child, size: 0, invalid: true });
        continue;
      }
      let info;
      try {
        info = await driver.stat(child);
      } catch (err) {
        if (isPathNotFound(err)) continue; // removed while we walked
        throw err;
      }
      if (info.isDir) await walk(child);
      else files.push({ path: child, size: info.size });
    }
  };
  await walk(dir);
  return files;
}

/** The hex digest of a stored file's bytes. */
export async function hashStored(driver: StorageDriver, path: string, algorithm = 'sha256'): Promise<string> {
  const hash = createHash(algorithm);
  for await (const chunk of await driver.reader(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Runs `fn` over `items`, at most `limit` at a time. */
export async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** Whether a driver path exists as a file: in `walked` (a walk's paths), or else in storage now. */
export async function storedFileExists(driver: StorageDriver, path: string, walked?: Set<string>): Promise<boolean> {
  if (walked?.has(path)) return true;
  try {
    return !(await driver.stat(path)).isDir;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

/** The driver path of a blob's data. */
export const blobDataPath = (digest: string): string => {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return `${V2_PATH}/blobs/${algorithm}/${hex.slice(0, 2)}/${hex}/data`;
};

/** Link contents by path and ETag, per driver: S3 checks read only links written since the last one. */
const linkCache = new WeakMap<StorageDriver, Map<string, { etag: string; content: string }>>();

export interface StoreCheck {
  /** Blob data files present. */
  blobs: number;
  /** Of them, hashed by this check (new since the last one). */
  hashed: number;
  links: number;
  /** Leftover temp files or directories (`~tmp-`, filesystem only): garbage, but invisible to readers. */
  temps: number;
  problems: string[];
}

/**
 * Checks the invariants a crash must never break: every blob data file holds exactly the
 * bytes of its digest (digests in `verified` were hashed before: content never changes),
 * every link holds a well-formed digest matching its path and pointing at a blob that
 * exists, and every tag points at a manifest revision of its repository. `store` is a
 * filesystem root or any driver (the S3 driver for a bucket); the same invariants hold for
 * both. Leftover `~tmp-` files are counted on the filesystem only (S3 writes leave none).
 */
export async function checkStore(store: string | StorageDriver, verified: Set<string> = new Set()): Promise<StoreCheck> {
  const driver = asDriver(store);
  const result: StoreCheck = { blobs: 0, hashed: 0, links: 0, temps: 0, problems: [] };
  const problems = new Set<string>(); // a misplaced directory holds several files: say it once
  const files = await walkStore(driver, V2_PATH);
  const walked = new Set(files.map((f) => f.path));
  const present = new Set<string>();
  const toHash: { digest: string; path: string; algorithm: string; hex: string }[] = [];
  const links: StoredFile[] = [];
  for (const file of files) {
    const relative = file.path.slice(V2_PATH.length + 1);
    const segments = relative.split('/');
    if (file.invalid) {
      if (!segments.includes('_uploads')) problems.add(`unexpected name ${JSON.stringify(relative.slice(0, 300))}`);
      continue;
    }
    if (segments[0] === 'blobs') {
      const [, algorithm = '', prefix = '', hex = '', name, ...rest] = segments;
      if (!HEX[algorithm]) {
        problems.add(`unknown blob algorithm directory ${algorithm}`);
      } else if (!HEX[algorithm]!.test(hex) || hex.slice(0, 2) !== prefix) {
        problems.add(`misplaced blob directory blobs/${algorithm}/${prefix}/${hex}`);
      } else if (name !== 'data' || rest.length > 0) {
        problems.add(`unexpected file ${relative}`);
      } else {
        const digest = `${algorithm}:${hex}`;
        result.blobs++;
        present.add(digest);
        if (!verified.has(digest)) toHash.push({ digest, path: file.path, algorithm, hex });
      }
    } else if (segments[0] === 'repositories' && !segments.includes('_uploads') && segments[segments.length - 1] === 'link') {
      links.push(file);
    }
  }
  await eachLimit(toHash, 8, async ({ digest, path, algorithm, hex }) => {
    const actual = await hashStored(driver, path, algorithm);
    result.hashed++;
    if (actual !== hex) problems.add(`blob ${digest} holds content hashing to ${actual}`);
    else verified.add(digest);
  });
  // A blob verified earlier that vanished is lost content.
  for (const digest of verified) if (!present.has(digest)) problems.add(`blob ${digest} disappeared`);

  const repositories = `${V2_PATH}/repositories`;
  const known = linkCache.get(driver) ?? new Map<string, { etag: string; content: string }>();
  linkCache.set(driver, known);
  await eachLimit(links, 16, async (link) => {
    result.links++;
    const file = link.path.slice(repositories.length + 1);
    const segments = file.split('/');
    // A link whose object is unchanged since the last check (same ETag) holds the same bytes.
    const cached = link.etag !== undefined ? known.get(link.path) : undefined;
    const content = cached !== undefined && cached.etag === link.etag ? cached.content : (await driver.getContent(link.path)).toString('utf8').trim();
    if (link.etag !== undefined) known.set(link.path, { etag: link.etag, content });
    const match = /^(sha256|sha512):([a-f0-9]+)$/.exec(content);
    if (!match || !HEX[match[1]!]!.test(match[2]!)) {
      problems.add(`link ${file} holds ${JSON.stringify(content.slice(0, 80))}`);
      return;
    }
    const [, algorithm, hex] = match;
    if (!(await storedFileExists(driver, blobDataPath(content), walked))) problems.add(`link ${file} points at missing blob ${content}`);
    // .../<alg>/<hex>/link must hold <alg>:<hex>; tags' current/link is the exception.
    const m = segments.indexOf('_manifests');
    const current = m > 0 && segments[m + 1] === 'tags' && segments[m + 3] === 'current' && segments.length === m + 5;
    if (current) {
      const repo = segments.slice(0, m).join('/');
      if (!(await storedFileExists(driver, `${repositories}/${repo}/_manifests/revisions/${algorithm}/${hex}/link`, walked))) {
        problems.add(`tag ${file} points at ${content}, not a revision of ${repo}`);
      }
    } else if (segments[segments.length - 3] !== algorithm || segments[segments.length - 2] !== hex) {
      problems.add(`link ${file} holds ${content}, which is not its path`);
    }
  });
  if (driver instanceof FilesystemDriver) result.temps = await countTemps(join(driver.root, V2));
  result.problems = [...problems];
  return result;
}

/**
 * Filesystem only: `~tmp-` entries below the layout (upload sessions excluded), which the
 * driver's list() hides. A temp directory counts once.
 */
async function countTemps(dir: string): Promise<number> {
  let temps = 0;
  const walk = async (path: string): Promise<void> => {
    const list = await readdir(path, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return [];
      throw err;
    });
    for (const entry of list) {
      if (entry.name.includes(TEMP)) temps++;
      else if (entry.isDirectory() && entry.name !== '_uploads') await walk(join(path, entry.name));
    }
  };
  await walk(dir);
  return temps;
}

/**
 * sha256 of every stored file (upload sessions excluded), by path relative to the store's
 * root (`docker/registry/v2/...`). `store` is a filesystem root or any driver.
 */
export async function snapshotStore(store: string | StorageDriver): Promise<Map<string, string>> {
  const driver = asDriver(store);
  const snapshot = new Map<string, string>();
  const files = (await walkStore(driver, '/')).filter((f) => !f.path.split('/').includes('_uploads'));
  await eachLimit(files, 8, async (file) => {
    snapshot.set(file.path.slice(1), file.invalid ? 'invalid name' : await hashStored(driver, file.path));
  });
  return new Map([...snapshot].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Human-readable differences between two snapshots (empty when equal). */
export function diffSnapshots(before: Map<string, string>, after: Map<string, string>): string[] {
  const changes: string[] = [];
  for (const [path, hash] of before) {
    if (!after.has(path)) changes.push(`removed ${path}`);
    else if (after.get(path) !== hash) changes.push(`changed ${path}`);
  }
  for (const path of after.keys()) if (!before.has(path)) changes.push(`added ${path}`);
  return changes;
}

// ---------------------------------------------------------------------------------------
// CNCF Distribution's garbage collector as an independent consistency check.

export const haveDistribution = (): boolean => existsSync(DISTRIBUTION_BINARY);

/** The `storage` section of a Distribution config.yml for `store` (delete enabled). */
function distributionStorageYaml(store: DistributionStorage): string {
  const section =
    typeof store === 'string'
      ? `  filesystem:\n    rootdirectory: ${JSON.stringify(store)}\n`
      : `  s3:\n${Object.entries(store.s3).map(([key, value]) => `    ${key}: ${JSON.stringify(value)}\n`).join('')}`;
  return `storage:\n${section}  delete:\n    enabled: true\n`;
}

/**
 * `docker-registry garbage-collect --dry-run` over `store` (a filesystem root, or a bucket's
 * `storage.s3` settings); it exits non-zero on an inconsistent store. Its environment has no
 * REGISTRY_* variables (they would override the file) and no AWS_* ones (the Go SDK of its s3
 * driver panics on an AWS_CA_BUNDLE some machines set).
 */
export async function garbageCollectDryRun(store: DistributionStorage, workDir: string): Promise<{ code: number; output: string }> {
  const config = join(workDir, 'gc-config.yml');
  await writeFile(config, `version: 0.1\nlog:\n  level: error\n${distributionStorageYaml(store)}`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('AWS_')));
  return new Promise((resolve) => {
    execFile(
      DISTRIBUTION_BINARY,
      ['garbage-collect', '--dry-run', config],
      { timeout: 120_000, maxBuffer: 64 << 20, env },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
        resolve({ code, output: `${stdout}${stderr}` });
      },
    );
  });
}

// ---------------------------------------------------------------------------------------
// Small filesystems.

export const isRoot = (): boolean => process.getuid?.() === 0;

export function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
}

export async function unmount(dir: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' });
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
}

/** Free bytes of the filesystem holding `path`. */
export async function freeBytes(path: string): Promise<number> {
  const { statfs } = await import('node:fs/promises');
  const s = await statfs(path);
  return s.bavail * s.bsize;
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
