// Child processes for end-to-end tests: spawn with logs captured to a file, pick free
// loopback ports, poll until something is ready, run a command to completion, and tear
// everything down (whole process groups, temp dirs) even when a test fails.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is test/support/processes.ts). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where child-process logs go; kept after the run so a failure can be read afterwards. */
export const LOG_DIR = process.env.WHARF_E2E_LOG_DIR ?? join(REPO_ROOT, '.cache', 'e2e-logs');

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// Process groups we started and temp dirs we made: on process exit, whatever is still there
// is killed / unmounted and removed as a last resort (a worker that dies mid-test must not
// leave dockerd, a registry or gigabytes of vfs layers behind).
const liveGroups = new Set<number>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    for (const dir of liveDirs) {
      for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
      try {
        rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
      } catch {
        /* best effort */
      }
    }
  });
}
function trackGroup(pid: number): void {
  liveGroups.add(pid);
  installExitHook();
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface LoggedProcess {
  name: string;
  pid: number;
  child: ChildProcess;
  logFile: string;
  /** Settles when the process exits. */
  exited: Promise<Exit>;
  /** Exit status once exited, undefined while running. */
  exit(): Exit | undefined;
  /** The last `lines` lines of the log file. */
  logTail(lines?: number): string;
  /** SIGTERM to the process group, SIGKILL after `graceMs`; resolves when the leader exited. Idempotent. */
  stop(graceMs?: number): Promise<Exit>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Log file; default LOG_DIR/<name>-<time>-<random>.log */
  logFile?: string;
}

let logCounter = 0;
function newLogFile(name: string): string {
  mkdirSync(LOG_DIR, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  return join(LOG_DIR, `${name}-${stamp}-${process.pid}-${logCounter++}.log`);
}

export function readTail(file: string, lines = 40): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Starts a long-running child in its own process group with stdout+stderr appended to a
 * log file.
 */
export function spawnLogged(name: string, command: string, args: string[], opts: SpawnOptions = {}): LoggedProcess {
  const logFile = opts.logFile ?? newLogFile(name);
  mkdirSync(dirname(logFile), { recursive: true });
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, args, {
      cwd: opts.cwd ?? REPO_ROOT,
      env: opts.env ?? process.env,
      stdio: ['ignore', fd, fd],
      detached: true, // own process group: stop() kills children too
    });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) {
    // spawn failed (ENOENT is reported through 'error', which must be listened to)
    child.once('error', () => undefined);
    throw new Error(`${name}: could not spawn ${command}`);
  }
  const pid = child.pid;
  trackGroup(pid);
  let status: Exit | undefined;
  const exited = new Promise<Exit>((resolveExit) => {
    child.once('error', (err) => {
      status = { code: 127, signal: null };
      liveGroups.delete(pid);
      resolveExit(status);
      void err;
    });
    child.once('exit', (code, signal) => {
      status = { code, signal };
      resolveExit(status);
    });
  });
  const killGroup = (signal: NodeJS.Signals): void => {
    try {
      process.kill(-pid, signal);
    } catch {
      /* group gone */
    }
  };
  const stopGroup = async (graceMs: number): Promise<Exit> => {
    if (status === undefined) {
      killGroup('SIGTERM');
      const timer = setTimeout(() => killGroup('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    const result = await exited;
    // Stragglers in the group (children that ignored SIGTERM) go too.
    killGroup('SIGKILL');
    liveGroups.delete(pid);
    return result;
  };
  let stopping: Promise<Exit> | undefined;
  return {
    name,
    pid,
    child,
    logFile,
    exited,
    exit: () => status,
    logTail: (lines = 40) => readTail(logFile, lines),
    stop(graceMs = 10_000) {
      stopping ??= stopGroup(graceMs);
      return stopping;
    },
  };
}

/** A free TCP port on 127.0.0.1 (bind port 0, read it back, release it). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('no port'));
        return;
      }
      const { port } = addr;
      srv.close(() => resolvePort(port));
    });
  });
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** What is awaited, for the timeout message. */
  what?: string;
  /** Give up early when this process exits (its log tail goes into the error). */
  process?: LoggedProcess;
}

/** Polls `check` until it returns a value other than undefined/false. */
export async function waitFor<T>(check: () => Promise<T | undefined | false> | T | undefined | false, opts: WaitOptions = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const intervalMs = opts.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const proc = opts.process;
    if (proc?.exit() !== undefined) {
      const st = proc.exit()!;
      throw new Error(
        `${proc.name} exited (code ${st.code}, signal ${st.signal}) while waiting for ${opts.what ?? 'readiness'}; ` +
          `log ${proc.logFile}:\n${proc.logTail()}`,
      );
    }
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const tail = proc ? `\nlog ${proc.logFile}:\n${proc.logTail()}` : '';
      const last = lastError ? ` (last error: ${(lastError as Error).message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what ?? 'condition'}${last}${tail}`);
    }
    await sleep(intervalMs);
  }
}

