// One conformance suite for every StorageDriver: the contract written in storage/driver.ts,
// checked the same way against the filesystem driver and the S3 driver. Each test works
// under a fresh top-level directory of its own, so tests never see each other's files.
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidPathError, PathNotFoundError, type StorageDriver } from '../../storage/driver.js';

export interface DriverUnderTest {
  driver: StorageDriver;
  /** Ends whatever makeDriver started (servers, temp dirs). */
  cleanup?: () => Promise<void>;
}

export interface ConformanceOptions {
  /** Skip the whole suite (a tool is missing outside CI). */
  skip?: boolean;
  /** Per-test timeout for the large-object tests (default 120 s). */
  largeTimeoutMs?: number;
}

const MiB = 1 << 20;

/** Deterministic bytes: the same (seed, length) always gives the same content. */
export function patternBytes(length: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(length);
  let block = createHash('sha256').update(`seed-${seed}`).digest();
  for (let offset = 0; offset < length; offset += block.length) {
    block.copy(out, offset, 0, Math.min(block.length, length - offset));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function digestOf(stream: Readable): Promise<{ hex: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Uint8Array);
    size += (chunk as Uint8Array).length;
  }
  return { hex: hash.digest('hex'), size };
}

/** The bytes writeThrough(total, seed) writes: an 8 MiB pattern, repeated. */
export function contentOf(total: number, seed: number): Buffer {
  const data = patternBytes(Math.min(total, 8 * MiB), seed);
  const out = Buffer.allocUnsafe(total);
  for (let offset = 0; offset < total; offset += data.length) data.copy(out, offset, 0, Math.min(data.length, total - offset));
  return out;
}

/** Writes `total` bytes of pattern `seed` through a writer in `piece`-sized writes, honouring backpressure. */
export async function writeThrough(driver: StorageDriver, path: string, total: number, piece: number, seed: number, append = false): Promise<string> {
  const writer = await driver.writer(path, append);
  const hash = createHash('sha256');
  try {
    const data = patternBytes(Math.min(total, 8 * MiB), seed);
    let written = 0;
    while (written < total) {
      const n = Math.min(piece, total - written);
      const start = written % data.length;
      const chunk = start + n <= data.length ? data.subarray(start, start + n) : Buffer.concat([data.subarray(start), data.subarray(0, n - (data.length - start))]);
      hash.update(chunk);
      written += n;
      if (!writer.stream.write(chunk)) await once(writer.stream, 'drain');
    }
    await writer.commit();
  } catch (err) {
    await writer.cancel();
    throw err;
  }
  return hash.digest('hex');
}

async function expectNotFound(promise: Promise<unknown>): Promise<void> {
  await expect(promise).rejects.toBeInstanceOf(PathNotFoundError);
}

