// Real clients pulling through wharf's pull-through mirror. Two upstream registries (CNCF
// Distribution 2.8, Debian's docker-registry) on loopback, each behind a link proxy the test
// owns (20 MB/s, 20 ms, byte counts, refusals); wharf runs as a real process mirroring them:
//   - the default upstream (proxy.remoteurl): upstream A, what dockerd's registry-mirrors asks;
//   - `docker.io` (proxy.upstreams): upstream A again, what containerd names with ?ns=docker.io;
//   - `upstream2.test` (proxy.upstreams): upstream B, named by a path prefix
//     (/v2/upstream2.test/...), as podman's registries.conf mirrors and skopeo send it.
//     A host name without a port: a mirror location or a reference cannot carry
//     `127.0.0.1:PORT` as a path component.
// Clients: dockerd with --registry-mirror (in a mount namespace whose /etc/hosts sends Docker
// Hub's names to 127.0.0.1, where nothing listens on 443), containerd (dockerd's own, through
// `ctr images pull --hosts-dir`), podman with a registries.conf mirror, skopeo. Then four of
// them at once on one cold image (bytes from upstream counted), and a SIGKILL of wharf in the
// middle of a cold pull.
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import { catalog, getBlob, getManifest, readOciLayoutBlob, requireBusybox, sha256 } from '../support/images.js';
import { startLinkProxy, type LinkProxy } from '../support/link-proxy.js';
import {
  accessLog,
  blobDataPath,
  dockerdCtr,
  layerLinkPath,
  portRefuses,
  pushUpstreamImage,
  registriesConfWithMirror,
  writeContainerdHostsDir,
  type CtrRunner,
  type UpstreamImage,
} from '../support/mirror-clients.js';
import { Cleanup, freePort, removeTree, tempDir, waitFor, type RunResult } from '../support/processes.js';
import { all, privatePodman, privateSkopeo, requireRoot, requireTools, type PodmanRunner, type ToolRunner } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = all(
  requireTools([
    ...DOCKERD_TOOLS,
    ['ctr', 'containerd'],
    ['skopeo', 'skopeo'],
    ['podman', 'podman'],
    ['conmon', 'conmon'],
    ['runc', 'runc'],
    [DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE],
  ]),
  requireBusybox(),
  requireRoot('a private dockerd and rootful podman'),
);

/** The link between wharf and each upstream: 20 MB/s shared, 20 ms each way. */
const LINK = { bandwidth: 20_000_000, latencyMs: 20 } as const;
/** The second upstream's host name as clients spell it. */
const UPSTREAM2 = 'upstream2.test';
const CTR_NAMESPACE = 'wharf-mirror-e2e';
const PODMAN_RUN = ['run', '--rm', '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024'];

interface OciLayoutIndex {
  manifests: Array<{ digest: string; annotations?: Record<string, string> }>;
}

