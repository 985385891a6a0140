// Basic-auth users from an Apache htpasswd file of bcrypt entries (`htpasswd -B`), read as
// Distribution reads it: lines trimmed, blank and '#' lines skipped, each split at the first ':',
// the last entry of a name winning. Other hash kinds ({SHA}, apr1 MD5, crypt) are ignored with a
// warning, as Distribution cannot verify them either. The file is re-read when it changes.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { genSaltSync, hash as bcryptHash } from 'bcryptjs';

export interface HtpasswdOptions {
  /** Check the file for changes (mtime, size, inode) at most this often. Default 1000 ms; 0 = on every call. */
  reloadCheckMs?: number;
  /** A re-read that failed (unreadable, malformed): the last good contents stay. Reported once until it succeeds again. */
  onError?: (error: Error) => void;
  /** An entry ignored because its hash is not bcrypt; reported once per user name and kind. */
  onWarning?: (message: string) => void;
}

// $2a$/$2b$/$2y$, cost 04-31, 22 characters of salt and 31 of hash.
const BCRYPT = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
/** Salt and cost prefix of a bcrypt hash, what bcrypt hashes a candidate password with. */
const SALT_LENGTH = 29;
const DEFAULT_COST = 10;

interface Parsed {
  users: Map<string, string>;
  ignored: Array<{ name: string; kind: string }>;
}

export class HtpasswdFile {
  private users = new Map<string, string>();
  private loaded = false;
  private fingerprint = '';
  private lastCheck = 0;
  private checking: Promise<void> | undefined;
  private failing = false;
  private readonly warned = new Set<string>();
  /** What an unknown user is checked against: the salt has the file's usual cost, the rest never matches. */
  private dummy = dummyHash(DEFAULT_COST);
  private readonly reloadCheckMs: number;

  constructor(
    readonly path: string,
    private readonly options: HtpasswdOptions = {},
  ) {
    this.reloadCheckMs = options.reloadCheckMs ?? 1000;
  }

  /** Reads the file. Throws when it cannot be read or a line is malformed (start-up should stop). */
  async load(): Promise<void> {
    this.lastCheck = Date.now();
    const [fingerprint, text] = await this.read();
    this.install(parse(text, this.path), fingerprint);
  }

  /**
   * Whether `password` is `username`'s. Costs one bcrypt computation whether or not the user
   * exists, and compares in constant time, so timing tells neither.
   */
  async verify(username: string, password: string): Promise<boolean> {
    await this.refresh();
    const stored = this.users.get(username);
    const target = stored ?? this.dummy;
    const computed = await bcryptHash(password, target.slice(0, SALT_LENGTH));
    const a = Buffer.from(computed);
    const b = Buffer.from(target);
    const equal = a.length === b.length && timingSafeEqual(a, b);
    return stored !== undefined && equal;
  }

  /** Whether the user exists (for a refresh token whose subject may have been removed since). */
  async has(username: string): Promise<boolean> {
    await this.refresh();
    return this.users.has(username);
  }

  private async refresh(): Promise<void> {
    if (!this.loaded) return this.load();
    if (Date.now() - this.lastCheck < this.reloadCheckMs) return;
    // Concurrent callers share one check.
    this.checking ??= this.reloadIfChanged().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async reloadIfChanged(): Promise<void> {
    this.lastCheck = Date.now();
    try {
      if ((await this.stat()) === this.fingerprint) {
        this.failing = false;
        return;
      }
      const [fingerprint, text] = await this.read();
      this.install(parse(text, this.path), fingerprint);
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.options.onError?.(err as Error);
      this.failing = true;
    }
  }

  /** The file's text and its fingerprint from before the read: a change during the read is seen at the next check. */
  private async read(): Promise<[string, string]> {
    const fingerprint = await this.stat();
    try {
      return [fingerprint, await readFile(this.path, 'utf8')];
    } catch (err) {
      throw this.unreadable(err);
    }
  }

  /** Identity and version of the file: inode, size, mtime, ctime. */
  private async stat(): Promise<string> {
    try {
      const s = await stat(this.path);
      return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
    } catch (err) {
      throw this.unreadable(err);
    }
  }

  private unreadable(err: unknown): Error {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return new Error(`htpasswd file ${this.path}: cannot read it (${code})`, { cause: err });
  }

  private install(parsed: Parsed, fingerprint: string): void {
    for (const { name, kind } of parsed.ignored) {
      const key = `${name}\0${kind}`;
      if (this.warned.has(key)) continue;
      this.warned.add(key);
      this.options.onWarning?.(
        `htpasswd file ${this.path}: user "${name}" ignored: its password hash is ${kind}, not bcrypt (recreate it with htpasswd -B)`,
      );
    }
    const cost = usualCost(parsed.users);
    if (cost !== costOf(this.dummy)) this.dummy = dummyHash(cost);
    this.users = parsed.users;
    this.fingerprint = fingerprint;
    this.loaded = true;
  }
}

function parse(text: string, path: string): Parsed {
  const users = new Map<string, string>();
  const ignored: Parsed['ignored'] = [];
  const lines = text.replace(/^\uFEFF/, '').split('\n');
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    // The line's content never goes into a message: it holds a password hash.
    const where = `htpasswd file ${path}: line ${i + 1}`;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`${where}: no ':' between user name and password hash`);
    if (colon === 0) throw new Error(`${where}: empty user name`);
    const name = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (BCRYPT.test(hash)) users.set(name, hash);
    else if (hash.startsWith('$2')) throw new Error(`${where}: user "${name}" has a malformed bcrypt hash`);
    else {
      users.delete(name); // a later line for the same name replaces an earlier one, as in Distribution
      ignored.push({ name, kind: hashKind(hash) });
    }
  });
  return { users, ignored };
}

function hashKind(hash: string): string {
  if (hash.startsWith('{SHA}')) return 'SHA-1 ({SHA})';
  if (hash.startsWith('{SSHA}')) return 'salted SHA-1 ({SSHA})';
  if (hash.startsWith('$apr1$')) return 'MD5 (apr1)';
  if (/^\$(1|5|6|md5|sha1|y|gy|7)\$/.test(hash)) return 'crypt';
  if (/^[./0-9A-Za-z]{13}$/.test(hash)) return 'crypt (DES) or plain text';
  return 'plain text or unknown';
}

function costOf(hash: string): number {
  return Number(hash.slice(4, 6));
}

/** The most common cost in the file (htpasswd -B makes 5 unless -C says otherwise). */
function usualCost(users: Map<string, string>): number {
  const counts = new Map<number, number>();
  for (const hash of users.values()) counts.set(costOf(hash), (counts.get(costOf(hash)) ?? 0) + 1);
  let best = DEFAULT_COST;
  let bestCount = 0;
  for (const [cost, count] of counts) {
    if (count > bestCount) [best, bestCount] = [cost, count];
  }
  return best;
}

/** A valid salt of `cost` followed by a hash part no password produces (random, not derived). */
function dummyHash(cost: number): string {
  const filler = randomBytes(31).toString('base64').replace(/[^A-Za-z0-9]/g, '.').slice(0, 31);
  return genSaltSync(cost) + filler;
}
