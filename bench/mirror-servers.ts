// The mirrors under test, each started fresh (new root directory, new process) for every
// cold measurement:
// - wharf: bin/wharf.js serve, started by bench/servers.ts as in the main bench, plus
//   REGISTRY_PROXY_REMOTEURL=<its link proxy> (and any other REGISTRY_PROXY_* given);
// - Distribution 2.8: /usr/bin/docker-registry serve config.yml with the same storage, log
//   and http settings as bench/servers.ts writes, plus `proxy: remoteurl: <its link proxy>`.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DISTRIBUTION_BINARY, freePort, REPO_ROOT, startServer, type LogSettings, type RunningServer, type ServerKind } from './servers.js';

export interface MirrorStart {
  /** A new directory for this instance: data, config and log go under it. */
  dir: string;
  /** The link proxy's URL the mirror reaches its upstream through. */
  remoteUrl: string;
  log: LogSettings;
  /** wharf only: more environment (REGISTRY_PROXY_TTL=..., REGISTRY_PROXY_PREFETCH=...). */
  wharfEnv?: Record<string, string>;
}

export async function startMirror(kind: ServerKind, options: MirrorStart): Promise<RunningServer> {
  await mkdir(options.dir, { recursive: true });
  if (kind === 'wharf') {
    return startServer('wharf', {
      workDir: options.dir,
      log: options.log,
      wharfEnv: { REGISTRY_PROXY_REMOTEURL: options.remoteUrl, ...options.wharfEnv },
    });
  }
  return startDistributionMirror(options);
}

/** A plain registry (no proxy) of the given kind, as the main bench starts it. */
export function startPlain(kind: ServerKind, dir: string, log: LogSettings): Promise<RunningServer> {
  return startServer(kind, { workDir: dir, log });
}

async function startDistributionMirror(options: MirrorStart): Promise<RunningServer> {
  if (!existsSync(DISTRIBUTION_BINARY)) throw new Error(`${DISTRIBUTION_BINARY} not found: apt-get install docker-registry`);
  const dir = join(options.dir, 'distribution');
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  const port = await freePort();
  const configPath = join(dir, 'config.yml');
  const log =
    options.log.mode === 'info'
      ? 'log:\n  level: info\n  accesslog:\n    disabled: false\n'
      : 'log:\n  level: warn\n  accesslog:\n    disabled: true\n';
  writeFileSync(
    configPath,
    'version: 0.1\n' +
      log +
      'storage:\n' +
      `  filesystem:\n    rootdirectory: ${JSON.stringify(dataDir)}\n` +
      '  cache:\n    blobdescriptor: inmemory\n' +
      '  maintenance:\n    uploadpurging:\n      enabled: false\n' +
      'http:\n' +
      `  addr: 127.0.0.1:${port}\n` +
      '  secret: wharf-bench-not-secret\n' +
      'proxy:\n' +
      `  remoteurl: ${JSON.stringify(options.remoteUrl)}\n`,
  );
  const logPath = join(options.dir, 'distribution.log');
  const logFd = openSync(logPath, 'a');
  // Distribution reads REGISTRY_* variables too: none may leak in from our environment.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  const child = spawn(DISTRIBUTION_BINARY, ['serve', configPath], { cwd: dir, env, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  let gone = false;
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      gone = true;
      resolve();
    }),
  );
  const logTail = (lines = 20): string => {
    try {
      return readFileSync(logPath, 'utf8').split('\n').slice(-lines - 1).join('\n');
    } catch {
      return '';
    }
  };
  const base = `http://127.0.0.1:${port}`;
  const server: RunningServer = {
    kind: 'distribution',
    label: 'Distribution',
    pid: child.pid!,
    base,
    port,
    dataDir,
    logPath,
    logTail,
    truncateLog: () => truncateSync(logPath, 0),
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
    if (gone) throw new Error(`Distribution (proxy) exited during start-up:\n${logTail()}`);
    try {
      const res = await fetch(`${base}/v2/`);
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`Distribution (proxy) did not answer GET /v2/ within 30 s:\n${logTail()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return server;
}

/**
 * Whether bin/wharf.js runs the compiled build (dist/ newer than every source file), by the
 * same rule bin/wharf.js applies. Other people edit sources during a run; after such an
 * edit, wharf would start from the sources through tsx (more memory), which the report says.
 */
export function wharfRunsCompiled(): boolean {
  const compiled = join(REPO_ROOT, 'dist', 'server', 'main.js');
  if (!existsSync(compiled)) return false;
  const built = statSync(compiled).mtimeMs;
  const newest = (dir: string): number => {
    let n = 0;
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return 0;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) n = Math.max(n, newest(path));
      else if (e.name.endsWith('.ts')) n = Math.max(n, statSync(path).mtimeMs);
    }
    return n;
  };
  return ['server', 'storage', 'auth', 'mirror'].every((d) => newest(join(REPO_ROOT, d)) <= built);
}
