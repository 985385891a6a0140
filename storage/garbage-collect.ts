// Offline garbage collection: `wharf garbage-collect`, compatible with CNCF Distribution's
// `registry garbage-collect` (registry/storage/garbagecollect.go, 2.8) on the same root.
//
// Mark: every repository that has `_manifests` (Distribution's repository walk), every
// revision link in it whose manifest blob exists (linkedBlobStore.Enumerate skips the others).
// A revision is marked with what its manifest references, as Distribution's References():
// an image manifest its config and every layer (foreign ones too), an index its child
// manifests, a schema 1 manifest its fsLayers. With `deleteUntagged`, a revision no tag's
// `current` link points at is not marked but deleted: its tag index entries (under every tag)
// and its revision directory, as Vacuum.RemoveManifest does.
//
// One deliberate difference: a manifest an index that is kept refers to (a child of a tagged
// multi-platform image) is kept and marked with its blobs, as Distribution 3 does
// (markManifestReferences + unmarkReferencedManifest). Distribution 2.8 deletes such untagged
// children under --delete-untagged, which leaves the tagged index pointing at nothing.
// Without --delete-untagged both mark exactly the same set.
//
// Referrers: a manifest with an OCI 1.1 `subject` is a revision like any other. Its subject
// being kept does not keep it: an untagged referrer is deleted by --delete-untagged, as
// Distribution (which knows no `_referrers`) does. wharf's `_referrers` entries whose
// manifest revision is gone (deleted now or earlier) are removed.
//
// Sweep: every blob under blobs/ not marked is deleted (its whole directory). Then files a
// crash left behind: the filesystem driver's temporary files (`~tmp-`) older than an hour, and
// upload sessions older than the upload purging age (upload-purge.ts).
//
// Offline: nothing may write to the root meanwhile (a push between mark and sweep would lose
// its blobs). Online collection with a running registry needs a grace period and is not here.
import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isPathNotFound, type StorageDriver } from './driver.js';
import { isDigest, parseDigest, type Digest } from './digest.js';
import { BlobStore } from './blob-store.js';
import { baseName, LinkStore, listOrEmpty } from './link-store.js';
import { MediaType, parseStoredManifest } from './manifest.js';
import {
  BLOBS,
  blobData,
  REPOSITORIES,
  ROOT,
  revisionDir,
  revisionLink,
  revisionsDir,
  tagCurrentLink,
  tagsDir,
} from './paths.js';
import { purgeUploads } from './upload-purge.js';

/** The filesystem driver's temporary-file marker (TEMP_MARK in filesystem-driver.ts). */
const TEMP_MARK = '~tmp-';
/** Temporary files younger than this may belong to a write in progress elsewhere. */
export const TEMP_FILE_AGE_MS = 3600_000;

export interface GarbageCollectOptions {
  /** Report what would be deleted; delete nothing. */
  dryRun?: boolean;
  /** Delete manifests no tag points at (Distribution's --delete-untagged). */
  deleteUntagged?: boolean;
  /** The filesystem root directory: temporary files are swept there. Without it they are not. */
  rootDirectory?: string;
  /** Upload sessions started before this are purged. Without it none are. */
  uploadsStartedBefore?: Date;
  /** The clock (tests). */
  now?: Date;
  /** Progress lines, one per step and a summary per phase. */
  progress?: (line: string) => void;
}

export interface GarbageCollectResult {
  repositories: number;
  /** Manifest revisions kept (a digest in two repositories counts twice). */
  manifestsMarked: number;
  /** Manifest revisions deleted (or, dry run, that would be). */
  manifestsDeleted: number;
  /** Digests marked, as Distribution counts them (references to absent blobs included). */
  blobsMarked: number;
  blobsDeleted: number;
  /** Bytes of the deleted blobs' data. */
  bytesFreed: number;
  referrersDeleted: number;
  tempFilesDeleted: number;
  uploadsPurged: number;
}

interface ManifestDeletion {
  repo: string;
  digest: Digest;
  /** Every tag of the repository: their index entries for the digest go too. */
  tags: string[];
}

