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
// its blobs). `online` is the mode for storage that registries keep serving.
//
// ONLINE (`wharf garbage-collect --online [--grace DURATION]`, default grace 1h). Everything
// goes through the StorageDriver, so it runs the same on a directory or a bucket, with any
// number of wharf replicas serving it. Grace periods AND marks; a blob goes in two steps, each
// at least a grace period long:
//
// 1. Mark as offline (every revision of every repository; no --delete-untagged). An unmarked
//    blob is a candidate only when it is old: its data, and every repository layer link to it,
//    were last written more than the grace period ago. Uploads and mounts write the link,
//    manifest PUTs re-write the links of everything they reference (manifest-store.ts), so a
//    blob a client uploaded, mounted or referenced within the grace period is never one.
// 2. Right before acting, the revisions written since the mark began are read (re-mark): a
//    manifest pushed meanwhile keeps its blobs.
// 3. Hide: a candidate's layer links are removed, and a marker (gc-markers.ts) records which
//    repositories had one. HEAD and GET now answer 404, so clients upload the blob again; the
//    bytes stay. A manifest PUT referencing a hidden blob, in a repository that had it,
//    restores the link. This is what makes a HEAD answer safe to rely on: the collector cannot
//    know who saw the blob, but it stops anyone new from seeing it and then waits.
// 4. Delete: a later run deletes a blob hidden at least a grace period earlier that is still
//    unmarked, has no link again and whose bytes were not rewritten since. Anything else undoes
//    the hide (links restored, marker removed). The bytes are first parked (wharf/trash) for
//    GC_SETTLE_MS and looked at again: an upload completing then (it moves identical bytes in,
//    then writes its link, knowing nothing of markers) gets them back.
// Steps 3 and 4 each open with a handshake through storage (gc-markers.ts): the collector
// writes its marker before it reads links and times, a manifest PUT writes its links (and its
// own bytes) before it reads the marker; one always sees the other, and a push that meets a
// busy marker waits the milliseconds until the collector has decided.
//
// The rule for replicas: each trusts links and blob presence it read for storage.cache.linkttl
// at most, and anything that acknowledges a write asks storage (blob-store.ts). A blob is
// deleted a grace period after its links went, so with grace > linkttl (the command refuses
// less) no replica still has it cached as present. Guarantees: a manifest referencing blobs
// its client uploaded or mounted within the grace period, or saw with HEAD within grace -
// linkttl, is accepted; a manifest is never accepted whose blob is then deleted. Times read
// from storage count as up to a second later than stored (S3 keeps whole seconds).
//
// Upload completion and mounts write their link under the same handshake and check the bytes
// after it: one that loses the race is refused (the client uploads again), never acknowledged
// for a blob about to go. Not covered: a Distribution writing to the same storage (its PUTs
// re-write no links).
// --delete-untagged is refused online: deleting a revision races with a push tagging it or an
// index referencing it, and revisions have no hide step. `_referrers` entries of deleted
// manifests are left to offline runs (the referrers API skips them). One online collector at a
// time: a busy marker younger than GC_WAIT_MS (another run's) is left alone.
import { randomBytes } from 'node:crypto';
import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isPathNotFound, type FileInfo, type StorageDriver } from './driver.js';
import { isDigest, parseDigest, type Digest } from './digest.js';
import { BlobStore } from './blob-store.js';
import { baseName, LinkStore, listOrEmpty } from './link-store.js';
import { MediaType, parseStoredManifest } from './manifest.js';
import {
  GC_HOLD_MS,
  GC_MARKERS,
  GC_SETTLE_MS,
  GC_TRASH,
  GC_WAIT_MS,
  gcMarkerPath,
  gcTrashPath,
  isBusy,
  readGcMarker,
  writeGcMarker,
  type GcMarker,
} from './gc-markers.js';
import {
  BLOBS,
  blobData,
  blobDir,
  layerLink,
  layersDir,
  REPOSITORIES,
  ROOT,
  revisionDir,
  revisionLink,
  revisionsDir,
  tagCurrentLink,
  tagsDir,
} from './paths.js';
import { purgeUploads } from './upload-purge.js';

