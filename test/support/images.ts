// Images made offline. The root filesystem is the host's static busybox plus a few symlinks
// and random data, written as a tar by the small writer below. From it:
//  - docker: `docker import` a base image, then a classic-builder `docker build` (FROM + COPY
//    only, --network none) adds layers, one of them >= 50 MB of random data;
//  - skopeo/podman/distribution: an OCI image layout (blobs + index.json) written in Node,
//    optionally with an image index of several platforms, or tarred as an oci-archive.
import { createHash, generateKeyPairSync, randomBytes, sign as cryptoSign } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { Dockerd } from './dockerd.js';
import { tempDir, removeTree } from './processes.js';
import { requireThat } from './tools.js';

export const BUSYBOX = process.env.WHARF_E2E_BUSYBOX ?? '/bin/busybox';
export const BUSYBOX_APT_PACKAGE = 'busybox-static';
/** Applets linked into /bin. */
export const APPLETS = ['sh', 'echo', 'cat', 'sha256sum', 'ls', 'true'];

export const sha256hex = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');
export const sha256 = (data: Uint8Array): string => `sha256:${sha256hex(data)}`;

/** The OCI/Go name of this machine's architecture. */
export function ociArch(arch: string = process.arch): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[arch] ?? arch;
}

/** True when `file` is an ELF executable without a program interpreter (statically linked). */
export function isStaticElf(file: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return false;
  }
  try {
    const head = Buffer.alloc(64);
    if (readSync(fd, head, 0, 64, 0) < 64 || head.readUInt32BE(0) !== 0x7f454c46) return false;
    if (head[4] !== 2 || head[5] !== 1) return false; // 64-bit little-endian only (what we run on)
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

/** The static busybox the images are made of: present, or skip/fail naming busybox-static. */
export function requireBusybox(): boolean {
  return requireThat(isStaticElf(BUSYBOX), `${BUSYBOX} is missing or not statically linked`, `install it with: apt-get install -y ${BUSYBOX_APT_PACKAGE}`);
}

// ---------------------------------------------------------------------------------------
// A minimal ustar writer.

export type TarEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string };

const MTIME = Math.floor(Date.UTC(2024, 0, 1) / 1000);

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

