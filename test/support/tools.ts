// External tools the end-to-end suites need. Outside CI a missing tool skips its suite with a
// loud message naming the Debian package to install; with CI=true nothing may skip, so a
// missing tool is an error.
import { accessSync, constants, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { delimiter, isAbsolute, join } from 'node:path';
import { describeFailure, reapAndRemove, run, type RunResult } from './processes.js';

export const inCI = (): boolean => process.env.CI === 'true';

/** Directories searched besides PATH: dockerd lives in /usr/sbin, which a non-login PATH may lack. */
const EXTRA_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of an executable, or undefined. */
export function toolPath(name: string): string | undefined {
  const candidates = isAbsolute(name)
    ? [name]
    : [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...EXTRA_DIRS].map((d) => join(d, name));
  for (const c of candidates) {
    try {
      if (!statSync(c).isFile()) continue;
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Like toolPath, but throws: for use after requireTool() said yes. */
export function mustToolPath(name: string): string {
  const p = toolPath(name);
  if (p === undefined) throw new Error(`${name} not found`);
  return p;
}

function missing(what: string, fix: string): false {
  const message = `${what} — ${fix}`;
  if (inCI()) throw new Error(`CI=true and ${message}; end-to-end suites may not skip in CI`);
  const bar = '!'.repeat(100);
  console.warn(`\n${bar}\n!! SKIPPING end-to-end tests: ${message}\n${bar}\n`);
  return false;
}

/**
 * True when `name` is an executable on this machine. Otherwise: throws if CI=true, else
 * warns loudly (naming `aptPackage`) and returns false, for `describe.skipIf(!ok)`.
 */
export function requireTool(name: string, aptPackage: string): boolean {
  if (toolPath(name) !== undefined) return true;
  return missing(`'${name}' is not installed`, `install it with: apt-get install -y ${aptPackage}`);
}

/** requireTool for several [tool, package] pairs; reports every missing one. */
export function requireTools(tools: Array<[name: string, aptPackage: string]>): boolean {
  const absent = tools.filter(([name]) => toolPath(name) === undefined);
  if (absent.length === 0) return true;
  const names = absent.map(([n]) => `'${n}'`).join(', ');
  const pkgs = [...new Set(absent.map(([, p]) => p))].join(' ');
  return missing(`${names} not installed`, `install with: apt-get install -y ${pkgs}`);
}

/** A requirement that is not a tool on PATH: `ok`, or skip/fail naming `fix`. */
export function requireThat(ok: boolean, what: string, fix: string): boolean {
  return ok || missing(what, fix);
}

/** Running dockerd and rootful podman needs root. */
export function requireRoot(forWhat: string): boolean {
  if (process.getuid?.() === 0) return true;
  return missing(`${forWhat} needs root (uid 0)`, 'run the suite as root (e.g. in the CI container)');
}

/** Several requirements at once: every check runs (so all missing pieces are reported). */
export function all(...checks: boolean[]): boolean {
  return checks.every(Boolean);
}

export interface ToolRunOptions {
  timeoutMs?: number;
  cwd?: string;
  /**
   * Blob-info cache directory for this invocation (default: the runner's own). containers/image
   * remembers which compressed variants of a layer a registry already has and reuses them; a
   * fresh directory makes a push compress anew.
   */
  blobInfoCache?: string;
}

export interface ToolRunner {
  (args: string[], opts?: ToolRunOptions): Promise<RunResult>;
  /** Throws with the output unless the command exits 0. */
  ok(args: string[], opts?: ToolRunOptions): Promise<RunResult>;
  env: NodeJS.ProcessEnv;
  /** The runner's default blob-info cache directory. */
  blobInfoCache: string;
}

/**
 * The containers/image tools (skopeo, podman) keep a blob-info cache that for root is always
 * /var/lib/containers/cache, shared by every run on the machine; it makes pushes reuse blobs
 * from earlier runs and tests. As root, each command runs in its own mount namespace with a
 * private directory bind-mounted there; otherwise XDG_DATA_HOME moves the rootless cache.
 */
function containersToolRunner(binary: string, globalArgs: string[], env: NodeJS.ProcessEnv, dir: string, defaultCache: string): ToolRunner {
  const unshare = process.getuid?.() === 0 ? toolPath('unshare') : undefined;
  const runner = (async (args: string[], opts: ToolRunOptions = {}) => {
    const cache = opts.blobInfoCache ?? defaultCache;
    await mkdir(cache, { recursive: true });
    const runOpts = { env: { ...env, XDG_DATA_HOME: cache }, cwd: opts.cwd ?? dir, timeoutMs: opts.timeoutMs ?? 180_000 };
    if (unshare === undefined) return run(binary, [...globalArgs, ...args], runOpts);
    const script = 'mkdir -p /var/lib/containers/cache && mount --bind "$0" /var/lib/containers/cache && exec "$@"';
    const r = await run(unshare, ['-m', 'sh', '-c', script, cache, binary, ...globalArgs, ...args], runOpts);
    return { ...r, command: r.command.slice(r.command.indexOf(binary)) };
  }) as ToolRunner;
  runner.ok = async (args, opts) => {
    const r = await runner(args, opts);
    if (r.code !== 0) throw new Error(describeFailure(r));
    return r;
  };
  runner.env = env;
  runner.blobInfoCache = defaultCache;
  return runner;
}

const ACCEPT_ANYTHING = JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] });

/**
 * skopeo with a private auth file, temp dir, blob-info cache and signature policy (accept
 * anything: the images are our own), so the user's or host's configuration cannot change the
 * outcome. `dir` must exist and is the caller's to remove.
 */
export async function privateSkopeo(dir: string): Promise<ToolRunner> {
  const binary = mustToolPath('skopeo');
  for (const sub of ['tmp', 'registries.d']) await mkdir(join(dir, sub), { recursive: true });
  const policy = join(dir, 'policy.json');
  const registries = join(dir, 'registries.conf');
  await writeFile(policy, ACCEPT_ANYTHING);
  await writeFile(registries, 'unqualified-search-registries = []\n');
  await writeFile(join(dir, 'auth.json'), '{}\n');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TMPDIR: join(dir, 'tmp'),
    REGISTRY_AUTH_FILE: join(dir, 'auth.json'),
    CONTAINERS_REGISTRIES_CONF: registries,
    DOCKER_CONFIG: join(dir, 'docker'),
  };
  const global = ['--policy', policy, '--registries.d', join(dir, 'registries.d')];
  return containersToolRunner(binary, global, env, dir, join(dir, 'blob-info-cache'));
}