/**
 * Modification times are read as up to this much later than stored: S3 keeps whole seconds,
 * so a file written at 10.9 s reads 10.0 s, and ages must never be overestimated.
 */
const TIME_SLACK_MS = 1000;
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
  /** How far a long phase is (for a live bar); called often, must be cheap. */
  onProgress?: (progress: GcProgress) => void;
  /** Collect while registries serve the storage (see the header). */
  online?: { graceMs: number };
}

export interface GcProgress {
  phase: 'mark' | 'scan' | 'sweep';
  done: number;
  total: number;
  /** Bytes: of unreferenced blobs found (scan), hidden and freed (sweep). */
  bytes: number;
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
  /** Online: blobs whose links were removed in this run (a later run deletes them), and their bytes. */
  blobsHidden: number;
  bytesHidden: number;
  /** Online: hidden blobs (or candidates) found in use again, made visible again. */
  blobsRestored: number;
  /** Online: unreferenced blobs written or linked within the grace period, left alone. */
  blobsRecent: number;
  /** Online: hidden blobs waiting for the grace period to pass before deletion. */
  blobsWaiting: number;
  /** Online: manifests found by the re-mark (pushed while this run was marking). */
  manifestsRemarked: number;
}

interface ManifestDeletion {
  repo: string;
  digest: Digest;
  /** Every tag of the repository: their index entries for the digest go too. */
  tags: string[];
}

const emptyResult = (): GarbageCollectResult => ({
  repositories: 0,
  manifestsMarked: 0,
  manifestsDeleted: 0,
  blobsMarked: 0,
  blobsDeleted: 0,
  bytesFreed: 0,
  referrersDeleted: 0,
  tempFilesDeleted: 0,
  uploadsPurged: 0,
  blobsHidden: 0,
  bytesHidden: 0,
  blobsRestored: 0,
  blobsRecent: 0,
  blobsWaiting: 0,
  manifestsRemarked: 0,
});

