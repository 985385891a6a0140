// A real, throwaway S3 server for tests: Ceph RADOS Gateway (Debian's radosgw, beast
// frontend) on a one-node Ceph cluster made in a temp dir: one ceph-mon, one ceph-osd with
// the memstore object store (data in RAM), radosgw; no mgr, no cephx (auth none), every
// daemon bound to 127.0.0.1 on a block of free ports. About 3 s to start on the CI machine.
//
// Packages (Debian): radosgw ceph-mon ceph-osd ceph-common (ceph-base comes with them).
// startRgw() returns the endpoint, keys and a bucket; stop() ends exactly the daemons it
// started (their process groups, radosgw first) and removes the temp dir.
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFile, mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import {
  describeFailure,
  readTail,
  reapAndRemove,
  run,
  runOk,
  spawnLogged,
  tempDir,
  waitFor,
  type LoggedProcess,
} from './processes.js';
import { mustToolPath, requireTools } from './tools.js';

/** The Debian packages that provide everything startRgw() runs (for .ci/run and messages). */
export const RGW_APT_PACKAGES = ['radosgw', 'ceph-mon', 'ceph-osd', 'ceph-common'];

/** [tool, package] pairs for requireTools(). */
export const RGW_TOOLS: Array<[string, string]> = [
  ['radosgw', 'radosgw'],
  ['radosgw-admin', 'ceph-common'],
  ['ceph', 'ceph-common'],
  ['ceph-mon', 'ceph-mon'],
  ['ceph-osd', 'ceph-osd'],
  ['monmaptool', 'ceph-mon'], // in ceph-base, which ceph-mon depends on
];

/** True when the Ceph tools are installed; skips loudly outside CI, throws under CI=true. */
export const requireRgw = (): boolean => requireTools(RGW_TOOLS);

export interface RgwServer {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  region: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  /** Milliseconds from the call to a bucket being ready. */
  startMs: number;
  /** The temp dir with ceph.conf, daemon state and Ceph's logs (removed by stop()). */
  dir: string;
  /** A client for test inspection (path style, checksums only when required). */
  client(): S3Client;
  /** Creates another empty bucket. */
  createBucket(name: string): Promise<void>;
  /** Stops radosgw only (S3 unreachable; the data stays in the OSD). */
  stopGateway(): Promise<void>;
  /** Starts radosgw again on the same port after stopGateway(), and waits until it answers. */
  startGateway(): Promise<void>;
  /** Stops radosgw, the OSD and the monitor (in that order), then removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface RgwOptions {
  bucket?: string;
  /** Overall bound on the start, in ms (default 120 s). */
  timeoutMs?: number;
}

const HOST = '127.0.0.1';
/** Ports in one block: rgw, mon, then the OSD's messenger range. */
const BLOCK = 10;

/** True when `port` can be bound on loopback right now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

/** The first port of BLOCK consecutive free loopback ports (random start, bounded tries). */
async function freePortBlock(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let p = base; p < base + BLOCK && ok; p++) ok = await portFree(p);
    if (ok) return base;
  }
  throw new Error(`no block of ${BLOCK} free loopback ports found`);
}

function cephConf(dir: string, fsid: string, port: number): string {
  const monPort = port + 1;
  return `[global]
fsid = ${fsid}
mon host = [v2:${HOST}:${monPort}]
public addr = ${HOST}
cluster addr = ${HOST}
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = ${port + 2}
ms bind port max = ${port + BLOCK - 1}
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
keyring = /dev/null
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
crash dir = ${dir}/crash
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
[mon]
mon data = ${dir}/mon.$id
# each pool radosgw creates is a few monitor proposals: the default 1 s interval triples the start time
paxos propose interval = 0.05
mon cluster log file = ${dir}/log/cluster.log
[osd]
osd data = ${dir}/osd.$id
osd objectstore = memstore
memstore device bytes = 4294967296
osd memory target = 1073741824
[client.rgw.a]
rgw data = ${dir}/rgw
# tcp_nodelay: else Nagle holds back each answer's body until the client's delayed ACK, ~40 ms
# (median GET 55 -> 8 ms, list 58 -> 11 ms; every push through wharf took 0.4-1 s)
rgw frontends = beast endpoint=${HOST}:${port} tcp_nodelay=1
rgw thread pool size = 128
rgw dynamic resharding = false
`;
}

const randomKey = (alphabet: string, length: number): string =>
  Array.from(randomBytes(length), (b) => alphabet[b % alphabet.length]).join('');

