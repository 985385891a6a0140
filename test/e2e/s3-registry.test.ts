// wharf on S3 with two replicas on one bucket (a real Ceph RADOS Gateway): what people do
// when one disk is not enough. Replica A serves blob bytes itself (storage.redirect.disable),
// replica B redirects blob GETs to presigned S3 URLs (Distribution's default on S3). Real
// clients push through one and pull through the other; a chunked upload alternates between
// them; Distribution 2.8 on the same bucket reads what wharf wrote and the other way round;
// the gateway stops mid-push and comes back; a replica killed mid-upload leaves parts that
// upload purging ends; tags moved and deleted on one replica are seen by the other within
// storage.cache.linkttl.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Driver } from '../../storage/s3-driver.js';
import { purgeUploads } from '../../storage/upload-purge.js';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import {
  buildMultiLayerImage,
  busyboxOciImage,
  getBlob,
  getManifest,
  MT,
  requireBusybox,
  sha256,
  writeOciArchive,
  writeOciLayout,
  type DockerImage,
  type OciImage,
} from '../support/images.js';
import { Cleanup, removeTree, sleep, tempDir, waitFor } from '../support/processes.js';
import { requireRgw, s3Env, startRgw, type RgwServer } from '../support/s3.js';
import { all, privatePodman, privateSkopeo, requireRoot, requireTool, requireTools, type PodmanRunner, type ToolRunner } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(
  requireRgw(),
  requireTools(DOCKERD_TOOLS),
  requireTool('skopeo', 'skopeo'),
  requireTool('podman', 'podman'),
  requireTool(DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE),
  requireBusybox(),
  requireRoot('a private dockerd and rootful podman'),
);

const MiB = 1 << 20;
const ROOT = '/replicas';

interface ImageManifest {
  mediaType: string;
  config: { digest: string };
  layers: Array<{ digest: string; size: number }>;
}

