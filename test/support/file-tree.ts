// Snapshots of a directory tree, for tests that must prove a command changed nothing (a dry run)
// or find what a crash left behind.
import { readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';

/** Every file and directory below root, sorted: `dir/` and `file size mtimeMs`, relative to root. */
export async function treeListing(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, e.name);
      if (e.isDirectory()) {
        out.push(`${relative(root, path)}/`);
        await walk(path);
      } else {
        const st = await stat(path);
        out.push(`${relative(root, path)} ${st.size} ${st.mtimeMs}`);
      }
    }
  };
  await walk(root);
  return out.sort();
}
