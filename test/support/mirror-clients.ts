// Real clients pulling through wharf's mirror: runnable busybox images pushed straight into an
// upstream Distribution, containerd's `ctr` against a test dockerd's own containerd (in a
// mount namespace whose /etc/hosts sends Docker Hub's names to 127.0.0.1, so no fallback
// leaves the machine), containerd's hosts.toml and podman's registries.conf for a mirror, and
// looks into wharf's storage root and access log.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { BLOCKED_HOSTS, type Dockerd } from './dockerd.js';
import { busyboxRootfsEntries, filesEntries, ociImage, pushOciImageHttp, type OciImage } from './images.js';
import { describeFailure, run, waitFor, type RunResult } from './processes.js';
import { mustToolPath } from './tools.js';

/** An image in an upstream registry, with everything a pull must get. */
export interface UpstreamImage {
  repo: string;
  tag: string;
  image: OciImage;
  /** Manifest digest. */
  digest: string;
  /** Every blob (config and layers) by digest. */
  blobs: Map<string, Buffer>;
  /** Manifest + config + layers: what one complete pull costs. */
  bytes: number;
  /** Digest of the largest layer. */
  biggestLayer: string;
}

/**
 * Pushes a runnable busybox image (a base layer unique to this image, and, with `bigBytes`, a
 * layer of that much random data at /data/random.bin) into the registry at `baseUrl`.
 */
export async function pushUpstreamImage(baseUrl: string, repo: string, tag: string, opts: { bigBytes?: number } = {}): Promise<UpstreamImage> {
  const id = Buffer.from(`${repo}:${tag} ${randomBytes(16).toString('hex')}\n`);
  const layers = [await busyboxRootfsEntries([{ path: 'etc/wharf-e2e-id', data: id }])];
  if (opts.bigBytes) layers.push(filesEntries([{ path: 'data/random.bin', data: randomBytes(opts.bigBytes) }]));
  const image = ociImage(layers);
  await pushOciImageHttp(baseUrl, repo, tag, image);
  const blobs = new Map<string, Buffer>([[image.configDigest, image.config], ...image.layers.map((l): [string, Buffer] => [l.digest, l.blob])]);
  const bytes = [...blobs.values()].reduce((n, b) => n + b.length, image.manifest.length);
  const biggestLayer = [...image.layers].sort((a, b) => b.size - a.size)[0]!.digest;
  return { repo, tag, image, digest: image.manifestDigest, blobs, bytes, biggestLayer };
}

/** Resolves true when nothing accepts TCP connections on 127.0.0.1:`port`. */
export function portRefuses(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.setTimeout(3000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

/** Writes `<dir>/<host>/hosts.toml`: pull and resolve through `mirrorUrl`, `server` as the fallback. */
export async function writeContainerdHostsDir(dir: string, host: string, server: string, mirrorUrl: string): Promise<void> {
  await mkdir(join(dir, host), { recursive: true });
  await writeFile(
    join(dir, host, 'hosts.toml'),
    [`server = ${JSON.stringify(server)}`, '', `[host.${JSON.stringify(mirrorUrl)}]`, '  capabilities = ["pull", "resolve"]', ''].join('\n'),
  );
}

/** A registries.conf with one [[registry]] (prefix -> location) and one insecure mirror for it. */
export function registriesConfWithMirror(prefix: string, location: string, mirrorLocation: string): string {
  return [
    'unqualified-search-registries = []',
    '',
    '[[registry]]',
    `prefix = ${JSON.stringify(prefix)}`,
    `location = ${JSON.stringify(location)}`,
    'insecure = true',
    '',
    '[[registry.mirror]]',
    `location = ${JSON.stringify(mirrorLocation)}`,
    'insecure = true',
    '',
  ].join('\n');
}

export interface CtrRunner {
  (args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  ok(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  /** The containerd socket. */
  address: string;
}

const shQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * `ctr` against the containerd that the test dockerd `d` runs for itself (under its exec-root),
 * in containerd namespace `namespace`. Each call runs in its own mount namespace where
 * /etc/hosts (written into `workDir`) points Docker Hub's names at 127.0.0.1 and /run/containerd
 * is an empty tmpfs, so the pull goes to the hosts.toml mirror or to nothing at all.
 */
export async function dockerdCtr(d: Dockerd, workDir: string, namespace: string): Promise<CtrRunner> {
  const ctr = mustToolPath('ctr');
  const unshare = mustToolPath('unshare');
  const address = join(d.dir, 'e', 'containerd', 'containerd.sock');
  await waitFor(() => existsSync(address), { timeoutMs: 30_000, what: `dockerd's containerd socket ${address}` });
  const hostsFile = join(workDir, 'ctr-hosts');
  await writeFile(hostsFile, ['127.0.0.1 localhost', '::1 localhost', `127.0.0.1 ${BLOCKED_HOSTS.join(' ')}`, ''].join('\n'));
  const script = [
    'set -e',
    'mount --make-rprivate / 2>/dev/null || true',
    `mount --bind ${shQuote(hostsFile)} /etc/hosts`,
    'if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi',
    'exec "$@"',
  ].join('\n');
  const runner = ((args: string[], opts: { timeoutMs?: number } = {}) =>
    run(unshare, ['-m', 'sh', '-c', script, 'sh', ctr, '--address', address, '--namespace', namespace, ...args], {
      timeoutMs: opts.timeoutMs ?? 180_000,
      cwd: workDir,
    })) as CtrRunner;
  runner.ok = async (args, opts) => {
    const r = await runner(args, opts);
    if (r.code !== 0) throw new Error(describeFailure(r));
    return r;
  };
  runner.address = address;
  return runner;
}

/** Path of a blob's data file in a storage root (Distribution layout). */
export function blobDataPath(root: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(root, 'docker', 'registry', 'v2', 'blobs', alg, hex.slice(0, 2), hex, 'data');
}

/** Path of a repository's layer link in a storage root. */
export function layerLinkPath(root: string, repo: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(root, 'docker', 'registry', 'v2', 'repositories', repo, '_layers', alg, hex, 'link');
}

export interface AccessLine {
  method: string;
  path: string;
  status: number;
  ua?: string;
}

/** The access-log lines (`"msg":"request"`) in a wharf log file. */
export function accessLog(logFile: string): AccessLine[] {
  const lines: AccessLine[] = [];
  let text = '';
  try {
    text = readFileSync(logFile, 'utf8');
  } catch {
    return lines;
  }
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as { msg?: string; method?: string; path?: string; status?: number; ua?: string };
      if (entry.msg === 'request' && entry.path !== undefined) {
        lines.push({ method: entry.method ?? '', path: entry.path, status: entry.status ?? 0, ua: entry.ua });
      }
    } catch {
      /* not JSON */
    }
  }
  return lines;
}
