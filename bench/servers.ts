// Starts the two registries under test as child processes: wharf (bin/wharf.js serve,
// executed as the `wharf` command is, so with its node flags; configured by REGISTRY_*
// environment variables) and CNCF Distribution (/usr/bin/docker-registry serve
// config.yml). Same machine, same filesystem, same log level, no auth. Their logs go to
// files (never through this process).
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
// Process helpers shared with the test harness.
import { freePort, REPO_ROOT } from '../test/support/processes.js';

export { freePort, REPO_ROOT };

export const DISTRIBUTION_BINARY = '/usr/bin/docker-registry';

export type ServerKind = 'wharf' | 'distribution';

export interface LogSettings {
  /** 'info': info level with access logs on (both). 'warn': warn level, access logs off (both). */
  mode: 'info' | 'warn';
}

export interface ServerOptions {
  /** Working directory of this run: the server gets <dir>/<kind>/data and <dir>/<kind>.log. */
  workDir: string;
  log: LogSettings;
  /** Extra node flags for wharf (e.g. --cpu-prof), added to those of bin/wharf.js's #! line. */
  nodeArgs?: string[];
  /** wharf: the script to run instead of bin/wharf.js (e.g. a compiled dist/server/main.js). */
  wharfEntry?: string;
  /** wharf: extra environment (e.g. MALLOC_ARENA_MAX=2). */
  wharfEnv?: Record<string, string>;
  /** Distribution: use the in-memory blob descriptor cache, as its shipped config.yml does. */
  distributionCache?: boolean;
  /** wharf: listen on this port (default: a free one) and show this name. */
  port?: number;
  label?: string;
  /** wharf behind auth: GET /v2/ answers 401 once it is up. */
  authenticated?: boolean;
}

export interface RunningServer {
  kind: ServerKind;
  /** Display name. */
  label: string;
  pid: number;
  /** http://127.0.0.1:PORT */
  base: string;
  port: number;
  /** Storage root (Distribution layout under docker/registry/v2). */
  dataDir: string;
  logPath: string;
  /** Last lines of the server's log, for error reports. */
  logTail(lines?: number): string;
  /** Empties the log file (it is opened for appending, so the server keeps writing at the new end). */
  truncateLog(): void;
  stop(): Promise<void>;
}

