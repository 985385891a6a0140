// The pull-through mirror against a real upstream: CNCF Distribution 2.8 (Debian's
// docker-registry) on loopback, reached through a link proxy the test owns (bandwidth,
// latency, cuts, flipped bytes, refused connections, byte counts). wharf runs in this
// process in mirror mode; clients are plain HTTP, as a pull does it step by step.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { startLinkProxy, type LinkProxy } from '../support/link-proxy.js';
import { errorCodes, randomBlob, RegistryClient, sha256 } from '../support/client.js';
import { parseDigest } from '../../storage/digest.js';
import { FilesystemDriver } from '../../storage/filesystem-driver.js';
import { LocalRegistry } from '../../storage/local-registry.js';
import { MirrorRegistry } from '../../mirror/mirror-registry.js';
import { UpstreamClient } from '../../mirror/upstream-client.js';
import { startServer, type TestServer } from '../support/server.js';
import { tempDir, waitFor } from '../support/processes.js';
import { makeTokenSigner, pushImage, startTokenServer, writeHtpasswd, type PushedImage } from '../support/upstream-fixtures.js';
import { requireTool } from '../support/tools.js';

const available = requireTool(DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE);
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const ACCEPT = `${OCI_MANIFEST}, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json`;

const WHARF = fileURLToPath(new URL('../../bin/wharf.js', import.meta.url));

