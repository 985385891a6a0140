// What the S3 bench (bench/s3.ts) runs: one throwaway Ceph RADOS Gateway (test/support/s3.ts,
// memstore: objects live in the OSD's RAM), and on it, each under a root directory of its own
// in the same bucket:
// - wharf: bin/wharf.js serve, executed as the `wharf` command is (so with its #! node flags),
//   configured by REGISTRY_STORAGE_S3_* variables (s3Env) and the main bench's other settings;
// - CNCF Distribution 2.8 (Debian's docker-registry) with `storage.s3` and the main bench's
//   config.yml otherwise (inmemory blob descriptor cache, delete on, no upload purging);
// - the storage itself, driven from the bench process with a plain aws-sdk client: the limits.
// Every registry's log goes to a file in the work directory.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import {
  CopyObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { freePort, REPO_ROOT, spawnLogged, type LoggedProcess } from '../test/support/processes.js';
import { RGW_INSTALL_HINT, RGW_TOOLS, s3Env, startRgw, type RgwServer } from '../test/support/s3.js';
import { toolPath } from '../test/support/tools.js';
import type { BigBlob, BlobVariant } from './data.js';
import { BenchError } from './http.js';
import { DISTRIBUTION_BINARY, type LogSettings, type RunningServer, type ServerKind } from './servers.js';

export { type RgwServer };

/** Root directories (key prefixes) in the one bucket. */
export const ROOTS: Record<ServerKind, string> = { wharf: '/wharf', distribution: '/distribution' };
/** Key prefix of the limit measurements' objects. */
const LIMIT_PREFIX = 'limits/';

/** Throws a BenchError naming the packages when a tool the bench needs is missing. */
export function checkTools(): void {
  const absent = RGW_TOOLS.filter(([tool]) => toolPath(tool) === undefined).map(([tool]) => tool);
  if (absent.length > 0) throw new BenchError(`${absent.join(', ')} not found: ${RGW_INSTALL_HINT}`);
  if (toolPath(DISTRIBUTION_BINARY) === undefined) throw new BenchError(`${DISTRIBUTION_BINARY} not found: apt-get install docker-registry`);
  for (const tool of ['wrk', 'radosgw-admin']) {
    if (toolPath(tool) === undefined) throw new BenchError(`${tool} not found`);
  }
}

/**
 * glibc malloc settings for the gateway's daemons (radosgw and ceph-osd use glibc malloc):
 * keep freed heap mapped instead of returning it to the kernel. On this kind of VM
 * (Firecracker with free page reporting) memory given back is handed to the host, and
 * touching it again costs a host page fault per page: with glibc's defaults radosgw served a
 * GetObject at ~65 MB/s, with these ~200 MB/s. The storage is the fixture here, not what is
 * measured, so it runs as fast as this machine lets it. Only the daemons get them.
 */
export const STORAGE_MALLOC_ENV: Record<string, string> = {
  MALLOC_TRIM_THRESHOLD_: String(1 << 30),
  MALLOC_TOP_PAD_: String(256 << 20),
  MALLOC_MMAP_THRESHOLD_: String(1 << 30),
};

