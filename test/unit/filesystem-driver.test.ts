// The storage driver conformance suite against the filesystem driver, in a temp dir.
import { FilesystemDriver } from '../../storage/filesystem-driver.js';
import { describeStorageDriver } from '../support/driver-conformance.js';
import { removeTree, tempDir } from '../support/processes.js';

describeStorageDriver('filesystem', async () => {
  const dir = await tempDir('fsdrv-');
  return { driver: new FilesystemDriver({ rootDirectory: dir }), cleanup: () => removeTree(dir) };
});