describe.skipIf(!available)('real clients pulling through wharf\'s mirror', () => {
  const cleanup = new Cleanup();
  let work: string;
  let upstreamA: DistributionProcess;
  let upstreamB: DistributionProcess;
  let linkA: LinkProxy;
  let linkB: LinkProxy;
  let wharfEnv: Record<string, string>;
  let wharf: WharfProcess;
  let d: Dockerd;
  let ctr: CtrRunner;
  let hostsDir: string;
  let skopeo: ToolRunner;
  let podman: PodmanRunner;
  const images: Record<string, UpstreamImage> = {};

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-mc-');
    cleanup.add('work dir', () => removeTree(work));
    for (const name of ['a', 'b']) {
      const root = await tempDir(`wharf-e2e-mc-up-${name}-`);
      cleanup.add(`upstream ${name} root`, () => removeTree(root));
      const upstream = await startDistribution({ root });
      cleanup.add(`upstream ${name}`, () => upstream.stop());
      const link = await startLinkProxy({ target: { host: '127.0.0.1', port: upstream.port }, settings: LINK });
      cleanup.add(`link ${name}`, () => link.close());
      if (name === 'a') [upstreamA, linkA] = [upstream, link];
      else [upstreamB, linkB] = [upstream, link];
    }
    // Straight into the upstreams (not through the links, whose counters measure wharf).
    images.docker = await pushUpstreamImage(upstreamA.url, 'library/busybox', 'docker', { bigBytes: 3_000_000 });
    images.ctr = await pushUpstreamImage(upstreamA.url, 'library/busybox', 'ctr', { bigBytes: 3_000_000 });
    images.podman = await pushUpstreamImage(upstreamB.url, 'some/repo', 'podman', { bigBytes: 3_000_000 });
    images.skopeoA = await pushUpstreamImage(upstreamA.url, 'library/busybox', 'skopeo', { bigBytes: 2_000_000 });
    images.skopeoB = await pushUpstreamImage(upstreamB.url, 'some/repo', 'skopeo', { bigBytes: 2_000_000 });
    images.flight = await pushUpstreamImage(upstreamA.url, 'library/busybox', 'flight', { bigBytes: 24_000_000 });
    images.crash = await pushUpstreamImage(upstreamA.url, 'library/busybox', 'crash', { bigBytes: 40_000_000 });

    wharfEnv = {
      REGISTRY_PROXY_REMOTEURL: linkA.url,
      REGISTRY_PROXY_UPSTREAMS: `{"docker.io": {urls: ["${linkA.url}"]}, "${UPSTREAM2}": {urls: ["${linkB.url}"]}}`,
      REGISTRY_PROXY_TTL: '1h',
    };
    wharf = await startWharf({ env: wharfEnv });
    cleanup.add('wharf', () => wharf.stop());

    d = await startDockerd({ extraArgs: ['--registry-mirror', wharf.url] });
    cleanup.add('dockerd', () => d.stop());
    ctr = await dockerdCtr(d, work, CTR_NAMESPACE);
    hostsDir = join(work, 'certs.d');
    await writeContainerdHostsDir(hostsDir, 'docker.io', 'https://registry-1.docker.io', wharf.url);

    const skopeoDir = join(work, 'skopeo');
    await mkdir(skopeoDir);
    skopeo = await privateSkopeo(skopeoDir);
    const podmanDir = await tempDir('wharf-e2e-mc-pod-');
    podman = await privatePodman(podmanDir);
    cleanup.add('podman', () => podman.cleanup());
    // upstream2.test/... goes to wharf's /v2/upstream2.test/...; the registry's own location is a
    // loopback port where nothing listens, so a pull that works came through the mirror.
    const deadPort = await freePort();
    await writeFile(join(podmanDir, 'registries.conf'), registriesConfWithMirror(UPSTREAM2, `127.0.0.1:${deadPort}`, `${wharf.host}/${UPSTREAM2}`));
  }, 240_000);

  afterAll(() => cleanup.run(), 180_000);

  beforeEach(() => {
    for (const link of [linkA, linkB]) {
      link.reset();
      link.set(LINK);
      link.resetStats();
    }
  });

  /** What wharf serves for `repo:tag` right now, checked byte for byte against `image`. */
  async function expectServed(baseUrl: string, repo: string, image: UpstreamImage): Promise<void> {
    const m = await getManifest(baseUrl, repo, image.tag);
    expect(m.status).toBe(200);
    expect(m.digest).toBe(image.digest);
    expect(m.body.equals(image.image.manifest)).toBe(true);
    for (const [digest, bytes] of image.blobs) {
      const blob = await getBlob(baseUrl, repo, digest);
      expect(blob.status, `${repo}@${digest}`).toBe(200);
      expect(blob.body.length).toBe(bytes.length);
      expect(sha256(blob.body)).toBe(digest);
    }
  }

  /** With the link to the upstream refusing connections: whatever wharf serves is from its cache. */
  async function expectCached(link: LinkProxy, repo: string, image: UpstreamImage): Promise<void> {
    link.set({ refuse: true });
    link.dropConnections();
    const before = link.stats().bytesDown;
    await expectServed(wharf.url, repo, image);
    expect(link.stats().bytesDown).toBe(before);
    link.set({ refuse: false });
  }

  /** Checks a skopeo `oci:DIR` copy: the manifest digest and every blob. */
  async function expectOciLayout(dir: string, image: UpstreamImage): Promise<void> {
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as OciLayoutIndex;
    expect(index.manifests.map((m) => m.digest)).toEqual([image.digest]);
    expect(sha256(await readOciLayoutBlob(dir, image.digest))).toBe(image.digest);
    for (const digest of image.blobs.keys()) expect(sha256(await readOciLayoutBlob(dir, digest))).toBe(digest);
  }

  /** The digest of `ref` in containerd's image store. */
  async function ctrImageDigest(ref: string): Promise<string | undefined> {
    const ls = await ctr.ok(['images', 'ls']);
    const line = ls.stdout.split('\n').find((l) => l.split(/\s+/)[0] === ref);
    return line?.split(/\s+/)[2];
  }

  const ctrPull = (ref: string, extra: string[] = []): Promise<RunResult> =>
    ctr(['images', 'pull', '--plain-http', '--hosts-dir', hostsDir, '--snapshotter', 'native', ...extra, ref]);

  it('dockerd with registry-mirrors pulls busybox through wharf and runs it', async () => {
    const image = images.docker!;
    // Docker Hub's names resolve to 127.0.0.1 for this dockerd, and nothing listens there: no
    // fallback could have served the pull.
    expect(await portRefuses(443)).toBe(true);
    const started = Date.now();
    const pull = await d.dockerOk(['pull', 'busybox:docker']);
    const pullMs = Date.now() - started;
    expect(pull.stdout).toContain(`Digest: ${image.digest}`);
    expect(linkA.stats().bytesDown).toBeGreaterThanOrEqual(image.bytes);
    const repoDigest = (await d.dockerOk(['inspect', '--format', '{{index .RepoDigests 0}}', 'busybox:docker'])).stdout.trim();
    expect(repoDigest).toBe(`busybox@${image.digest}`);
    const runOut = await d.dockerOk(['run', '--rm', '--network', 'none', 'busybox:docker', 'echo', 'ok']);
    expect(runOut.stdout.trim()).toBe('ok');
    // wharf saw dockerd ask for it (the access log names the client), and keeps it.
    const asked = accessLog(wharf.logFile).filter((l) => l.path === '/v2/library/busybox/manifests/docker' && /docker\//.test(l.ua ?? ''));
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((l) => l.status === 200)).toBe(true);
    await expectCached(linkA, 'library/busybox', image);
    console.info(`docker pull through wharf: ${pullMs} ms for ${image.bytes} bytes`);
  }, 180_000);

  it('containerd with a hosts.toml mirror pulls through wharf, naming docker.io with ?ns=', async () => {
    const image = images.ctr!;
    const ref = 'docker.io/library/busybox:ctr';
    const pull = await ctrPull(ref, ['--http-dump']);
    expect(pull.code, `${pull.stdout}\n${pull.stderr}`.slice(-4000)).toBe(0);
    // The requests containerd sent (--http-dump): to wharf, with ?ns=docker.io.
    const dump = `${pull.stdout}\n${pull.stderr}`;
    expect(dump).toMatch(/\/v2\/library\/busybox\/manifests\/ctr\?ns=docker\.io/);
    expect(dump).toContain(`Host: ${wharf.host}`);
    expect(dump).not.toMatch(/Host: registry-1\.docker\.io/);
    expect(await ctrImageDigest(ref)).toBe(image.digest);
    expect(linkA.stats().bytesDown).toBeGreaterThanOrEqual(image.bytes);
    // ?ns=docker.io chose the docker.io upstream, whose cache is kept under docker.io/<name>.
    expect(await catalog(wharf.url)).toContain('docker.io/library/busybox');
    await expectCached(linkA, 'docker.io/library/busybox', image);
  }, 180_000);

  it('podman with a registries.conf mirror pulls through wharf by path prefix and runs it', async () => {
    const image = images.podman!;
    const ref = `${UPSTREAM2}/some/repo:podman`;
    await podman.ok(['pull', '--signature-policy', podman.policy, ref]);
    const digest = (await podman.ok(['image', 'inspect', '--format', '{{.Digest}}', ref])).stdout.trim();
    expect(digest).toBe(image.digest);
    expect(linkB.stats().bytesDown).toBeGreaterThanOrEqual(image.bytes);
    expect(linkA.stats().bytesDown).toBe(0);
    const asked = accessLog(wharf.logFile).filter((l) => l.path === `/v2/${UPSTREAM2}/some/repo/manifests/podman`);
    expect(asked.length).toBeGreaterThan(0);
    const runOut = await podman.ok([...PODMAN_RUN, ref, 'echo', 'ok']);
    expect(runOut.stdout.trim()).toBe('ok');
    expect(await catalog(wharf.url)).toContain(`${UPSTREAM2}/some/repo`);
    await expectCached(linkB, `${UPSTREAM2}/some/repo`, image);
  }, 180_000);

  it('skopeo copies from both upstreams through one wharf: default and by path prefix', async () => {
    const a = images.skopeoA!;
    const b = images.skopeoB!;
    const outA = join(work, 'skopeo-a');
    const outB = join(work, 'skopeo-b');
    await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${wharf.host}/library/busybox:skopeo`, `oci:${outA}:skopeo`]);
    await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${wharf.host}/${UPSTREAM2}/some/repo:skopeo`, `oci:${outB}:skopeo`]);
    await expectOciLayout(outA, a);
    await expectOciLayout(outB, b);
    // Each came from its own upstream, once.
    expect(linkA.stats().bytesDown).toBeGreaterThanOrEqual(a.bytes);
    expect(linkA.stats().bytesDown).toBeLessThan(a.bytes * 1.05);
    expect(linkB.stats().bytesDown).toBeGreaterThanOrEqual(b.bytes);
    expect(linkB.stats().bytesDown).toBeLessThan(b.bytes * 1.05);
    await expectCached(linkA, 'library/busybox', a);
    await expectCached(linkB, `${UPSTREAM2}/some/repo`, b);
  }, 180_000);

  it('dockerd, containerd, skopeo and podman pulling one cold image at once cost it once upstream', async () => {
    const image = images.flight!;
    const out = join(work, 'skopeo-flight');
    const started = Date.now();
    const timed = async (name: string, p: Promise<RunResult>): Promise<[string, RunResult, number]> => {
      const r = await p;
      return [name, r, Date.now() - started];
    };
    const results = await Promise.all([
      timed('docker', d.docker(['pull', 'busybox:flight'])),
      timed('ctr', ctrPull('docker.io/library/busybox:flight')),
      timed('skopeo', skopeo(['copy', '--src-tls-verify=false', `docker://${wharf.host}/library/busybox:flight`, `oci:${out}:flight`])),
      timed('podman', podman(['pull', '--signature-policy', podman.policy, '--tls-verify=false', `${wharf.host}/library/busybox:flight`])),
    ]);
    for (const [name, r] of results) expect(r.code, `${name}: ${r.command}\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`).toBe(0);
    const down = linkA.stats().bytesDown;
    console.info(
      `single flight: upstream sent ${down} bytes for a ${image.bytes}-byte image (${(down / image.bytes).toFixed(3)}x); ` +
        results.map(([name, , ms]) => `${name} ${ms} ms`).join(', '),
    );
    expect(down).toBeGreaterThanOrEqual(image.bytes);
    expect(down).toBeLessThanOrEqual(image.bytes * 1.05);
    // Every client has the image it asked for.
    expect(results.find(([n]) => n === 'docker')![1].stdout).toContain(`Digest: ${image.digest}`);
    expect(await ctrImageDigest('docker.io/library/busybox:flight')).toBe(image.digest);
    await expectOciLayout(out, image);
    const podDigest = (await podman.ok(['image', 'inspect', '--format', '{{.Digest}}', `${wharf.host}/library/busybox:flight`])).stdout.trim();
    expect(podDigest).toBe(image.digest);
  }, 240_000);

  it('SIGKILL during a cold pull: nothing partial is served after a restart, and the next pull is right', async () => {
    const image = images.crash!;
    const big = image.biggestLayer;
    const bigSize = image.blobs.get(big)!.length;
    const root = await tempDir('wharf-e2e-mc-crash-');
    cleanup.add('crash root', () => removeTree(root));
    let w = await startWharf({ root, env: wharfEnv });
    cleanup.add('crash wharf', () => w.stop());
    const copy = (dir: string): Promise<RunResult> =>
      skopeo(['copy', '--src-tls-verify=false', `docker://${w.host}/library/busybox:crash`, `oci:${dir}:crash`], { timeoutMs: 120_000 });

    // A slow link: the 40 MB layer takes about 8 s.
    linkA.set({ bandwidth: 5_000_000 });
    const first = copy(join(work, 'crash-1'));
    await waitFor(() => linkA.stats().bytesDown > 10_000_000, { timeoutMs: 60_000, what: 'the cold pull to get 10 MB into the big layer' });
    process.kill(-w.process.pid, 'SIGKILL');
    await w.process.exited;
    await w.stop();
    const interrupted = await first;
    expect(interrupted.code).not.toBe(0);
    expect(linkA.stats().bytesDown).toBeLessThan(image.bytes);
    // Killed mid-transfer: the layer is not in the blob store nor linked into the repository.
    expect(existsSync(blobDataPath(root, big))).toBe(false);
    expect(existsSync(layerLinkPath(root, 'library/busybox', big))).toBe(false);
    const uploads = join(root, 'docker/registry/v2/repositories/library/busybox/_uploads');
    const leftover = existsSync(uploads) ? await readdir(uploads) : [];

    // Restarted on the same root with the upstream refusing connections.
    linkA.set({ refuse: true });
    linkA.dropConnections();
    w = await startWharf({ root, env: wharfEnv });
    const head = await fetch(`${w.url}/v2/library/busybox/blobs/${big}`, { method: 'HEAD' });
    expect(head.status).toBe(503);
    const get = await fetch(`${w.url}/v2/library/busybox/blobs/${big}`);
    const body = Buffer.from(await get.arrayBuffer());
    expect(get.status).toBe(503);
    expect(body.toString()).toContain('UNAVAILABLE');
    const refused = await copy(join(work, 'crash-2'));
    expect(refused.code, refused.stdout + refused.stderr).not.toBe(0);
    expect(refused.stderr).toContain(big.slice('sha256:'.length, 'sha256:'.length + 12));
    expect(existsSync(blobDataPath(root, big))).toBe(false);

    // The upstream is back: the pull completes with the right digests.
    linkA.set({ refuse: false, bandwidth: LINK.bandwidth });
    linkA.resetStats();
    // The upstream client backs off after failures (1 s, doubling); wait for it to try again.
    const waitStarted = Date.now();
    await waitFor(async () => (await fetch(`${w.url}/v2/library/busybox/manifests/crash`, { method: 'HEAD' })).status === 200 && linkA.stats().bytesDown > 0, {
      timeoutMs: 40_000,
      intervalMs: 250,
      what: 'wharf to reach the upstream again',
    });
    const waitedMs = Date.now() - waitStarted;
    const out = join(work, 'crash-3');
    await skopeo.ok(['copy', '--src-tls-verify=false', `docker://${w.host}/library/busybox:crash`, `oci:${out}:crash`], { timeoutMs: 120_000 });
    await expectOciLayout(out, image);
    const stored = await readFile(blobDataPath(root, big));
    expect(stored.length).toBe(bigSize);
    expect(sha256(stored)).toBe(big);
    await expectServed(w.url, 'library/busybox', image);
    console.info(`crash: ${leftover.length} upload session(s) left by the killed download; upstream reachable again after ${waitedMs} ms`);
    await w.stop();
  }, 240_000);
});
