// `wharf garbage-collect --online` against a running wharf (a real process on the same root):
// - concurrent pushes while the collector runs again and again never fail and never lose a
//   blob: some wait longer than the grace period between their uploads and their manifest,
//   some HEAD an old unreferenced blob (about to be collected) and reference it a second
//   later; afterwards every tag pulls whole, and exactly the unreferenced blobs are gone;
// - the two steps one by one: hide (HEAD answers 404), a manifest that references a hidden
//   blob brings it back (only in the repository that had it), deletion a grace period after
//   hiding; --dry-run changes nothing; progress lines carry counts and bytes;
// - a push meeting a busy marker waits for the collector's decision (the collector's half
//   played by writing and removing its files);
// - the command's refusals (--delete-untagged, a grace not above linkttl).
//
// Blobs are made "old" by setting their files' times back an hour, so only the second step
// (hidden for a grace period) costs wall time. The grace is 2s and linkttl 200ms.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { RegistryClient, sha256 } from '../support/client.js';
import { MT } from '../support/images.js';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { Cleanup, describeFailure, REPO_ROOT, removeTree, run, sleep, tempDir, type RunResult } from '../support/processes.js';
import { requireRgw, s3Env, startRgw, type RgwServer } from '../support/s3.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';
import { treeListing } from '../support/file-tree.js';

const BIN = join(REPO_ROOT, 'bin', 'wharf.js');
const V2 = join('docker', 'registry', 'v2');
const GRACE_MS = 2000;
const LINKTTL = '200ms';

interface Summary {
  manifestsMarked: number;
  blobsMarked: number;
  blobsDeleted: number;
  bytesFreed: number;
  blobsHidden: number;
  bytesHidden: number;
  restored: number;
  recent: number;
  waiting: number;
}

/** The numbers of the last line of an online run. */
function summary(r: RunResult): Summary {
  const line = r.stdout.trim().split('\n').at(-1)!;
  const m =
    /online: (\d+) manifests marked, (\d+) blobs marked, (\d+) blobs deleted, .*\((\d+) bytes\) freed, (\d+) blobs hidden, .*\((\d+) bytes\), (\d+) restored, (\d+) recent, (\d+) waiting/.exec(
      line,
    );
  if (!m) throw new Error(`no online summary in:\n${r.stdout}\n${r.stderr}`);
  const [manifestsMarked, blobsMarked, blobsDeleted, bytesFreed, blobsHidden, bytesHidden, restored, recent, waiting] = m.slice(1).map(Number) as number[];
  return { manifestsMarked: manifestsMarked!, blobsMarked: blobsMarked!, blobsDeleted: blobsDeleted!, bytesFreed: bytesFreed!, blobsHidden: blobsHidden!, bytesHidden: bytesHidden!, restored: restored!, recent: recent!, waiting: waiting! };
}

async function writeConfig(dir: string, root: string): Promise<string> {
  const file = join(dir, `gc-${Date.now()}-${randomBytes(3).toString('hex')}.yml`);
  await writeFile(
    file,
    ['version: 0.1', 'storage:', `  filesystem: { rootdirectory: ${JSON.stringify(root)} }`, `  cache: { linkttl: ${LINKTTL} }`, '  maintenance:', '    uploadpurging: { enabled: false }', ''].join('\n'),
  );
  return file;
}

function gc(config: string, args: string[], extraEnv: Record<string, string> = {}): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('VITEST')));
  delete env.NODE_OPTIONS;
  return run(BIN, ['garbage-collect', config, ...args], { env: { ...env, ...extraEnv }, timeoutMs: 60_000 });
}

async function gcOk(config: string, args: string[] = [], extraEnv: Record<string, string> = {}): Promise<{ r: RunResult; s: Summary }> {
  const r = await gc(config, ['--online', '--grace', `${GRACE_MS / 1000}s`, ...args], extraEnv);
  expect(r.code, describeFailure(r)).toBe(0);
  return { r, s: summary(r) };
}

const blobFile = (root: string, digest: string): string => join(root, V2, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7), 'data');
const layerLinkFile = (root: string, repo: string, digest: string): string => join(root, V2, 'repositories', repo, '_layers', 'sha256', digest.slice(7), 'link');
const markerFile = (root: string, digest: string): string => join(root, V2, 'wharf', 'gc', 'sha256', digest.slice(7));

/** Sets the times of a blob's data and of its layer links in `repos`. */
async function setTimes(root: string, digest: string, repos: string[], time: Date): Promise<void> {
  await utimes(blobFile(root, digest), time, time);
  for (const repo of repos) await utimes(layerLinkFile(root, repo, digest), time, time);
}

