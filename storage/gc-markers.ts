// What online garbage collection (garbage-collect.ts, `--online`) and a running registry tell
// each other through storage, and nothing else: no lock service, no process talks to another.
//
// The collector records, per blob it is working on, a marker file outside Distribution's tree:
//
//   /docker/registry/v2/wharf/gc/<alg>/<hex>     {"state", "cycle", "repos"}
//
// - `hiding`: the collector is removing the blob's repository links (`_layers/.../link`), so
//   that HEAD answers 404 and clients upload the blob again instead of relying on it;
// - `hidden`: the links are gone; the bytes stay for at least the grace period, and `repos`
//   names the repositories that had a link (only those may take the blob back);
// - `deleting`: the collector is deleting the bytes (parked in wharf/trash for GC_SETTLE_MS,
//   then looked at again).
//
// `hiding` and `deleting` are busy states: the collector does nothing destructive later than
// GC_HOLD_MS after writing one (it checks its own monotonic clock before each step, and
// otherwise undoes the step's work), and a push waits at most GC_WAIT_MS for one to end.
//
// The handshake. A push that is about to rely on a blob (a manifest PUT referencing it, or
// storing a manifest's own bytes) first WRITES (re-writes the repository's layer link, or the
// bytes), then READS the marker. The collector first WRITES the marker, then READS the
// links and the data's modification time. Storage is linearizable for single files (POSIX,
// and S3 since 2020), so at least one side sees the other's write:
// - the push saw no marker (or `hidden`): the collector's read comes later and sees a link
//   written just now, or a link where it removed them, or bytes newer than its marker: it
//   gives up on the blob and restores it;
// - the push saw a busy state: it waits until the state ends, writes again and reads again.
//   `hidden` then means its link or bytes are in place and the next collector run will see
//   them; no marker and no data means the blob was deleted: the push fails cleanly with
//   MANIFEST_BLOB_UNKNOWN, which only a client that held on to a HEAD answer for longer
//   than the grace period (minus linkttl) can meet.
// Upload completion and mounts take part the same way: their link is written under
// holdAgainstGc, and they check the bytes afterwards (upload-store.ts, local-registry.ts).
import { isPathNotFound, type StorageDriver } from './driver.js';
import type { Digest } from './digest.js';
import { ROOT } from './paths.js';

export const GC_MARKERS = `${ROOT}/wharf/gc`;
export const gcMarkerPath = (d: Digest): string => `${GC_MARKERS}/${d.algorithm}/${d.hex}`;
/** Where the collector parks a blob's bytes for GC_SETTLE_MS before it deletes them. */
export const GC_TRASH = `${ROOT}/wharf/trash`;
export const gcTrashPath = (d: Digest): string => `${GC_TRASH}/${d.algorithm}/${d.hex}`;

export type GcState = 'hiding' | 'hidden' | 'deleting';

export interface GcMarker {
  state: GcState;
  /** Random id of one hide-then-delete cycle of the blob (for diagnostics). */
  cycle: string;
  /** Repositories whose layer link the collector removed (or is removing). */
  repos: string[];
}

/** The collector takes no destructive step later than this after writing a busy state. */
export const GC_HOLD_MS = 10_000;
/**
 * How long deleted bytes stay parked before the collector looks again and deletes them: an
 * upload completing meanwhile (it moves the bytes in, then writes its link, and knows
 * nothing of markers) is seen by its link and gets its bytes back.
 */
export const GC_SETTLE_MS = 1_000;
/** A push waits at most this long for a busy state to end (then the collector has given up). */
export const GC_WAIT_MS = GC_HOLD_MS + 5_000;
/** How often a waiting push reads the marker again. */
const POLL_MS = 50;

export const isBusy = (m: GcMarker): boolean => m.state !== 'hidden';

/** The blob's marker, or undefined. A marker that cannot be parsed counts as `hidden` with no repositories. */
export async function readGcMarker(driver: StorageDriver, digest: Digest): Promise<GcMarker | undefined> {
  let content: Buffer;
  try {
    content = await driver.getContent(gcMarkerPath(digest));
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
  try {
    const doc = JSON.parse(content.toString('utf8')) as Partial<GcMarker>;
    const state = doc.state === 'hiding' || doc.state === 'deleting' ? doc.state : 'hidden';
    const repos = Array.isArray(doc.repos) ? doc.repos.filter((r): r is string => typeof r === 'string') : [];
    return { state, cycle: typeof doc.cycle === 'string' ? doc.cycle : '', repos };
  } catch {
    return { state: 'hidden', cycle: '', repos: [] };
  }
}

export async function writeGcMarker(driver: StorageDriver, digest: Digest, marker: GcMarker): Promise<void> {
  await driver.putContent(gcMarkerPath(digest), Buffer.from(JSON.stringify(marker)));
}

/**
 * The push's half of the handshake: runs `write` (which puts in place what the push relies
 * on: a layer link, or a manifest's bytes), then reads the blob's marker; while the collector
 * is in a busy state, waits and does both again. Returns the marker last read (undefined:
 * none), after which the collector either sees what `write` wrote or has deleted the blob
 * already (the caller checks that the bytes exist where it needs them).
 */
export async function holdAgainstGc(
  driver: StorageDriver,
  digest: Digest,
  write: () => Promise<void>,
): Promise<GcMarker | undefined> {
  const started = performance.now();
  for (;;) {
    try {
      await write();
    } catch (err) {
      // The collector removed the (empty) directory being written into: write again.
      if (!isPathNotFound(err) || performance.now() - started > GC_WAIT_MS) throw err;
      continue;
    }
    const marker = await readGcMarker(driver, digest);
    if (!marker || !isBusy(marker)) return marker;
    // The collector gave up on a busy state older than GC_HOLD_MS (or crashed): go ahead.
    if (performance.now() - started > GC_WAIT_MS) return marker;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
