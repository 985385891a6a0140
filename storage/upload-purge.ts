// Removes upload sessions older than a cut-off (storage.maintenance.uploadpurging):
// clients that went away leave their partial data behind.
//
// Sessions are found by walking the repositories tree for `_uploads` directories, as
// Distribution does, not by listing repositories: a first push that was abandoned leaves a
// repository that holds nothing but `_uploads`, which no listing of repositories shows.
import { isPathNotFound, type StorageDriver } from './driver.js';
import { baseName, listOrEmpty } from './link-store.js';
import { REPOSITORIES, ROOT } from './paths.js';

export interface PurgeResult {
  scanned: number;
  purged: number;
  /** Unfinished driver writes (S3 multipart uploads) a killed process left, ended. */
  abortedWrites: number;
}

/** Purges the sessions of every repository on `store`'s driver (a LocalRegistry, for one). */
export async function purgeUploads(
  store: { readonly driver: StorageDriver },
  options: { olderThan: Date; dryRun?: boolean },
): Promise<PurgeResult> {
  const { driver } = store;
  const result: PurgeResult = { scanned: 0, purged: 0, abortedWrites: 0 };
  const purgeSession = async (dir: string): Promise<void> => {
    result.scanned++;
    let started: Date;
    try {
      started = new Date((await driver.getContent(`${dir}/startedat`)).toString('utf8').trim());
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
      try {
        started = (await driver.stat(dir)).modTime; // no startedat: judge by the directory's age
      } catch (statErr) {
        if (isPathNotFound(statErr)) return; // completed or cancelled meanwhile
        throw statErr;
      }
    }
    if (Number.isNaN(started.getTime()) || started < options.olderThan) {
      result.purged++;
      if (!options.dryRun) await driver.delete(dir).catch(() => undefined);
    }
  };
  const walk = async (dir: string): Promise<void> => {
    for (const child of await listOrEmpty(driver, dir)) {
      const name = baseName(child);
      if (name === '_uploads') {
        for (const session of await listOrEmpty(driver, child)) await purgeSession(session);
      } else if (!name.startsWith('_')) {
        // _layers, _manifests and _referrers hold no sessions; anything else may be a
        // path component of a repository name. Plain files (a stray `data`) list as empty.
        await walk(child);
      }
    }
  };
  await walk(REPOSITORIES);
  // A process killed mid-write (a PATCH, a blob's multipart copy) leaves parts no session
  // names: they are ended by age, everywhere under the registry's root.
  if (driver.abortUnfinishedWrites && !options.dryRun) result.abortedWrites = await driver.abortUnfinishedWrites(ROOT, options.olderThan);
  return result;
}