/** An hour back: unreferenced, the blob is a candidate at once. */
const makeOld = (root: string, digest: string, repos: string[]): Promise<void> => setTimes(root, digest, repos, new Date(Date.now() - 3600_000));

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

/** Blob digests with data on disk. */
async function storedDigests(root: string): Promise<Set<string>> {
  const found = new Set<string>();
  const base = join(root, V2, 'blobs', 'sha256');
  for (const prefix of await readdir(base).catch(() => [] as string[])) {
    for (const hex of await readdir(join(base, prefix))) if (await exists(join(base, prefix, hex, 'data'))) found.add(`sha256:${hex}`);
  }
  return found;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else out.push(join(d, e.name));
    }
  };
  await walk(dir);
  return out;
}

interface Descriptor {
  digest: string;
  size: number;
}

function imageManifest(config: Descriptor, layers: Descriptor[]): string {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
  });
}

async function upload(c: RegistryClient, repo: string, data: Buffer): Promise<Descriptor> {
  return { digest: await c.pushBlob(repo, data), size: data.length };
}

const randomConfig = (): Buffer => Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', nonce: randomBytes(8).toString('hex') }));

interface Pushed {
  repo: string;
  tag: string;
  digest: string;
  blobs: string[];
}

/** GETs every pushed tag and each of its blobs, checking digests. */
async function pullsWhole(url: string, pushed: Pushed[]): Promise<void> {
  for (const p of pushed) {
    const res = await fetch(`${url}/v2/${p.repo}/manifests/${p.tag}`, { headers: { Accept: MT.ociManifest } });
    expect(res.status, `${p.repo}:${p.tag}`).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(p.digest);
    for (const blob of p.blobs) {
      const b = await fetch(`${url}/v2/${p.repo}/blobs/${blob}`);
      expect(b.status, `${p.repo}:${p.tag} ${blob}`).toBe(200);
      expect(sha256(Buffer.from(await b.arrayBuffer()))).toBe(blob);
    }
  }
}