export async function garbageCollect(driver: StorageDriver, options: GarbageCollectOptions = {}): Promise<GarbageCollectResult> {
  const say = options.progress ?? (() => undefined);
  const dryRun = options.dryRun ?? false;
  const now = options.now ?? new Date();
  // No caches: this process is alone on the root and reads each fact once.
  const links = new LinkStore(driver, 0);
  const blobs = new BlobStore(driver, { presenceTtlMs: 0, contentCacheBytes: 16 * 1024 * 1024 });
  const result: GarbageCollectResult = {
    repositories: 0,
    manifestsMarked: 0,
    manifestsDeleted: 0,
    blobsMarked: 0,
    blobsDeleted: 0,
    bytesFreed: 0,
    referrersDeleted: 0,
    tempFilesDeleted: 0,
    uploadsPurged: 0,
  };

  // ---- mark
  const marked = new Set<string>();
  let deletions: ManifestDeletion[] = [];
  let kept = 0;
  /** `repo@digest` of child manifests a kept index of the same repository references. */
  const children = new Set<string>();
  const repositories = await repositoryNames(driver);
  result.repositories = repositories.length;
  for (const repo of repositories) {
    const revisions = await revisionDigests(driver, links, blobs, repo);
    const tags = (await listOrEmpty(driver, tagsDir(repo))).map(baseName).sort();
    const tagged = new Set<string>();
    if (options.deleteUntagged) {
      for (const tag of tags) {
        const current = await links.read(tagCurrentLink(repo, tag));
        if (current) tagged.add(current.value);
      }
    }
    const inRepo = new Set(revisions.map((d) => d.value));
    let untagged = 0;
    for (const digest of revisions) {
      if (options.deleteUntagged && !tagged.has(digest.value)) {
        deletions.push({ repo, digest, tags });
        untagged++;
        continue;
      }
      kept++;
      await markManifest(blobs, repo, digest, inRepo, marked, children);
    }
    say(`${repo}: ${revisions.length} manifest(s)${options.deleteUntagged ? `, ${untagged} untagged` : ''}`);
  }
  // Children of kept indexes were marked above: they stay (as Distribution 3's unmarkReferencedManifest
  // does; only those of the same repository, so that everything else is decided as 2.8 decides it).
  const untaggedCount = deletions.length;
  deletions = deletions.filter((d) => !children.has(`${d.repo}@${d.digest.value}`));
  result.manifestsMarked = kept + (untaggedCount - deletions.length);
  const deletedRevisions = new Set(deletions.map((d) => `${d.repo}@${d.digest.value}`));
  result.manifestsDeleted = deletions.length;
  result.blobsMarked = marked.size;

  // Which blobs go: decided before anything is deleted, so a dry run counts the same.
  const unmarked: { digest: Digest; size: number }[] = [];
  for (const digest of await storedBlobs(driver)) {
    if (marked.has(digest.value)) continue;
    try {
      unmarked.push({ digest, size: (await driver.stat(blobData(digest))).size });
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
    }
  }
  say(
    `mark: ${result.repositories} repositories, ${result.manifestsMarked} manifests marked, ${result.blobsMarked} blobs marked; ` +
      `${deletions.length} manifests and ${unmarked.length} blobs eligible for deletion`,
  );

  // ---- sweep: manifests first (as Distribution), then their referrer entries, then blobs
  for (const { repo, digest, tags } of deletions) {
    say(`${repo}: ${dryRun ? 'would delete' : 'deleting'} manifest ${digest.value}`);
    if (dryRun) continue;
    for (const tag of tags) await deleteIfPresent(driver, `${tagsDir(repo)}/${tag}/index/${digest.algorithm}/${digest.hex}`);
    await deleteIfPresent(driver, revisionDir(repo, digest));
  }
  for (const repo of repositories) {
    result.referrersDeleted += await sweepReferrers(driver, links, repo, deletedRevisions, dryRun);
  }
  for (const { digest, size } of unmarked) {
    if (!dryRun) await blobs.delete(digest);
    result.blobsDeleted++;
    result.bytesFreed += size;
  }
  say(
    `sweep: ${result.manifestsDeleted} manifests, ${result.blobsDeleted} blobs (${formatBytes(result.bytesFreed)}) ` +
      `and ${result.referrersDeleted} referrer entries ${dryRun ? 'eligible for deletion (dry run)' : 'deleted'}`,
  );

  // ---- what crashes and abandoned clients leave
  if (options.rootDirectory !== undefined) {
    const cutoff = now.getTime() - TEMP_FILE_AGE_MS;
    result.tempFilesDeleted = await sweepTempFiles(join(options.rootDirectory, ...ROOT.split('/').filter(Boolean)), cutoff, dryRun);
    say(`temporary files older than 1h: ${result.tempFilesDeleted} ${dryRun ? 'eligible for deletion' : 'deleted'}`);
  }
  if (options.uploadsStartedBefore !== undefined) {
    const purge = await purgeUploads({ driver }, { olderThan: options.uploadsStartedBefore, dryRun });
    result.uploadsPurged = purge.purged;
    say(`upload sessions: ${purge.scanned} found, ${purge.purged} stale ${dryRun ? 'eligible for deletion' : 'purged'}`);
  }
  return result;
}