function tarHeader(name: string, size: number, mode: number, typeflag: string, linkname = ''): Buffer {
  const h = Buffer.alloc(512);
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new Error(`tar: path too long: ${name}`);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
  }
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(MTIME, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write(typeflag, 156, 'ascii');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write('root', 265, 'ascii');
  h.write('root', 297, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/** A tar archive (uncompressed) of `entries`, in order. */
export function tarBuffer(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    if (e.type === 'dir') {
      parts.push(tarHeader(path.endsWith('/') ? path : `${path}/`, 0, e.mode ?? 0o755, '5'));
    } else if (e.type === 'symlink') {
      parts.push(tarHeader(path, 0, 0o777, '2', e.target));
    } else {
      parts.push(tarHeader(path, e.data.length, e.mode ?? 0o644, '0'));
      parts.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
      const pad = (512 - (e.data.length % 512)) % 512;
      if (pad > 0) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** Reads a (ustar/gnu) tar into a map path -> file contents (regular files only). */
export function tarFiles(tar: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let off = 0;
  let longName: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const field = (start: number, len: number): string => h.subarray(start, start + len).toString('utf8').replace(/\0.*$/s, '');
    let name = field(0, 100);
    const prefix = h.subarray(257, 262).toString('ascii') === 'ustar' ? field(345, 155) : '';
    if (prefix) name = `${prefix}/${name}`;
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const type = String.fromCharCode(h[156] ?? 0);
    const data = tar.subarray(off + 512, off + 512 + size);
    if (type === 'L') longName = data.toString('utf8').replace(/\0.*$/s, '');
    else if (type === 'x' || type === 'g') {
      const m = /\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      if (m && type === 'x') longName = m[1];
    } else {
      if (type === '0' || type === '\0') files.set((longName ?? name).replace(/^\.?\//, ''), Buffer.from(data));
      longName = undefined;
    }
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

// ---------------------------------------------------------------------------------------
// Root filesystems.

export interface RootfsFile {
  path: string;
  data: Buffer;
}

/** busybox at /bin/busybox, applet symlinks, /data, /tmp, and the given extra files. */
export async function busyboxRootfsEntries(extra: RootfsFile[] = []): Promise<TarEntry[]> {
  if (!isStaticElf(BUSYBOX)) {
    throw new Error(`${BUSYBOX} is missing or not a static binary: apt-get install -y ${BUSYBOX_APT_PACKAGE}`);
  }
  const busybox = await readFile(BUSYBOX);
  const entries: TarEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    ...APPLETS.map((a): TarEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { type: 'dir', path: 'data' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0:root:/:/bin/sh\n') },
    { type: 'file', path: 'etc/group', data: Buffer.from('root:x:0:\n') },
  ];
  const dirs = new Set(entries.filter((e) => e.type === 'dir').map((e) => e.path));
  return [...entries, ...filesEntries(extra, dirs)];
}

/** Tar entries for files, with parent dirs (except those in `existing`). */
export function filesEntries(files: RootfsFile[], existing: Set<string> = new Set()): TarEntry[] {
  const dirs = new Set(existing);
  const out: TarEntry[] = [];
  for (const f of files) {
    const parts = f.path.replace(/^\/+/, '').split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        out.push({ type: 'dir', path: d });
      }
    }
    out.push({ type: 'file', path: f.path.replace(/^\/+/, ''), data: f.data });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Docker images (dockerd).

export interface DockerImage {
  /** The local reference the image was created under. */
  ref: string;
  /** sha256 hex of files inside the image, by absolute path. */
  files: Record<string, string>;
  /** Number of filesystem layers. */
  layers: number;
}

/** `docker import` of a busybox rootfs with a small random file at /data/small.bin. */
export async function importBaseImage(d: Dockerd, ref: string): Promise<DockerImage> {
  const small = randomBytes(4096 + Math.floor(Math.random() * 4096));
  const dir = await tempDir('wharf-e2e-img-');
  try {
    const tarFile = join(dir, 'rootfs.tar');
    await writeFile(tarFile, tarBuffer(await busyboxRootfsEntries([{ path: 'data/small.bin', data: small }])));
    await d.dockerOk(['import', '--change', 'CMD ["/bin/sh"]', '--change', 'ENV PATH=/bin', tarFile, ref]);
  } finally {
    await removeTree(dir);
  }
  return { ref, files: { '/data/small.bin': sha256hex(small) }, layers: 1 };
}

/**
 * A three-layer image: the imported base, /data/random.bin (`bigBytes` of random data, 50 MiB
 * by default) and /data/hello.txt, built by the classic builder with no network.
 */
export async function buildMultiLayerImage(d: Dockerd, ref: string, opts: { bigBytes?: number } = {}): Promise<DockerImage> {
  const baseRef = `${ref.replace(/:[^:/]*$/, '')}-base:latest`;
  const base = await importBaseImage(d, baseRef);
  const big = randomBytes(opts.bigBytes ?? 50 * 1024 * 1024);
  const hello = Buffer.from(`hello from wharf e2e ${randomBytes(8).toString('hex')}\n`);
  const ctx = await tempDir('wharf-e2e-ctx-');
  try {
    await writeFile(join(ctx, 'random.bin'), big);
    await writeFile(join(ctx, 'hello.txt'), hello);
    await writeFile(
      join(ctx, 'Dockerfile'),
      [`FROM ${baseRef}`, 'COPY random.bin /data/random.bin', 'COPY hello.txt /data/hello.txt', 'CMD ["/bin/sh"]', ''].join('\n'),
    );
    await d.dockerOk(['build', '--network', 'none', '--pull=false', '-t', ref, ctx], { env: { DOCKER_BUILDKIT: '0' } });
  } finally {
    await removeTree(ctx);
  }
  return {
    ref,
    files: { ...base.files, '/data/random.bin': sha256hex(big), '/data/hello.txt': sha256hex(hello) },
    layers: 3,
  };
}

/** `docker save` to a docker-archive tar. */
export async function dockerSave(d: Dockerd, ref: string, file: string): Promise<void> {
  await d.dockerOk(['save', '-o', file, ref]);
}

// ---------------------------------------------------------------------------------------
// OCI image layouts written in Node.

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface OciLayer {
  /** Compressed (gzip) blob digest. */
  digest: string;
  size: number;
  /** Uncompressed tar digest (config rootfs.diff_ids). */
  diffId: string;
  /** The uncompressed tar. */
  tar: Buffer;
  /** The blob as stored. */
  blob: Buffer;
}

export interface OciImage {
  manifest: Buffer;
  manifestDigest: string;
  config: Buffer;
  configDigest: string;
  layers: OciLayer[];
  platform: { architecture: string; os: string };
  /** sha256 hex of files in the image, by absolute path. */
  files: Record<string, string>;
}

/** Builds (in memory) an OCI image whose layers are the given tar-entry lists. */
export function ociImage(layerEntries: TarEntry[][], opts: { architecture?: string; os?: string; cmd?: string[] } = {}): OciImage {
  const platform = { architecture: opts.architecture ?? ociArch(), os: opts.os ?? 'linux' };
  const files: Record<string, string> = {};
  const layers = layerEntries.map((entries): OciLayer => {
    for (const e of entries) if (e.type === 'file') files[`/${e.path.replace(/^\/+/, '')}`] = sha256hex(e.data);
    const tar = tarBuffer(entries);
    const blob = gzipSync(tar, { level: 1 });
    return { digest: sha256(blob), size: blob.length, diffId: sha256(tar), tar, blob };
  });
  const created = '2024-01-01T00:00:00Z';
  const config = Buffer.from(
    JSON.stringify({
      created,
      architecture: platform.architecture,
      os: platform.os,
      config: { Env: ['PATH=/bin'], Cmd: opts.cmd ?? ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({ created, created_by: `wharf e2e layer ${i}` })),
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: MT.ociLayerGzip, digest: l.digest, size: l.size })),
    }),
  );
  return { manifest, manifestDigest: sha256(manifest), config, configDigest: sha256(config), layers, platform, files };
}

/** A runnable image: busybox base layer, then one layer per group of extra files. */
export async function busyboxOciImage(extraLayers: RootfsFile[][], opts: { architecture?: string } = {}): Promise<OciImage> {
  return ociImage([await busyboxRootfsEntries(), ...extraLayers.map((files) => filesEntries(files))], opts);
}

export interface OciIndex {
  index: Buffer;
  indexDigest: string;
  images: OciImage[];
}

/** An OCI image index over `images`, each with its platform. */
export function ociIndex(images: OciImage[]): OciIndex {
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: images.map((im) => ({ mediaType: MT.ociManifest, digest: im.manifestDigest, size: im.manifest.length, platform: im.platform })),
    }),
  );
  return { index, indexDigest: sha256(index), images };
}

async function writeBlob(dir: string, data: Buffer): Promise<void> {
  await writeFile(join(dir, 'blobs', 'sha256', sha256hex(data)), data);
}

/**
 * Writes an OCI image layout at `dir` holding `image` (an image or an index) under `tag`
 * (org.opencontainers.image.ref.name), usable as skopeo's `oci:DIR:TAG`.
 */
export async function writeOciLayout(dir: string, tag: string, image: OciImage | OciIndex): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const images = 'index' in image ? image.images : [image];
  for (const im of images) {
    for (const l of im.layers) await writeBlob(dir, l.blob);
    await writeBlob(dir, im.config);
    await writeBlob(dir, im.manifest);
  }
  let top: Descriptor;
  if ('index' in image) {
    await writeBlob(dir, image.index);
    top = { mediaType: MT.ociIndex, digest: image.indexDigest, size: image.index.length };
  } else {
    top = { mediaType: MT.ociManifest, digest: image.manifestDigest, size: image.manifest.length };
  }
  top.annotations = { 'org.opencontainers.image.ref.name': tag };
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: [top] }));
}