describe('wharf garbage-collect --online', () => {
  let work: string;
  let root: string;
  let wharf: WharfProcess;
  let config: string;

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-gco-');
    root = join(work, 'root');
    await mkdir(root);
    wharf = await startWharf({ root, env: { REGISTRY_STORAGE_CACHE_LINKTTL: LINKTTL }, logLevel: 'warn' });
    config = await writeConfig(work, root);
  }, 60_000);

  afterAll(async () => {
    await wharf?.stop();
    if (work) await removeTree(work);
  });

  it('refuses --delete-untagged, a grace not above linkttl, and --grace without --online', async () => {
    const [untagged, short, alone, bad] = await Promise.all([
      gc(config, ['--online', '--delete-untagged']),
      gc(config, ['--online', '--grace', '200ms']),
      gc(config, ['--grace', '1h']),
      gc(config, ['--online', '--grace', 'soon']),
    ]);
    expect(untagged.code).toBe(2);
    expect(untagged.stderr).toContain('--delete-untagged cannot be combined with --online');
    expect(short.code).toBe(2);
    expect(short.stderr).toContain('must exceed storage.cache.linkttl');
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain('--grace applies to --online only');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('not a duration');
  });

  it('hides, gives back to a push, deletes a grace period after hiding; --dry-run changes nothing', async () => {
    const c = new RegistryClient(wharf.url);
    const kept = await c.pushImage('steps/one', 'v1', [randomBytes(1500)]);
    const x = await upload(c, 'steps/one', randomBytes(3000)); // never referenced
    const y = await upload(c, 'steps/one', randomBytes(2000)); // referenced after it was hidden
    const fresh = await upload(c, 'steps/other', randomBytes(1000)); // unreferenced but recent
    await makeOld(root, x.digest, ['steps/one']);
    await makeOld(root, y.digest, ['steps/one']);
    // Recent however slowly this machine runs the test: its times are an hour ahead.
    await setTimes(root, fresh.digest, ['steps/other'], new Date(Date.now() + 3600_000));

    const first = await gcOk(config);
    expect(first.s).toMatchObject({ blobsHidden: 2, bytesHidden: 5000, blobsDeleted: 0, bytesFreed: 0, recent: 1, waiting: 0 });
    expect(first.r.stdout).toMatch(/^mark: \d+ repositories, \d+ manifests marked, \d+ blobs marked$/m);
    expect(first.r.stdout).toMatch(/^re-mark: 0 manifests pushed meanwhile, 0 more blobs marked$/m);
    expect(first.r.stdout).toContain('sweep: 0 blobs deleted (0 B), 2 hidden (4.9 KiB), 0 restored, 1 used within the grace period');
    expect(first.r.stdout).toMatch(/^scan: \d+ blobs stored, 3 unreferenced \(5\.9 KiB\), 0 hidden or in progress from earlier runs$/m);
    expect(await exists(markerFile(root, x.digest))).toBe(true);
    await sleep(300); // the registry's link cache (linkttl)
    for (const d of [x, y]) expect((await c.fetch(`/v2/steps/one/blobs/${d.digest}`, { method: 'HEAD' })).status).toBe(404);
    expect((await c.fetch(`/v2/steps/other/blobs/${fresh.digest}`, { method: 'HEAD' })).status).toBe(200);

    // A hidden blob comes back only to a repository that had it.
    const config2 = await upload(c, 'steps/other', randomConfig());
    const elsewhere = await c.pushManifest('steps/other', 'y', imageManifest(config2, [y]), MT.ociManifest);
    expect(elsewhere.status).toBe(400);
    expect(await elsewhere.text()).toContain('MANIFEST_BLOB_UNKNOWN');
    const config1 = await upload(c, 'steps/one', randomConfig());
    const body = imageManifest(config1, [y]);
    expect((await c.pushManifest('steps/one', 'y', body, MT.ociManifest)).status).toBe(201);
    expect((await c.fetch(`/v2/steps/one/blobs/${y.digest}`, { method: 'HEAD' })).status).toBe(200);

    await sleep(GRACE_MS + 1200); // times are read up to a second late (S3 keeps whole seconds)
    // By now the refused push's config is old and unreferenced too: hidden next.
    const nowOld = { blobsHidden: 1, bytesHidden: config2.size, recent: 1 };
    const before = await treeListing(root);
    const dry = await gcOk(config, ['--dry-run']);
    expect(await treeListing(root)).toEqual(before);
    expect(dry.r.stdout.trim().split('\n').at(-1)).toMatch(/^dry run, nothing changed: /);
    expect(dry.s).toMatchObject({ blobsDeleted: 1, bytesFreed: 3000, restored: 1, ...nowOld });

    const second = await gcOk(config);
    expect(second.s).toMatchObject({ blobsDeleted: 1, bytesFreed: 3000, restored: 1, waiting: 0, ...nowOld });
    expect(second.r.stdout).toContain('(3000 bytes) freed');
    expect(await exists(blobFile(root, x.digest))).toBe(false);
    expect(await exists(blobFile(root, y.digest))).toBe(true);
    // Markers: x's and y's are gone (deleted, restored); the one hidden now has its own.
    expect(await filesUnder(join(root, V2, 'wharf'))).toEqual([markerFile(root, config2.digest)]);
    await pullsWhole(wharf.url, [
      { repo: 'steps/one', tag: 'v1', digest: kept.digest, blobs: [kept.manifest.config.digest, ...kept.manifest.layers.map((l) => l.digest)] },
      { repo: 'steps/one', tag: 'y', digest: sha256(Buffer.from(body)), blobs: [config1.digest, y.digest] },
    ]);
  }, 120_000);

  it('a push that meets a busy marker waits for the decision: kept, or deleted and refused', async () => {
    const c = new RegistryClient(wharf.url);
    const busy = (repo: string): string => JSON.stringify({ state: 'deleting', cycle: 'test', repos: [repo] });
    const push = async (blob: Descriptor): Promise<{ status: number; ms: number; text: string }> => {
      const cfg = await upload(c, 'wait/one', randomConfig());
      const started = Date.now();
      const res = await c.pushManifest('wait/one', `t${randomBytes(3).toString('hex')}`, imageManifest(cfg, [blob]), MT.ociManifest);
      return { status: res.status, ms: Date.now() - started, text: await res.text() };
    };

    // The collector decides to keep the blob (removes its marker) after 500 ms.
    const kept = await upload(c, 'wait/one', randomBytes(1200));
    await mkdir(join(root, V2, 'wharf', 'gc', 'sha256'), { recursive: true });
    await writeFile(markerFile(root, kept.digest), busy('wait/one'));
    const pending = push(kept);
    await sleep(500);
    await rm(markerFile(root, kept.digest));
    const ok = await pending;
    expect(ok.status, ok.text).toBe(201);
    expect(ok.ms).toBeGreaterThanOrEqual(400);

    // The collector deletes the blob after 500 ms: the manifest is refused, not stored.
    const doomed = await upload(c, 'wait/one', randomBytes(1300));
    await writeFile(markerFile(root, doomed.digest), busy('wait/one'));
    const refused = push(doomed);
    await sleep(500);
    await rm(join(blobFile(root, doomed.digest), '..'), { recursive: true });
    await rm(markerFile(root, doomed.digest));
    const no = await refused;
    expect(no.status).toBe(400);
    expect(no.text).toContain('MANIFEST_BLOB_UNKNOWN');
  }, 30_000);

  it('never breaks a push while it runs again and again, and then collects exactly the unreferenced blobs', async () => {
    // A root of its own: every blob in it is accounted for below.
    const root = join(work, 'load');
    await mkdir(root);
    const wharf = await startWharf({ root, env: { REGISTRY_STORAGE_CACHE_LINKTTL: LINKTTL }, logLevel: 'warn' });
    try {
      await collectsWhilePushing({
        replicas: [wharf],
        config: await writeConfig(work, root),
        makeOld: (digest, repos) => makeOld(root, digest, repos),
        digests: () => storedDigests(root),
        listing: () => treeListing(root),
        wharfFiles: () => filesUnder(join(root, V2, 'wharf')),
      });
    } finally {
      await wharf.stop();
    }
  }, 180_000);
});