/** The gateway, its daemons started with `env` added to ours (the registries never get it). */
export async function startStorage(env: Record<string, string> = STORAGE_MALLOC_ENV): Promise<RgwServer> {
  // startRgw's daemons inherit this process's environment when they are spawned.
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await startRgw({ bucket: 'bench' });
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The Ceph version the gateway runs, for the report. */
export function cephVersion(): string {
  const out = spawnSync('radosgw', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return /ceph version (\S+)/.exec(out)?.[1] ?? 'unknown';
}

/** The PIDs of the gateway's daemons (radosgw, ceph-osd), found by their ceph.conf. */
export function storagePids(rgw: RgwServer): { radosgw?: number; osd?: number } {
  const find = (name: string): number | undefined => {
    const out = spawnSync('pgrep', ['-f', `^/usr/bin/${name} -c ${rgw.dir}/ceph.conf`], { encoding: 'utf8' }).stdout.trim().split('\n')[0];
    return out ? Number(out) : undefined;
  };
  return { radosgw: find('radosgw'), osd: find('ceph-osd') };
}

/**
 * Deleted objects stay in the OSD (in RAM, with memstore) until the gateway's garbage
 * collector removes them, by default hours later; the OSD has 4 GiB. Runs the collector now.
 */
export function collectStorageGarbage(rgw: RgwServer): void {
  const r = spawnSync('radosgw-admin', ['-c', join(rgw.dir, 'ceph.conf'), 'gc', 'process', '--include-all'], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new BenchError(`radosgw-admin gc process failed: ${r.stderr || r.error?.message}`);
}

export interface S3ServerOptions {
  workDir: string;
  rgw: RgwServer;
  log: LogSettings;
  /** wharf: storage.redirect.disable (default true: the bytes flow through wharf). */
  redirect?: boolean;
  /** wharf: a display name and a work subdirectory of its own (variants). */
  label?: string;
  /** wharf: extra node flags (e.g. --cpu-prof), added to those of bin/wharf.js's #! line. */
  nodeArgs?: string[];
  /** wharf: run this script (e.g. another build's server/main.js) with bin/wharf.js's #! flags instead. */
  wharfEntry?: string;
  /** wharf: extra environment. */
  wharfEnv?: Record<string, string>;
  /** Distribution: its in-memory blob descriptor cache (default on, as its shipped config). */
  distributionCache?: boolean;
  /** Distribution: more `storage.s3` settings (e.g. multipartcopythresholdsize), as YAML scalars. */
  distributionS3?: Record<string, string>;
}

/** The node flags on bin/wharf.js's `#!/usr/bin/env -S node ...` line. */
function shebangNodeFlags(script: string): string[] {
  const first = readFileSync(script, 'utf8').split('\n', 1)[0] ?? '';
  const words = first.replace(/^#!\S*\s*(-S\s+)?/, '').split(/\s+/).filter(Boolean);
  const node = words.findIndex((w) => w === 'node' || w.endsWith('/node'));
  return node < 0 ? [] : words.slice(node + 1);
}

/** wharf on the gateway, under ROOTS.wharf (variants share it). */
export async function startWharfOnS3(options: S3ServerOptions): Promise<RunningServer> {
  const label = options.label ?? 'wharf';
  const dir = join(options.workDir, label.replace(/[^a-z0-9-]+/gi, '-'));
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  // Only the configuration given here: REGISTRY_* variables of the calling shell stay out.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  const env: NodeJS.ProcessEnv = {
    ...inherited,
    REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`,
    ...s3Env(options.rgw, { rootdirectory: ROOTS.wharf, redirect: options.redirect ?? false }),
    REGISTRY_STORAGE_DELETE_ENABLED: 'true',
    REGISTRY_LOG_LEVEL: options.log.mode,
    REGISTRY_LOG_ACCESSLOG_DISABLED: options.log.mode === 'info' ? 'false' : 'true',
    REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
    NODE_ENV: 'production',
    ...options.wharfEnv,
  };
  const bin = join(REPO_ROOT, 'bin/wharf.js');
  const [command, args] =
    options.nodeArgs || options.wharfEntry
      ? [process.execPath, [...shebangNodeFlags(bin), ...(options.nodeArgs ?? []), options.wharfEntry ?? bin, 'serve']]
      : [bin, ['serve']];
  const proc = spawnLogged(label, command, args, { env, cwd: dir, logFile: join(options.workDir, `${label}.log`) });
  return ready('wharf', label, proc, port, `s3://${options.rgw.bucket}${ROOTS.wharf}`);
}

/** Distribution 2.8 on the gateway, under ROOTS.distribution, bytes through itself (redirect disabled). */
export async function startDistributionOnS3(options: S3ServerOptions): Promise<RunningServer> {
  const dir = join(options.workDir, 'distribution');
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const { rgw } = options;
  const s3: Record<string, string | boolean> = {
    region: rgw.region,
    regionendpoint: rgw.endpoint,
    bucket: rgw.bucket,
    accesskey: rgw.accessKey,
    secretkey: rgw.secretKey,
    rootdirectory: ROOTS.distribution,
    forcepathstyle: true,
    secure: false,
  };
  const extra = Object.entries(options.distributionS3 ?? {}).map(([k, v]) => `    ${k}: ${/^\d+$/.test(v) ? v : JSON.stringify(v)}`);
  const log = options.log.mode === 'info' ? ['log:', '  level: info', '  accesslog:', '    disabled: false'] : ['log:', '  level: warn', '  accesslog:', '    disabled: true'];
  const config = [
    'version: 0.1',
    ...log,
    'storage:',
    '  s3:',
    ...Object.entries(s3).map(([k, v]) => `    ${k}: ${JSON.stringify(v)}`),
    ...extra,
    '  redirect:',
    '    disable: true',
    '  delete:',
    '    enabled: true',
    ...(options.distributionCache === false ? [] : ['  cache:', '    blobdescriptor: inmemory']),
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: wharf-bench-not-secret',
    '',
  ].join('\n');
  const configPath = join(dir, 'config.yml');
  writeFileSync(configPath, config);
  // REGISTRY_* variables would override the file; AWS_* ones too (its Go SDK panics on an
  // AWS_CA_BUNDLE some machines set).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('AWS_')));
  const proc = spawnLogged('distribution', DISTRIBUTION_BINARY, ['serve', configPath], { env, cwd: dir, logFile: join(options.workDir, 'distribution.log') });
  return ready('distribution', 'Distribution', proc, port, `s3://${rgw.bucket}${ROOTS.distribution}`);
}

/** Waits until GET /v2/ answers 200; the process as a RunningServer. */
async function ready(kind: ServerKind, label: string, proc: LoggedProcess, port: number, dataDir: string): Promise<RunningServer> {
  const base = `http://127.0.0.1:${port}`;
  const server: RunningServer = {
    kind,
    label,
    pid: proc.pid,
    base,
    port,
    dataDir,
    logPath: proc.logFile,
    logTail: (lines = 20) => proc.logTail(lines),
    truncateLog: () => truncateSync(proc.logFile, 0),
    stop: async () => {
      await proc.stop(30_000);
    },
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exit()) throw new BenchError(`${label} exited during start-up:\n${proc.logTail(20)}`);
    try {
      const res = await fetch(`${base}/v2/`);
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new BenchError(`${label} did not answer GET /v2/ within 60 s:\n${proc.logTail(20)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return server;
}

/**
 * The storage's own speed, from the bench process with a plain aws-sdk client (keep-alive
 * agent, path style, no flexible checksums): what each registry's figure is measured against.
 */
export class StorageClient {
  readonly client: S3Client;

  constructor(private readonly rgw: RgwServer) {
    this.client = new S3Client({
      endpoint: rgw.endpoint,
      region: rgw.region,
      forcePathStyle: true,
      credentials: { accessKeyId: rgw.accessKey, secretAccessKey: rgw.secretKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { httpAgent: new HttpAgent({ keepAlive: true, maxSockets: 64 }) },
    });
    // DeleteObjects needs a body checksum; older gateways know only Content-MD5 (as the driver does).
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const request = args.request as { headers?: Record<string, string>; body?: unknown };
        if (context.commandName === 'DeleteObjectsCommand' && request.headers && typeof request.body === 'string') {
          request.headers['content-md5'] = createHash('md5').update(request.body).digest('base64');
        }
        return next(args);
      },
      { step: 'build', priority: 'low', name: 'benchContentMd5' },
    );
  }

  /** One PutObject of the variant's bytes streamed from the blob file; returns its key. */
  async put(blob: BigBlob, variant: BlobVariant & { tail: Buffer }, name: string): Promise<string> {
    const key = `${LIMIT_PREFIX}${name}`;
    await this.client.send(
      new PutObjectCommand({ Bucket: this.rgw.bucket, Key: key, Body: Readable.from(blob.body(variant)(), { objectMode: false }), ContentLength: variant.size }),
    );
    return key;
  }

  /** One CopyObject of `key` in the bucket (server-side). */
  async copy(key: string, name: string): Promise<string> {
    const to = `${LIMIT_PREFIX}${name}`;
    await this.client.send(new CopyObjectCommand({ Bucket: this.rgw.bucket, Key: to, CopySource: `${this.rgw.bucket}/${key}` }));
    return to;
  }

  /** One GetObject, hashing every byte as the registries' pull client does; checks size and digest. */
  async getVerified(key: string, variant: BlobVariant): Promise<void> {
    const res = await this.client.send(new GetObjectCommand({ Bucket: this.rgw.bucket, Key: key }));
    const hash = createHash('sha256');
    let received = 0;
    for await (const chunk of res.Body as Readable) {
      received += (chunk as Buffer).length;
      hash.update(chunk as Buffer);
    }
    if (received !== variant.size) throw new BenchError(`GetObject ${key}: received ${received} bytes, expected ${variant.size}`);
    const digest = `sha256:${hash.digest('hex')}`;
    if (digest !== variant.digest) throw new BenchError(`GetObject ${key}: content hashes to ${digest}, expected ${variant.digest}`);
  }

  /** A presigned GET URL of `key`, what a registry's redirect hands its clients. */
  presignedGet(key: string): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.rgw.bucket, Key: key }), { expiresIn: 600 });
  }

  /** Deletes the blobs' data objects of a registry (behind its back: the digests never come back). */
  async deleteBlobs(kind: ServerKind, digests: string[]): Promise<void> {
    const root = ROOTS[kind].replace(/^\/+/, '');
    const keys = digests.map((d) => {
      const hex = d.slice('sha256:'.length);
      return `${root}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
    });
    await this.deleteKeys(keys);
  }

  /** Deletes everything under the limit prefix, and leftovers of upload sessions of both registries. */
  async deleteLimitObjects(): Promise<void> {
    await this.deleteKeys(await this.keysUnder(LIMIT_PREFIX));
  }

  /** Keys of objects under `prefix`. */
  async keysUnder(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.rgw.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) if (o.Key) keys.push(o.Key);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys;
  }

  private async deleteKeys(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      const body = { Objects: batch.map((Key) => ({ Key })), Quiet: true };
      const res = await this.client.send(new DeleteObjectsCommand({ Bucket: this.rgw.bucket, Delete: body }));
      const failed = (res.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (failed.length > 0) throw new BenchError(`DeleteObjects: ${failed[0]!.Key}: ${failed[0]!.Code}`);
    }
  }

  destroy(): void {
    this.client.destroy();
  }
}
