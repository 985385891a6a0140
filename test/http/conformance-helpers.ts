// Shared pieces of the conformance HTTP tests (see CONFORMANCE-NOTES.md): the content the
// OCI conformance suite pushes, rebuilt here, and a small fetch wrapper that follows
// Location headers the way the suite's Go client does.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { expect } from 'vitest';

export const MT = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  empty: 'application/vnd.oci.empty.v1+json',
  octet: 'application/octet-stream',
} as const;

export const ANNOTATION_KEY = 'org.opencontainers.conformance.test';
export const ARTIFACT_A = 'application/vnd.nhl.peanut.butter.bagel';
export const ARTIFACT_B = 'application/vnd.nba.strawberry.jam.croissant';
export const ARTIFACT_INDEX = 'application/vnd.food.stand';
export const EMPTY_JSON_DIGEST = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';
export const INVALID_TAG = '.INVALID_MANIFEST_NAME';

/** The codes the suite accepts in errors[0].code (its own list: no TOOMANYREQUESTS). */
export const SUITE_ERROR_CODES = [
  'BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'MANIFEST_UNVERIFIED', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID',
  'TAG_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED',
];

export const sha256 = (data: Uint8Array | string): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`;

export interface Content {
  bytes: Buffer;
  digest: string;
  size: number;
}

export function content(data: Uint8Array | string): Content {
  const bytes = Buffer.from(data);
  return { bytes, digest: sha256(bytes), size: bytes.length };
}

/** Go's json.MarshalIndent(v, "", "\t"): the suite's manifests are tab-indented. */
const indented = (value: unknown): Content => content(JSON.stringify(value, null, '\t'));

/**
 * A descriptor as the suite's Go struct marshals it: mediaType, digest, size, then the
 * optional fields, and always "newUnspecifiedField" (null unless set) - an unknown field
 * registries must keep.
 */
function descriptor(mediaType: string, target: Content, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { mediaType, digest: target.digest, size: target.size, ...extra, newUnspecifiedField: null };
}

export interface Referrer extends Content {
  artifactType: string | undefined;
  annotation: string | undefined;
  mediaType: string;
}

export interface Fixtures {
  configs: Content[];
  layer: Content;
  manifests: Content[];
  emptyJson: Content;
  blobA: Content;
  blobB: Content;
  chunk1: Buffer;
  chunk2: Buffer;
  refBlobA: Content;
  refBlobB: Content;
  /** v1.1.0 shape: no top-level mediaType, "layers": []. */
  emptyLayerManifest: Content;
  /** newer shape: mediaType set, one empty-JSON layer. */
  emptyJsonLayerManifest: Content;
  refs: { aConfig: Referrer; aLayer: Referrer; index: Referrer; bConfig: Referrer; bLayer: Referrer; cLayer: Referrer };
  dummyDigest: string;
}

export function makeFixtures(): Fixtures {
  const configs = Array.from({ length: 5 }, () =>
    indented({
      author: randomBytes(12).toString('base64url').slice(0, 16),
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [] },
    }),
  );
  // A tiny gzip stream standing in for the suite's tar.gz layer; content is opaque to the registry.
  const layer = content(gzipSync(Buffer.from(`conformance layer ${randomUUID()}\n`)));
  const configDescriptor = (c: Content): Record<string, unknown> => ({
    mediaType: MT.config,
    digest: c.digest,
    size: c.size,
    data: c.bytes.toString('base64'),
    newUnspecifiedField: Buffer.from('hello world').toString('base64'),
  });
  const manifests = configs.map((c) =>
    indented({ schemaVersion: 2, mediaType: MT.manifest, config: configDescriptor(c), layers: [descriptor(MT.layer, layer)] }),
  );
  const emptyJson = content('{}');
  const blobB = content(randomBytes(42));
  const refBlobA = content('NHL Peanut Butter on my NHL bagel');
  const refBlobB = content('NBA Strawberry Jam on my NBA croissant');
  const subject4 = descriptor(MT.manifest, manifests[4]!);
  const subject3 = descriptor(MT.manifest, manifests[3]!);
  const annotated = (value: string) => ({ annotations: { [ANNOTATION_KEY]: value } });

  const referrer = (body: Record<string, unknown>, mediaType: string, artifactType: string | undefined, annotation?: string): Referrer => ({
    ...indented(body),
    mediaType,
    artifactType,
    annotation,
  });
  const configArtifact = (type: string, blob: Content, note: string) =>
    referrer(
      { schemaVersion: 2, mediaType: MT.manifest, config: descriptor(type, blob), layers: [descriptor(MT.empty, emptyJson)], subject: subject4, ...annotated(note) },
      MT.manifest, type, note,
    );
  const layerArtifact = (type: string, blob: Content, subject: Record<string, unknown>, note?: string) =>
    referrer(
      {
        schemaVersion: 2, mediaType: MT.manifest, artifactType: type, config: descriptor(MT.empty, emptyJson),
        layers: [descriptor(type, blob)], subject, ...(note ? annotated(note) : {}),
      },
      MT.manifest, type, note,
    );
  const aConfig = configArtifact(ARTIFACT_A, refBlobA, 'test config a');
  const bConfig = configArtifact(ARTIFACT_B, refBlobB, 'test config b');
  const aLayer = layerArtifact(ARTIFACT_A, refBlobA, subject4, 'test layer a');
  const bLayer = layerArtifact(ARTIFACT_B, refBlobB, subject4, 'test layer b');
  const cLayer = layerArtifact(ARTIFACT_B, refBlobB, subject3);
  const index = referrer(
    {
      schemaVersion: 2, mediaType: MT.index, artifactType: ARTIFACT_INDEX,
      manifests: [descriptor(MT.manifest, aConfig), descriptor(MT.manifest, aLayer)],
      subject: subject4, ...annotated('test index'),
    },
    MT.index, ARTIFACT_INDEX, 'test index',
  );

  return {
    configs,
    layer,
    manifests,
    emptyJson,
    blobA: content(randomBytes(42)),
    blobB,
    chunk1: blobB.bytes.subarray(0, 22),
    chunk2: blobB.bytes.subarray(22),
    refBlobA,
    refBlobB,
    emptyLayerManifest: indented({ schemaVersion: 2, config: configDescriptor(configs[1]!), layers: [] }),
    emptyJsonLayerManifest: indented({
      schemaVersion: 2, mediaType: MT.manifest, config: configDescriptor(configs[1]!), layers: [descriptor(MT.empty, emptyJson)],
    }),
    refs: { aConfig, aLayer, index, bConfig, bLayer, cLayer },
    dummyDigest: sha256('hello world'),
  };
}

export interface Res {
  status: number;
  headers: Headers;
  body: Buffer;
  text(): string;
  json<T = any>(): T;
  /** What the suite's GetRelativeLocation() yields: path plus query of the Location header. */
  location(): string;
}

export interface SendOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Send the body as a stream: Transfer-Encoding chunked, no Content-Length. */
  chunked?: boolean;
}

/**
 * The path a Go client continues with after a Location header: an absolute URL keeps only
 * its path and query, an absolute path is used as is. Anything else fails the test.
 */
export function relativeLocation(location: string | null): string {
  expect(location, 'Location header').toBeTruthy();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location!)) {
    const u = new URL(location!);
    return u.pathname + u.search;
  }
  expect(location!.startsWith('/'), `Location "${location}" must be an absolute URL or an absolute path`).toBe(true);
  return location!;
}

export class Http {
  constructor(readonly base: string) {}

  async send(method: string, path: string, opts: SendOptions = {}): Promise<Res> {
    let url = this.base + path;
    if (opts.query && Object.keys(opts.query).length > 0) {
      url += (path.includes('?') ? '&' : '?') + new URLSearchParams(opts.query).toString();
    }
    const init: RequestInit & { duplex?: 'half' } = { method, headers: opts.headers ?? {}, redirect: 'follow' };
    if (opts.body !== undefined) {
      const bytes = Buffer.from(opts.body);
      if (opts.chunked) {
        init.body = new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(new Uint8Array(bytes));
            controller.close();
          },
        });
        init.duplex = 'half';
      } else {
        init.body = bytes;
      }
    }
    const res = await fetch(url, init);
    const body = Buffer.from(await res.arrayBuffer());
    return {
      status: res.status,
      headers: res.headers,
      body,
      text: () => body.toString('utf8'),
      json: () => JSON.parse(body.toString('utf8')),
      location: () => relativeLocation(res.headers.get('location')),
    };
  }

  head = (path: string, opts?: SendOptions) => this.send('HEAD', path, opts);
  get = (path: string, opts?: SendOptions) => this.send('GET', path, opts);
  post = (path: string, opts?: SendOptions) => this.send('POST', path, opts);
  put = (path: string, opts?: SendOptions) => this.send('PUT', path, opts);
  patch = (path: string, opts?: SendOptions) => this.send('PATCH', path, opts);
  del = (path: string, opts?: SendOptions) => this.send('DELETE', path, opts);

  /** pushBlob as the newer suite does it: POST (201|202) then PUT ?digest= (exactly 201). */
  async pushBlob(repo: string, blob: Content): Promise<Res> {
    const start = await this.post(`/v2/${repo}/blobs/uploads/`);
    expect([201, 202], `POST /v2/${repo}/blobs/uploads/`).toContain(start.status);
    const done = await this.put(start.location(), {
      query: { digest: blob.digest },
      headers: { 'Content-Type': MT.octet },
      body: blob.bytes,
    });
    expect(done.status, `PUT upload of ${blob.digest}: ${done.text()}`).toBe(201);
    expect(done.headers.get('location')).toBeTruthy();
    return done;
  }

  /** pushManifest as the newer suite does it: exactly 201 with a Location; OCI-Subject when a subject is given. */
  async pushManifest(repo: string, reference: string, manifest: Content, mediaType: string = MT.manifest, subject?: string): Promise<Res> {
    const res = await this.put(`/v2/${repo}/manifests/${reference}`, { headers: { 'Content-Type': mediaType }, body: manifest.bytes });
    expect(res.status, `PUT /v2/${repo}/manifests/${reference}: ${res.text()}`).toBe(201);
    expect(res.headers.get('location'), 'Location of a pushed manifest').toBeTruthy();
    const dcd = res.headers.get('docker-content-digest');
    if (dcd !== null) expect(dcd).toBe(manifest.digest);
    if (subject !== undefined) expect(res.headers.get('oci-subject'), 'OCI-Subject').toBe(subject);
    return res;
  }

  /** deleteManifest of the newer suite: GET (no Accept); if 200, DELETE (202|404|405) then GET must be 404. */
  async deleteManifestRef(repo: string, ref: string): Promise<void> {
    const before = await this.get(`/v2/${repo}/manifests/${ref}`);
    if (before.status !== 200) {
      expect(before.status, `GET ${ref} before delete`).toBe(404);
      return;
    }
    const del = await this.del(`/v2/${repo}/manifests/${ref}`);
    expect([202, 404, 405], `DELETE manifests/${ref}: ${del.text()}`).toContain(del.status);
    expect((await this.get(`/v2/${repo}/manifests/${ref}`)).status, `GET ${ref} after delete`).toBe(404);
  }
}

/**
 * Checks an OCI error body and returns its codes. `stringDetail` applies the suite's Go
 * client rule: it decodes detail into a string, so an object there breaks its parser.
 */
export function expectOciError(res: Res, allowed: string[] = SUITE_ERROR_CODES, opts: { stringDetail?: boolean } = {}): string[] {
  let body: { errors?: Array<{ code?: unknown; message?: unknown; detail?: unknown }> };
  try {
    body = res.json();
  } catch {
    throw new Error(`error body is not JSON (status ${res.status}): ${res.text().slice(0, 200)}`);
  }
  expect(Array.isArray(body.errors), `errors array in ${res.text()}`).toBe(true);
  expect(body.errors!.length).toBeGreaterThan(0);
  for (const e of body.errors!) {
    expect(typeof e.code).toBe('string');
    expect(e.code as string).toMatch(/^[A-Z_]+$/);
    expect(allowed, `error code ${String(e.code)}`).toContain(e.code);
    if (e.message !== undefined) expect(typeof e.message).toBe('string');
    if (opts.stringDetail && e.detail !== undefined && e.detail !== null) {
      expect(typeof e.detail, `detail must decode into a Go string: ${JSON.stringify(e.detail)}`).toBe('string');
    }
  }
  return body.errors!.map((e) => e.code as string);
}

/** Either case-insensitive lexical order (stable) or plain byte order, as the newer suite accepts. */
export function isSuiteSorted(tags: string[]): boolean {
  const lexical = [...tags].sort((a, b) => {
    const x = a.toLowerCase();
    const y = b.toLowerCase();
    return x < y ? -1 : x > y ? 1 : 0;
  });
  const bytewise = [...tags].sort();
  const same = (other: string[]) => other.every((t, i) => t === tags[i]);
  return same(lexical) || same(bytewise);
}

/** The unique repository names one test file works in. */
export const repoName = (prefix: string): string => `conformance/${prefix}-${randomUUID().slice(0, 8)}`;