describe.skipIf(!requireRgw())('wharf garbage-collect --online on S3, two replicas on one bucket', () => {
  const cleanup = new Cleanup();
  let rgw: RgwServer;
  let work: string;

  beforeAll(async () => {
    rgw = await startRgw();
    cleanup.add('rgw', () => rgw.stop());
    work = await tempDir('wharf-e2e-gcos3-');
    cleanup.add('work dir', () => removeTree(work));
  }, 180_000);

  afterAll(() => cleanup.run(), 120_000);

  it('never breaks a push through either replica, and then collects exactly the unreferenced blobs', async () => {
    const storage = { ...s3Env(rgw, { rootdirectory: '/gc-online' }), REGISTRY_STORAGE_CACHE_LINKTTL: LINKTTL };
    // A replica that serves blob bytes itself and one that redirects GETs to the bucket.
    const a = await startWharf({ storageEnv: { ...storage, REGISTRY_STORAGE_REDIRECT_DISABLE: 'true' }, logLevel: 'warn' });
    cleanup.add('wharf a', () => a.stop());
    const b = await startWharf({ storageEnv: storage, logLevel: 'warn' });
    cleanup.add('wharf b', () => b.stop());
    const config = join(work, 'gc.yml');
    await writeFile(config, 'version: 0.1\n');
    const client = rgw.client();
    const objects = async (): Promise<{ key: string; line: string }[]> => {
      const out: { key: string; line: string }[] = [];
      let token: string | undefined;
      do {
        const page = await client.send(new ListObjectsV2Command({ Bucket: rgw.bucket, Prefix: 'gc-online/', ContinuationToken: token }));
        for (const o of page.Contents ?? []) out.push({ key: o.Key!, line: `${o.Key} ${o.Size} ${o.LastModified?.getTime()} ${o.ETag}` });
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
      return out;
    };
    await collectsWhilePushing({
      replicas: [a, b],
      config,
      gcEnv: { ...storage, REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false' },
      digests: async () =>
        new Set(
          (await objects())
            .map((o) => /docker\/registry\/v2\/blobs\/sha256\/[0-9a-f]{2}\/([0-9a-f]{64})\/data$/.exec(o.key)?.[1])
            .filter((h): h is string => h !== undefined)
            .map((h) => `sha256:${h}`),
        ),
      listing: async () => (await objects()).map((o) => o.line).sort(),
      wharfFiles: async () => (await objects()).map((o) => o.key).filter((k) => k.includes('/docker/registry/v2/wharf/')),
    });
  }, 300_000);
});

interface Scenario {
  /** Registries serving the storage; pushes go to each in turn, pulls are checked on all. */
  replicas: WharfProcess[];
  config: string;
  gcEnv?: Record<string, string>;
  /** Ages a blob's files (filesystem); without it the seeds are left to age in real time. */
  makeOld?: (digest: string, repos: string[]) => Promise<void>;
  /** Digests whose data is stored. */
  digests(): Promise<Set<string>>;
  /** Every stored file with its size and time. */
  listing(): Promise<string[]>;
  /** Files below docker/registry/v2/wharf (markers, parked bytes). */
  wharfFiles(): Promise<string[]>;
}

async function collectsWhilePushing(sc: Scenario): Promise<void> {
  const clients = sc.replicas.map((r) => new RegistryClient(r.url));
  const client = (n: number): RegistryClient => clients[n % clients.length]!;
  const collect = (args: string[] = []): Promise<{ r: RunResult; s: Summary }> => gcOk(sc.config, args, sc.gcEnv);
  // Old and unreferenced: orphans nobody pushes again, and blobs pushers HEAD and reference.
  const orphans: Descriptor[] = [];
  for (let i = 0; i < 5; i++) orphans.push(await upload(client(i), 'load/orphans', randomBytes(1000 + 100 * i)));
  const olds: { blob: Descriptor; data: Buffer }[] = [];
  for (let i = 0; i < 6; i++) {
    const data = randomBytes(1500 + 100 * i);
    olds.push({ blob: await upload(client(i), 'load/shared', data), data });
  }
  if (sc.makeOld) {
    for (const o of orphans) await sc.makeOld(o.digest, ['load/orphans']);
    for (const o of olds) await sc.makeOld(o.blob.digest, ['load/shared']);
  } else await sleep(GRACE_MS + 1200); // the collector reads times up to a second late
  const seeded = new Map([...orphans, ...olds.map((o) => o.blob)].map((b) => [b.digest, b.size]));

  const runs: RunResult[] = [];
  let stop = false;
  const collector = (async () => {
    while (!stop) runs.push((await collect()).r);
  })();

  const pushed: Pushed[] = [];
  const failures: string[] = [];
  let slow = 0;
  let headed = 0;
  // Five seconds of pushes, and at least until the collector has run twice all along.
  const until = Date.now() + 5000;
  const pusher = async (k: number): Promise<void> => {
    for (let i = 0; Date.now() < until || runs.length < 2; i++) {
      const c = client(k + i);
      const mode = (k + i) % 3;
      const repo = mode === 2 ? 'load/shared' : `load/p${k}`;
      const cfg = await upload(c, repo, randomConfig());
      const layers: Descriptor[] = [];
      for (let n = 0; n < 2 + ((k + i) % 2); n++) layers.push(await upload(c, repo, randomBytes(500 + Math.floor(Math.random() * 4000))));
      if (mode === 1) {
        slow++;
        await sleep(GRACE_MS + 1600); // longer than the grace period between upload and manifest
      } else if (mode === 2) {
        // A client finding an old unreferenced blob present, referencing it a second later.
        const old = olds[(k * 7 + i) % olds.length]!;
        const head = await c.fetch(`/v2/${repo}/blobs/${old.blob.digest}`, { method: 'HEAD' });
        if (head.status === 200) {
          headed++;
          await sleep(1000);
        } else await upload(c, repo, old.data); // hidden already: the client uploads it again
        layers.push(old.blob);
      }
      const body = imageManifest(cfg, layers);
      const tag = `p${k}-${i}`;
      const res = await c.pushManifest(repo, tag, body, MT.ociManifest);
      if (res.status !== 201) failures.push(`${repo}:${tag} mode ${mode}: ${res.status} ${await res.text()}`);
      else pushed.push({ repo, tag, digest: sha256(Buffer.from(body)), blobs: [cfg.digest, ...layers.map((l) => l.digest)] });
    }
  };
  await Promise.all([0, 1, 2, 3].map(pusher));
  stop = true;
  await collector;
  expect(failures).toEqual([]);
  expect(runs.length).toBeGreaterThanOrEqual(2);
  expect(slow).toBeGreaterThan(0);
  expect(headed + pushed.filter((p) => p.repo === 'load/shared').length).toBeGreaterThan(0);
  for (const r of sc.replicas) await pullsWhole(r.url, pushed);

  // Quiet now: a dry run changes nothing; then a run hides what is left and one a grace later deletes it.
  const before = await sc.listing();
  await collect(['--dry-run']);
  expect(await sc.listing()).toEqual(before);
  runs.push((await collect()).r);
  await sleep(GRACE_MS + 1200);
  const last = await collect();
  runs.push(last.r);
  expect(last.s.waiting).toBe(0);

  const referenced = new Set(pushed.flatMap((p) => [p.digest, ...p.blobs]));
  const unreferenced = [...seeded.keys()].filter((d) => !referenced.has(d));
  const deleted = runs.map(summary).reduce((sum, s) => ({ blobs: sum.blobs + s.blobsDeleted, bytes: sum.bytes + s.bytesFreed }), { blobs: 0, bytes: 0 });
  expect(deleted.blobs).toBe(unreferenced.length);
  expect(deleted.bytes).toBe(unreferenced.reduce((sum, d) => sum + seeded.get(d)!, 0));
  const remaining = await sc.digests();
  for (const d of unreferenced) expect(remaining.has(d), d).toBe(false);
  for (const d of referenced) expect(remaining.has(d), d).toBe(true);
  expect(await sc.wharfFiles()).toEqual([]);
  for (const r of sc.replicas) await pullsWhole(r.url, pushed);
}