/** Starts a throwaway Ceph RGW on loopback; see the file's comment. */
export async function startRgw(options: RgwOptions = {}): Promise<RgwServer> {
  const started = Date.now();
  const timeoutMs = options.timeoutMs ?? 120_000;
  const deadline = started + timeoutMs;
  const left = (): number => Math.max(1000, deadline - Date.now());
  const tools = Object.fromEntries(RGW_TOOLS.map(([t]) => [t, mustToolPath(t)])) as Record<string, string>;

  const dir = await tempDir('rgw-'); // short: admin socket paths must stay under 107 bytes
  const daemons: LoggedProcess[] = [];
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      for (const d of [...daemons].reverse()) await d.stop(10_000); // rgw, osd, mon
      await reapAndRemove(dir); // anything else still running out of dir, then the dir
    })();
    return stopping;
  };

  try {
    for (const sub of ['run', 'log', 'crash', 'mon.a', 'osd.0', 'rgw']) await mkdir(join(dir, sub), { recursive: true });
    const port = await freePortBlock();
    const conf = join(dir, 'ceph.conf');
    const fsid = randomUUID();
    await writeFile(conf, cephConf(dir, fsid, port));
    const ceph = (args: string[]) => run(tools.ceph!, ['-c', conf, '--connect-timeout', '10', ...args], { timeoutMs: 30_000 });
    const daemonLog = (name: string): string => `\n${name} log (${join(dir, 'log')}):\n${readTail(join(dir, 'log', `${name}.log`), 30)}`;

    // 1. monitor
    await runOk(tools.monmaptool!, ['--create', '--fsid', fsid, '--addv', 'a', `[v2:${HOST}:${port + 1}]`, join(dir, 'monmap')]);
    await runOk(tools['ceph-mon']!, ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')], { timeoutMs: 30_000 });
    const mon = spawnLogged('ceph-mon', tools['ceph-mon']!, ['-c', conf, '-i', 'a', '-f']);
    daemons.push(mon);
    await waitFor(async () => (await ceph(['mon', 'stat'])).code === 0, {
      what: 'ceph-mon', process: mon, timeoutMs: left(), intervalMs: 200,
    });

    // 2. one OSD (memstore)
    const osdUuid = randomUUID();
    const created = await ceph(['osd', 'new', osdUuid]);
    if (created.code !== 0 || created.stdout.trim() !== '0') throw new Error(`ceph osd new: ${describeFailure(created)}`);
    await runOk(tools['ceph-osd']!, ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid], { timeoutMs: 60_000 });
    const osd = spawnLogged('ceph-osd', tools['ceph-osd']!, ['-c', conf, '-i', '0', '-f']);
    daemons.push(osd);
    await waitFor(async () => /^osd\.0 up /m.test((await ceph(['osd', 'dump'])).stdout), {
      what: 'ceph-osd up', process: osd, timeoutMs: left(), intervalMs: 250,
    }).catch((err: Error) => Promise.reject(new Error(`${err.message}${daemonLog('osd.0')}`)));

    // 3. radosgw (creates its pools on first start)
    const endpoint = `http://${HOST}:${port}`;
    let gateway: LoggedProcess | undefined;
    const startGateway = async (timeoutMs = left()): Promise<void> => {
      const rgw = spawnLogged('radosgw', tools.radosgw!, ['-c', conf, '-n', 'client.rgw.a', '-f']);
      gateway = rgw;
      daemons.push(rgw);
      await waitFor(
        async () => {
          const res = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(2000) });
          await res.arrayBuffer();
          return res.status === 200;
        },
        { what: `radosgw answering on ${endpoint}`, process: rgw, timeoutMs, intervalMs: 250 },
      ).catch((err: Error) => Promise.reject(new Error(`${err.message}${daemonLog('client.rgw.a')}`)));
    };
    const stopGateway = async (): Promise<void> => {
      const rgw = gateway;
      if (!rgw) return;
      gateway = undefined;
      await rgw.stop(10_000);
      daemons.splice(daemons.indexOf(rgw), 1);
    };
    await startGateway();

    // 4. a user with fixed keys, and the bucket
    const accessKey = randomKey('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 20);
    const secretKey = randomKey('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', 40);
    await runOk(
      tools['radosgw-admin']!,
      ['-c', conf, 'user', 'create', '--uid=registry', '--display-name=registry', `--access-key=${accessKey}`, `--secret-key=${secretKey}`],
      { timeoutMs: 60_000 },
    );
    const region = 'us-east-1';
    const client = (): S3Client =>
      new S3Client({
        endpoint,
        region,
        forcePathStyle: true,
        credentials: { accessKeyId: accessKey, secretAccessKey: secretKey },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
    const createBucket = async (name: string): Promise<void> => {
      const c = client();
      try {
        await c.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        c.destroy();
      }
    };
    const bucket = options.bucket ?? 'registry';
    await createBucket(bucket);
    return {
      endpoint, region, accessKey, secretKey, bucket, startMs: Date.now() - started, dir, client, createBucket, stop,
      stopGateway, startGateway: () => startGateway(60_000),
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/**
 * REGISTRY_* variables that point a registry (wharf or Distribution) at the server's bucket,
 * path style, with `rootdirectory` as the key prefix.
 */
export function s3Env(rgw: RgwServer, options: { rootdirectory?: string; redirect?: boolean; bucket?: string } = {}): Record<string, string> {
  return {
    REGISTRY_STORAGE: 's3',
    REGISTRY_STORAGE_S3_REGION: rgw.region,
    REGISTRY_STORAGE_S3_REGIONENDPOINT: rgw.endpoint,
    REGISTRY_STORAGE_S3_BUCKET: options.bucket ?? rgw.bucket,
    REGISTRY_STORAGE_S3_ACCESSKEY: rgw.accessKey,
    REGISTRY_STORAGE_S3_SECRETKEY: rgw.secretKey,
    REGISTRY_STORAGE_S3_FORCEPATHSTYLE: 'true',
    REGISTRY_STORAGE_S3_SECURE: 'false',
    ...(options.rootdirectory ? { REGISTRY_STORAGE_S3_ROOTDIRECTORY: options.rootdirectory } : {}),
    REGISTRY_STORAGE_REDIRECT_DISABLE: String(options.redirect === false),
  };
}

/** The package list for messages: `apt-get install -y radosgw ceph-mon ceph-osd ceph-common`. */
export const RGW_INSTALL_HINT = `apt-get install -y ${RGW_APT_PACKAGES.join(' ')}`;
