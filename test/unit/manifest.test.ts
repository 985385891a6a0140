import { describe, expect, it } from 'vitest';
import { MediaType, parseManifest, parseStoredManifest } from '../../storage/manifest.js';

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const image = (extra: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MediaType.OciManifest,
  config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest('a'), size: 2 },
  layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest('b'), size: 3 }],
  ...extra,
});
const bytes = (o: unknown) => Buffer.from(JSON.stringify(o));

describe('parseManifest', () => {
  it('reads an OCI image manifest: blobs, subject, artifactType from config', () => {
    const m = parseManifest(bytes(image({ subject: { mediaType: MediaType.OciManifest, digest: digest('c'), size: 9 } })));
    expect(m.kind).toBe('image');
    expect(m.blobs.map((b) => b.value)).toEqual([digest('a'), digest('b')]);
    expect(m.subject?.digest).toBe(digest('c'));
    expect(m.artifactType).toBe('application/vnd.oci.image.config.v1+json');
  });
  it('lists each referenced blob once, however often the manifest names it', () => {
    const layer = (c: string) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest(c), size: 3 });
    const m = parseManifest(bytes(image({ layers: [layer('b'), layer('a'), layer('b'), ...Array.from({ length: 2000 }, () => layer('c'))] })));
    expect(m.blobs.map((b) => b.value)).toEqual([digest('a'), digest('b'), digest('c')]);
  });
  it('reads an index and its children', () => {
    const m = parseManifest(bytes({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ mediaType: MediaType.OciManifest, digest: digest('d'), size: 5 }] }));
    expect(m.kind).toBe('index');
    expect(m.children.map((c) => c.digest)).toEqual([digest('d')]);
  });
  it('tells OCI kinds apart without mediaType', () => {
    const { mediaType: _omit, ...noType } = image();
    expect(parseManifest(bytes(noType)).mediaType).toBe(MediaType.OciManifest);
  });
  it('skips foreign layers when listing required blobs', () => {
    const m = parseManifest(bytes({ ...image(), mediaType: MediaType.DockerManifest, layers: [{ mediaType: MediaType.DockerForeignLayer, digest: digest('e'), size: 1, urls: ['https://x'] }] }));
    expect(m.blobs.map((b) => b.value)).toEqual([digest('a')]);
  });
  it.each([
    ['not JSON', Buffer.from('{nope')],
    ['an array', bytes([])],
    ['schemaVersion 3', bytes(image({ schemaVersion: 3 }))],
    ['a bad layer digest', bytes(image({ layers: [{ mediaType: 'x', digest: 'sha256:zz', size: 1 }] }))],
    ['a negative size', bytes(image({ config: { mediaType: 'x', digest: digest('a'), size: -1 } }))],
    ['no layers', bytes({ ...image(), layers: undefined })],
    ['an unknown mediaType', bytes(image({ mediaType: 'application/x-unknown' }))],
  ])('rejects %s as MANIFEST_INVALID', (_name, body) => {
    expect(() => parseManifest(body)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
  it('rejects a Content-Type that contradicts the body', () => {
    expect(() => parseManifest(bytes(image()), MediaType.DockerManifest)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
  it('refuses schema 1 pushes as MANIFEST_INVALID, as Distribution 2.8 does', () => {
    expect(() => parseManifest(bytes({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }))).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    expect(() => parseManifest(bytes({ schemaVersion: 1 }), 'application/vnd.docker.distribution.manifest.v1+prettyjws')).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });
});

describe('parseStoredManifest', () => {
  const schema1 = (extra: Record<string, unknown> = {}) => ({
    schemaVersion: 1,
    name: 'old/app',
    tag: 'v1',
    architecture: 'amd64',
    fsLayers: [{ blobSum: digest('d') }, { blobSum: digest('e') }, { blobSum: digest('d') }],
    history: [{ v1Compatibility: '{}' }, { v1Compatibility: '{}' }, { v1Compatibility: '{}' }],
    ...extra,
  });

  it('reads stored schema 1 manifests with their media type and layers (each once)', () => {
    const signed = parseStoredManifest(bytes(schema1({ signatures: [{ header: {}, signature: 'x', protected: 'y' }] })));
    expect(signed.mediaType).toBe(MediaType.DockerSchema1Signed);
    expect(signed.blobs.map((b) => b.value)).toEqual([digest('d'), digest('e')]);
    expect(signed.subject).toBeUndefined();
    expect(parseStoredManifest(bytes(schema1())).mediaType).toBe(MediaType.DockerSchema1);
  });

  it('reads everything else as parseManifest does', () => {
    expect(parseStoredManifest(bytes(image())).mediaType).toBe(MediaType.OciManifest);
    expect(() => parseStoredManifest(Buffer.from('nope'))).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
});