/** Tars an OCI layout directory's contents into an oci-archive (for `podman load`). */
export async function writeOciArchive(file: string, tag: string, image: OciImage | OciIndex): Promise<void> {
  const dir = await tempDir('wharf-e2e-ocia-');
  try {
    await writeOciLayout(dir, tag, image);
    const entries: TarEntry[] = [
      { type: 'file', path: 'oci-layout', data: await readFile(join(dir, 'oci-layout')) },
      { type: 'file', path: 'index.json', data: await readFile(join(dir, 'index.json')) },
      { type: 'dir', path: 'blobs' },
      { type: 'dir', path: 'blobs/sha256' },
    ];
    const images = 'index' in image ? image.images : [image];
    const blobs = new Map<string, Buffer>();
    if ('index' in image) blobs.set(image.indexDigest, image.index);
    for (const im of images) {
      blobs.set(im.manifestDigest, im.manifest);
      blobs.set(im.configDigest, im.config);
      for (const l of im.layers) blobs.set(l.digest, l.blob);
    }
    for (const [digest, data] of blobs) entries.push({ type: 'file', path: `blobs/sha256/${digest.slice(7)}`, data });
    await writeFile(file, tarBuffer(entries));
  } finally {
    await removeTree(dir);
  }
}

/** Reads the blobs of an OCI layout dir written by a client (e.g. `skopeo copy ... oci:DIR`). */
export async function readOciLayoutBlob(dir: string, digest: string): Promise<Buffer> {
  const [alg, hex] = digest.split(':');
  return readFile(join(dir, 'blobs', alg!, hex!));
}

