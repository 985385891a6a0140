// Physical limits of this machine for what a registry does, measured in the same run:
// SHA-256 speed, disk write speed, the in-process hash+write pipeline (the ceiling of a
// Node registry's push), and a trivial node:http server (ceilings of pull, of an HTTP
// push, and of small-response req/s under the same load as the registries).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BigBlob } from './data.js';
import { send } from './http.js';
import { freePort, REPO_ROOT } from './servers.js';

export const seconds = (startNs: bigint): number => Number(process.hrtime.bigint() - startNs) / 1e9;
export const MB = 1e6;

let shaInput: Buffer | undefined;

/** SHA-256 of in-memory data in 1 MiB updates (what hashing a stream costs), MB/s. */
export function sha256Speed(totalBytes: number): number {
  // Allocated once: a fresh 64 MiB per call would be page faults, not hashing.
  const buffer = (shaInput ??= randomFillSync(Buffer.allocUnsafe(64 << 20)));
  const hash = createHash('sha256');
  const t0 = process.hrtime.bigint();
  let done = 0;
  while (done < totalBytes) {
    for (let off = 0; off < buffer.length && done < totalBytes; off += 1 << 20) {
      hash.update(buffer.subarray(off, off + (1 << 20)));
      done += 1 << 20;
    }
  }
  hash.digest();
  return done / MB / seconds(t0);
}

export interface DiskWrite {
  /** MB/s until the last write returned (into the page cache). */
  buffered: number;
  /** MB/s including the final fsync (on the device). */
  synced: number;
}

/** Writes `totalBytes` in 16 MiB writes to the new file `path`, fsync at the end. The caller deletes it. */
export async function diskWrite(path: string, totalBytes: number): Promise<DiskWrite> {
  const chunk = Buffer.allocUnsafe(16 << 20);
  randomFillSync(chunk);
  const handle = await open(path, 'w');
  const t0 = process.hrtime.bigint();
  try {
    for (let written = 0; written < totalBytes; written += chunk.length) {
      await handle.write(chunk, 0, Math.min(chunk.length, totalBytes - written));
    }
    const buffered = totalBytes / MB / seconds(t0);
    await handle.sync();
    const synced = totalBytes / MB / seconds(t0);
    return { buffered, synced };
  } finally {
    await handle.close();
  }
}

/**
 * Reads the big file, hashes it and writes it to a new file in one stream pipeline with
 * 1 MiB buffers, in this process: everything a push must do except HTTP. No fsync (no
 * registry here syncs blobs), MB/s. The caller deletes `path`.
 */
export async function hashWrite(path: string, blob: BigBlob): Promise<number> {
  const hash = createHash('sha256');
  const hasher = new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _enc, callback) {
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  const t0 = process.hrtime.bigint();
  await pipeline(createReadStream(blob.path, { highWaterMark: 1 << 20 }), hasher, createWriteStream(path, { highWaterMark: 1 << 20 }));
  hash.digest();
  return blob.size / MB / seconds(t0);
}

export interface TrivialServer {
  base: string;
  pid: number;
  uploadDir: string;
  stop(): Promise<void>;
}

/** Starts bench/trivial-server.ts in its own node process. */
export async function startTrivialServer(workDir: string, blob: BigBlob, json: Buffer): Promise<TrivialServer> {
  const port = await freePort();
  const jsonPath = join(workDir, 'trivial.json');
  await writeFile(jsonPath, json);
  const uploadDir = join(workDir, 'trivial-uploads');
  await mkdir(uploadDir, { recursive: true });
  const child: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', join(REPO_ROOT, 'bench/trivial-server.ts'), String(port), blob.path, jsonPath, uploadDir],
    { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const reply = await send({ method: 'GET', base, url: '/json' });
      if (reply.status === 200) break;
    } catch {
      // not yet
    }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error('the trivial server did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    base,
    pid: child.pid!,
    uploadDir,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
