// The mirror bench's client: what `docker pull` does over HTTP, every byte checked. A pull
// is GET of the manifest by tag, then every blob it references (config first, then the
// layers) with at most 3 requests at once (dockerd's max-concurrent-downloads default).
// Each simulated client has its own keep-alive agent, as separate machines would.
// Also: pushing the test image into the upstream, and the image's description.
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { sha256Of } from './data.js';
import { BenchError, expectStatus, header, send } from './http.js';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, pushMonolithic } from './registry.js';

/** What a client asks for when it pulls by tag (dockerd sends all of these). */
export const PULL_ACCEPT = [
  OCI_MANIFEST,
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');

export interface BlobRef {
  digest: string;
  size: number;
}

export interface TestImage {
  repo: string;
  tag: string;
  manifest: Buffer;
  digest: string;
  /** Config first, then the layers. */
  blobs: BlobRef[];
  /** Manifest + config + layers. */
  bytes: number;
}

/** A failed request, with what the server said (status, start of the body). */
export class PullError extends BenchError {}

/** Per-request: no byte for this long fails the request (a hung mirror must not hang the bench). */
const IDLE_TIMEOUT_MS = 30_000;

interface Got {
  status: number;
  headers: IncomingHttpHeaders;
  /** Collected only when asked (manifests, errors). */
  body: Buffer;
  received: number;
  digest: string;
}

/** GET with the given agent: the body is hashed as it streams; kept only if `keep` (or on an error status). */
function get(agent: Agent, base: string, path: string, headers: Record<string, string>, keep: boolean): Promise<Got> {
  const target = new URL(base);
  return new Promise<Got>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      reject(new PullError(`GET ${path}: ${err.message}`));
    };
    const req = httpRequest({ host: target.hostname, port: target.port, method: 'GET', path, headers, agent }, (res) => {
      const hash = createHash('sha256');
      const parts: Buffer[] = [];
      let received = 0;
      const status = res.statusCode ?? 0;
      res.on('data', (chunk: Buffer) => {
        received += chunk.length;
        hash.update(chunk);
        if (keep || status !== 200) parts.push(chunk);
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        resolve({ status, headers: res.headers, body: Buffer.concat(parts), received, digest: `sha256:${hash.digest('hex')}` });
      });
      res.on('error', fail);
      res.on('aborted', () => fail(new Error(`connection closed after ${received} bytes`)));
    });
    req.setTimeout(IDLE_TIMEOUT_MS, () => {
      req.destroy(new Error(`no data for ${IDLE_TIMEOUT_MS / 1000} s`));
    });
    req.on('error', fail);
    req.end();
  });
}

function expectOk(got: Got, what: string): void {
  if (got.status !== 200) {
    throw new PullError(`${what}: HTTP ${got.status} ${got.body.subarray(0, 300).toString('utf8').trim()}`);
  }
}

/** GET a blob and check status, length, content hash and Docker-Content-Digest. */
export async function pullBlob(agent: Agent, base: string, repo: string, blob: BlobRef): Promise<void> {
  const what = `GET /v2/${repo}/blobs/${blob.digest.slice(0, 19)}`;
  const got = await get(agent, base, `/v2/${repo}/blobs/${blob.digest}`, {}, false);
  expectOk(got, what);
  if (got.received !== blob.size) throw new PullError(`${what}: received ${got.received} bytes, expected ${blob.size}`);
  if (got.digest !== blob.digest) throw new PullError(`${what}: content hashes to ${got.digest}`);
  const named = got.headers['docker-content-digest'];
  if (named !== undefined && named !== blob.digest) throw new PullError(`${what}: Docker-Content-Digest ${String(named)}`);
}

/** One client's pull: the manifest by tag, then all blobs, `concurrency` at a time. */
export async function pullImage(agent: Agent, base: string, image: TestImage, concurrency = 3): Promise<void> {
  const what = `GET /v2/${image.repo}/manifests/${image.tag}`;
  const got = await get(agent, base, `/v2/${image.repo}/manifests/${image.tag}`, { Accept: PULL_ACCEPT }, true);
  expectOk(got, what);
  if (got.headers['docker-content-digest'] !== image.digest) {
    throw new PullError(`${what}: Docker-Content-Digest ${String(got.headers['docker-content-digest'])}, expected ${image.digest}`);
  }
  if (!got.body.equals(image.manifest)) throw new PullError(`${what}: body differs from the pushed manifest`);
  const queue = [...image.blobs];
  const worker = async (): Promise<void> => {
    for (let blob = queue.shift(); blob !== undefined; blob = queue.shift()) await pullBlob(agent, base, image.repo, blob);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
}

/** A fresh client (its own connections). Destroy it after its pull. */
export const newClient = (): Agent => new Agent({ keepAlive: true, maxSockets: 8 });

/** A test image in memory: its description and the bytes of every blob. */
export interface ImageContent {
  image: TestImage;
  /** Config and layers by digest. */
  blobs: Map<string, Buffer>;
}

/** An OCI image of random layers of the given sizes (random: nothing on the way can compress them). */
export function makeTestImage(repo: string, tag: string, layerSizes: number[]): ImageContent {
  const layers = layerSizes.map((size) => randomBytes(size));
  const layerRefs = layers.map((l) => ({ digest: sha256Of(l), size: l.length }));
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: layerRefs.map((l) => l.digest) },
      history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `wharf mirror bench layer ${i + 1}` })),
    }),
  );
  const configRef = { digest: sha256Of(config), size: config.length };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, ...configRef },
      layers: layerRefs.map((l) => ({ mediaType: OCI_LAYER, ...l })),
    }),
  );
  const refs = [configRef, ...layerRefs];
  const image: TestImage = {
    repo,
    tag,
    manifest,
    digest: sha256Of(manifest),
    blobs: refs,
    bytes: manifest.length + refs.reduce((n, b) => n + b.size, 0),
  };
  return { image, blobs: new Map([[configRef.digest, config], ...layers.map((l, i): [string, Buffer] => [layerRefs[i]!.digest, l])]) };
}

/** Pushes the image (blobs, then the manifest by tag) to a registry. */
export async function pushTestImage(base: string, content: ImageContent): Promise<void> {
  const { image } = content;
  for (const ref of image.blobs) {
    const bytes = content.blobs.get(ref.digest)!;
    await pushMonolithic(base, image.repo, ref.digest, bytes.length, bytes);
  }
  const reply = await send({
    method: 'PUT',
    base,
    url: `/v2/${image.repo}/manifests/${image.tag}`,
    headers: { 'Content-Type': OCI_MANIFEST, 'Content-Length': image.manifest.length },
    body: image.manifest,
  });
  const what = `PUT ${base}/v2/${image.repo}/manifests/${image.tag}`;
  expectStatus(reply, 201, what);
  if (header(reply, 'Docker-Content-Digest') !== image.digest) throw new BenchError(`${what}: wrong Docker-Content-Digest`);
}