// ---------------------------------------------------------------------------------------
// Talking to a registry over plain HTTP, the way a client does (for checks and for pushes
// in the chunked / monolithic styles no CLI lets us choose).

export const ALL_MANIFEST_TYPES = [MT.ociManifest, MT.ociIndex, MT.dockerManifest, MT.dockerList].join(', ');

export interface FetchedManifest {
  status: number;
  body: Buffer;
  contentType: string | null;
  digest: string | null;
}

/** GET /v2/<repo>/manifests/<ref> accepting every manifest type. */
export async function getManifest(baseUrl: string, repo: string, ref: string): Promise<FetchedManifest> {
  const res = await fetch(`${baseUrl}/v2/${repo}/manifests/${ref}`, { headers: { Accept: ALL_MANIFEST_TYPES } });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, body, contentType: res.headers.get('Content-Type'), digest: res.headers.get('Docker-Content-Digest') };
}

/** GET a blob; returns the status and bytes. */
export async function getBlob(baseUrl: string, repo: string, digest: string): Promise<{ status: number; body: Buffer }> {
  const res = await fetch(`${baseUrl}/v2/${repo}/blobs/${digest}`);
  return { status: res.status, body: Buffer.from(await res.arrayBuffer()) };
}

export async function listTags(baseUrl: string, repo: string): Promise<{ status: number; tags: string[] }> {
  const res = await fetch(`${baseUrl}/v2/${repo}/tags/list`);
  if (res.status !== 200) {
    await res.arrayBuffer();
    return { status: res.status, tags: [] };
  }
  const body = (await res.json()) as { name?: string; tags?: string[] | null };
  return { status: res.status, tags: [...(body.tags ?? [])].sort() };
}

export async function catalog(baseUrl: string): Promise<string[]> {
  const res = await fetch(`${baseUrl}/v2/_catalog?n=1000`);
  if (res.status !== 200) throw new Error(`GET /v2/_catalog: ${res.status} ${await res.text()}`);
  const body = (await res.json()) as { repositories?: string[] | null };
  return [...(body.repositories ?? [])].sort();
}

const absolute = (baseUrl: string, location: string): string => new URL(location, `${baseUrl}/`).toString();
const withQuery = (url: string, query: string): string => `${url}${url.includes('?') ? '&' : '?'}${query}`;

