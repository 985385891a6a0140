// Manifest parsing and validation. The registry stores manifests byte for byte; this
// module only reads what it must know: the media type, the blobs and child manifests a
// manifest references (for existence checks and GC), and the OCI 1.1 subject.
import { RegistryError } from './errors.js';
import { parseDigest, type Digest } from './digest.js';

export const MediaType = {
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  DockerForeignLayer: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

/** The largest manifest accepted, as Distribution and most registries do (4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export type ManifestKind = 'image' | 'index';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  platform?: { architecture?: string; os?: string; variant?: string; [key: string]: unknown };
  urls?: string[];
}

export interface ParsedManifest {
  kind: ManifestKind;
  mediaType: string;
  /** Blobs that must exist in the repository, each once: config and layers (foreign layers excluded). */
  blobs: Digest[];
  /** Manifests that must exist in the repository: the children of an index. */
  children: Descriptor[];
  subject?: Descriptor;
  /** artifactType, or for an image manifest without one, its config media type. */
  artifactType?: string;
  annotations?: Record<string, string>;
}

const IMAGE_TYPES = new Set<string>([MediaType.DockerManifest, MediaType.OciManifest]);
const INDEX_TYPES = new Set<string>([MediaType.DockerManifestList, MediaType.OciIndex]);
/** Content-Type values that say nothing about which manifest the body is. */
const GENERIC_TYPES = new Set(['', 'application/json', 'application/octet-stream', 'text/plain']);

export function isManifestMediaType(type: string): boolean {
  return IMAGE_TYPES.has(type) || INDEX_TYPES.has(type);
}

const invalid = (message: string, detail?: unknown): RegistryError =>
  new RegistryError('MANIFEST_INVALID', message, detail);

/**
 * Parses a manifest body. `contentType` is the Content-Type the client sent (PUT) or
 * undefined when reading stored bytes. Throws MANIFEST_INVALID or UNSUPPORTED.
 */
export function parseManifest(body: Uint8Array, contentType?: string): ParsedManifest {
  const m = parseObject(body);

  const declared = normaliseType(contentType);
  const inBody = typeof m.mediaType === 'string' ? m.mediaType : undefined;
  if (m.mediaType !== undefined && typeof m.mediaType !== 'string') throw invalid('mediaType must be a string');
  if (declared === MediaType.DockerSchema1 || declared === MediaType.DockerSchema1Signed || m.schemaVersion === 1) {
    // Distribution 2.8 refuses them the same way (400 MANIFEST_INVALID) unless schema 1
    // compatibility is enabled; stored ones are still served (parseStoredManifest).
    throw invalid('Docker schema 1 manifests are not accepted; push a schema 2 or OCI manifest');
  }
  if (inBody && declared && !GENERIC_TYPES.has(declared) && inBody !== declared) {
    throw invalid(`mediaType ${inBody} in the manifest does not match Content-Type ${declared}`);
  }
  let mediaType = inBody ?? (declared && !GENERIC_TYPES.has(declared) ? declared : undefined);
  // OCI allows omitting mediaType; tell the two OCI kinds apart by their fields.
  if (!mediaType) mediaType = Array.isArray(m.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
  if (m.schemaVersion !== 2) throw invalid('schemaVersion must be 2');

  const subject = m.subject === undefined ? undefined : descriptor(m.subject, 'subject');
  const annotations = stringMap(m.annotations, 'annotations');
  if (m.artifactType !== undefined && typeof m.artifactType !== 'string') throw invalid('artifactType must be a string');
  const artifactType = m.artifactType as string | undefined;

  if (IMAGE_TYPES.has(mediaType)) {
    const config = descriptor(m.config, 'config');
    if (!Array.isArray(m.layers)) throw invalid('layers must be an array');
    const layers = m.layers.map((l, i) => descriptor(l, `layers[${i}]`));
    // Each blob once: a manifest may list the same layer many times, and every entry would
    // cost the reference check storage round trips.
    const blobs = new Map<string, Digest>();
    for (const d of [config, ...layers.filter((l) => l.mediaType !== MediaType.DockerForeignLayer || !l.urls?.length)]) {
      const digest = parseDigest(d.digest);
      blobs.set(digest.value, digest);
    }
    return {
      kind: 'image',
      mediaType,
      blobs: [...blobs.values()],
      children: [],
      subject,
      artifactType: artifactType ?? config.mediaType,
      annotations,
    };
  }
  if (INDEX_TYPES.has(mediaType)) {
    if (!Array.isArray(m.manifests)) throw invalid('manifests must be an array');
    const children = m.manifests.map((c, i) => descriptor(c, `manifests[${i}]`));
    return { kind: 'index', mediaType, blobs: [], children, subject, artifactType, annotations };
  }
  throw invalid(`unsupported manifest media type ${mediaType}`);
}

/**
 * Parses manifest bytes already in storage. Besides what parseManifest accepts, these may be
 * Docker schema 1 manifests that older clients pushed to Distribution: they are served and
 * deleted as they are (never converted), and their layers count as references.
 */
export function parseStoredManifest(body: Uint8Array): ParsedManifest {
  const doc = parseObject(body);
  if (doc.schemaVersion !== 1) return parseManifest(body);
  // Stored with signatures inline (older registries, copied data) they are signed; Distribution
  // 2.3+ stores the payload alone and signs it with its own key on each GET, which wharf does
  // not: those are served as the unsigned `v1+json` they are.
  const mediaType = Array.isArray(doc.signatures) ? MediaType.DockerSchema1Signed : MediaType.DockerSchema1;
  const layers = Array.isArray(doc.fsLayers) ? doc.fsLayers : [];
  const blobs = new Map<string, Digest>();
  for (const layer of layers) {
    const sum = (layer as { blobSum?: unknown } | null)?.blobSum;
    if (typeof sum !== 'string') continue;
    try {
      const digest = parseDigest(sum);
      blobs.set(digest.value, digest);
    } catch {
      // a foreign or damaged entry: nothing this registry stores
    }
  }
  return { kind: 'image', mediaType, blobs: [...blobs.values()], children: [] };
}

export function isSchema1MediaType(type: string): boolean {
  return type === MediaType.DockerSchema1 || type === MediaType.DockerSchema1Signed;
}

function parseObject(body: Uint8Array): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch (err) {
    throw invalid(`manifest is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalid('manifest must be a JSON object');
  return doc as Record<string, unknown>;
}

function normaliseType(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  return contentType.split(';')[0]!.trim().toLowerCase();
}

function descriptor(value: unknown, where: string): Descriptor {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`${where} must be a descriptor object`);
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType.length === 0) throw invalid(`${where}.mediaType must be a string`);
  if (typeof d.digest !== 'string') throw invalid(`${where}.digest must be a string`);
  try {
    parseDigest(d.digest);
  } catch {
    throw invalid(`${where}.digest is not a valid digest`, { digest: d.digest });
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw invalid(`${where}.size must be a non-negative integer`);
  }
  if (d.urls !== undefined && (!Array.isArray(d.urls) || d.urls.some((u) => typeof u !== 'string'))) {
    throw invalid(`${where}.urls must be an array of strings`);
  }
  return d as unknown as Descriptor;
}

function stringMap(value: unknown, where: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`${where} must be an object`);
  for (const v of Object.values(value)) if (typeof v !== 'string') throw invalid(`${where} values must be strings`);
  return value as Record<string, string>;
}