export function describeStorageDriver(name: string, makeDriver: () => Promise<DriverUnderTest>, options: ConformanceOptions = {}): void {
  const large = options.largeTimeoutMs ?? 120_000;
  describe.skipIf(options.skip === true)(`StorageDriver conformance: ${name}`, () => {
    let under: DriverUnderTest | undefined;
    let d: StorageDriver;
    let counter = 0;
    /** A fresh top-level directory for one test. */
    const fresh = (): string => `/conf-${process.pid}-${Date.now().toString(36)}-${counter++}`;

    beforeAll(async () => {
      under = await makeDriver();
      d = under.driver;
    });
    afterAll(async () => {
      await under?.cleanup?.();
    });

    describe('small files', () => {
      it('putContent then getContent returns the bytes; stat gives size, time and kind', async () => {
        const dir = fresh();
        const bytes = randomBytes(1234);
        const before = Date.now();
        await d.putContent(`${dir}/a/b/file`, bytes);
        expect(Buffer.compare(await d.getContent(`${dir}/a/b/file`), bytes)).toBe(0);
        const info = await d.stat(`${dir}/a/b/file`);
        expect(info).toMatchObject({ path: `${dir}/a/b/file`, size: 1234, isDir: false });
        expect(info.modTime).toBeInstanceOf(Date);
        // S3 times have a one-second resolution, and servers' clocks drift a little.
        expect(Math.abs(info.modTime.getTime() - before)).toBeLessThan(5 * 60_000);
      });

      it('putContent replaces a file whole, and stores empty content', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/f`, Buffer.from('first version, longer'));
        await d.putContent(`${dir}/f`, Buffer.from('second'));
        expect((await d.getContent(`${dir}/f`)).toString()).toBe('second');
        await d.putContent(`${dir}/empty`, new Uint8Array(0));
        expect((await d.getContent(`${dir}/empty`)).length).toBe(0);
        expect(await d.stat(`${dir}/empty`)).toMatchObject({ size: 0, isDir: false });
        await d.putContent(`${dir}/nd`, Buffer.from('x'), { durable: false });
        expect((await d.getContent(`${dir}/nd`)).toString()).toBe('x');
      });

      it('missing files are PathNotFoundError for stat, getContent, reader, list, move and delete', async () => {
        const dir = fresh();
        await expectNotFound(d.stat(`${dir}/nope`));
        await expectNotFound(d.getContent(`${dir}/nope`));
        await expectNotFound(d.reader(`${dir}/nope`));
        await expectNotFound(d.reader(`${dir}/nope`, 5));
        await expectNotFound(d.reader(`${dir}/nope`, 0, 10));
        await expectNotFound(d.list(`${dir}/nope`));
        await expectNotFound(d.move(`${dir}/nope`, `${dir}/other`));
        await expectNotFound(d.delete(`${dir}/nope`));
        // below a file
        await d.putContent(`${dir}/file`, Buffer.from('x'));
        await expectNotFound(d.stat(`${dir}/file/child`));
        await expectNotFound(d.getContent(`${dir}/file/child`));
        await expectNotFound(d.list(`${dir}/file`));
      });
    });

    describe('directories are implicit', () => {
      it('writing a deep file makes every directory above it; stat says isDir', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/x/y/z/file`, Buffer.from('deep'));
        for (const p of [dir, `${dir}/x`, `${dir}/x/y`, `${dir}/x/y/z`]) {
          const info = await d.stat(p);
          expect(info.isDir, p).toBe(true);
          expect(info.path).toBe(p);
        }
        expect(await d.list(`${dir}/x`)).toEqual([`${dir}/x/y`]);
      });

      it('list gives full paths of direct children, files and directories, no deeper', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/f1`, Buffer.from('1'));
        await d.putContent(`${dir}/f2`, Buffer.from('2'));
        await d.putContent(`${dir}/sub/inner`, Buffer.from('3'));
        await d.putContent(`${dir}/sub2/deeper/inner`, Buffer.from('4'));
        await d.putContent(`${dir}-sibling/f`, Buffer.from('not a child'));
        expect((await d.list(dir)).sort()).toEqual([`${dir}/f1`, `${dir}/f2`, `${dir}/sub`, `${dir}/sub2`]);
        expect(await d.list(`${dir}/sub2`)).toEqual([`${dir}/sub2/deeper`]);
        expect(await d.list('/')).toContain(dir);
      });

      it('list pages through more than 1000 children', async () => {
        const dir = fresh();
        const names = Array.from({ length: 1005 }, (_, i) => `${dir}/k${String(i).padStart(4, '0')}`);
        await inBatches(names, 32, (p) => d.putContent(p, Buffer.from(p)));
        const listed = await d.list(dir);
        expect(listed.length).toBe(1005);
        expect(listed.sort()).toEqual(names);
        await d.delete(dir);
        await expectNotFound(d.stat(dir));
      }, large);
    });

    describe('reader', () => {
      it('reads whole, from an offset, and ranges [offset, end)', async () => {
        const dir = fresh();
        const bytes = patternBytes(100_000, 7);
        await d.putContent(`${dir}/r`, bytes);
        const read = async (offset?: number, end?: number) => readAll(await d.reader(`${dir}/r`, offset, end));
        expect(sha256(await read())).toBe(sha256(bytes));
        expect(Buffer.compare(await read(1), bytes.subarray(1))).toBe(0);
        expect(Buffer.compare(await read(99_999), bytes.subarray(99_999))).toBe(0);
        expect(Buffer.compare(await read(10, 20), bytes.subarray(10, 20))).toBe(0);
        expect(Buffer.compare(await read(0, 1), bytes.subarray(0, 1))).toBe(0);
        expect(Buffer.compare(await read(50_000, 100_000), bytes.subarray(50_000))).toBe(0);
        expect(Buffer.compare(await read(90_000, 200_000), bytes.subarray(90_000)), 'end past EOF stops at EOF').toBe(0);
        expect((await read(100_000)).length, 'offset at EOF').toBe(0);
        expect((await read(150_000)).length, 'offset past EOF').toBe(0);
        expect((await read(5, 5)).length, 'empty range').toBe(0);
      });

      it('reads an empty file, also from offset 0 with an end', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/e`, new Uint8Array(0));
        expect((await readAll(await d.reader(`${dir}/e`))).length).toBe(0);
        expect((await readAll(await d.reader(`${dir}/e`, 0, 10))).length).toBe(0);
      });

      it('an aborted signal ends the stream with an AbortError', async () => {
        const dir = fresh();
        await writeThrough(d, `${dir}/big`, 8 * MiB, MiB, 3);
        const controller = new AbortController();
        const stream = await d.reader(`${dir}/big`, 0, undefined, controller.signal);
        let got = 0;
        const consume = (async () => {
          for await (const chunk of stream) {
            got += (chunk as Uint8Array).length;
            if (got > 0) controller.abort();
          }
        })();
        await expect(consume).rejects.toMatchObject({ name: 'AbortError' });
        expect(got).toBeLessThan(8 * MiB);
        expect(stream.destroyed).toBe(true);
      });
    });

    describe('writer', () => {
      it('a large file (40 MiB in 1 MiB writes) reads back identical', async () => {
        const dir = fresh();
        const hex = await writeThrough(d, `${dir}/large`, 40 * MiB, MiB, 11);
        expect((await d.stat(`${dir}/large`)).size).toBe(40 * MiB);
        expect(await digestOf(await d.reader(`${dir}/large`))).toEqual({ hex, size: 40 * MiB });
        // a range across the middle
        const all = await readAll(await d.reader(`${dir}/large`, 20 * MiB - 3, 20 * MiB + 5));
        expect(all.length).toBe(8);
        // and moved as a whole
        await d.move(`${dir}/large`, `${dir}/moved/large`);
        expect(await digestOf(await d.reader(`${dir}/moved/large`))).toEqual({ hex, size: 40 * MiB });
        await expectNotFound(d.stat(`${dir}/large`));
      }, large);

      it('odd-sized writes (not a multiple of any part size) read back identical', async () => {
        const dir = fresh();
        const total = 13 * MiB + 12_345;
        const hex = await writeThrough(d, `${dir}/odd`, total, 777_777, 12);
        expect(await digestOf(await d.reader(`${dir}/odd`))).toEqual({ hex, size: total });
      }, large);

      it('an empty writer commits an empty file', async () => {
        const dir = fresh();
        const w = await d.writer(`${dir}/empty`, false);
        await w.commit();
        expect(await d.stat(`${dir}/empty`)).toMatchObject({ size: 0, isDir: false });
        expect((await d.getContent(`${dir}/empty`)).length).toBe(0);
      });

      it('a writer without append replaces an existing file', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/f`, Buffer.from('old content that is longer'));
        const w = await d.writer(`${dir}/f`, false);
        w.stream.write(Buffer.from('new'));
        await w.commit();
        expect((await d.getContent(`${dir}/f`)).toString()).toBe('new');
      });

      it('cancel discards the file', async () => {
        const dir = fresh();
        const w = await d.writer(`${dir}/c`, false);
        w.stream.write(patternBytes(1000, 1));
        await w.cancel();
        await expectNotFound(d.stat(`${dir}/c`));
        // also after more than one part's worth
        const w2 = await d.writer(`${dir}/c2`, false);
        for (let i = 0; i < 12; i++) {
          if (!w2.stream.write(patternBytes(MiB, i))) await once(w2.stream, 'drain');
        }
        await w2.cancel();
        await expectNotFound(d.stat(`${dir}/c2`));
      }, large);

      it("commit after the caller's source failed (the stream destroyed) keeps a prefix of the bytes and resolves", async () => {
        const dir = fresh();
        const before = Buffer.from('committed by an earlier chunk;');
        await d.putContent(`${dir}/session`, before);
        const w = await d.writer(`${dir}/session`, true);
        const bytes = patternBytes(600_000, 31);
        await new Promise<void>((resolve, reject) => w.stream.write(bytes, (err) => (err ? reject(err) : resolve())));
        // What pipeline() does to the writer when the request body fails: a client that hung up.
        w.stream.on('error', () => undefined);
        w.stream.destroy(Object.assign(new Error('the client closed the connection'), { code: 'ECONNRESET' }));
        await w.commit();
        const kept = await d.getContent(`${dir}/session`);
        const whole = Buffer.concat([before, bytes]);
        expect(kept.length).toBeGreaterThanOrEqual(before.length);
        expect(Buffer.compare(kept, whole.subarray(0, kept.length)), 'a prefix of what was written').toBe(0);
        expect((await d.stat(`${dir}/session`)).size).toBe(kept.length);
      });

      it('commit and cancel are each final: a second call does nothing', async () => {
        const dir = fresh();
        const w = await d.writer(`${dir}/once`, false);
        w.stream.write(Buffer.from('kept'));
        await w.commit();
        await w.commit();
        await w.cancel();
        expect((await d.getContent(`${dir}/once`)).toString()).toBe('kept');
      });

      it('concurrent writers to different files', async () => {
        const dir = fresh();
        const sizes = [0, 1, 100_000, 3 * MiB, 6 * MiB + 1, 11 * MiB + 3];
        const hexes = await Promise.all(sizes.map((size, i) => writeThrough(d, `${dir}/w${i}`, size, 256 << 10, 100 + i)));
        for (const [i, size] of sizes.entries()) {
          expect(await digestOf(await d.reader(`${dir}/w${i}`))).toEqual({ hex: hexes[i], size });
        }
      }, large);
    });

    describe('append', () => {
      const cases: Array<[string, number, number]> = [
        ['missing file', 0, 1000],
        ['small + small', 1000, 2000],
        ['small + nothing', 1000, 0],
        ['small + large', 1000, 12 * MiB],
        ['large + small', 6 * MiB, 1000],
        ['large + nothing', 6 * MiB, 0],
        ['large + large', 7 * MiB + 5, 11 * MiB],
      ];
      for (const [label, first, second] of cases) {
        it(`append: ${label}`, async () => {
          const dir = fresh();
          const path = `${dir}/data`;
          const a = contentOf(first, 21);
          const b = contentOf(second, 22);
          if (label !== 'missing file') await writeThrough(d, path, first, MiB, 21);
          else await expectNotFound(d.stat(path));
          await writeThrough(d, path, second, MiB, 22, true);
          const whole = Buffer.concat([a, b]);
          expect(await digestOf(await d.reader(path))).toEqual({ hex: sha256(whole), size: whole.length });
          expect((await d.stat(path)).size).toBe(whole.length);
        }, large);
      }

      it('appends many times, like chunked uploads', async () => {
        const dir = fresh();
        const path = `${dir}/chunks`;
        const pieces = [100, 4 * MiB, 2 * MiB, 10, 6 * MiB, 1];
        let expected = Buffer.alloc(0);
        for (const [i, n] of pieces.entries()) {
          await writeThrough(d, path, n, MiB, 300 + i, true);
          expected = Buffer.concat([expected, contentOf(n, 300 + i)]);
        }
        expect(await digestOf(await d.reader(path))).toEqual({ hex: sha256(expected), size: expected.length });
      }, large);

      it('cancel of an append discards the whole file, earlier bytes included', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/a`, Buffer.from('before'));
        const w = await d.writer(`${dir}/a`, true);
        w.stream.write(Buffer.from('more'));
        await w.cancel();
        await expectNotFound(d.stat(`${dir}/a`));
      });
    });

    describe('move', () => {
      it('moves a file to a new directory; the source is gone', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/src/file`, Buffer.from('payload'));
        await d.move(`${dir}/src/file`, `${dir}/dst/deep/file`);
        expect((await d.getContent(`${dir}/dst/deep/file`)).toString()).toBe('payload');
        await expectNotFound(d.stat(`${dir}/src/file`));
      });

      it('replaces the destination', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/a`, Buffer.from('new'));
        await d.putContent(`${dir}/b`, Buffer.from('old and longer'));
        await d.move(`${dir}/a`, `${dir}/b`);
        expect((await d.getContent(`${dir}/b`)).toString()).toBe('new');
        await expectNotFound(d.stat(`${dir}/a`));
      });

      it('moving a file onto itself keeps it', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/same`, Buffer.from('stay'));
        await d.move(`${dir}/same`, `${dir}/same`);
        expect((await d.getContent(`${dir}/same`)).toString()).toBe('stay');
      });

      it('moves an empty file', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/e`, new Uint8Array(0));
        await d.move(`${dir}/e`, `${dir}/e2`);
        expect(await d.stat(`${dir}/e2`)).toMatchObject({ size: 0, isDir: false });
      });
    });

    describe('delete', () => {
      it('deletes a file, leaving its siblings', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/a`, Buffer.from('a'));
        await d.putContent(`${dir}/ab`, Buffer.from('ab'));
        await d.delete(`${dir}/a`);
        await expectNotFound(d.stat(`${dir}/a`));
        expect((await d.getContent(`${dir}/ab`)).toString()).toBe('ab');
      });

      it('deletes a directory with everything below it, not names that only share its prefix', async () => {
        const dir = fresh();
        await d.putContent(`${dir}/tree/a`, Buffer.from('1'));
        await d.putContent(`${dir}/tree/sub/b`, Buffer.from('2'));
        await d.putContent(`${dir}/tree/sub/deeper/c`, Buffer.from('3'));
        await d.putContent(`${dir}/tree2/keep`, Buffer.from('4'));
        await d.putContent(`${dir}/treefile`, Buffer.from('5'));
        await d.delete(`${dir}/tree`);
        await expectNotFound(d.stat(`${dir}/tree`));
        await expectNotFound(d.stat(`${dir}/tree/sub/b`));
        await expectNotFound(d.list(`${dir}/tree`));
        expect((await d.getContent(`${dir}/tree2/keep`)).toString()).toBe('4');
        expect((await d.getContent(`${dir}/treefile`)).toString()).toBe('5');
      });
    });

    describe('path grammar', () => {
      const bad = ['', 'relative', '/a/../b', '/..', '/a/./b', '/a//b', '/a/b/', '/a b', '/a/b\0', '/ä', '/a?b', '/a#b', '/a\\b', `/${'x'.repeat(5000)}`];
      it('every method refuses bad paths with InvalidPathError', async () => {
        for (const p of bad) {
          const calls: Array<[string, () => Promise<unknown>]> = [
            ['stat', () => d.stat(p)],
            ['getContent', () => d.getContent(p)],
            ['putContent', () => d.putContent(p, Buffer.from('x'))],
            ['reader', () => d.reader(p)],
            ['writer', () => d.writer(p, false)],
            ['writer append', () => d.writer(p, true)],
            ['list', () => d.list(p)],
            ['move from', () => d.move(p, '/ok')],
            ['move to', () => d.move('/ok', p)],
            ['delete', () => d.delete(p)],
          ];
          for (const [what, call] of calls) {
            await expect(call(), `${what} ${JSON.stringify(p.slice(0, 20))}`).rejects.toBeInstanceOf(InvalidPathError);
          }
        }
      });

      it('accepts every character of the grammar', async () => {
        const dir = fresh();
        const p = `${dir}/Az09._:-/sha256:abc.def-1_2`;
        await d.putContent(p, Buffer.from('ok'));
        expect((await d.getContent(p)).toString()).toBe('ok');
        expect(await d.list(`${dir}/Az09._:-`)).toEqual([p]);
        await d.move(p, `${p}.moved`);
        expect((await d.getContent(`${p}.moved`)).toString()).toBe('ok');
      });
    });
  });
}

async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}
