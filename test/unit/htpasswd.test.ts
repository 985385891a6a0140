// HtpasswdFile against files made by the real `htpasswd -B` (apache2-utils).
import { appendFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import * as bcrypt from 'bcryptjs';
import { HtpasswdFile } from '../../auth/htpasswd.js';
import { removeTree, runOk, tempDir } from '../support/processes.js';
import { requireTool } from '../support/tools.js';

// Counts bcrypt computations (the constant-time property) while keeping the real one.
vi.mock('bcryptjs', async (importOriginal) => {
  const real = await importOriginal<typeof import('bcryptjs')>();
  return { ...real, hash: vi.fn(real.hash) };
});
const hashSpy = vi.mocked(bcrypt.hash);

const available = requireTool('htpasswd', 'apache2-utils');

/** `htpasswd -B -b [-c] [-C cost] file user password`: creates or updates an entry. */
async function htpasswd(file: string, user: string, password: string, opts: { create?: boolean; cost?: number } = {}): Promise<void> {
  const args = ['-B', '-b'];
  if (opts.create) args.push('-c');
  if (opts.cost !== undefined) args.push('-C', String(opts.cost));
  await runOk('htpasswd', [...args, file, user, password]);
}

describe.skipIf(!available)('HtpasswdFile', () => {
  let dir: string;
  let file: string;
  let n = 0;

  beforeAll(async () => {
    dir = await tempDir('wharf-htpasswd-');
  });
  afterAll(() => removeTree(dir));
  beforeEach(() => {
    file = join(dir, `users-${++n}`);
    hashSpy.mockClear();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('verifies bcrypt users, names with $ + @ . and passwords with colons included', async () => {
    await htpasswd(file, 'alice', 'correct horse', { create: true });
    await htpasswd(file, 'a$b', 'dollar:pw');
    await htpasswd(file, 'c+d@example.com', 'p@ss:w:rd');
    await htpasswd(file, 'bot.ci', 'x');
    const users = new HtpasswdFile(file);
    await users.load();
    expect(await users.verify('alice', 'correct horse')).toBe(true);
    expect(await users.verify('a$b', 'dollar:pw')).toBe(true);
    expect(await users.verify('c+d@example.com', 'p@ss:w:rd')).toBe(true);
    expect(await users.verify('bot.ci', 'x')).toBe(true);
    expect(await users.has('a$b')).toBe(true);
    expect(await users.has('c+d@example.com')).toBe(true);
    expect(await users.has('nobody')).toBe(false);
  });

  it('refuses wrong passwords, unknown users, near misses', async () => {
    await htpasswd(file, 'alice', 'secret', { create: true });
    const users = new HtpasswdFile(file);
    await users.load();
    for (const [user, password] of [
      ['alice', 'Secret'],
      ['alice', 'secret '],
      ['alice', ''],
      ['Alice', 'secret'],
      ['alice ', 'secret'],
      ['bob', 'secret'],
      ['', ''],
    ]) {
      expect(await users.verify(user!, password!), `${user}/${password}`).toBe(false);
    }
  });

  it('costs one bcrypt computation at the file\'s cost whether or not the user exists', async () => {
    await htpasswd(file, 'alice', 'secret', { create: true, cost: 6 });
    await htpasswd(file, 'bob', 'secret', { cost: 6 });
    const users = new HtpasswdFile(file);
    await users.load();
    hashSpy.mockClear();
    await users.verify('alice', 'wrong');
    await users.verify('nobody', 'secret');
    await users.verify('alice', 'secret');
    expect(hashSpy).toHaveBeenCalledTimes(3);
    for (const [, salt] of hashSpy.mock.calls) expect(String(salt)).toMatch(/^\$2[aby]\$06\$/);
  });

  it('skips comments and blank lines, tolerates CRLF and a BOM; the last entry of a name wins', async () => {
    await htpasswd(file, 'alice', 'one', { create: true });
    const first = (await readFile(file, 'utf8')).trim();
    await htpasswd(file, 'alice', 'two');
    const second = (await readFile(file, 'utf8')).trim();
    await writeFile(file, `\uFEFF# users\r\n\r\n   \r\n${second}\r\n${first}\r\n`);
    const users = new HtpasswdFile(file);
    await users.load();
    expect(await users.verify('alice', 'one')).toBe(true);
    expect(await users.verify('alice', 'two')).toBe(false);
  });

  it('ignores non-bcrypt entries with one warning each, also across reloads', async () => {
    await htpasswd(file, 'good', 'pw', { create: true });
    await runOk('htpasswd', ['-b', '-s', file, 'sha', 'pw']);
    await runOk('htpasswd', ['-b', '-m', file, 'md5', 'pw']);
    await runOk('htpasswd', ['-b', '-d', file, 'crypt', 'pw']);
    await appendFile(file, 'plain:pw\n');
    const warnings: string[] = [];
    const users = new HtpasswdFile(file, { reloadCheckMs: 0, onWarning: (m) => warnings.push(m) });
    await users.load();
    for (const user of ['sha', 'md5', 'crypt', 'plain']) {
      expect(await users.verify(user, 'pw')).toBe(false);
      expect(await users.has(user)).toBe(false);
    }
    expect(await users.verify('good', 'pw')).toBe(true);
    expect(warnings).toHaveLength(4);
    expect(warnings[0]).toMatch(/user "sha" ignored: its password hash is SHA-1 \(\{SHA\}\), not bcrypt \(recreate it with htpasswd -B\)/);
    expect(warnings[1]).toMatch(/user "md5" .* MD5 \(apr1\)/);
    expect(warnings[2]).toMatch(/user "crypt" .* crypt/);
    expect(warnings[3]).toMatch(/user "plain" .* plain text/);
    await htpasswd(file, 'new', 'pw'); // a change: the file is read again
    expect(await users.verify('new', 'pw')).toBe(true);
    expect(warnings).toHaveLength(4);
  });

  it('re-reads the file when it changes: users added, passwords changed, users removed', async () => {
    await htpasswd(file, 'alice', 'a1', { create: true });
    const users = new HtpasswdFile(file, { reloadCheckMs: 0 });
    await users.load();
    await htpasswd(file, 'bob', 'b1');
    expect(await users.verify('bob', 'b1')).toBe(true);
    await htpasswd(file, 'alice', 'a2');
    expect(await users.verify('alice', 'a2')).toBe(true);
    expect(await users.verify('alice', 'a1')).toBe(false);
    await runOk('htpasswd', ['-D', file, 'bob']);
    expect(await users.has('bob')).toBe(false);
    // Replaced by rename, as editors and config management do.
    const next = `${file}.new`;
    await htpasswd(next, 'carol', 'c1', { create: true });
    await rename(next, file);
    expect(await users.verify('carol', 'c1')).toBe(true);
    expect(await users.has('alice')).toBe(false);
  });

  it('looks for changes at most every reloadCheckMs', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    await htpasswd(file, 'alice', 'a1', { create: true });
    const users = new HtpasswdFile(file, { reloadCheckMs: 5000 });
    await users.load();
    await htpasswd(file, 'bob', 'b1');
    vi.setSystemTime(Date.now() + 4000);
    expect(await users.has('bob')).toBe(false);
    vi.setSystemTime(Date.now() + 1500);
    expect(await users.has('bob')).toBe(true);
  });

  it('keeps the last good contents when the file becomes unreadable or malformed, reporting it once', async () => {
    await htpasswd(file, 'alice', 'a1', { create: true });
    const good = await readFile(file, 'utf8');
    const errors: Error[] = [];
    const users = new HtpasswdFile(file, { reloadCheckMs: 0, onError: (e) => errors.push(e) });
    await users.load();

    await rm(file);
    expect(await users.verify('alice', 'a1')).toBe(true);
    expect(await users.has('alice')).toBe(true);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toBe(`htpasswd file ${file}: cannot read it (ENOENT)`);

    await mkdir(file); // a directory where the file was: unreadable in another way
    expect(await users.verify('alice', 'a1')).toBe(true);
    expect(errors).toHaveLength(1);
    await rm(file, { recursive: true });

    await writeFile(file, `${good}bob:$2y$05$tooShort\n`);
    expect(await users.verify('alice', 'a1')).toBe(true);
    expect(await users.has('bob')).toBe(false);
    expect(errors).toHaveLength(1); // still the same streak of failures

    await htpasswd(file, 'bob', 'b1', { create: true }); // good again
    expect(await users.verify('bob', 'b1')).toBe(true);
    expect(await users.has('alice')).toBe(false);

    await writeFile(file, 'no colon here\n');
    expect(await users.verify('bob', 'b1')).toBe(true);
    expect(errors.map((e) => e.message)).toEqual([
      `htpasswd file ${file}: cannot read it (ENOENT)`,
      `htpasswd file ${file}: line 1: no ':' between user name and password hash`,
    ]);
  });

  it('load() throws when the file is missing or malformed, naming the line but never its content', async () => {
    await expect(new HtpasswdFile(join(dir, 'missing')).load()).rejects.toThrow(`htpasswd file ${join(dir, 'missing')}: cannot read it (ENOENT)`);
    await htpasswd(file, 'alice', 'a1', { create: true });
    const hashLine = (await readFile(file, 'utf8')).trim();
    const broken = hashLine.slice(0, -5); // a truncated bcrypt hash
    for (const [content, message] of [
      [`${hashLine}\nsecretline-without-colon\n`, "line 2: no ':' between user name and password hash"],
      [`:${hashLine.split(':')[1]}\n`, 'line 1: empty user name'],
      [`# c\n${broken}\n`, 'line 2: user "alice" has a malformed bcrypt hash'],
    ] as const) {
      await writeFile(file, content);
      const err = await new HtpasswdFile(file).load().catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toBe(`htpasswd file ${file}: ${message}`);
      expect((err as Error).message).not.toContain('secretline');
      expect((err as Error).message).not.toContain(hashLine.split(':')[1]!.slice(7, 20));
    }
  });

  it('loads on first use when load() was not called', async () => {
    await htpasswd(file, 'alice', 'a1', { create: true });
    const users = new HtpasswdFile(file);
    expect(await users.verify('alice', 'a1')).toBe(true);
    await expect(new HtpasswdFile(join(dir, 'missing')).has('x')).rejects.toThrow(/cannot read it/);
  });

  it('concurrent callers all see a change', async () => {
    await htpasswd(file, 'alice', 'a1', { create: true });
    const users = new HtpasswdFile(file, { reloadCheckMs: 0 });
    await users.load();
    await htpasswd(file, 'bob', 'b1');
    const results = await Promise.all(Array.from({ length: 20 }, () => users.has('bob')));
    expect(results.every(Boolean)).toBe(true);
  });
});
