// A private dockerd for tests: own data-root, exec-root and socket under a short temp dir,
// vfs storage, no iptables or bridge, started in its own mount namespace where /etc/hosts
// sends Docker Hub's names to 127.0.0.1 (nothing can fall back to the internet) and where
// the host's system containerd socket is hidden (so dockerd runs its own containerd).
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LOG_DIR, reapAndRemove, run, spawnLogged, tempDir, waitFor, type LoggedProcess, type RunOptions, type RunResult, describeFailure } from './processes.js';
import { mustToolPath } from './tools.js';

/** The tools this helper needs, with their Debian packages. */
export const DOCKERD_TOOLS: Array<[string, string]> = [
  ['dockerd', 'docker.io'],
  ['docker', 'docker.io'],
  ['containerd', 'containerd'],
  ['unshare', 'util-linux'],
  ['mount', 'mount'],
];

/** Names that must never leave the machine from the test dockerd. */
export const BLOCKED_HOSTS = ['docker.io', 'registry-1.docker.io', 'auth.docker.io', 'index.docker.io', 'production.cloudflare.docker.com'];

export interface Dockerd {
  /** Path of the API socket. */
  socket: string;
  /** unix:///... for DOCKER_HOST. */
  host: string;
  dir: string;
  dataRoot: string;
  logFile: string;
  process: LoggedProcess;
  /** Environment for the docker CLI talking to this daemon (private DOCKER_CONFIG). */
  env: NodeJS.ProcessEnv;
  /** Runs the docker CLI against this daemon; never throws on a non-zero exit. */
  docker(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** Like docker(), but throws with the output unless it exits 0. */
  dockerOk(args: string[], opts?: RunOptions): Promise<RunResult>;
  stop(): Promise<void>;
}

export interface DockerdOptions {
  /** Extra dockerd flags, e.g. ['--registry-mirror', 'http://127.0.0.1:5000']. */
  extraArgs?: string[];
  /** Extra /etc/hosts lines inside dockerd's namespace, e.g. [['127.0.0.1', 'registry.test']]. */
  extraHosts?: Array<[ip: string, name: string]>;
  startTimeoutMs?: number;
  /**
   * Also a network namespace of its own (`unshare -n`) with only loopback up: nothing on the
   * host's 127.0.0.1 is reachable from dockerd (or its containers) unless forwarded into it,
   * e.g. by test/support/swarm.ts. Default false (the host's network).
   */
  netns?: boolean;
}

const shQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  const dockerdBin = mustToolPath('dockerd');
  const dockerBin = process.env.WHARF_E2E_DOCKER ?? mustToolPath('docker');
  const unshareBin = mustToolPath('unshare');
  // Short: the socket path (and containerd's under exec-root) must stay below 108 bytes.
  const dir = await tempDir('wd-', '/tmp');
  const dataRoot = join(dir, 'd');
  const execRoot = join(dir, 'e');
  const socket = join(dir, 's');
  const pidfile = join(dir, 'p');
  const hostsFile = join(dir, 'hosts');
  const daemonJson = join(dir, 'daemon.json');
  const dockerConfig = join(dir, 'c');
  await Promise.all([mkdir(dataRoot), mkdir(execRoot), mkdir(dockerConfig)]);
  const hosts = ['127.0.0.1 localhost', '::1 localhost', `127.0.0.1 ${BLOCKED_HOSTS.join(' ')}`];
  for (const [ip, name] of opts.extraHosts ?? []) hosts.push(`${ip} ${name}`);
  await writeFile(hostsFile, `${hosts.join('\n')}\n`);
  // An explicit (empty) config file: the host's /etc/docker/daemon.json must not leak in.
  await writeFile(daemonJson, '{}\n');
  await writeFile(join(dockerConfig, 'config.json'), '{}\n');

  const dockerdArgs = [
    dockerdBin,
    '--config-file', daemonJson,
    '--data-root', dataRoot,
    '--exec-root', execRoot,
    '--pidfile', pidfile,
    '--host', `unix://${socket}`,
    '--storage-driver', 'vfs',
    '--iptables=false',
    '--ip6tables=false',
    '--bridge=none',
    ...(opts.extraArgs ?? []),
  ];
  const script = [
    'set -e',
    ...(opts.netns ? [`${shQuote(mustToolPath('ip'))} link set lo up`] : []),
    // Mounts made here stay in this namespace.
    'mount --make-rprivate / 2>/dev/null || true',
    `mount --bind ${shQuote(hostsFile)} /etc/hosts`,
    // A running system containerd would be picked up instead of dockerd's own one.
    'if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi',
    `exec ${dockerdArgs.map(shQuote).join(' ')}`,
  ].join('\n');
  const proc = spawnLogged('dockerd', unshareBin, [...(opts.netns ? ['-n'] : []), '-m', 'sh', '-c', script], {
    logFile: join(LOG_DIR, `dockerd-${dir.split('/').pop()}-${Date.now()}.log`),
  });

  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DOCKER_HOST: `unix://${socket}`,
    DOCKER_CONFIG: dockerConfig,
    DOCKER_CLI_HINTS: 'false',
    DOCKER_BUILDKIT: '0',
  };
  delete env.DOCKER_CONTEXT;
  delete env.DOCKER_TLS_VERIFY;
  delete env.DOCKER_CERT_PATH;
  const docker = (args: string[], runOpts: RunOptions = {}): Promise<RunResult> =>
    run(dockerBin, args, { timeoutMs: 300_000, ...runOpts, env: { ...env, ...runOpts.env } });
  const dockerOk = async (args: string[], runOpts: RunOptions = {}): Promise<RunResult> => {
    const r = await docker(args, runOpts);
    if (r.code !== 0) throw new Error(`${describeFailure(r)}\n--- dockerd log ${proc.logFile}\n${proc.logTail(15)}`);
    return r;
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Containers first (a running container keeps shims around).
    if (proc.exit() === undefined && existsSync(socket)) {
      const ps = await docker(['ps', '-q'], { timeoutMs: 15_000 });
      const ids = ps.stdout.split('\n').filter(Boolean);
      if (ids.length > 0) await docker(['rm', '-f', ...ids], { timeoutMs: 30_000 });
    }
    await proc.stop(20_000);
    // containerd-shims start their own sessions; anything still running out of our dir goes.
    await reapAndRemove(dir);
  };

  try {
    await waitFor(
      async () => {
        if (!existsSync(socket)) return false;
        const r = await docker(['version', '--format', '{{.Server.Version}}'], { timeoutMs: 10_000 });
        return r.code === 0 ? r.stdout.trim() : false;
      },
      { process: proc, timeoutMs: opts.startTimeoutMs ?? 60_000, intervalMs: 250, what: `dockerd on ${socket}` },
    );
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { socket, host: `unix://${socket}`, dir, dataRoot, logFile: proc.logFile, process: proc, env, docker, dockerOk, stop };
}