/** Repositories as Distribution's walk finds them: directories holding `_manifests`, nested ones too. */
async function repositoryNames(driver: StorageDriver): Promise<string[]> {
  const found: string[] = [];
  const walk = async (path: string, name: string): Promise<void> => {
    const children = await listOrEmpty(driver, path);
    if (name && children.some((c) => baseName(c) === '_manifests')) found.push(name);
    for (const child of children.sort()) {
      const base = baseName(child);
      if (!base.startsWith('_')) await walk(child, name ? `${name}/${base}` : base);
    }
  };
  await walk(REPOSITORIES, '');
  return found.sort();
}

/** Revisions of a repository whose link is readable and whose manifest blob exists. */
async function revisionDigests(driver: StorageDriver, links: LinkStore, blobs: BlobStore, repo: string): Promise<Digest[]> {
  const found = new Map<string, Digest>();
  for (const algDir of await listOrEmpty(driver, revisionsDir(repo))) {
    for (const entry of await listOrEmpty(driver, algDir)) {
      const digest = await links.read(`${entry}/link`);
      if (!digest || found.has(digest.value)) continue;
      // The link must be where its digest says (linkedBlobStore.Stat), and the blob must exist.
      if (`${entry}/link` !== revisionLink(repo, digest) && !(await links.read(revisionLink(repo, digest)))) continue;
      if ((await blobs.stored(digest)) === undefined) continue;
      found.set(digest.value, digest);
    }
  }
  return [...found.values()];
}

/** Marks a manifest and what it references; a child manifest present in the repository recursively. */
async function markManifest(
  blobs: BlobStore,
  repo: string,
  digest: Digest,
  inRepo: Set<string>,
  marked: Set<string>,
  children: Set<string>,
): Promise<void> {
  marked.add(digest.value);
  const content = await blobs.read(digest);
  if (!content) throw new Error(`${repo}: manifest ${digest.value} disappeared while marking`);
  const refs = manifestReferences(content, `${repo}@${digest.value}`);
  for (const ref of refs.blobs) marked.add(ref);
  for (const child of refs.children) {
    const key = `${repo}@${child}`;
    if (!inRepo.has(child) || children.has(key)) {
      marked.add(child);
      continue;
    }
    children.add(key);
    await markManifest(blobs, repo, parseDigest(child), inRepo, marked, children);
  }
}

/**
 * What a stored manifest references, as Distribution's manifest handlers read it: schema 2 by
 * its mediaType (an OCI one without mediaType is an index when it has `manifests`), schema 1
 * by its fsLayers. A manifest Distribution cannot read stops collection, as it does there:
 * sweeping with marks missing could delete blobs that are in use.
 */