function runWharf(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(WHARF, args, { timeout: 60_000, env: { PATH: process.env.PATH, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

interface Image {
  repo: string;
  tag: string;
  digest: string;
  manifest: Buffer;
  blobs: Map<string, Buffer>;
  bytes: number;
}

describe.skipIf(!available)('pull-through mirror (Distribution 2.8 upstream behind a throttled link)', () => {
  let upstream: DistributionProcess;
  let upstreamRoot: string;
  let link: LinkProxy;
  let mirror: TestServer;
  let client: RegistryClient;
  let seq = 0;

  beforeAll(async () => {
    upstreamRoot = await tempDir('wharf-mirror-upstream-');
    upstream = await startDistribution({ root: upstreamRoot });
    link = await startLinkProxy({ target: { host: '127.0.0.1', port: upstream.port } });
  });
  afterAll(async () => {
    await mirror?.close();
    await link?.close();
    await upstream?.stop();
    if (upstreamRoot) await rm(upstreamRoot, { recursive: true, force: true });
  });

  const startMirror = async (env: Record<string, string> = {}): Promise<void> => {
    await mirror?.close();
    mirror = await startServer({ env: { REGISTRY_PROXY_REMOTEURL: link.url, REGISTRY_PROXY_TTL: '1h', ...env } });
    client = new RegistryClient(mirror.url);
  };
  beforeEach(async () => {
    link.reset();
    await startMirror();
  });

  /** Pushes an image with layers of the given sizes straight into the upstream. */
  async function upstreamImage(layerSizes: number[]): Promise<Image> {
    const repo = `mirrored/app${++seq}`;
    const direct = new RegistryClient(upstream.url);
    const layers = layerSizes.map((size) => randomBlob(size));
    const pushed = await direct.pushImage(repo, 'v1', layers);
    const blobs = new Map<string, Buffer>(layers.map((l) => [sha256(l), l]));
    const config = pushed.manifest.config as { digest: string };
    const configBytes = Buffer.from(await (await direct.fetch(`/v2/${repo}/blobs/${config.digest}`)).arrayBuffer());
    blobs.set(config.digest, configBytes);
    const bytes = [...blobs.values()].reduce((n, b) => n + b.length, pushed.body.length);
    return { repo, tag: 'v1', digest: pushed.digest, manifest: pushed.body, blobs, bytes };
  }

  /** Pulls an image through the mirror as a client does and checks every byte. */
  async function pull(c: RegistryClient, image: Image): Promise<void> {
    const res = await c.fetch(`/v2/${image.repo}/manifests/${image.tag}`, { headers: { Accept: ACCEPT } });
    expect(res.status).toBe(200);
    expect(res.headers.get('Docker-Content-Digest')).toBe(image.digest);
    expect(Buffer.from(await res.arrayBuffer()).equals(image.manifest)).toBe(true);
    await Promise.all(
      [...image.blobs].map(async ([digest, bytes]) => {
        const blob = await c.fetch(`/v2/${image.repo}/blobs/${digest}`);
        expect(blob.status).toBe(200);
        const body = Buffer.from(await blob.arrayBuffer());
        expect(body.length).toBe(bytes.length);
        expect(sha256(body)).toBe(digest);
      }),
    );
  }

  it('pulls a cold image once from upstream, then serves it warm without the upstream', async () => {
    const image = await upstreamImage([3_000_000, 1_000_000]);
    link.set({ bandwidth: 20_000_000, latencyMs: 10 });
    link.resetStats();
    await pull(client, image);
    const cold = link.stats().bytesDown;
    expect(cold).toBeGreaterThanOrEqual(image.bytes);
    expect(cold).toBeLessThan(image.bytes * 1.05);

    link.resetStats();
    link.set({ refuse: true });
    await pull(client, image); // tag trusted for proxy.ttl, blobs and manifest from the cache
    expect(link.stats().bytesDown).toBe(0);
  });

  it('fetches each byte once for 4 clients pulling the same cold image at once', async () => {
    const image = await upstreamImage([4_000_000, 2_000_000, 500_000]);
    link.set({ bandwidth: 20_000_000, latencyMs: 10 });
    link.resetStats();
    await Promise.all([1, 2, 3, 4].map(() => pull(new RegistryClient(mirror.url), image)));
    expect(link.stats().bytesDown).toBeLessThan(image.bytes * 1.05);
  });

  it('streams a cold blob: the first byte arrives long before the upstream transfer ends', async () => {
    const image = await upstreamImage([6_000_000]);
    const [digest, bytes] = [...image.blobs].find(([, b]) => b.length === 6_000_000)!;
    link.set({ bandwidth: 3_000_000, latencyMs: 10 }); // about 2 s for the blob
    const started = Date.now();
    const res = await client.fetch(`/v2/${image.repo}/blobs/${digest}`);
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    const firstByteMs = Date.now() - started;
    let received = first.value?.length ?? 0;
    const parts: Uint8Array[] = [first.value!];
    for (;;) {
      const next = await reader.read();
      if (next.done) break;
      received += next.value.length;
      parts.push(next.value);
    }
    const totalMs = Date.now() - started;
    expect(received).toBe(bytes.length);
    expect(sha256(Buffer.concat(parts))).toBe(digest);
    expect(totalMs).toBeGreaterThan(1500);
    expect(firstByteMs).toBeLessThan(totalMs / 3);
  });

  it('shares one fetch with clients that join half-way and with Range requests', async () => {
    const image = await upstreamImage([5_000_000]);
    const [digest, bytes] = [...image.blobs].find(([, b]) => b.length === 5_000_000)!;
    link.set({ bandwidth: 5_000_000, latencyMs: 10 });
    link.resetStats();
    const first = client.fetch(`/v2/${image.repo}/blobs/${digest}`).then(async (r) => Buffer.from(await r.arrayBuffer()));
    await new Promise((r) => setTimeout(r, 500));
    const late = client.fetch(`/v2/${image.repo}/blobs/${digest}`).then(async (r) => Buffer.from(await r.arrayBuffer()));
    const ranged = client
      .fetch(`/v2/${image.repo}/blobs/${digest}`, { headers: { Range: 'bytes=4000000-4099999' } })
      .then(async (r) => ({ status: r.status, body: Buffer.from(await r.arrayBuffer()) }));
    const head = await client.fetch(`/v2/${image.repo}/blobs/${digest}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(Number(head.headers.get('Content-Length'))).toBe(bytes.length);
    const [a, b, r] = await Promise.all([first, late, ranged]);
    expect(sha256(a)).toBe(digest);
    expect(sha256(b)).toBe(digest);
    expect(r.status).toBe(206);
    expect(r.body.equals(bytes.subarray(4_000_000, 4_100_000))).toBe(true);
    expect(link.stats().bytesDown).toBeLessThan(bytes.length * 1.05);
  });

  it('keeps a download going for the other clients when one disconnects mid-blob', async () => {
    await startMirror({ REGISTRY_PROXY_PREFETCH: 'false' });
    const image = await upstreamImage([4_000_000]);
    const [digest] = [...image.blobs].find(([, b]) => b.length === 4_000_000)!;
    link.set({ bandwidth: 4_000_000 });
    link.resetStats();
    const quitter = new AbortController();
    const gone = client.fetch(`/v2/${image.repo}/blobs/${digest}`, { signal: quitter.signal }).then(async (r) => {
      const reader = r.body!.getReader();
      await reader.read();
      quitter.abort();
    });
    const stays = client.fetch(`/v2/${image.repo}/blobs/${digest}`).then(async (r) => sha256(Buffer.from(await r.arrayBuffer())));
    await gone.catch(() => undefined);
    expect(await stays).toBe(digest);
    expect(link.stats().bytesDown).toBeLessThan(4_000_000 * 1.05);
    // Every client gone: the download still ends, so the next one is served from the cache.
    const alone = new AbortController();
    const image2 = await upstreamImage([2_000_000]);
    const [digest2] = [...image2.blobs].find(([, b]) => b.length === 2_000_000)!;
    const r = await client.fetch(`/v2/${image2.repo}/blobs/${digest2}`, { signal: alone.signal });
    await r.body!.getReader().read();
    alone.abort();
    const deadline = Date.now() + 5000;
    while (!existsSync(join(mirror.root, 'docker/registry/v2/blobs/sha256', digest2.slice(7, 9), digest2.slice(7), 'data'))) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    link.set({ refuse: true });
    link.dropConnections();
    const cached = await client.fetch(`/v2/${image2.repo}/blobs/${digest2}`);
    expect(sha256(Buffer.from(await cached.arrayBuffer()))).toBe(digest2);
  });

  it('holds an upstream to its bandwidth cap, all downloads together', async () => {
    await startMirror({ REGISTRY_PROXY_PREFETCH: 'false', REGISTRY_PROXY_MAXBANDWIDTH: '2MB' });
    const image = await upstreamImage([2_000_000, 2_000_000]);
    const layers = [...image.blobs].filter(([, b]) => b.length === 2_000_000);
    const started = Date.now();
    const sums = await Promise.all(layers.map(async ([d]) => sha256(Buffer.from(await (await client.fetch(`/v2/${image.repo}/blobs/${d}`)).arrayBuffer()))));
    const seconds = (Date.now() - started) / 1000;
    expect(sums).toEqual(layers.map(([d]) => d));
    expect(seconds).toBeGreaterThan(1.6); // 4 MB at 2 MB/s, less the first quarter second's burst
  });

  it('resumes an upstream transfer cut in the middle with a Range request', async () => {
    await startMirror({ REGISTRY_PROXY_PREFETCH: 'false' });
    const image = await upstreamImage([3_000_000]);
    const [digest] = [...image.blobs].find(([, b]) => b.length === 3_000_000)!;
    link.set({ cutAfterBytes: 1_000_000 });
    link.resetStats();
    const res = await client.fetch(`/v2/${image.repo}/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    expect(link.stats().connections).toBeGreaterThanOrEqual(2);
    expect(link.stats().bytesDown).toBeLessThan(3_000_000 * 1.05 + 10_000);
  });

  it('never caches bytes that fail verification: the client sees an error, the next pull is right', async () => {
    await startMirror({ REGISTRY_PROXY_PREFETCH: 'false' });
    const image = await upstreamImage([2_000_000]);
    const [digest] = [...image.blobs].find(([, b]) => b.length === 2_000_000)!;
    link.set({ flipByteAt: 1_500_000 });
    const bad = await client.fetch(`/v2/${image.repo}/blobs/${digest}`, { headers: { Connection: 'close' } }).then(
      async (r) => {
        if (r.status !== 200) return `status ${r.status}`;
        try {
          return sha256(Buffer.from(await r.arrayBuffer()));
        } catch (err) {
          return `error: ${(err as Error).message}`;
        }
      },
      (err: Error) => `error: ${err.message}`,
    );
    expect(bad).not.toBe(digest);
    expect(bad).toMatch(/^error|^status 5/);
    const stored = join(mirror.root, 'docker/registry/v2/blobs', digest.replace(':', '/').replace(/\/(..)/, '/$1/$1'), 'data');
    await expect(stat(stored)).rejects.toThrow(/ENOENT/);
    const good = await client.fetch(`/v2/${image.repo}/blobs/${digest}`);
    expect(good.status).toBe(200);
    expect(sha256(Buffer.from(await good.arrayBuffer()))).toBe(digest);
  });

  it('serves what it has while the upstream is down, fails fast for the rest, and recovers', async () => {
    await startMirror({ REGISTRY_PROXY_TTL: '1ms' }); // tags are revalidated on every pull
    const cached = await upstreamImage([500_000]);
    const uncached = await upstreamImage([500_000]);
    await pull(client, cached);
    link.set({ refuse: true });
    link.dropConnections(); // the upstream is gone: kept-alive connections too
    await pull(client, cached); // stale tag served
    for (let i = 0; i < 3; i++) {
      const started = Date.now();
      const res = await client.fetch(`/v2/${uncached.repo}/manifests/v1`, { headers: { Accept: ACCEPT } });
      expect(res.status).toBeGreaterThanOrEqual(500);
      expect(res.status).not.toBe(429);
      expect(Date.now() - started).toBeLessThan(1000);
    }
    link.set({ refuse: false });
    const deadline = Date.now() + 40_000;
    for (;;) {
      const res = await client.fetch(`/v2/${uncached.repo}/manifests/v1`, { headers: { Accept: ACCEPT } });
      if (res.status === 200) break;
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 250));
    }
    await pull(client, uncached);
  }, 60_000);

  it('refuses pushes to mirrored repositories and accepts them in local namespaces', async () => {
    await startMirror({ REGISTRY_PROXY_LOCALNAMESPACES: 'team/' });
    const refused = await client.fetch('/v2/library/busybox/blobs/uploads/', { method: 'POST' });
    expect(refused.status).toBe(405);
    expect(await errorCodes(refused)).toEqual(['UNSUPPORTED']);
    const image = await client.pushImage('team/app', 'v1', [randomBlob(1000)]);
    const res = await client.fetch('/v2/team/app/manifests/v1', { headers: { Accept: ACCEPT } });
    expect(res.status).toBe(200);
    expect(res.headers.get('Docker-Content-Digest')).toBe(image.digest);
  });

  it('wharf mirror warm fills the cache, then a mirror on that storage serves the image with the upstream gone', async () => {
    const image = await upstreamImage([1_500_000, 700_000]);
    const root = await tempDir('wharf-mirror-warm-');
    try {
      link.resetStats();
      const warm = await runWharf(['mirror', 'warm', 'registry.unknown.test/team/app:1', `${image.repo}:${image.tag}`], {
        REGISTRY_PROXY_REMOTEURL: link.url,
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: root,
        REGISTRY_LOG_LEVEL: 'warn',
      });
      // The first name carries a registry host the mirror has no upstream for: it says so,
      // warms the second, and exits non-zero.
      expect(warm.stderr).toContain('no upstream for');
      expect(warm.code).toBe(1);
      expect(warm.stdout).toContain(`${image.repo}:${image.tag}: 3 blobs`);
      expect(warm.stdout).toMatch(/cached sha256:[0-9a-f]{64}/);
      expect(warm.stdout).toContain('warmed 1 of 2 images');
      expect(link.stats().bytesDown).toBeLessThan(image.bytes * 1.05);

      link.set({ refuse: true });
      link.dropConnections();
      await mirror.close();
      mirror = await startServer({ root, env: { REGISTRY_PROXY_REMOTEURL: link.url, REGISTRY_PROXY_TTL: '1ms' } });
      client = new RegistryClient(mirror.url);
      await pull(client, image);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('keeps the cache under proxy.cachesize by evicting least recently pulled images, losing nothing a pull needs', async () => {
    const root = await tempDir('wharf-mirror-evict-');
    const local = new LocalRegistry(new FilesystemDriver({ rootDirectory: root }));
    const upstreamClient = new UpstreamClient({ urls: [link.url] });
    const shared = randomBlob(300_000); // a layer two images share
    const images: Image[] = [];
    for (let i = 0; i < 3; i++) {
      const image = await upstreamImage([1_000_000]);
      const direct = new RegistryClient(upstream.url);
      const layer = await direct.pushBlob(image.repo, shared);
      const manifest = JSON.parse(image.manifest.toString()) as { layers: { mediaType: string; digest: string; size: number }[] };
      manifest.layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: shared.length });
      const body = Buffer.from(JSON.stringify(manifest));
      expect((await direct.pushManifest(image.repo, 'v1', body.toString(), OCI_MANIFEST)).status).toBe(201);
      images.push({ ...image, digest: sha256(body), manifest: body, blobs: new Map([...image.blobs, [layer, shared]]), bytes: image.bytes + shared.length });
    }
    // Room for two images, not three; eviction goes down to 90% of the limit.
    const limit = Math.ceil((images[0]!.bytes + images[1]!.bytes - shared.length) / 0.85);
    expect(images[0]!.bytes + images[1]!.bytes + images[2]!.bytes - 2 * shared.length).toBeGreaterThan(limit);
    const registry = new MirrorRegistry(local, {
      defaultUpstream: { host: 'upstream.test', upstream: upstreamClient, upstreamName: (n) => n },
      upstreams: [],
      localNamespaces: ['team/'],
      tagTtlMs: 60_000,
      prefetch: false,
      cacheMaxBytes: limit,
      cacheGraceMs: 0,
    });
    const pullVia = async (image: Image): Promise<void> => {
      const repo = registry.repository(image.repo);
      const manifest = await repo.manifests.get('v1');
      expect(manifest.content.equals(image.manifest)).toBe(true);
      for (const [digest, bytes] of image.blobs) {
        const blob = await repo.blobs.open(parseDigest(digest));
        const chunks: Buffer[] = [];
        for await (const chunk of blob.stream) chunks.push(chunk as Buffer);
        expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
      }
    };
    try {
      await pullVia(images[0]!);
      await pullVia(images[1]!);
      await registry.cacheLimit!.settle();
      expect(registry.cacheLimit!.counters.evictedManifests).toBe(0);
      await pullVia(images[0]!); // image 0 is now the most recently pulled
      await pullVia(images[2]!); // over the limit: image 1 goes
      // The download's bookkeeping (which starts the eviction) may land just after the client
      // read the last byte, later still on a busy machine: wait for it, then for the eviction.
      await waitFor(() => registry.cacheLimit!.counters.evictedManifests > 0, { timeoutMs: 10_000, intervalMs: 20, what: 'the eviction to start' });
      await registry.cacheLimit!.settle();
      expect(registry.cacheLimit!.counters.evictedManifests).toBe(1);
      expect(registry.cacheLimit!.bytes).toBeLessThanOrEqual(limit);
      const stillThere = async (digest: string) => (await local.blobStore.stored(parseDigest(digest))) !== undefined;
      expect(await stillThere(images[1]!.digest)).toBe(false);
      expect(await stillThere(sha256(shared))).toBe(true); // shared with cached images
      for (const [digest] of images[0]!.blobs) expect(await stillThere(digest)).toBe(true);
      for (const [digest] of images[2]!.blobs) expect(await stillThere(digest)).toBe(true);

      // A pull of the evicted image while eviction runs again gets every byte (refetched).
      link.resetStats();
      await Promise.all([pullVia(images[1]!), pullVia(images[0]!), pullVia(images[2]!)]);
      await registry.cacheLimit!.settle();
      expect(link.stats().bytesDown).toBeGreaterThan(1_000_000);
      expect(registry.cacheLimit!.bytes).toBeLessThanOrEqual(limit);
    } finally {
      await registry.cacheLimit!.settle();
      await upstreamClient.close();
      // Fire-and-forget bookkeeping (links, cache accounting) may still be writing.
      await rm(root, { recursive: true, force: true, maxRetries: 10 });
    }
  });

  it('on a driver that cannot read a file being written, clients get the blob once it is verified', async () => {
    const root = await tempDir('wharf-mirror-nogrow-');
    const fs = new FilesystemDriver({ rootDirectory: root });
    // The same driver without reads of files being written, as an object store would be.
    const driver = Object.assign(Object.create(fs) as FilesystemDriver, { readableWhileWriting: false });
    const upstreamClient = new UpstreamClient({ urls: [link.url] });
    const registry = new MirrorRegistry(new LocalRegistry(driver), {
      defaultUpstream: { host: 'upstream.test', upstream: upstreamClient, upstreamName: (n) => n },
      upstreams: [],
      localNamespaces: [],
      tagTtlMs: 60_000,
      prefetch: false,
    });
    try {
      const image = await upstreamImage([3_000_000]);
      const [digest, bytes] = [...image.blobs].find(([, b]) => b.length === 3_000_000)!;
      link.set({ bandwidth: 3_000_000 });
      link.resetStats();
      const repo = registry.repository(image.repo);
      const read = async (): Promise<Buffer> => {
        const blob = await repo.blobs.open(parseDigest(digest));
        const chunks: Buffer[] = [];
        for await (const chunk of blob.stream) chunks.push(chunk as Buffer);
        return Buffer.concat(chunks);
      };
      const [a, b] = await Promise.all([read(), read()]);
      expect(a.equals(bytes)).toBe(true);
      expect(b.equals(bytes)).toBe(true);
      expect(link.stats().bytesDown).toBeLessThan(bytes.length * 1.05);
    } finally {
      await registry.downloads.close();
      await upstreamClient.close();
      await rm(root, { recursive: true, force: true, maxRetries: 10 });
    }
  });

  it('caches an index by digest and fetches only the platforms clients ask for', async () => {
    await startMirror({ REGISTRY_PROXY_PREFETCH: 'true' });
    const amd64 = await upstreamImage([200_000]);
    const arm64Layer = randomBlob(2_000_000);
    const direct = new RegistryClient(upstream.url);
    const arm64 = await direct.pushImage(amd64.repo, 'arm64', [arm64Layer]);
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: OCI_MANIFEST, digest: amd64.digest, size: amd64.manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: OCI_MANIFEST, digest: arm64.digest, size: arm64.body.length, platform: { os: 'linux', architecture: 'arm64' } },
        ],
      }),
    );
    expect((await direct.pushManifest(amd64.repo, 'multi', index.toString(), 'application/vnd.oci.image.index.v1+json')).status).toBe(201);
    link.resetStats();
    const res = await client.fetch(`/v2/${amd64.repo}/manifests/multi`, { headers: { Accept: ACCEPT } });
    expect(Buffer.from(await res.arrayBuffer()).equals(index)).toBe(true);
    await pull(client, { ...amd64, tag: amd64.digest });
    await new Promise((r) => setTimeout(r, 300)); // prefetches of what was asked for settle
    expect(link.stats().bytesDown).toBeLessThan(1_000_000); // the arm64 layer (2 MB) never crossed the link
    link.set({ refuse: true });
    link.dropConnections();
    const byDigest = await client.fetch(`/v2/${amd64.repo}/manifests/${sha256(index)}`, { headers: { Accept: ACCEPT } });
    expect(byDigest.status).toBe(200); // the index itself is cached by digest
    expect(sha256(arm64Layer)).not.toBe(amd64.digest);
  });

  it('answers 404 for what the upstream does not have', async () => {
    const res = await client.fetch('/v2/mirrored/none/manifests/v1', { headers: { Accept: ACCEPT } });
    expect(res.status).toBe(404);
    expect(await errorCodes(res)).toEqual(['MANIFEST_UNKNOWN']);
    const blob = await client.fetch(`/v2/mirrored/none/blobs/sha256:${'0'.repeat(64)}`);
    expect(blob.status).toBe(404);
  });
});