/** Waits until GET `url` answers `status` (default 200); returns the response. */
export function waitForUrl(url: string, opts: WaitOptions & { status?: number; header?: [string, string] } = {}): Promise<Response> {
  const want = opts.status ?? 200;
  return waitFor(
    async () => {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status !== want) return undefined;
      if (opts.header && res.headers.get(opts.header[0]) !== opts.header[1]) return undefined;
      return res;
    },
    { what: `GET ${url} -> ${want}`, ...opts },
  );
}

// ---------------------------------------------------------------------------------------
// Commands that run to completion.

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The command line, for messages. */
  command: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string | Buffer;
  timeoutMs?: number;
}

/** Runs a command (no shell) to completion in its own process group; never throws on a non-zero exit. */
export function run(command: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const commandLine = [command, ...args].map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ');
  return new Promise((resolveRun) => {
    const child = spawn(command, args, {
      cwd: opts.cwd ?? REPO_ROOT,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    if (child.pid !== undefined) trackGroup(child.pid);
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            try {
              process.kill(-child.pid!, 'SIGKILL');
            } catch {
              /* gone */
            }
          }, opts.timeoutMs);
    const finish = (code: number, extraErr = ''): void => {
      if (timer) clearTimeout(timer);
      if (child.pid !== undefined) liveGroups.delete(child.pid);
      resolveRun({
        code,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + extraErr + (timedOut ? `\n(killed after ${opts.timeoutMs} ms)` : ''),
        command: commandLine,
      });
    };
    child.once('error', (e) => finish(127, `\n${e.message}`));
    child.once('close', (code, signal) => finish(code ?? (signal ? 128 : 1)));
    child.stdin!.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Like run(), but throws (with both output streams) unless the command exits 0. */
export async function runOk(command: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(command, args, opts);
  if (r.code !== 0) throw new Error(describeFailure(r));
  return r;
}

export function describeFailure(r: RunResult): string {
  return `command failed (exit ${r.code}): ${r.command}\n--- stdout\n${r.stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;
}

// ---------------------------------------------------------------------------------------
// Temp dirs, mounts and cleanup.

/** A fresh temp dir; prefix is short on purpose (unix socket paths are limited to 107 bytes). */
export async function tempDir(prefix: string, base = tmpdir()): Promise<string> {
  const dir = await mkdtemp(join(base, prefix));
  liveDirs.add(dir);
  installExitHook();
  return dir;
}

/** Mount points (host mount namespace) at or under `dir`, deepest first. */
export function mountsUnder(dir: string): string[] {
  let text = '';
  try {
    text = readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return [];
  }
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const decode = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter((m): m is string => m !== undefined)
    .map(decode)
    .filter((m) => m === dir || m.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
}

/** Lazily unmounts everything under `dir`, then removes it (retrying: busy dirs clear quickly). */
export async function removeTree(dir: string): Promise<void> {
  for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
  for (let i = 0; ; i++) {
    try {
      await rm(dir, { recursive: true, force: true, maxRetries: 3 });
      liveDirs.delete(dir);
      return;
    } catch (err) {
      if (i >= 4) throw err;
      for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
      await sleep(300);
    }
  }
}

/**
 * Pids of processes whose command line or working directory lies under `dir`. Used to find
 * stragglers of something we started in a unique temp dir (e.g. a containerd-shim that left
 * dockerd's process group), so they can be ended by id.
 */
export function pidsReferencing(dir: string): number[] {
  const pids: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ');
      let cwd = '';
      try {
        cwd = readlinkSync(`/proc/${e}/cwd`);
      } catch {
        /* not ours to read */
      }
      if (cmd.includes(dir) || cwd === dir || cwd.startsWith(`${dir}/`)) pids.push(pid);
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

/** SIGKILLs the given pids one by one (stragglers found by pidsReferencing). */
export function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/**
 * Ends every process still running out of `dir` (a few passes: killing one can reveal
 * another), then removes the tree.
 */
export async function reapAndRemove(dir: string): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const left = pidsReferencing(dir);
    if (left.length === 0) break;
    killPids(left);
    await sleep(300);
  }
  await removeTree(dir);
}

/**
 * A stack of teardown steps. Register each resource right after creating it; `run()` undoes
 * them in reverse order, continuing past failures, so afterAll cleans up whatever beforeAll
 * managed to create.
 */
export class Cleanup {
  private steps: Array<{ what: string; fn: () => unknown }> = [];

  add(what: string, fn: () => unknown): void {
    this.steps.push({ what, fn });
  }

  async run(): Promise<void> {
    const errors: string[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (err) {
        errors.push(`${step.what}: ${(err as Error).message}`);
      }
    }
    if (errors.length > 0) throw new Error(`cleanup failed:\n${errors.join('\n')}`);
  }
}

export const isDir = (p: string): boolean => existsSync(p) && statSync(p).isDirectory();