async function startUpload(baseUrl: string, repo: string): Promise<string> {
  const res = await fetch(`${baseUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
  const text = await res.text();
  if (res.status !== 202) throw new Error(`POST /v2/${repo}/blobs/uploads/: ${res.status} ${text}`);
  const location = res.headers.get('Location');
  if (!location) throw new Error(`POST /v2/${repo}/blobs/uploads/: no Location`);
  return absolute(baseUrl, location);
}

const body = (data: Uint8Array): BodyInit => data as Uint8Array<ArrayBuffer>;

/** Monolithic upload in the POST-then-PUT form: the whole blob in `PUT <location>?digest=`. */
export async function pushBlobMonolithic(baseUrl: string, repo: string, data: Uint8Array): Promise<string> {
  const digest = sha256(data);
  const location = await startUpload(baseUrl, repo);
  const res = await fetch(withQuery(location, `digest=${digest}`), {
    method: 'PUT',
    body: body(data),
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`monolithic PUT of ${digest}: ${res.status} ${text}`);
  if (res.headers.get('Docker-Content-Digest') !== digest) throw new Error(`monolithic PUT: digest header ${res.headers.get('Docker-Content-Digest')}`);
  return digest;
}

/** Chunked upload: PATCHes of `chunkSize` with Content-Range, then an empty `PUT ?digest=`. */
export async function pushBlobChunked(baseUrl: string, repo: string, data: Uint8Array, chunkSize: number): Promise<string> {
  const digest = sha256(data);
  let location = await startUpload(baseUrl, repo);
  for (let off = 0; off < data.length; off += chunkSize) {
    const chunk = data.subarray(off, Math.min(off + chunkSize, data.length));
    const res = await fetch(location, {
      method: 'PATCH',
      body: body(chunk),
      headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Range': `${off}-${off + chunk.length - 1}`,
        'Content-Length': String(chunk.length),
      },
    });
    const text = await res.text();
    if (res.status !== 202) throw new Error(`PATCH ${off}-${off + chunk.length - 1} of ${digest}: ${res.status} ${text}`);
    const range = res.headers.get('Range');
    if (range !== `0-${off + chunk.length - 1}`) throw new Error(`PATCH: Range ${range}, expected 0-${off + chunk.length - 1}`);
    location = absolute(baseUrl, res.headers.get('Location') ?? location);
  }
  const res = await fetch(withQuery(location, `digest=${digest}`), { method: 'PUT', headers: { 'Content-Length': '0' } });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`closing PUT of ${digest}: ${res.status} ${text}`);
  return digest;
}

export async function pushManifestHttp(baseUrl: string, repo: string, ref: string, manifest: Buffer, mediaType: string): Promise<string> {
  const res = await fetch(`${baseUrl}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: body(manifest), headers: { 'Content-Type': mediaType } });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${ref}: ${res.status} ${text}`);
  return res.headers.get('Docker-Content-Digest') ?? '';
}

/** Pushes an OciImage over HTTP: blobs chunked (when chunkSize is given) or monolithic, then the manifest. */
export async function pushOciImageHttp(baseUrl: string, repo: string, tag: string, image: OciImage, opts: { chunkSize?: number } = {}): Promise<void> {
  for (const blob of [image.config, ...image.layers.map((l) => l.blob)]) {
    if (opts.chunkSize !== undefined) await pushBlobChunked(baseUrl, repo, blob, opts.chunkSize);
    else await pushBlobMonolithic(baseUrl, repo, blob);
  }
  await pushManifestHttp(baseUrl, repo, tag, image.manifest, MT.ociManifest);
}

// ---------------------------------------------------------------------------------------
// Docker schema 1 manifests (deprecated; still found in old Distribution data directories).

export const SCHEMA1 = {
  signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  unsigned: 'application/vnd.docker.distribution.manifest.v1+json',
} as const;

export interface Schema1Manifest {
  /** The manifest with its libtrust "signatures" block, as a client pushes it. */
  signed: Buffer;
  /** The payload alone (no signatures): what Distribution 2.3+ stores and digests. */
  payload: Buffer;
  /** Layer blobs, by digest (fsLayers[i].blobSum). */
  layers: Map<string, Buffer>;
}

const b64url = (data: Uint8Array | string): string => Buffer.from(data).toString('base64url');

/** libtrust's key id: SHA-256 of the DER public key, first 240 bits, base32 in groups of four. */
function libtrustKeyId(der: Buffer): string {
  const bytes = createHash('sha256').update(der).digest().subarray(0, 30);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out.match(/.{1,4}/g)!.join(':');
}

/**
 * A schema 1 manifest signed the way docker 1.x / libtrust did it: the payload is Go's
 * MarshalIndent with three spaces, the JWS "protected" header carries formatLength and
 * formatTail, the signature is ES256 over `protected.payload` with a fresh P-256 key whose
 * JWK (with its libtrust kid) is in the header. Distribution with schema 1 enabled verifies it.
 */
export function schema1Manifest(name: string, tag: string, layers: Buffer[], opts: { architecture?: string } = {}): Schema1Manifest {
  const ids = layers.map(() => randomBytes(32).toString('hex'));
  const manifest = {
    schemaVersion: 1,
    name,
    tag,
    architecture: opts.architecture ?? ociArch(),
    // fsLayers and history run from the top layer down.
    fsLayers: [...layers].reverse().map((l) => ({ blobSum: sha256(l) })),
    history: ids
      .map((id, i) => ({
        v1Compatibility: JSON.stringify({
          id,
          ...(i > 0 ? { parent: ids[i - 1] } : {}),
          created: '2015-06-01T00:00:00Z',
          container_config: { Cmd: [`/bin/sh -c #(nop) layer ${i}`] },
          ...(i === ids.length - 1 ? { architecture: opts.architecture ?? ociArch(), os: 'linux', config: { Cmd: ['/bin/sh'] } } : {}),
        }),
      }))
      .reverse(),
  };
  const payload = Buffer.from(JSON.stringify(manifest, null, 3));
  const closing = payload.lastIndexOf('}');
  let formatLength = closing;
  while (formatLength > 0 && /\s/.test(String.fromCharCode(payload[formatLength - 1]!))) formatLength--;
  const formatTail = payload.subarray(formatLength);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = libtrustKeyId(publicKey.export({ format: 'der', type: 'spki' }));
  const time = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const protectedHeader = b64url(JSON.stringify({ formatLength, formatTail: b64url(formatTail), time }));
  const signature = cryptoSign('sha256', Buffer.from(`${protectedHeader}.${b64url(payload)}`), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  const signatures = [
    {
      header: { jwk: { crv: jwk.crv, kid, kty: jwk.kty, x: jwk.x, y: jwk.y }, alg: 'ES256' },
      signature: b64url(signature),
      protected: protectedHeader,
    },
  ];
  const block = JSON.stringify(signatures, null, 3).replace(/\n/g, '\n   ');
  const signed = Buffer.concat([payload.subarray(0, formatLength), Buffer.from(`,\n   "signatures": ${block}\n}`)]);
  return { signed, payload, layers: new Map(layers.map((l) => [sha256(l), l])) };
}