/** The node flags on a script's `#!/usr/bin/env -S node ...` line. */
function shebangNodeFlags(script: string): string[] {
  const first = readFileSync(script, 'utf8').split('\n', 1)[0] ?? '';
  const words = first.replace(/^#!\S*\s*(-S\s+)?/, '').split(/\s+/).filter(Boolean);
  const node = words.findIndex((w) => w === 'node' || w.endsWith('/node'));
  return node < 0 ? [] : words.slice(node + 1);
}

/** Alternating order, round by round: neither registry always goes first. */
export const roundOrder = (round: number): ServerKind[] => (round % 2 === 0 ? ['wharf', 'distribution'] : ['distribution', 'wharf']);

export async function startServer(kind: ServerKind, options: ServerOptions): Promise<RunningServer> {
  const dir = join(options.workDir, kind);
  const logPath = join(options.workDir, `${kind}.log`);
  if (kind === 'distribution') return startDistribution(dir, logPath, { log: options.log, cache: options.distributionCache !== false });
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  const port = options.port ?? (await freePort());
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`,
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: dataDir,
    REGISTRY_STORAGE_DELETE_ENABLED: 'true',
    REGISTRY_LOG_LEVEL: options.log.mode,
    REGISTRY_LOG_ACCESSLOG_DISABLED: options.log.mode === 'info' ? 'false' : 'true',
    REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
    NODE_ENV: 'production',
    ...options.wharfEnv,
  };
  delete env.REGISTRY_CONFIGURATION_PATH;
  const bin = join(REPO_ROOT, 'bin/wharf.js');
  // Executed directly, as the `wharf` command is; extra node flags (--cpu-prof is not
  // allowed in NODE_OPTIONS) mean running node with the #! line's flags plus those.
  const [command, args] = options.wharfEntry
    ? [process.execPath, [...(options.nodeArgs ?? []), options.wharfEntry, 'serve']]
    : options.nodeArgs
      ? [process.execPath, [...shebangNodeFlags(bin), ...options.nodeArgs, bin, 'serve']]
      : [bin, ['serve']];
  return launch({
    kind,
    label: options.label ?? 'wharf',
    command,
    args,
    cwd: dir,
    env,
    port,
    dataDir: env.REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY!,
    logPath,
    readyStatus: options.authenticated ? 401 : 200,
  });
}

/**
 * Another wharf on the bench wharf's data (`dataDir`), in <workDir>/<name>: the variants the
 * manifest GET figures compare with the plain wharf (token auth, metrics). Started exactly as
 * the plain wharf is (command, node flags, log settings, environment), plus `env`.
 */
export async function startWharfVariant(name: string, dataDir: string, options: ServerOptions, env: Record<string, string>): Promise<RunningServer> {
  const workDir = join(options.workDir, name);
  await mkdir(workDir, { recursive: true });
  return startServer('wharf', {
    ...options,
    workDir,
    label: options.label ?? `wharf+${name}`,
    wharfEnv: { ...options.wharfEnv, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: dataDir, ...env },
  });
}

/** Distribution's config.yml settings beyond the storage root and port. */
export interface DistributionSettings {
  log: LogSettings;
  /** The in-memory blob descriptor cache, as its shipped config.yml has (default on). */
  cache?: boolean;
  /** storage.delete.enabled (default on). */
  deleteEnabled?: boolean;
  /** proxy.remoteurl: run as a pull-through mirror of this registry. */
  remoteUrl?: string;
}

/**
 * Distribution on a new root under `dir` (data/, config.yml), its log in `logPath`;
 * `name` is how start-up errors call it.
 */
export async function startDistribution(dir: string, logPath: string, settings: DistributionSettings, name = 'Distribution'): Promise<RunningServer> {
  if (!existsSync(DISTRIBUTION_BINARY)) {
    throw new Error(`${DISTRIBUTION_BINARY} not found: apt-get install docker-registry`);
  }
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  const port = await freePort();
  const configPath = join(dir, 'config.yml');
  writeFileSync(configPath, distributionConfig(dataDir, port, settings));
  // Distribution reads REGISTRY_* variables too: none may leak in from our environment.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  return launch({ kind: 'distribution', label: 'Distribution', name, command: DISTRIBUTION_BINARY, args: ['serve', configPath], cwd: dir, env, port, dataDir, logPath });
}

/** The version of the Distribution binary, for the reports. */
export function distributionVersion(): string {
  const out = spawnSync(DISTRIBUTION_BINARY, ['--version'], { encoding: 'utf8' });
  return (out.stdout || '').trim().split(/\s+/).pop() ?? 'unknown';
}

interface Launch {
  kind: ServerKind;
  label: string;
  /** In start-up errors (default: label). */
  name?: string;
  command: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  port: number;
  dataDir: string;
  logPath: string;
  /** What GET /v2/ answers once it is up: 200, or 401 behind auth. */
  readyStatus?: number;
}

/** Spawns a registry with its output appended to its log; resolves once GET /v2/ answers (200). */
async function launch(l: Launch): Promise<RunningServer> {
  const name = l.name ?? l.label;
  const logFd = openSync(l.logPath, 'a');
  const child = spawn(l.command, l.args, { cwd: l.cwd, env: l.env, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  const base = `http://127.0.0.1:${l.port}`;
  const logTail = (lines = 20): string => {
    try {
      return readFileSync(l.logPath, 'utf8').split('\n').slice(-lines - 1).join('\n');
    } catch {
      return '';
    }
  };
  const server: RunningServer = {
    kind: l.kind,
    label: l.label,
    pid: child.pid!,
    base,
    port: l.port,
    dataDir: l.dataDir,
    logPath: l.logPath,
    logTail,
    truncateLog: () => truncateSync(l.logPath, 0),
    stop: async () => {
      if (gone) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gone) throw new Error(`${name} exited during start-up:\n${logTail()}`);
    try {
      const res = await fetch(`${base}/v2/`);
      await res.arrayBuffer();
      if (res.status === (l.readyStatus ?? 200)) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`${name} did not answer GET /v2/ within 30 s:\n${logTail()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return server;
}

function distributionConfig(dataDir: string, port: number, settings: DistributionSettings): string {
  const log =
    settings.log.mode === 'info'
      ? 'log:\n  level: info\n  accesslog:\n    disabled: false\n'
      : 'log:\n  level: warn\n  accesslog:\n    disabled: true\n';
  const del = settings.deleteEnabled === false ? '' : '  delete:\n    enabled: true\n';
  const cache = settings.cache === false ? '' : '  cache:\n    blobdescriptor: inmemory\n';
  const proxy = settings.remoteUrl === undefined ? '' : `proxy:\n  remoteurl: ${JSON.stringify(settings.remoteUrl)}\n`;
  return (
    'version: 0.1\n' +
    log +
    'storage:\n' +
    `  filesystem:\n    rootdirectory: ${JSON.stringify(dataDir)}\n` +
    del +
    cache +
    // No upload purging during the run (it would start after a random delay anyway).
    '  maintenance:\n    uploadpurging:\n      enabled: false\n' +
    'http:\n' +
    `  addr: 127.0.0.1:${port}\n` +
    // A fixed secret silences the "no HTTP secret" warning; it signs the _state of uploads.
    '  secret: wharf-bench-not-secret\n' +
    proxy
  );
}