export function manifestReferences(content: Buffer, where: string): { blobs: string[]; children: string[] } {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(content.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new Error(`${where}: the manifest is not JSON`);
  }
  if (typeof doc !== 'object' || doc === null) throw new Error(`${where}: the manifest is not a JSON object`);
  const digests = (list: unknown): string[] =>
    (Array.isArray(list) ? list : [])
      .map((d) => (d as { digest?: unknown } | null)?.digest)
      .filter((d): d is string => typeof d === 'string' && isDigest(d));
  if (doc.schemaVersion === 1) return { blobs: parseStoredManifest(content).blobs.map((d) => d.value), children: [] };
  if (doc.schemaVersion !== 2) throw new Error(`${where}: unrecognized manifest schema version ${String(doc.schemaVersion)}`);
  const mediaType = doc.mediaType ?? '';
  const image = (): { blobs: string[]; children: string[] } => ({
    blobs: [...digests([doc.config]), ...digests(doc.layers)],
    children: [],
  });
  switch (mediaType) {
    case MediaType.DockerManifest:
    case MediaType.OciManifest:
      return image();
    case MediaType.DockerManifestList:
    case MediaType.OciIndex:
      return { blobs: [], children: digests(doc.manifests) };
    case '':
      return Array.isArray(doc.manifests) ? { blobs: [], children: digests(doc.manifests) } : image();
    default:
      throw new Error(`${where}: unrecognized manifest content type ${String(mediaType)}`);
  }
}

/** Every blob under blobs/<alg>/<xx>/<hex>/ (its data is checked when it is to be deleted). */
async function storedBlobs(driver: StorageDriver): Promise<Digest[]> {
  const found: Digest[] = [];
  for (const algDir of await listOrEmpty(driver, BLOBS)) {
    const algorithm = baseName(algDir);
    for (const prefixDir of await listOrEmpty(driver, algDir)) {
      for (const blobDir of await listOrEmpty(driver, prefixDir)) {
        const value = `${algorithm}:${baseName(blobDir)}`;
        if (!isDigest(value)) continue; // nothing wharf or Distribution writes
        const digest = parseDigest(value);
        if (digest.hex.slice(0, 2) !== baseName(prefixDir)) continue;
        found.push(digest);
      }
    }
  }
  return found;
}

/** Removes `_referrers` entries whose manifest revision is gone or being deleted; returns how many. */
async function sweepReferrers(
  driver: StorageDriver,
  links: LinkStore,
  repo: string,
  deleted: Set<string>,
  dryRun: boolean,
): Promise<number> {
  let count = 0;
  const root = `${REPOSITORIES}/${repo}/_referrers`;
  for (const subjectAlg of await listOrEmpty(driver, root)) {
    for (const subject of await listOrEmpty(driver, subjectAlg)) {
      let left = 0;
      for (const alg of await listOrEmpty(driver, subject)) {
        for (const entry of await listOrEmpty(driver, alg)) {
          const value = `${baseName(alg)}:${baseName(entry)}`;
          const digest = isDigest(value) ? parseDigest(value) : undefined;
          const alive =
            digest !== undefined && !deleted.has(`${repo}@${digest.value}`) && (await links.read(revisionLink(repo, digest))) !== undefined;
          if (alive) {
            left++;
            continue;
          }
          count++;
          if (!dryRun) await deleteIfPresent(driver, entry);
        }
      }
      if (left === 0 && !dryRun) await deleteIfPresent(driver, subject);
    }
  }
  return count;
}

/** Temporary files (`~tmp-`) last modified before `cutoff`, anywhere under `dir`; returns how many. */
async function sweepTempFiles(dir: string, cutoff: number, dryRun: boolean): Promise<number> {
  let count = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      count += await sweepTempFiles(path, cutoff, dryRun);
      continue;
    }
    if (!entry.name.includes(TEMP_MARK)) continue;
    try {
      if ((await lstat(path)).mtimeMs >= cutoff) continue;
      if (!dryRun) await unlink(path);
      count++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  // A blob directory that held nothing but a crashed write's temporary file goes with it.
  if (!dryRun && count > 0 && dir.includes(`${join('docker', 'registry', 'v2', 'blobs')}`)) {
    await rmdir(dir).catch(() => undefined); // fails, harmlessly, unless empty
  }
  return count;
}

async function deleteIfPresent(driver: StorageDriver, path: string): Promise<void> {
  try {
    await driver.delete(path);
  } catch (err) {
    if (!isPathNotFound(err)) throw err;
  }
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
