// Starts wharf the way a user does: `bin/wharf.js serve` as a child process, configured
// by REGISTRY_* environment variables, on a free loopback port over a storage root.
import { join } from 'node:path';
import { freePort, LOG_DIR, REPO_ROOT, removeTree, spawnLogged, tempDir, waitFor, waitForUrl, type LoggedProcess } from './processes.js';

export interface WharfProcess {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, as clients spell the registry in image references. */
  host: string;
  port: number;
  /** Storage root (Distribution layout under docker/registry/v2). */
  root: string;
  logFile: string;
  process: LoggedProcess;
  /** Stops wharf; removes the root only if this helper created it and keepRoot is not set. */
  stop(opts?: { keepRoot?: boolean }): Promise<void>;
}

export interface WharfOptions {
  /** Existing storage root to serve; default a fresh temp dir (removed on stop). */
  root?: string;
  deleteEnabled?: boolean;
  logLevel?: string;
  /** Extra REGISTRY_* variables. */
  env?: Record<string, string>;
  /**
   * Variables that select another storage driver (s3Env() in s3.ts); the filesystem root
   * variable is then not set (a temp dir is still made, and left empty).
   */
  storageEnv?: Record<string, string>;
  /** Optional config.yml path given to `serve`. */
  configFile?: string;
  startTimeoutMs?: number;
  /**
   * Listen on this port instead of a free one picked at start (e.g. when the configuration
   * must name wharf's own URL, as a token realm does). Not retried elsewhere if taken.
   */
  port?: number;
  /**
   * The status GET /v2/ answers once wharf is up; default 200. With authentication on,
   * 401 (the challenge) is what an anonymous client gets.
   */
  readyStatus?: number;
}

/** Storage every startWharf() of this test file uses unless told otherwise (runOnS3() sets it). */
const fileStorage: { env?: Record<string, string> } = {};

/** Makes startWharf() store with these variables (s3Env()) by default; undefined: the filesystem again. */
export function setDefaultStorage(env: Record<string, string> | undefined): void {
  fileStorage.env = env;
}

export async function startWharf(opts: WharfOptions = {}): Promise<WharfProcess> {
  const ownRoot = opts.root === undefined;
  const root = opts.root ?? (await tempDir('wharf-e2e-root-'));
  try {
    // A port picked free can be taken before wharf binds it: try another one then.
    for (let attempt = 1; ; attempt++) {
      try {
        return await startOnce(opts, root, ownRoot);
      } catch (err) {
        if (attempt >= 3 || opts.port !== undefined || !/EADDRINUSE/.test((err as Error).message)) throw err;
      }
    }
  } catch (err) {
    if (ownRoot) await removeTree(root);
    throw err;
  }
}

async function startOnce(opts: WharfOptions, root: string, ownRoot: boolean): Promise<WharfProcess> {
  const port = opts.port ?? (await freePort());
  const host = `127.0.0.1:${port}`;
  // Only the configuration given here: REGISTRY_* variables of the calling shell stay out.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  const env: NodeJS.ProcessEnv = {
    ...inherited,
    REGISTRY_HTTP_ADDR: host,
    ...(opts.storageEnv ?? fileStorage.env ?? { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: root }),
    REGISTRY_STORAGE_DELETE_ENABLED: String(opts.deleteEnabled ?? true),
    REGISTRY_LOG_LEVEL: opts.logLevel ?? 'info',
    ...opts.env,
  };
  // vitest sets these for its own workers; they would only confuse the child.
  delete env.NODE_OPTIONS;
  delete env.VITEST;
  delete env.VITEST_WORKER_ID;
  delete env.VITEST_POOL_ID;
  const args = ['serve'];
  if (opts.configFile !== undefined) args.push(opts.configFile);
  // Executed directly, as the `wharf` command is: its #! line carries wharf's node flags.
  const proc = spawnLogged('wharf', join(REPO_ROOT, 'bin', 'wharf.js'), args, { env, cwd: REPO_ROOT, logFile: join(LOG_DIR, `wharf-${port}-${Date.now()}.log`) });
  const url = `http://${host}`;
  try {
    await waitForUrl(`${url}/v2/`, {
      process: proc,
      timeoutMs: opts.startTimeoutMs ?? 30_000,
      status: opts.readyStatus ?? 200,
      header: ['Docker-Distribution-API-Version', 'registry/2.0'],
      what: `wharf on ${host} (GET /v2/ -> ${opts.readyStatus ?? 200} with Docker-Distribution-API-Version)`,
    });
    // The answer must come from our process, not from something else that took the port:
    // wait for it to log that it listens (or, should the message change, to stay up a while).
    const since = Date.now();
    await waitFor(() => /listening/i.test(proc.logTail(200)) || Date.now() - since > 1500, {
      process: proc,
      timeoutMs: 10_000,
      what: `wharf on ${host} to report it is listening`,
    });
  } catch (err) {
    await proc.stop(2000);
    throw err;
  }
  return {
    url,
    host,
    port,
    root,
    logFile: proc.logFile,
    process: proc,
    async stop(stopOpts = {}) {
      await proc.stop(10_000);
      if (ownRoot && !stopOpts.keepRoot) await removeTree(root);
    },
  };
}
