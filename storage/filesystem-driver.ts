// StorageDriver on a local directory. Atomic writes are temp file + rename in the same
// directory; rename(2) replaces the destination atomically on POSIX filesystems.
//
// Durability: with `fsync` on (the default), file data is flushed (fdatasync) before the
// rename that makes it visible, in putContent and move. Otherwise a power loss after the
// rename could leave a zero-length or partial file under a content address: a blob whose
// bytes do not match its digest. Directories are not fsynced: losing a rename to a power
// cut loses the new entry (the client pushes again), it never corrupts one. Cost: about
// 0.5 ms per small file on this VM's ext4, and for a large blob the wait for the pages
// that were not yet written back when the upload ended.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  checkPath,
  PathNotFoundError,
  StorageUnavailableError,
  type FileInfo,
  type FileWriter,
  type StorageDriver,
} from './driver.js';

/** Read buffer size: large buffers cut per-chunk overhead on multi-GB blobs. */
const READ_CHUNK = 1 << 20;
const WRITE_CHUNK = 1 << 20;

export interface FilesystemDriverOptions {
  rootDirectory: string;
  /** Flush file data before a rename makes it visible (default true). */
  fsync?: boolean;
}

export class FilesystemDriver implements StorageDriver {
  readonly name = 'filesystem';
  readonly root: string;
  private readonly fsync: boolean;

  constructor(options: FilesystemDriverOptions) {
    this.root = options.rootDirectory;
    this.fsync = options.fsync ?? true;
  }

  private full(path: string): string {
    checkPath(path);
    return join(this.root, path);
  }

  async stat(path: string): Promise<FileInfo> {
    try {
      const st = await stat(this.full(path));
      return { path, size: st.isDirectory() ? 0 : st.size, modTime: st.mtime, isDir: st.isDirectory() };
    } catch (err) {
      throw translate(err, path);
    }
  }

  async getContent(path: string): Promise<Buffer> {
    try {
      return await readFile(this.full(path));
    } catch (err) {
      throw translate(err, path);
    }
  }

  async putContent(path: string, content: Uint8Array): Promise<void> {
    const target = this.full(path);
    const temp = tempName(target);
    try {
      await mkdir(dirname(target), { recursive: true });
      const handle = await open(temp, 'w');
      try {
        await handle.writeFile(content);
        if (this.fsync) await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(temp, target);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw translate(err, path);
    }
  }

  async reader(path: string, offset = 0, end?: number, signal?: AbortSignal): Promise<Readable> {
    let handle;
    try {
      handle = await open(this.full(path), 'r');
    } catch (err) {
      throw translate(err, path);
    }
    if (end !== undefined && end <= offset) {
      await handle.close();
      const { Readable } = await import('node:stream');
      return Readable.from([]);
    }
    // createReadStream's `end` is inclusive.
    return createReadStream('', {
      fd: handle,
      start: offset,
      end: end === undefined ? undefined : end - 1,
      highWaterMark: READ_CHUNK,
      signal,
    });
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    const target = this.full(path);
    let handle;
    let initial = 0;
    try {
      await mkdir(dirname(target), { recursive: true });
      handle = await open(target, append ? 'a' : 'w');
      if (append) initial = (await handle.stat()).size;
    } catch (err) {
      throw translate(err, path);
    }
    const stream = createWriteStream('', { fd: handle, highWaterMark: WRITE_CHUNK });
    let settled = false;
    const closed = new Promise<void>((resolve) => {
      if (stream.closed) resolve();
      else stream.once('close', () => resolve());
    });
    const finish = async (): Promise<void> => {
      if (!stream.destroyed && !stream.writableFinished) {
        await new Promise<void>((resolve, reject) => stream.end((err?: Error | null) => (err ? reject(err) : resolve())));
      }
      if (!stream.destroyed) stream.destroy();
      await closed;
    };
    return {
      stream,
      size: () => initial + stream.bytesWritten,
      commit: async () => {
        if (settled) return;
        settled = true;
        try {
          await finish();
        } catch (err) {
          throw translate(err, path);
        }
      },
      cancel: async () => {
        if (settled) return;
        settled = true;
        stream.destroy();
        await closed;
        await rm(target, { force: true });
      },
    };
  }

  async list(path: string): Promise<string[]> {
    try {
      const names = await readdir(this.full(path));
      const base = path === '/' ? '' : path;
      return names.filter((n) => !n.includes(TEMP_MARK)).map((n) => `${base}/${n}`);
    } catch (err) {
      throw translate(err, path);
    }
  }

  async move(source: string, destination: string): Promise<void> {
    const from = this.full(source);
    const to = this.full(destination);
    try {
      if (this.fsync) {
        const handle = await open(from, 'r+');
        try {
          await handle.datasync();
        } finally {
          await handle.close();
        }
      }
      await mkdir(dirname(to), { recursive: true });
      await rename(from, to);
    } catch (err) {
      throw translate(err, source);
    }
  }

  async delete(path: string): Promise<void> {
    const target = this.full(path);
    try {
      await stat(target);
      // Rename first so that a concurrent reader never sees a half-deleted directory
      // tree, then remove the renamed tree.
      const doomed = tempName(target);
      await rename(target, doomed);
      await rm(doomed, { recursive: true, force: true });
    } catch (err) {
      throw translate(err, path);
    }
  }
}

/** '~' appears in no repository name, tag or digest, so temp files never collide with content. */
const TEMP_MARK = '~tmp-';

function tempName(target: string): string {
  return `${target}${TEMP_MARK}${randomBytes(6).toString('hex')}`;
}

function translate(err: unknown, path: string): Error {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new PathNotFoundError(path, { cause: err });
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EIO' || code === 'EROFS' || code === 'EMFILE') {
    return new StorageUnavailableError(`storage ${code} at ${path}`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}
