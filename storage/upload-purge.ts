// Removes upload sessions older than a cut-off (storage.maintenance.uploadpurging):
// clients that went away leave their partial data behind.
import { isPathNotFound } from './driver.js';
import { listOrEmpty } from './link-store.js';
import type { LocalRegistry } from './local-registry.js';
import { uploadsDir } from './paths.js';

export interface PurgeResult {
  scanned: number;
  purged: number;
}

export async function purgeUploads(
  registry: LocalRegistry,
  options: { olderThan: Date; dryRun?: boolean },
): Promise<PurgeResult> {
  const { driver } = registry;
  const result: PurgeResult = { scanned: 0, purged: 0 };
  for (const repo of await registry.repositoryNames()) {
    for (const dir of await listOrEmpty(driver, uploadsDir(repo))) {
      result.scanned++;
      let started: Date;
      try {
        started = new Date((await driver.getContent(`${dir}/startedat`)).toString('utf8').trim());
      } catch (err) {
        if (!isPathNotFound(err)) throw err;
        started = (await driver.stat(dir)).modTime; // no startedat: judge by the directory's age
      }
      if (Number.isNaN(started.getTime()) || started < options.olderThan) {
        result.purged++;
        if (!options.dryRun) await driver.delete(dir).catch(() => undefined);
      }
    }
  }
  return result;
}
