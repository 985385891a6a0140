// The fault suite's view of the storage root: walks Distribution's on-disk layout
// (storage/paths.ts) directly, without wharf, to check that what is stored is whole and
// consistent; snapshots it; runs CNCF Distribution's garbage collector over it; mounts
// small filesystems; and makes reproducible pseudo-random data.
import { execFile, execFileSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

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

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

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

export interface StoreCheck {
  /** Blob data files present. */
  blobs: number;
  /** Of them, hashed by this check (new since the last one). */
  hashed: number;
  links: number;
  /** Leftover temp files or directories (`~tmp-`): garbage, but invisible to readers. */
  temps: number;
  problems: string[];
}

/**
 * Checks the invariants a crash must never break: every blob data file holds exactly the
 * bytes of its digest (files in `verified` were hashed before: content never changes),
 * every link file holds a well-formed digest matching its path and pointing at a blob that
 * exists, and every tag points at a manifest revision of its repository.
 */
export async function checkStore(root: string, verified: Set<string> = new Set()): Promise<StoreCheck> {
  const result: StoreCheck = { blobs: 0, hashed: 0, links: 0, temps: 0, problems: [] };
  const v2 = join(root, V2);
  const present = new Set<string>();
  for (const algorithm of await entries(join(v2, 'blobs'))) {
    if (!HEX[algorithm]) {
      result.problems.push(`unknown blob algorithm directory ${algorithm}`);
      continue;
    }
    for (const prefix of await entries(join(v2, 'blobs', algorithm))) {
      for (const hex of await entries(join(v2, 'blobs', algorithm, prefix))) {
        if (hex.includes(TEMP)) {
          result.temps++;
          continue;
        }
        if (!HEX[algorithm]!.test(hex) || hex.slice(0, 2) !== prefix) {
          result.problems.push(`misplaced blob directory blobs/${algorithm}/${prefix}/${hex}`);
          continue;
        }
        for (const name of await entries(join(v2, 'blobs', algorithm, prefix, hex))) {
          if (name.includes(TEMP)) {
            result.temps++;
            continue;
          }
          if (name !== 'data') {
            result.problems.push(`unexpected file blobs/${algorithm}/${prefix}/${hex}/${name}`);
            continue;
          }
          const digest = `${algorithm}:${hex}`;
          result.blobs++;
          present.add(digest);
          if (verified.has(digest)) continue;
          const actual = await hashFile(join(v2, 'blobs', algorithm, prefix, hex, 'data'), algorithm);
          result.hashed++;
          if (actual !== hex) result.problems.push(`blob ${digest} holds content hashing to ${actual}`);
          else verified.add(digest);
        }
      }
    }
  }
  // A blob verified earlier that vanished is lost content.
  for (const digest of verified) if (!present.has(digest)) result.problems.push(`blob ${digest} disappeared`);

  const repositories = join(v2, 'repositories');
  const files = await listFiles(repositories, (name) => name === '_uploads');
  for (const file of files) {
    const segments = file.split('/');
    if (segments.some((s) => s.includes(TEMP))) {
      result.temps++;
      continue;
    }
    if (segments[segments.length - 1] !== 'link') continue;
    result.links++;
    const content = (await readFile(join(repositories, file), 'utf8')).trim();
    const match = /^(sha256|sha512):([a-f0-9]+)$/.exec(content);
    if (!match || !HEX[match[1]!]!.test(match[2]!)) {
      result.problems.push(`link ${file} holds ${JSON.stringify(content.slice(0, 80))}`);
      continue;
    }
    const [, algorithm, hex] = match;
    if (!existsSync(join(v2, 'blobs', algorithm!, hex!.slice(0, 2), hex!, 'data'))) {
      result.problems.push(`link ${file} points at missing blob ${content}`);
    }
    // .../<alg>/<hex>/link must hold <alg>:<hex>; tags' current/link is the exception.
    const m = segments.indexOf('_manifests');
    const current = m > 0 && segments[m + 1] === 'tags' && segments[m + 3] === 'current' && segments.length === m + 5;
    if (current) {
      const repo = segments.slice(0, m).join('/');
      const revision = join(repositories, repo, '_manifests/revisions', algorithm!, hex!, 'link');
      if (!existsSync(revision)) result.problems.push(`tag ${file} points at ${content}, not a revision of ${repo}`);
    } else if (segments[segments.length - 3] !== algorithm || segments[segments.length - 2] !== hex) {
      result.problems.push(`link ${file} holds ${content}, which is not its path`);
    }
  }
  return result;
}

/** sha256 of every file below the store (upload sessions excluded), by relative path. */
export async function snapshotStore(root: string): Promise<Map<string, string>> {
  const snapshot = new Map<string, string>();
  for (const file of await listFiles(root, (name) => name === '_uploads')) {
    snapshot.set(file, await hashFile(join(root, file)));
  }
  return snapshot;
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

/** `docker-registry garbage-collect --dry-run` over `root`; it exits non-zero on an inconsistent store. */
export async function garbageCollectDryRun(root: string, workDir: string): Promise<{ code: number; output: string }> {
  const config = join(workDir, 'gc-config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${JSON.stringify(root)}\n  delete:\n    enabled: true\n`,
  );
  return new Promise((resolve) => {
    execFile(
      DISTRIBUTION_BINARY,
      ['garbage-collect', '--dry-run', config],
      { timeout: 60_000, maxBuffer: 64 << 20 },
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