export async function garbageCollect(driver: StorageDriver, options: GarbageCollectOptions = {}): Promise<GarbageCollectResult> {
  if (options.online) return collectOnline(driver, options, options.online.graceMs);
  const say = options.progress ?? (() => undefined);
  const dryRun = options.dryRun ?? false;
  const now = options.now ?? new Date();
  // No caches: this process is alone on the root and reads each fact once.
  const links = new LinkStore(driver, 0);
  const blobs = new BlobStore(driver, { presenceTtlMs: 0, contentCacheBytes: 16 * 1024 * 1024 });
  const result = emptyResult();
  // Bytes a crashed online run left parked belong to their blob until decided again.
  if (!dryRun) await unparkAll(driver, false);

  // ---- mark
  const marked = new Set<string>();
  let deletions: ManifestDeletion[] = [];
  let kept = 0;
  /** `repo@digest` of child manifests a kept index of the same repository references. */
  const children = new Set<string>();
  const repositories = await repositoryNames(driver);
  result.repositories = repositories.length;
  for (const [index, repo] of repositories.entries()) {
    options.onProgress?.({ phase: 'mark', done: index, total: repositories.length, bytes: 0 });
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

  if (!dryRun) await clearMarkers(driver, links, marked, say);
  await sweepLeftovers(driver, options, now, result);
  return result;
}

/** What crashes and abandoned clients leave: temporary files and stale upload sessions. */
async function sweepLeftovers(driver: StorageDriver, options: GarbageCollectOptions, now: Date, result: GarbageCollectResult): Promise<void> {
  const say = options.progress ?? (() => undefined);
  const dryRun = options.dryRun ?? false;
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
}

/**
 * Offline: markers an online run left (gc-markers.ts) are settled. The blobs of all of them
 * that remain are marked, so their hidden links come back; the others were deleted above.
 */
async function clearMarkers(driver: StorageDriver, links: LinkStore, marked: Set<string>, say: (line: string) => void): Promise<void> {
  let count = 0;
  for (const digest of await markerDigests(driver)) {
    const marker = await readGcMarker(driver, digest);
    if (marker && marked.has(digest.value) && (await exists(driver, blobData(digest)))) {
      for (const repo of marker.repos) await links.write(layerLink(repo, digest), digest);
    }
    await deleteIfPresent(driver, gcMarkerPath(digest));
    count++;
  }
  if (count > 0) say(`online collection markers: ${count} cleared`);
}

// ---------------------------------------------------------------------------------------
// Online collection (the header explains the design).

interface BlobFacts {
  digest: Digest;
  /** Data size and modification time; undefined when there are no bytes. */
  size?: number;
  dataTime?: number;
  /** Repositories with a layer link to the blob, and when each was written. */
  links: { repo: string; time: number }[];
  marker?: GcMarker;
  markerTime?: number;
}

/** Storage requests in flight at once (S3 answers each in milliseconds, one at a time is slow). */
const PARALLEL = 16;

type Plan =
  | { kind: 'hide'; facts: BlobFacts }
  | { kind: 'delete'; facts: BlobFacts }
  | { kind: 'restore'; facts: BlobFacts }
  | { kind: 'drop-marker'; facts: BlobFacts };

async function collectOnline(driver: StorageDriver, options: GarbageCollectOptions, graceMs: number): Promise<GarbageCollectResult> {
  if (options.deleteUntagged) {
    throw new Error('--delete-untagged cannot be combined with --online: run it offline, with every registry stopped');
  }
  if (!(graceMs > 0)) throw new Error('online collection needs a grace period above zero');
  const say = options.progress ?? (() => undefined);
  const tick = options.onProgress ?? (() => undefined);
  const dryRun = options.dryRun ?? false;
  const now = options.now ?? new Date();
  // A time read from storage is older than the grace period when it is at most `cutoff`.
  const cutoff = now.getTime() - graceMs - TIME_SLACK_MS;
  // No caches: registries write while this runs, and every decision reads storage.
  const links = new LinkStore(driver, 0);
  const blobs = new BlobStore(driver, { presenceTtlMs: 0, contentCacheBytes: 16 * 1024 * 1024 });
  const result = emptyResult();

  // ---- mark: every revision of every repository, as offline
  const marked = new Set<string>();
  const children = new Set<string>();
  const seen = new Set<string>();
  const markRepository = async (repo: string): Promise<number> => {
    const revisions = await revisionDigests(driver, links, blobs, repo);
    const inRepo = new Set(revisions.map((d) => d.value));
    let found = 0;
    for (const digest of revisions) {
      if (seen.has(`${repo}@${digest.value}`)) continue;
      seen.add(`${repo}@${digest.value}`);
      found++;
      await markManifest(blobs, repo, digest, inRepo, marked, children, true);
    }
    return found;
  };
  const repositories = await repositoryNames(driver);
  result.repositories = repositories.length;
  let marking = 0;
  await inPool(repositories, PARALLEL, async (repo) => {
    result.manifestsMarked += await markRepository(repo);
    tick({ phase: 'mark', done: ++marking, total: repositories.length, bytes: 0 });
  });
  result.blobsMarked = marked.size;
  say(`mark: ${result.repositories} repositories, ${result.manifestsMarked} manifests marked, ${result.blobsMarked} blobs marked`);

  // ---- scan: the unmarked blobs and the markers earlier runs left, with their links.
  // Bytes a crashed run left parked go back first (and are judged again below).
  if (!dryRun) await unparkAll(driver, true);
  const facts = new Map<string, BlobFacts>();
  const stored = await storedBlobs(driver);
  let unreferencedBytes = 0;
  let scanned = 0;
  await inPool(stored, PARALLEL, async (digest) => {
    if (++scanned % 64 === 0) tick({ phase: 'scan', done: scanned, total: stored.length, bytes: unreferencedBytes });
    if (marked.has(digest.value)) return;
    const info = await statOrUndefined(driver, blobData(digest));
    if (!info) return;
    unreferencedBytes += info.size;
    facts.set(digest.value, { digest, size: info.size, dataTime: info.modTime.getTime(), links: [] });
  });
  tick({ phase: 'scan', done: stored.length, total: stored.length, bytes: unreferencedBytes });
  const unreferenced = facts.size;
  let markerCount = 0;
  for (const digest of await markerDigests(driver)) {
    const marker = await readGcMarker(driver, digest);
    const info = await statOrUndefined(driver, gcMarkerPath(digest));
    if (!marker || !info) continue;
    markerCount++;
    let entry = facts.get(digest.value);
    if (!entry) {
      const data = await statOrUndefined(driver, blobData(digest));
      entry = { digest, size: data?.size, dataTime: data?.modTime.getTime(), links: [] };
      facts.set(digest.value, entry);
    }
    entry.marker = marker;
    entry.markerTime = info.modTime.getTime();
  }
  await scanLayerLinks(driver, facts);
  say(
    `scan: ${stored.length} blobs stored, ${unreferenced} unreferenced (${formatBytes(unreferencedBytes)}), ` +
      `${markerCount} hidden or in progress from earlier runs`,
  );

  // ---- re-mark: manifests pushed since the mark started keep their blobs
  const before = marked.size;
  await inPool(await repositoryNames(driver), PARALLEL, async (repo) => {
    result.manifestsRemarked += await markRepository(repo);
  });
  result.blobsMarked = marked.size;
  say(`re-mark: ${result.manifestsRemarked} manifests pushed meanwhile, ${marked.size - before} more blobs marked`);

  // ---- decide
  const plans: Plan[] = [];
  let waitingBytes = 0;
  for (const f of facts.values()) {
    const m = f.marker;
    if (!m) {
      if (marked.has(f.digest.value) || f.dataTime === undefined) continue;
      if (f.dataTime > cutoff || f.links.some((l) => l.time > cutoff)) result.blobsRecent++;
      else plans.push({ kind: 'hide', facts: f });
      continue;
    }
    // Another collector's step in progress: not ours to judge.
    if (isBusy(m) && f.markerTime! > Date.now() - GC_WAIT_MS) continue;
    if (f.dataTime === undefined) plans.push({ kind: 'drop-marker', facts: f });
    else if (marked.has(f.digest.value) || isBusy(m) || f.links.length > 0 || f.dataTime >= f.markerTime!) {
      plans.push({ kind: 'restore', facts: f });
    } else if (f.markerTime! > cutoff) {
      result.blobsWaiting++;
      waitingBytes += f.size ?? 0;
    } else plans.push({ kind: 'delete', facts: f });
  }

  // ---- act: at most a few blobs at a time, each with its own handshake
  let done = 0;
  const failures: string[] = [];
  const act = async (plan: Plan): Promise<void> => {
    const f = plan.facts;
    let outcome: Outcome;
    try {
      outcome = dryRun
        ? plan.kind === 'delete' ? 'deleted' : plan.kind === 'hide' ? 'hidden' : 'restored'
        : await carryOut(driver, links, plan, graceMs, options.rootDirectory);
    } catch (err) {
      // The blob stays as it is (a busy marker left behind is settled by the next run).
      failures.push(`${f.digest.value} (${plan.kind}): ${(err as Error).message}`);
      say(`${f.digest.value}: ${plan.kind} failed: ${(err as Error).message}`);
      outcome = 'gone';
    }
    if (outcome === 'hidden') {
      result.blobsHidden++;
      result.bytesHidden += f.size ?? 0;
    } else if (outcome === 'deleted') {
      result.blobsDeleted++;
      result.bytesFreed += f.size ?? 0;
    } else if (outcome === 'restored' && plan.kind !== 'drop-marker') result.blobsRestored++;
    done++;
    tick({ phase: 'sweep', done, total: plans.length, bytes: result.bytesHidden + result.bytesFreed });
  };
  await inPool(plans, PARALLEL, act);
  const verb = dryRun ? 'would be ' : '';
  say(
    `sweep${dryRun ? ' (dry run)' : ''}: ${result.blobsDeleted} blobs ${verb}deleted (${formatBytes(result.bytesFreed)}), ` +
      `${result.blobsHidden} ${verb}hidden (${formatBytes(result.bytesHidden)}), ${result.blobsRestored} ${verb}restored, ` +
      `${result.blobsRecent} used within the grace period, ${result.blobsWaiting} hidden and waiting for it (${formatBytes(waitingBytes)})`,
  );
  if (failures.length > 0) throw new Error(`${failures.length} blob(s) could not be collected; first: ${failures[0]}`);
  await sweepLeftovers(driver, options, now, result);
  return result;
}

type Outcome = 'hidden' | 'deleted' | 'restored' | 'gone';

/** One blob's step, with the handshake of gc-markers.ts. */
async function carryOut(driver: StorageDriver, links: LinkStore, plan: Plan, graceMs: number, rootDirectory: string | undefined): Promise<Outcome> {
  const f = plan.facts;
  const d = f.digest;
  if (plan.kind === 'drop-marker') {
    await deleteIfPresent(driver, gcMarkerPath(d));
    return 'restored';
  }
  if (plan.kind === 'restore') return restore(driver, links, d, f.marker!.repos);

  const started = performance.now();
  const inTime = (): boolean => performance.now() - started < GC_HOLD_MS;
  if (plan.kind === 'hide') {
    const repos = f.links.map((l) => l.repo);
    const cycle = randomBytes(8).toString('hex');
    await writeGcMarker(driver, d, { state: 'hiding', cycle, repos });
    // Read after the marker is written: a push that missed the marker wrote its link before.
    const fresh = Date.now() - graceMs - TIME_SLACK_MS;
    for (const repo of repos) {
      const link = await statOrUndefined(driver, layerLink(repo, d));
      if (link && link.modTime.getTime() > fresh) return restore(driver, links, d, repos);
    }
    const data = await statOrUndefined(driver, blobData(d));
    if (!data) {
      await deleteIfPresent(driver, gcMarkerPath(d));
      return 'gone';
    }
    if (data.modTime.getTime() > fresh) return restore(driver, links, d, repos);
    for (const repo of repos) {
      if (!inTime()) return restore(driver, links, d, repos);
      await deleteIfPresent(driver, layerLink(repo, d));
    }
    await writeGcMarker(driver, d, { state: 'hidden', cycle, repos });
    return 'hidden';
  }

  // delete: hidden at least a grace period ago
  const hidden = f.marker!;
  await writeGcMarker(driver, d, { state: 'deleting', cycle: hidden.cycle, repos: hidden.repos });
  const linkedAgain = async (): Promise<boolean> => {
    for (const repo of hidden.repos) if (await exists(driver, layerLink(repo, d))) return true;
    return false;
  };
  if (await linkedAgain()) return restore(driver, links, d, hidden.repos);
  const data = await statOrUndefined(driver, blobData(d));
  if (!data) {
    await deleteIfPresent(driver, gcMarkerPath(d));
    return 'gone';
  }
  if (data.modTime.getTime() >= f.markerTime! || !inTime()) return restore(driver, links, d, hidden.repos);
  // Park the bytes, let an upload that moved identical bytes in just before finish writing
  // its link, look again: only then are they deleted.
  await driver.move(blobData(d), gcTrashPath(d));
  await new Promise((resolve) => setTimeout(resolve, GC_SETTLE_MS));
  if (!inTime() || (await linkedAgain()) || (await exists(driver, blobData(d)))) return restore(driver, links, d, hidden.repos);
  await deleteIfPresent(driver, gcTrashPath(d));
  await deleteIfPresent(driver, gcMarkerPath(d));
  if (rootDirectory !== undefined) await removeEmptyDirectory(rootDirectory, blobDir(d));
  return 'deleted';
}

/** Undoes a hide: parked bytes and the links come back, then the marker goes. */
async function restore(driver: StorageDriver, links: LinkStore, d: Digest, repos: string[]): Promise<Outcome> {
  await unpark(driver, d);
  if (await exists(driver, blobData(d))) {
    for (const repo of repos) await links.write(layerLink(repo, d), d);
  }
  await deleteIfPresent(driver, gcMarkerPath(d));
  return 'restored';
}

/** Puts back every parked blob; online, not those of a step another run has in progress. */
async function unparkAll(driver: StorageDriver, online: boolean): Promise<void> {
  for (const digest of await digestsUnder(driver, GC_TRASH)) {
    if (online) {
      const marker = await readGcMarker(driver, digest);
      const info = marker && (await statOrUndefined(driver, gcMarkerPath(digest)));
      if (marker && isBusy(marker) && info && info.modTime.getTime() > Date.now() - GC_WAIT_MS) continue;
    }
    await unpark(driver, digest);
  }
}

/** Bytes parked in the trash go back to the blob, unless the blob has bytes again (the same ones). */
async function unpark(driver: StorageDriver, d: Digest): Promise<void> {
  if (!(await exists(driver, gcTrashPath(d)))) return;
  if (await exists(driver, blobData(d))) await deleteIfPresent(driver, gcTrashPath(d));
  else await driver.move(gcTrashPath(d), blobData(d));
}

/** rmdir: removes a directory only while it is empty, so never a file written meanwhile. */
async function removeEmptyDirectory(rootDirectory: string, path: string): Promise<void> {
  await rmdir(join(rootDirectory, ...path.split('/').filter(Boolean))).catch(() => undefined);
}

/** Fills in, for the blobs in `facts`, which repositories link them and when each link was written. */
async function scanLayerLinks(driver: StorageDriver, facts: Map<string, BlobFacts>): Promise<void> {
  if (facts.size === 0) return;
  await inPool(await repositoryNames(driver, true), PARALLEL, async (repo) => {
    for (const algDir of await listOrEmpty(driver, layersDir(repo))) {
      for (const entry of await listOrEmpty(driver, algDir)) {
        const f = facts.get(`${baseName(algDir)}:${baseName(entry)}`);
        if (!f) continue;
        const link = await statOrUndefined(driver, `${entry}/link`);
        if (link) f.links.push({ repo, time: link.modTime.getTime() });
      }
    }
  });
}

/** Digests that have a marker. */
const markerDigests = (driver: StorageDriver): Promise<Digest[]> => digestsUnder(driver, GC_MARKERS);

/** Digests named `<dir>/<alg>/<hex>`. */
async function digestsUnder(driver: StorageDriver, dir: string): Promise<Digest[]> {
  const found: Digest[] = [];
  for (const algDir of await listOrEmpty(driver, dir)) {
    for (const entry of await listOrEmpty(driver, algDir)) {
      const value = `${baseName(algDir)}:${baseName(entry)}`;
      if (isDigest(value)) found.push(parseDigest(value));
    }
  }
  return found;
}

async function statOrUndefined(driver: StorageDriver, path: string): Promise<FileInfo | undefined> {
  try {
    return await driver.stat(path);
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}

const exists = async (driver: StorageDriver, path: string): Promise<boolean> => (await statOrUndefined(driver, path)) !== undefined;

/** Runs `fn` over `items`, `limit` at a time. */
async function inPool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Repositories as Distribution's walk finds them: directories holding `_manifests`, nested
 * ones too; with `withLayers`, also those holding only `_layers` (uploaded blobs).
 */
async function repositoryNames(driver: StorageDriver, withLayers = false): Promise<string[]> {
  const found: string[] = [];
  const walk = async (path: string, name: string): Promise<void> => {
    const children = await listOrEmpty(driver, path);
    const isRepo = (c: string): boolean => baseName(c) === '_manifests' || (withLayers && baseName(c) === '_layers');
    if (name && children.some(isRepo)) found.push(name);
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
  online = false,
): Promise<void> {
  marked.add(digest.value);
  const content = await blobs.read(digest);
  if (!content) {
    // Online, a manifest deleted through the API while marking is simply gone.
    if (online) return;
    throw new Error(`${repo}: manifest ${digest.value} disappeared while marking`);
  }
  const refs = manifestReferences(content, `${repo}@${digest.value}`);
  for (const ref of refs.blobs) marked.add(ref);
  for (const child of refs.children) {
    const key = `${repo}@${child}`;
    if (!inRepo.has(child) || children.has(key)) {
      marked.add(child);
      continue;
    }
    children.add(key);
    await markManifest(blobs, repo, parseDigest(child), inRepo, marked, children, online);
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
    // The 256 prefix directories are listed a few at a time (S3: one request each).
    await inPool(await listOrEmpty(driver, algDir), PARALLEL, async (prefixDir) => {
      for (const blobDir of await listOrEmpty(driver, prefixDir)) {
        const value = `${algorithm}:${baseName(blobDir)}`;
        if (!isDigest(value)) continue; // nothing wharf or Distribution writes
        const digest = parseDigest(value);
        if (digest.hex.slice(0, 2) !== baseName(prefixDir)) continue;
        found.push(digest);
      }
    });
  }
  return found.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
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