export interface PodmanRunner extends ToolRunner {
  policy: string;
  /** Removes containers, ends stragglers running out of `dir`, unmounts and deletes `dir`. */
  cleanup(): Promise<void>;
}

/**
 * Rootful podman with everything private: vfs storage under `dir` (root, runroot, tmp), its
 * own containers.conf/storage.conf/registries.conf and blob-info cache, cgroupfs, file events.
 * `policy` is a signature policy file to pass with --signature-policy (pull/push/load).
 */
export async function privatePodman(dir: string): Promise<PodmanRunner> {
  const binary = mustToolPath('podman');
  for (const sub of ['root', 'run', 'tmp', 'libpod-tmp']) await mkdir(join(dir, sub), { recursive: true });
  const policy = join(dir, 'policy.json');
  await writeFile(policy, ACCEPT_ANYTHING);
  await writeFile(join(dir, 'registries.conf'), 'unqualified-search-registries = []\n');
  await writeFile(
    join(dir, 'storage.conf'),
    `[storage]\ndriver = "vfs"\ngraphroot = ${JSON.stringify(join(dir, 'root'))}\nrunroot = ${JSON.stringify(join(dir, 'run'))}\n`,
  );
  await writeFile(join(dir, 'containers.conf'), '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n');
  await writeFile(join(dir, 'auth.json'), '{}\n');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TMPDIR: join(dir, 'tmp'),
    REGISTRY_AUTH_FILE: join(dir, 'auth.json'),
    CONTAINERS_CONF: join(dir, 'containers.conf'),
    CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf'),
    CONTAINERS_REGISTRIES_CONF: join(dir, 'registries.conf'),
    DOCKER_CONFIG: join(dir, 'docker'),
  };
  const global = [
    '--root', join(dir, 'root'),
    '--runroot', join(dir, 'run'),
    '--tmpdir', join(dir, 'libpod-tmp'),
    '--storage-driver', 'vfs',
    '--cgroup-manager=cgroupfs',
    '--events-backend=file',
  ];
  const runner = containersToolRunner(binary, global, env, dir, join(dir, 'blob-info-cache')) as PodmanRunner;
  runner.policy = policy;
  runner.cleanup = async () => {
    await runner(['rm', '--all', '--force', '--time', '0'], { timeoutMs: 60_000 });
    await reapAndRemove(dir);
  };
  return runner;
}