describe.skipIf(!available)('wharf on S3: two replicas on one bucket', () => {
  const cleanup = new Cleanup();
  let rgw: RgwServer;
  let a: WharfProcess; // serves bytes itself
  let b: WharfProcess; // redirects blob GETs to S3
  let work: string;
  let skopeo: ToolRunner;

  const replicaEnv = (redirect: boolean): Record<string, string> => ({
    ...s3Env(rgw, { rootdirectory: ROOT, redirect }),
    // The smallest part S3 allows, so that the test's layers go out as several parts.
    REGISTRY_STORAGE_S3_CHUNKSIZE: String(5 * MiB),
  });

  beforeAll(async () => {
    rgw = await startRgw();
    cleanup.add('rgw', () => rgw.stop());
    a = await startWharf({ storageEnv: replicaEnv(false) });
    cleanup.add('wharf a', () => a.stop());
    b = await startWharf({ storageEnv: replicaEnv(true) });
    cleanup.add('wharf b', () => b.stop());
    work = await tempDir('wharf-e2e-s3-');
    cleanup.add('work dir', () => removeTree(work));
    skopeo = await privateSkopeo(work);
  }, 180_000);

  afterAll(() => cleanup.run(), 120_000);

  /** GET of a blob without following redirects. */
  const rawBlobGet = (wharf: WharfProcess, repo: string, digest: string): Promise<Response> =>
    fetch(`${wharf.url}/v2/${repo}/blobs/${digest}`, { redirect: 'manual' });

  it('stores nothing on the local disk: the root directory stays empty', async () => {
    // startWharf made a temp dir for each; with S3 configured nothing may land there.
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(a.root)).toEqual([]);
    expect(await readdir(b.root)).toEqual([]);
    expect(a.process.logTail(50)).toContain(`s3://${rgw.bucket}/replicas`);
  });

  describe('docker', () => {
    let d: Dockerd;
    let image: DockerImage;

    beforeAll(async () => {
      d = await startDockerd();
      cleanup.add('dockerd', () => d.stop());
      image = await buildMultiLayerImage(d, 'wharf-e2e/s3:1.0', { bigBytes: 12 * MiB });
    }, 240_000);

    it('pushes through replica A, pulls through replica B (redirected to S3) and A, and runs it', async () => {
      await d.dockerOk(['tag', image.ref, `${a.host}/team/app:1.0`]);
      const pushed = await d.dockerOk(['push', `${a.host}/team/app:1.0`]);
      const digest = /digest: (sha256:[0-9a-f]{64})/.exec(pushed.stdout)![1]!;

      // B redirects the big layer to a presigned URL on the gateway; A answers it itself.
      const m = JSON.parse((await getManifest(b.url, 'team/app', '1.0')).body.toString()) as ImageManifest;
      const big = m.layers.reduce((x, y) => (y.size > x.size ? y : x));
      const redirected = await rawBlobGet(b, 'team/app', big.digest);
      expect(redirected.status).toBe(307);
      expect(redirected.headers.get('location')).toMatch(new RegExp(`^${rgw.endpoint}/${rgw.bucket}/replicas/docker/registry/v2/blobs/sha256/`));
      expect(redirected.headers.get('location')).toContain('X-Amz-Signature=');
      expect(redirected.headers.get('docker-content-digest')).toBe(big.digest);
      const direct = await rawBlobGet(a, 'team/app', big.digest);
      expect(direct.status).toBe(200);
      expect(sha256(Buffer.from(await direct.arrayBuffer()))).toBe(big.digest);

      for (const [replica, ref] of [[b, 'b'], [a, 'a']] as const) {
        await d.docker(['rmi', '-f', image.ref, `${a.host}/team/app:1.0`, `${replica.host}/team/app:1.0`]);
        await d.dockerOk(['pull', `${replica.host}/team/app:1.0`]);
        const out = (await d.dockerOk(['run', '--rm', '--network', 'none', `${replica.host}/team/app:1.0`, 'sha256sum', '/data/random.bin'])).stdout;
        expect(out.trim(), `pulled through ${ref}`).toBe(`${image.files['/data/random.bin']}  /data/random.bin`);
        const info = (await d.dockerOk(['image', 'inspect', '--format', '{{json .RepoDigests}}', `${replica.host}/team/app:1.0`])).stdout;
        expect(info).toContain(digest);
      }
    }, 300_000);
  });

  it('a chunked upload whose PATCHes alternate between the replicas completes with the right digest', async () => {
    // Chunks below and above S3's 5 MiB part minimum, each on the other replica.
    const chunks = [3 * MiB, 6 * MiB + 11, 1 * MiB, 5 * MiB, 2 * MiB + 3].map((n) => randomBytes(n));
    const whole = Buffer.concat(chunks);
    const digest = sha256(whole);
    const repo = 'chunked/alternating';
    const replicas = [a, b];
    const start = await fetch(`${a.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    expect(start.status).toBe(202);
    let location = new URL(start.headers.get('location')!, a.url);
    let offset = 0;
    for (const [i, chunk] of chunks.entries()) {
      const replica = replicas[i % 2]!;
      const url = `${replica.url}${location.pathname}${location.search}`;
      // The other replica reports the size the last one stored.
      const status = await fetch(url);
      expect(status.status).toBe(204);
      expect(status.headers.get('range')).toBe(offset === 0 ? '0-0' : `0-${offset - 1}`);
      // fetch sends the Content-Length of a Buffer body itself; set by hand, it is refused once
      // undici 7 (which storage/s3-driver.ts imports) has become the global dispatcher.
      const res = await fetch(url, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${offset}-${offset + chunk.length - 1}` },
        body: chunk,
      });
      expect(res.status, await res.clone().text()).toBe(202);
      offset += chunk.length;
      expect(res.headers.get('range')).toBe(`0-${offset - 1}`);
      location = new URL(res.headers.get('location')!, replica.url);
    }
    const done = await fetch(`${b.url}${location.pathname}${location.search}${location.search ? '&' : '?'}digest=${digest}`, { method: 'PUT' });
    expect(done.status, await done.clone().text()).toBe(201);
    expect(done.headers.get('docker-content-digest')).toBe(digest);
    for (const replica of replicas) {
      const head = await fetch(`${replica.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('content-length')).toBe(String(whole.length));
      const got = await getBlob(replica.url, repo, digest); // follows B's redirect
      expect(sha256(got.body)).toBe(digest);
    }
    // Completion left no session and no unfinished multipart upload behind.
    const uploads = await rgw.client().send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: 'replicas/' }));
    expect(uploads.Uploads ?? []).toEqual([]);
  }, 120_000);

  describe('skopeo, podman and Distribution on the same bucket', () => {
    let image: OciImage;
    let layout: string;
    let distribution: DistributionProcess;

    beforeAll(async () => {
      image = await busyboxOciImage([[{ path: 'data/random.bin', data: randomBytes(7 * MiB + 5) }]]);
      layout = join(work, 'layout');
      await writeOciLayout(layout, 'v1', image);
      distribution = await startDistribution({
        root: '',
        s3: {
          region: rgw.region,
          regionendpoint: rgw.endpoint,
          bucket: rgw.bucket,
          accesskey: rgw.accessKey,
          secretkey: rgw.secretKey,
          rootdirectory: ROOT,
          forcepathstyle: true,
          secure: false,
          v4auth: true,
        },
      });
      cleanup.add('distribution', () => distribution.stop());
    }, 120_000);

    const expectSameImage = async (dir: string, manifestDigest: string): Promise<void> => {
      expect(sha256(await readFile(join(dir, 'manifest.json')))).toBe(manifestDigest);
      const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as ImageManifest;
      for (const layer of manifest.layers) expect(sha256(await readFile(join(dir, layer.digest.slice(7))))).toBe(layer.digest);
      expect(manifest.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
    };

    it('skopeo copies in through B, out through A; Distribution reads what wharf wrote', async () => {
      await skopeo.ok(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${b.host}/sk/app:v1`]);
      const m = await getManifest(a.url, 'sk/app', 'v1');
      expect(m.status).toBe(200);
      expect(m.contentType).toBe(MT.ociManifest);
      for (const [name, host] of [['wharf a', a.host], ['distribution', distribution.host]]) {
        const out = join(work, `sk-out-${name.replace(' ', '-')}`);
        await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${host}/sk/app:v1`, `dir:${out}`]);
        await expectSameImage(out, m.digest!);
      }
    }, 120_000);

    it('wharf reads what Distribution wrote to the bucket', async () => {
      await skopeo.ok(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${distribution.host}/from-dist/app:v1`]);
      const tags = await fetch(`${b.url}/v2/from-dist/app/tags/list`);
      expect(await tags.json()).toEqual({ name: 'from-dist/app', tags: ['v1'] });
      for (const replica of [a, b]) {
        const out = join(work, `dist-out-${replica.port}`);
        await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${replica.host}/from-dist/app:v1`, `dir:${out}`]);
        const m = await getManifest(replica.url, 'from-dist/app', 'v1');
        await expectSameImage(out, m.digest!);
      }
    }, 120_000);

    it('podman pushes through A and pulls through B (redirected)', async () => {
      const podman: PodmanRunner = await privatePodman(join(work, 'podman'));
      cleanup.add('podman', () => podman.cleanup());
      const archive = join(work, 'app.oci.tar');
      await writeOciArchive(archive, 'wharf-e2e/s3pod:1', image);
      await podman.ok(['load', '--signature-policy', podman.policy, '-i', archive]);
      await podman.ok(['push', '--signature-policy', podman.policy, '--tls-verify=false', 'localhost/wharf-e2e/s3pod:1', `${a.host}/pod/app:1`]);
      await podman.ok(['rmi', '-a', '-f']);
      await podman.ok(['pull', '--signature-policy', podman.policy, '--tls-verify=false', `${b.host}/pod/app:1`]);
      const out = await podman.ok(['run', '--rm', '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', `${b.host}/pod/app:1`, 'sha256sum', '/data/random.bin']);
      expect(out.stdout.trim()).toBe(`${image.files['/data/random.bin']}  /data/random.bin`);
    }, 180_000);
  });

  it('replica rules: a tag moved or deleted on one replica is seen by the other within storage.cache.linkttl (1 s)', async () => {
    const repo = 'rules/app';
    const push = async (replica: WharfProcess, tag: string, text: string): Promise<string> => {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', text }));
      const cdigest = sha256(config);
      const up = await fetch(`${replica.url}/v2/${repo}/blobs/uploads/?digest=${cdigest}`, { method: 'POST', body: config, headers: { 'Content-Type': 'application/octet-stream' } });
      expect(up.status).toBe(201);
      const manifest = Buffer.from(JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.ociManifest,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cdigest, size: config.length },
        layers: [],
      }));
      const put = await fetch(`${replica.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', body: manifest, headers: { 'Content-Type': MT.ociManifest } });
      expect(put.status, await put.clone().text()).toBe(201);
      return sha256(manifest);
    };
    const tagOn = async (replica: WharfProcess, tag: string): Promise<string | number> => {
      const res = await fetch(`${replica.url}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { Accept: MT.ociManifest } });
      return res.status === 200 ? res.headers.get('docker-content-digest')! : res.status;
    };

    const first = await push(a, 'latest', 'first');
    expect(await tagOn(b, 'latest')).toBe(first); // B has not read the tag before: fresh
    const second = await push(a, 'latest', 'second');
    const moved = Date.now();
    await waitFor(async () => (await tagOn(b, 'latest')) === second, { timeoutMs: 5000, intervalMs: 50, what: 'B to see the moved tag' });
    expect(Date.now() - moved).toBeLessThan(2000); // linkttl 1 s, plus a poll

    // Both replicas write the same tag at once: one wins, and both agree once the cache expires.
    const [x, y] = await Promise.all([push(a, 'race', 'from-a'), push(b, 'race', 'from-b')]);
    await sleep(1100);
    const seenA = await tagOn(a, 'race');
    expect([x, y]).toContain(seenA);
    expect(await tagOn(b, 'race')).toBe(seenA);

    // Deleted on B: A stops serving it within linkttl.
    const del = await fetch(`${b.url}/v2/${repo}/manifests/${second}`, { method: 'DELETE' });
    expect(del.status).toBe(202);
    const deleted = Date.now();
    await waitFor(async () => (await tagOn(a, 'latest')) === 404, { timeoutMs: 5000, intervalMs: 50, what: 'A to see the deleted manifest' });
    expect(Date.now() - deleted).toBeLessThan(2000);
    expect(await tagOn(a, second)).toBe(404);
  }, 60_000);

  it('the gateway stopped mid-push: 503 with an OCI error and one log line; the push continues once it is back', async () => {
    const repo = 'outage/app';
    const first = randomBytes(6 * MiB);
    const rest = randomBytes(2 * MiB);
    const digest = sha256(Buffer.concat([first, rest]));
    const start = await fetch(`${a.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const session = new URL(start.headers.get('location')!, a.url);
    const sessionUrl = `${a.url}${session.pathname}${session.search}`;
    const patch1 = await fetch(sessionUrl, { method: 'PATCH', body: first, headers: { 'Content-Type': 'application/octet-stream' } });
    expect(patch1.status).toBe(202);
    const next = new URL(patch1.headers.get('location')!, a.url);
    const nextUrl = `${a.url}${next.pathname}${next.search}`;

    // The gateway goes away while a PATCH is streaming.
    let sent = 0;
    const slow = Readable.from((async function* () {
      for (let i = 0; i < 16; i++) {
        if (i === 4) await rgw.stopGateway();
        sent += 256 << 10;
        yield randomBytes(256 << 10);
        await sleep(20);
      }
    })());
    const cut = await fetch(nextUrl, {
      method: 'PATCH',
      body: Readable.toWeb(slow) as ReadableStream,
      headers: { 'Content-Type': 'application/octet-stream' },
      duplex: 'half',
    } as RequestInit).catch((err: Error) => err);
    expect(sent).toBeGreaterThan(0);
    // Either answered 503, or the connection was cut while the body still streamed.
    if (!(cut instanceof Error)) {
      expect(cut.status, await cut.clone().text()).toBe(503);
      expect(((await cut.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe('UNAVAILABLE');
    }
    // Everything that needs storage answers 503 with the OCI error shape while it is down.
    for (let i = 0; i < 3; i++) {
      for (const [method, path] of [['HEAD', `/v2/${repo}/blobs/${digest}`], ['GET', '/v2/team/app/manifests/1.0'], ['GET', nextUrl.slice(a.url.length)]]) {
        const res = await fetch(`${a.url}${path}`, { method });
        expect(res.status, `${method} ${path}`).toBe(503);
        if (method === 'GET') expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe('UNAVAILABLE');
      }
    }
    expect(a.process.logTail(400).split('\n').filter((l) => l.includes('storage unavailable: requests')).length).toBe(1);

    await rgw.startGateway();
    // The session survived in the bucket with what was stored before the outage.
    const status = await fetch(nextUrl);
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe(`0-${first.length - 1}`);
    const doneUrl = new URL(nextUrl);
    doneUrl.searchParams.set('digest', digest);
    const done = await fetch(doneUrl, { method: 'PUT', body: rest, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${first.length}-${first.length + rest.length - 1}` } });
    expect(done.status, await done.clone().text()).toBe(201);
    expect(sha256((await getBlob(b.url, repo, digest)).body)).toBe(digest);
    await waitFor(() => a.process.logTail(400).includes('storage available again'), { timeoutMs: 5000, what: 'the recovery log line' });
    expect(a.process.logTail(400).split('\n').filter((l) => l.includes('storage available again')).length).toBe(1);
    // And a whole new push works.
    await skopeo.ok(['copy', '--dest-tls-verify=false', `oci:${join(work, 'layout')}:v1`, `docker://${a.host}/outage/after:v1`]);
  }, 120_000);

  it('a replica killed mid-upload leaves parts in the bucket that upload purging ends', async () => {
    const victim = await startWharf({ storageEnv: replicaEnv(false) });
    try {
      const repo = 'killed/app';
      const start = await fetch(`${victim.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
      const session = new URL(start.headers.get('location')!, victim.url);
      let sent = 0;
      const body = Readable.from((async function* () {
        // 12 MiB, more than two parts, then wait to be killed.
        for (let i = 0; i < 48; i++) {
          sent += 256 << 10;
          yield randomBytes(256 << 10);
        }
        await sleep(60_000);
      })());
      const pending = fetch(`${victim.url}${session.pathname}${session.search}`, {
        method: 'PATCH',
        body: Readable.toWeb(body) as ReadableStream,
        headers: { 'Content-Type': 'application/octet-stream' },
        duplex: 'half',
      } as RequestInit).catch(() => undefined);
      const listUploads = async () =>
        (await rgw.client().send(new ListMultipartUploadsCommand({ Bucket: rgw.bucket, Prefix: 'replicas/docker/registry/v2/repositories/killed/' }))).Uploads ?? [];
      await waitFor(async () => (await listUploads()).length > 0 && sent >= 12 * MiB, { timeoutMs: 30_000, what: 'a multipart upload in flight' });
      await sleep(500); // a part on its way
      victim.process.child.kill('SIGKILL');
      await pending;
      expect((await listUploads()).length).toBe(1);

      const driver = new S3Driver({ ...s3Options(rgw), rootdirectory: ROOT });
      try {
        // Not yet old enough: kept (it might be a write in progress elsewhere).
        expect((await purgeUploads({ driver }, { olderThan: new Date(Date.now() - 3600_000) })).abortedWrites).toBe(0);
        expect((await listUploads()).length).toBe(1);
        const purged = await purgeUploads({ driver }, { olderThan: new Date(Date.now() + 1000) });
        expect(purged.abortedWrites).toBe(1);
        expect(purged.purged).toBeGreaterThanOrEqual(1); // the session itself
        expect(await listUploads()).toEqual([]);
      } finally {
        driver.destroy();
      }
    } finally {
      await victim.stop();
    }
  }, 90_000);
});

function s3Options(rgw: RgwServer) {
  return {
    region: rgw.region,
    regionendpoint: rgw.endpoint,
    bucket: rgw.bucket,
    accesskey: rgw.accessKey,
    secretkey: rgw.secretKey,
    forcepathstyle: true,
  };
}