describe.skipIf(!available)('pull-through mirror: upstreams that need credentials, and a wharf upstream with referrers', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  });

  /** Pulls an image pushed with upstream-fixtures' pushImage through a mirror and checks it. */
  async function pullThrough(mirrorUrl: string, image: PushedImage): Promise<void> {
    const c = new RegistryClient(mirrorUrl);
    const res = await c.fetch(`/v2/${image.repo}/manifests/${image.tag}`, { headers: { Accept: ACCEPT } });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(image.manifest)).toBe(true);
    const blob = await c.fetch(`/v2/${image.repo}/blobs/${image.layerDigest}`);
    expect(sha256(Buffer.from(await blob.arrayBuffer()))).toBe(image.layerDigest);
  }

  it('mirrors an htpasswd (Basic) upstream with proxy.username and proxy.password, and says no without them', async () => {
    const dir = await tempDir('wharf-mirror-basic-');
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const htpasswd = await writeHtpasswd(dir, 'mirror-bot', 's3cret+$pass');
    const up = await startDistribution({ root: join(dir, 'root'), auth: { htpasswd: { realm: 'basic-realm', path: htpasswd } } });
    cleanups.push(() => up.stop());
    const image = await pushImage(up.url, 'private/app', 'v1', `Basic ${Buffer.from('mirror-bot:s3cret+$pass').toString('base64')}`);

    const withCreds = await startServer({
      env: { REGISTRY_PROXY_REMOTEURL: up.url, REGISTRY_PROXY_USERNAME: 'mirror-bot', REGISTRY_PROXY_PASSWORD: 's3cret+$pass' },
    });
    cleanups.push(() => withCreds.close());
    await pullThrough(withCreds.url, image);

    const without = await startServer({ env: { REGISTRY_PROXY_REMOTEURL: up.url } });
    cleanups.push(() => without.close());
    const refused = await new RegistryClient(without.url).fetch('/v2/private/app/manifests/v1', { headers: { Accept: ACCEPT } });
    expect(refused.status).toBe(404);
    expect(await errorCodes(refused)).toEqual(['MANIFEST_UNKNOWN']);
  });

  it('mirrors a token (Bearer) upstream, doing the token dance itself', async () => {
    const dir = await tempDir('wharf-mirror-token-');
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const signer = await makeTokenSigner(dir);
    const tokens = await startTokenServer({ signer, service: 'upstream.test', issuer: 'test-issuer', credentials: { username: 'bot', password: 'pw' } });
    cleanups.push(() => tokens.close());
    const up = await startDistribution({
      root: join(dir, 'root'),
      auth: { token: { realm: tokens.realm, service: 'upstream.test', issuer: 'test-issuer', rootcertbundle: signer.certFile } },
    });
    cleanups.push(() => up.stop());
    const pushToken = await signer.sign({
      service: 'upstream.test',
      issuer: 'test-issuer',
      subject: 'bot',
      access: [{ type: 'repository', name: 'secure/app', actions: ['pull', 'push'] }],
      lifetimeSeconds: 300,
    });
    const image = await pushImage(up.url, 'secure/app', 'v1', `Bearer ${pushToken}`);
    const mirrored = await startServer({ env: { REGISTRY_PROXY_REMOTEURL: up.url, REGISTRY_PROXY_USERNAME: 'bot', REGISTRY_PROXY_PASSWORD: 'pw' } });
    cleanups.push(() => mirrored.close());
    const before = tokens.requests.length;
    await pullThrough(mirrored.url, image);
    const asked = tokens.requests.slice(before);
    expect(asked.length).toBeGreaterThanOrEqual(1);
    expect(asked.length).toBeLessThanOrEqual(2); // cached per scope, not one per request
    expect(asked.every((r) => r.authorization === `Basic ${Buffer.from('bot:pw').toString('base64')}`)).toBe(true);
  });

  it('passes the referrers API and tag lists of a wharf upstream through, and keeps signatures for when it is down', async () => {
    const upstreamWharf = await startServer();
    cleanups.push(() => upstreamWharf.close());
    const up = new RegistryClient(upstreamWharf.url);
    const image = await up.pushImage('signed/app', 'v1', [randomBlob(2000)]);
    await up.pushImage('signed/app', 'v2', [randomBlob(2000)]);
    const signature = await up.pushImage('signed/app', 'sig', [randomBlob(100)], {
      artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json',
      subject: { mediaType: OCI_MANIFEST, digest: image.digest, size: image.body.length },
    });
    const proxyLink = await startLinkProxy({ target: { host: '127.0.0.1', port: Number(new URL(upstreamWharf.url).port) } });
    cleanups.push(() => proxyLink.close());
    const mirrored = await startServer({ env: { REGISTRY_PROXY_REMOTEURL: proxyLink.url, REGISTRY_PROXY_TTL: '1ms' } });
    cleanups.push(() => mirrored.close());
    const c = new RegistryClient(mirrored.url);

    const tags = await c.fetch('/v2/signed/app/tags/list');
    expect(await tags.json()).toEqual({ name: 'signed/app', tags: ['sig', 'v1', 'v2'] });
    const listed = async () => {
      const res = await c.fetch(`/v2/signed/app/referrers/${image.digest}`);
      expect(res.status).toBe(200);
      return ((await res.json()) as { manifests: { digest: string; artifactType?: string }[] }).manifests;
    };
    expect(await listed()).toEqual([expect.objectContaining({ digest: signature.digest, artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json' })]);
    // A verifier fetches the signature by digest: now cached, with its referrer link.
    const sig = await c.fetch(`/v2/signed/app/manifests/${signature.digest}`, { headers: { Accept: OCI_MANIFEST } });
    expect(Buffer.from(await sig.arrayBuffer()).equals(signature.body)).toBe(true);

    proxyLink.set({ refuse: true });
    proxyLink.dropConnections();
    expect((await listed()).map((d) => d.digest)).toEqual([signature.digest]);
  });
});
