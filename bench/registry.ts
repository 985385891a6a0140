// What a registry client does, step by step, with every response checked: status,
// Docker-Content-Digest, sizes, and for pulls the SHA-256 of the bytes received.
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { sha256Of, type BigBlob, type BlobVariant, type SmallBlobs } from './data.js';
import { BenchError, expectStatus, header, send, type Body, type Reply } from './http.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

const OCTETS = 'application/octet-stream';

/** POST /v2/<repo>/blobs/uploads/ -> the session's Location. */
export async function startUpload(base: string, repo: string): Promise<string> {
  const reply = await send({ method: 'POST', base, url: `/v2/${repo}/blobs/uploads/`, headers: { 'Content-Length': 0 } });
  expectStatus(reply, 202, `POST /v2/${repo}/blobs/uploads/`);
  const location = header(reply, 'Location');
  if (!location) throw new BenchError(`POST /v2/${repo}/blobs/uploads/: no Location`);
  return location;
}

function withDigest(location: string, base: string, digest: string): string {
  const url = new URL(location, base);
  url.searchParams.set('digest', digest);
  return url.toString();
}

function expectCreated(reply: Reply, digest: string, what: string): void {
  expectStatus(reply, 201, what);
  const got = header(reply, 'Docker-Content-Digest');
  if (got !== digest) throw new BenchError(`${what}: Docker-Content-Digest ${got}, expected ${digest}`);
}

/** POST, then PUT ?digest= with the whole body (what docker push does for a layer). */
export async function pushMonolithic(base: string, repo: string, digest: string, size: number, body: Body): Promise<void> {
  const location = await startUpload(base, repo);
  const reply = await send({
    method: 'PUT',
    base,
    url: withDigest(location, base, digest),
    headers: { 'Content-Type': OCTETS, 'Content-Length': size },
    body,
  });
  expectCreated(reply, digest, `PUT ${repo} blob (monolithic)`);
}

/** POST, PATCH pieces of `chunkSize` with Content-Range, then PUT ?digest= without a body. */
export async function pushChunked(base: string, repo: string, blob: BigBlob, variant: ReturnType<BigBlob['variant']>, chunkSize: number): Promise<void> {
  let location = await startUpload(base, repo);
  for (let start = 0; start < variant.size; start += chunkSize) {
    const end = Math.min(variant.size, start + chunkSize);
    const reply = await send({
      method: 'PATCH',
      base,
      url: location,
      headers: { 'Content-Type': OCTETS, 'Content-Length': end - start, 'Content-Range': `${start}-${end - 1}` },
      body: blob.body(variant, start, end),
    });
    expectStatus(reply, 202, `PATCH ${repo} upload at ${start}`);
    const range = header(reply, 'Range');
    if (range !== `0-${end - 1}`) throw new BenchError(`PATCH ${repo} upload: Range ${range}, expected 0-${end - 1}`);
    location = header(reply, 'Location') || location;
  }
  const reply = await send({ method: 'PUT', base, url: withDigest(location, base, variant.digest), headers: { 'Content-Length': 0 } });
  expectCreated(reply, variant.digest, `PUT ${repo} blob (chunked, final)`);
}

/**
 * GET a blob (by default /v2/<repo>/blobs/<digest>), hashing the body as it streams in;
 * checks status, length, content digest and (for registries) Docker-Content-Digest.
 */
export async function pullVerified(base: string, repo: string, blob: BlobVariant, path?: string): Promise<void> {
  const hash = createHash('sha256');
  let received = 0;
  let status = 0;
  const sink = (res: IncomingMessage): Promise<void> =>
    new Promise((resolve, reject) => {
      status = res.statusCode ?? 0;
      res.on('data', (chunk: Buffer) => {
        received += chunk.length;
        hash.update(chunk);
      });
      res.on('end', resolve);
      res.on('error', reject);
    });
  const reply = await send({ method: 'GET', base, url: path ?? `/v2/${repo}/blobs/${blob.digest}`, sink });
  const what = `GET ${path ?? `${repo} blob`}`;
  if (status !== 200) throw new BenchError(`${what}: expected HTTP 200, got ${status}`);
  const length = header(reply, 'Content-Length');
  if (length !== String(blob.size)) throw new BenchError(`${what}: Content-Length ${length}, expected ${blob.size}`);
  if (received !== blob.size) throw new BenchError(`${what}: received ${received} bytes, expected ${blob.size}`);
  const digest = `sha256:${hash.digest('hex')}`;
  if (digest !== blob.digest) throw new BenchError(`${what}: content hashes to ${digest}, expected ${blob.digest}`);
  const named = header(reply, 'Docker-Content-Digest');
  if (path === undefined && named !== blob.digest) throw new BenchError(`${what}: Docker-Content-Digest ${named}, expected ${blob.digest}`);
}