// ---------------------------------------------------------------------------------------
// OCI 1.1 artifacts: manifests with an `artifactType`, the empty config and a `subject`.

export const OCI_EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', data: Buffer.from('{}') } as const;

export interface OciArtifact {
  manifest: Buffer;
  manifestDigest: string;
  artifactType: string;
  /** Every blob the manifest references (the empty config and the layers), by digest. */
  blobs: Map<string, Buffer>;
}

/**
 * An artifact manifest (e.g. an SBOM or a signature) whose `subject` is `subject`: config is
 * the OCI empty descriptor, each of `files` one layer of media type `artifactType`.
 */
export function ociArtifact(subject: { mediaType: string; digest: string; size: number }, artifactType: string, files: Buffer[]): OciArtifact {
  const layers = files.map((f) => ({ mediaType: artifactType, digest: sha256(f), size: f.length }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      artifactType,
      config: { mediaType: OCI_EMPTY.mediaType, digest: sha256(OCI_EMPTY.data), size: OCI_EMPTY.data.length },
      layers,
      subject,
      annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' },
    }),
  );
  const blobs = new Map<string, Buffer>([[sha256(OCI_EMPTY.data), OCI_EMPTY.data], ...files.map((f): [string, Buffer] => [sha256(f), f])]);
  return { manifest, manifestDigest: sha256(manifest), artifactType, blobs };
}
