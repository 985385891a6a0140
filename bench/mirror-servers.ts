// The mirrors under test, each started fresh (new root directory, new process) for every
// cold measurement:
// - wharf: bin/wharf.js serve, started by bench/servers.ts as in the main bench, plus
//   REGISTRY_PROXY_REMOTEURL=<its link proxy> (and any other REGISTRY_PROXY_* given);
// - Distribution 2.8: /usr/bin/docker-registry serve config.yml, written by bench/servers.ts
//   with the same log, storage and http settings as in the main bench, but storage deletion
//   off, plus `proxy: remoteurl: <its link proxy>`.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, startDistribution, startServer, type LogSettings, type RunningServer, type ServerKind } from './servers.js';

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
  // No storage.delete: the proxy's config.yml stays as the mirror bench has always measured it.
  return startDistribution(join(options.dir, 'distribution'), join(options.dir, 'distribution.log'), { log: options.log, deleteEnabled: false, remoteUrl: options.remoteUrl }, 'Distribution (proxy)');
}

/** A plain registry (no proxy) of the given kind, as the main bench starts it. */
export function startPlain(kind: ServerKind, dir: string, log: LogSettings): Promise<RunningServer> {
  return startServer(kind, { workDir: dir, log });
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