/** HEAD the blob: it exists with the right size and digest. */
export async function checkBlob(base: string, repo: string, blob: BlobVariant): Promise<void> {
  const reply = await send({ method: 'HEAD', base, url: `/v2/${repo}/blobs/${blob.digest}` });
  const what = `HEAD ${repo} blob`;
  expectStatus(reply, 200, what);
  if (header(reply, 'Content-Length') !== String(blob.size)) {
    throw new BenchError(`${what}: Content-Length ${header(reply, 'Content-Length')}, expected ${blob.size}`);
  }
  if (header(reply, 'Docker-Content-Digest') !== blob.digest) throw new BenchError(`${what}: wrong Docker-Content-Digest`);
}

/** One small blob: POST + PUT ?digest= with the bytes. */
export async function pushSmall(base: string, repo: string, blobs: SmallBlobs): Promise<string> {
  const v = blobs.variant();
  await pushMonolithic(base, repo, v.digest, v.size, v.chunks);
  return v.digest;
}

export interface PushedImage {
  manifest: Buffer;
  digest: string;
  /** Blob digests the image references (config and layer). */
  blobs: string[];
}

/** Pushes a small OCI image (config + one layer + manifest) under `repo:tag`. */
export async function pushImage(base: string, repo: string, tag: string): Promise<PushedImage> {
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'], Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      rootfs: { type: 'layers', diff_ids: [`sha256:${'ab'.repeat(32)}`] },
      history: [{ created: '2024-01-01T00:00:00Z', created_by: 'wharf bench' }],
    }),
  );
  const layer = Buffer.from(`wharf bench layer ${tag}\n`.repeat(64));
  const configDigest = sha256Of(config);
  const layerDigest = sha256Of(layer);
  await pushMonolithic(base, repo, configDigest, config.length, config);
  await pushMonolithic(base, repo, layerDigest, layer.length, layer);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.length },
      layers: [{ mediaType: OCI_LAYER, digest: layerDigest, size: layer.length }],
      annotations: { 'org.opencontainers.image.title': 'wharf bench' },
    }),
  );
  const digest = sha256Of(manifest);
  const reply = await send({
    method: 'PUT',
    base,
    url: `/v2/${repo}/manifests/${tag}`,
    headers: { 'Content-Type': OCI_MANIFEST, 'Content-Length': manifest.length },
    body: manifest,
  });
  expectCreated(reply, digest, `PUT /v2/${repo}/manifests/${tag}`);
  return { manifest, digest, blobs: [configDigest, layerDigest] };
}

/** GET and HEAD by tag answer the pushed manifest byte for byte, with its digest and type. */
export async function checkManifest(base: string, repo: string, tag: string, image: PushedImage, authorization?: string): Promise<void> {
  for (const method of ['GET', 'HEAD']) {
    const headers: Record<string, string> = { Accept: OCI_MANIFEST, ...(authorization ? { Authorization: authorization } : {}) };
    const reply = await send({ method, base, url: `/v2/${repo}/manifests/${tag}`, headers });
    const what = `${method} /v2/${repo}/manifests/${tag}`;
    expectStatus(reply, 200, what);
    if (header(reply, 'Docker-Content-Digest') !== image.digest) throw new BenchError(`${what}: wrong Docker-Content-Digest`);
    if (header(reply, 'Content-Type') !== OCI_MANIFEST) throw new BenchError(`${what}: Content-Type ${header(reply, 'Content-Type')}`);
    if (header(reply, 'Content-Length') !== String(image.manifest.length)) throw new BenchError(`${what}: wrong Content-Length`);
    if (method === 'GET' && !reply.body.equals(image.manifest)) throw new BenchError(`${what}: body differs from the pushed manifest`);
  }
}
