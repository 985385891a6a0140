// CNCF Distribution 2.8 (Debian's docker-registry) as the reference implementation: serve a
// storage root on a free loopback port, or run its garbage collector over one.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, LOG_DIR, removeTree, run, spawnLogged, tempDir, waitFor, waitForUrl, type LoggedProcess, type RunResult } from './processes.js';
import { mustToolPath } from './tools.js';

export const DISTRIBUTION_BINARY = 'docker-registry';
export const DISTRIBUTION_APT_PACKAGE = 'docker-registry';

export interface DistributionProcess {
  url: string;
  host: string;
  port: number;
  root: string;
  configFile: string;
  logFile: string;
  process: LoggedProcess;
  /** Stops it and removes its config dir (never the storage root, which the caller owns). */
  stop(): Promise<void>;
}

/** Settings beyond the defaults (delete enabled, log level info, no upload purging). */
export interface DistributionConfigOptions {
  deleteEnabled?: boolean;
  /** http.secret: the key Distribution signs upload state (`_state`) with. Default: none, so it makes up a random one. */
  secret?: string;
  /** compatibility.schema1.enabled: accept schema 1 manifest pushes. */
  schema1?: boolean;
  /** storage.maintenance.uploadpurging; default disabled. Durations in Go syntax ("1s", "168h"). */
  uploadPurging?: { enabled: boolean; age?: string; interval?: string; dryrun?: boolean };
  /** Store in this S3 bucket (`storage.s3` settings) instead of the filesystem root. */
  s3?: Record<string, string | boolean>;
  /** storage.redirect.disable (S3 only; Distribution redirects by default). */
  redirectDisabled?: boolean;
  /** An `auth` section: htpasswd (Basic) or token (Bearer, JWTs checked against `rootcertbundle`). Default: none. */
  auth?: {
    htpasswd?: { realm: string; path: string };
    token?: { realm: string; service: string; issuer: string; rootcertbundle: string };
  };
}

/** A Distribution config.yml serving `root` (delete enabled, log level info). */
export function distributionConfig(root: string, addr: string, deleteEnabled: boolean | DistributionConfigOptions = true): string {
  const opts: DistributionConfigOptions = typeof deleteEnabled === 'boolean' ? { deleteEnabled } : deleteEnabled;
  const purging = opts.uploadPurging ?? { enabled: false };
  const purgingLines = purging.enabled
    ? [
        '      enabled: true',
        `      age: ${purging.age ?? '168h'}`,
        `      interval: ${purging.interval ?? '24h'}`,
        `      dryrun: ${purging.dryrun ?? false}`,
      ]
    : ['      enabled: false'];
  return [
    'version: 0.1',
    'log:',
    '  level: info',
    '  formatter: text',
    'storage:',
    ...(opts.s3
      ? ['  s3:', ...Object.entries(opts.s3).map(([k, v]) => `    ${k}: ${JSON.stringify(v)}`), '  redirect:', `    disable: ${opts.redirectDisabled ?? false}`]
      : ['  filesystem:', `    rootdirectory: ${JSON.stringify(root)}`]),
    '  delete:',
    `    enabled: ${opts.deleteEnabled ?? true}`,
    '  maintenance:',
    '    uploadpurging:',
    ...purgingLines,
    'http:',
    `  addr: ${addr}`,
    ...(opts.secret !== undefined ? [`  secret: ${JSON.stringify(opts.secret)}`] : []),
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
    ...(opts.schema1 ? ['compatibility:', '  schema1:', '    enabled: true'] : []),
    ...authLines(opts.auth),
    '',
  ].join('\n');
}

function authLines(auth: DistributionConfigOptions['auth']): string[] {
  if (auth?.htpasswd) return ['auth:', '  htpasswd:', `    realm: ${JSON.stringify(auth.htpasswd.realm)}`, `    path: ${JSON.stringify(auth.htpasswd.path)}`];
  if (auth?.token) {
    const t = auth.token;
    return ['auth:', '  token:', ...Object.entries(t).map(([key, value]) => `    ${key}: ${JSON.stringify(value)}`)];
  }
  return [];
}

/** Writes a config.yml for `root` into a fresh temp dir; returns [dir, file]. */
async function writeConfig(root: string, addr: string, opts: DistributionConfigOptions = {}): Promise<[string, string]> {
  const dir = await tempDir('wharf-e2e-dist-');
  const file = join(dir, 'config.yml');
  await writeFile(file, distributionConfig(root, addr, opts));
  return [dir, file];
}

export interface DistributionOptions extends DistributionConfigOptions {
  root: string;
}

export async function startDistribution(opts: DistributionOptions): Promise<DistributionProcess> {
  // A port picked free can be taken before the registry binds it: try another one then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/i.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(opts: DistributionOptions): Promise<DistributionProcess> {
  const binary = mustToolPath(DISTRIBUTION_BINARY);
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const [dir, configFile] = await writeConfig(opts.root, host, opts);
  // REGISTRY_* variables in our own environment would override the file; drop them. AWS_*
  // ones too: the Go SDK of its s3 driver panics on an AWS_CA_BUNDLE some machines set.
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('AWS_')));
  const proc = spawnLogged('distribution', binary, ['serve', configFile], {
    env,
    cwd: dir,
    logFile: join(LOG_DIR, `distribution-${port}-${Date.now()}.log`),
  });
  const url = `http://${host}`;
  try {
    // With auth, /v2/ answers 401 once it is up.
    const ready = opts.auth?.htpasswd || opts.auth?.token ? 401 : 200;
    await waitForUrl(`${url}/v2/`, { process: proc, timeoutMs: 30_000, status: ready, what: `docker-registry on ${host}` });
    // Ours, not something else that took the port: it logs "listening on 127.0.0.1:PORT".
    await waitFor(() => proc.logTail(200).includes(`listening on ${host}`), { process: proc, timeoutMs: 10_000, what: `docker-registry to log it listens on ${host}` });
  } catch (err) {
    await proc.stop(2000);
    await removeTree(dir);
    throw err;
  }
  return {
    url,
    host,
    port,
    root: opts.root,
    configFile,
    logFile: proc.logFile,
    process: proc,
    async stop() {
      await proc.stop(10_000);
      await removeTree(dir);
    },
  };
}

/** `docker-registry garbage-collect [--dry-run] [--delete-untagged] config.yml` over `root`. */
export async function distributionGarbageCollect(
  root: string,
  opts: { dryRun?: boolean; deleteUntagged?: boolean } = {},
): Promise<RunResult> {
  const binary = mustToolPath(DISTRIBUTION_BINARY);
  const [dir, configFile] = await writeConfig(root, '127.0.0.1:0');
  try {
    const args = ['garbage-collect'];
    if (opts.dryRun ?? true) args.push('--dry-run');
    if (opts.deleteUntagged) args.push('--delete-untagged');
    args.push(configFile);
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
    return await run(binary, args, { env, cwd: dir, timeoutMs: 120_000 });
  } finally {
    await removeTree(dir);
  }
}
