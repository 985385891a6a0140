// Manifests, tags, catalog and referrers over HTTP: the error paths and behaviours
// beyond the conformance flows.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { get } from 'node:http';
import { startServer, type TestServer } from '../support/server.js';
import { errorCodes, randomBlob, RegistryClient, sha256 } from '../support/client.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

let server: TestServer;
let client: RegistryClient;
beforeEach(async () => {
  server = await startServer();
  client = new RegistryClient(server.url);
});
afterEach(() => server.close());

describe('manifest PUT checks', () => {
  it('refuses a manifest that references a missing blob, naming it', async () => {
    const { manifest } = await client.pushImage('team/app', 'base', [randomBlob(10)]);
    const missing = sha256(Buffer.from('never pushed'));
    const res = await client.pushManifest('team/app', 'bad', { ...manifest, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: missing, size: 12 }] }, OCI_MANIFEST);
    expect(res.status).toBe(400);
    const body = (await res.json()) as { errors: { code: string; detail: string }[] };
    expect(body.errors[0]!.code).toBe('MANIFEST_BLOB_UNKNOWN');
    expect(body.errors[0]!.detail).toBe(missing);
    expect((await client.fetch('/v2/team/app/manifests/bad')).status).toBe(404);
  });

  it('refuses an index whose child manifest is not in the repository', async () => {
    const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256(Buffer.from('x')), size: 1 }] };
    const res = await client.pushManifest('team/app', 'multi', index, OCI_INDEX);
    expect(res.status).toBe(400);
    expect(await errorCodes(res)).toEqual(['MANIFEST_BLOB_UNKNOWN']);
  });

  it('refuses invalid JSON, a body over 4 MiB, a bad tag and a digest mismatch', async () => {
    const invalid = await client.pushManifest('team/app', 'x', '{not json', OCI_MANIFEST);
    expect(invalid.status).toBe(400);
    expect(await errorCodes(invalid)).toEqual(['MANIFEST_INVALID']);

    const huge = await client.pushManifest('team/app', 'x', JSON.stringify({ schemaVersion: 2, pad: 'x'.repeat(4 * 1024 * 1024) }), OCI_MANIFEST);
    expect(huge.status).toBe(413);

    const { body } = await client.pushImage('team/app', 'ok', [randomBlob(10)]);
    const badTag = await client.pushManifest('team/app', '-nope', body.toString(), OCI_MANIFEST);
    expect(badTag.status).toBe(400);
    expect(await errorCodes(badTag)).toEqual(['TAG_INVALID']);

    const wrongDigest = await client.pushManifest('team/app', sha256(Buffer.from('other')), body.toString(), OCI_MANIFEST);
    expect(wrongDigest.status).toBe(400);
    expect(await errorCodes(wrongDigest)).toEqual(['DIGEST_INVALID']);
  });

  it('returns the stored bytes exactly, with their digest and media type', async () => {
    const config = await client.pushBlob('team/app', Buffer.from('{}'));
    const layer = await client.pushBlob('team/app', Buffer.from('layer'));
    // Odd but valid formatting must survive byte for byte: the digest is of these bytes.
    const text = `{\n  "schemaVersion": 2,\n  "mediaType": "${DOCKER_MANIFEST}",\n  "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "${config}", "size": 2},\n  "layers": [ {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "${layer}", "size": 5} ]\n}\n`;
    const put = await client.pushManifest('team/app', '1.0', text, DOCKER_MANIFEST);
    expect(put.status).toBe(201);
    const digest = sha256(Buffer.from(text));
    expect(put.headers.get('Docker-Content-Digest')).toBe(digest);
    for (const ref of ['1.0', digest]) {
      const res = await client.fetch(`/v2/team/app/manifests/${ref}`, { headers: { Accept: DOCKER_MANIFEST } });
      expect(res.headers.get('Content-Type')).toBe(DOCKER_MANIFEST);
      expect(res.headers.get('Docker-Content-Digest')).toBe(digest);
      expect(await res.text()).toBe(text);
      const head = await client.fetch(`/v2/team/app/manifests/${ref}`, { method: 'HEAD' });
      expect(head.headers.get('Content-Length')).toBe(String(Buffer.byteLength(text)));
    }
  });
});

describe('content negotiation', () => {
  it('gives a client that cannot read manifest lists the linux/amd64 image', async () => {
    const amd64 = await client.pushImage('team/app', 'amd64', [randomBlob(10)]);
    const arm64 = await client.pushImage('team/app', 'arm64', [randomBlob(10)]);
    const list = {
      schemaVersion: 2,
      mediaType: DOCKER_LIST,
      manifests: [
        { mediaType: OCI_MANIFEST, digest: arm64.digest, size: arm64.body.length, platform: { os: 'linux', architecture: 'arm64' } },
        { mediaType: OCI_MANIFEST, digest: amd64.digest, size: amd64.body.length, platform: { os: 'linux', architecture: 'amd64' } },
      ],
    };
    expect((await client.pushManifest('team/app', 'multi', list, DOCKER_LIST)).status).toBe(201);
    const all = await client.fetch('/v2/team/app/manifests/multi', { headers: { Accept: `${DOCKER_LIST}, ${OCI_MANIFEST}` } });
    expect(all.headers.get('Content-Type')).toBe(DOCKER_LIST);
    const old = await client.fetch('/v2/team/app/manifests/multi', { headers: { Accept: OCI_MANIFEST } });
    expect(old.headers.get('Docker-Content-Digest')).toBe(amd64.digest);
    const none = await client.fetch('/v2/team/app/manifests/multi');
    expect(none.headers.get('Content-Type')).toBe(DOCKER_LIST);
  });
});

describe('deletion', () => {
  it('is refused with UNSUPPORTED when storage.delete.enabled is off', async () => {
    await server.close();
    server = await startServer({ deleteEnabled: false });
    client = new RegistryClient(server.url);
    const { digest } = await client.pushImage('team/app', 'v1', [randomBlob(10)]);
    const res = await client.fetch(`/v2/team/app/manifests/${digest}`, { method: 'DELETE' });
    expect(res.status).toBe(405);
    expect(await errorCodes(res)).toEqual(['UNSUPPORTED']);
    expect((await client.fetch('/v2/team/app/manifests/v1')).status).toBe(200);
  });

  it('removes a manifest with every tag pointing at it, and a tag alone', async () => {
    const { digest, body } = await client.pushImage('team/app', 'v1', [randomBlob(10)]);
    await client.pushManifest('team/app', 'v1-alias', body.toString(), OCI_MANIFEST);
    const other = await client.pushImage('team/app', 'v2', [randomBlob(10)]);
    await client.pushManifest('team/app', 'v2-alias', other.body.toString(), OCI_MANIFEST);

    expect((await client.fetch('/v2/team/app/manifests/v2-alias', { method: 'DELETE' })).status).toBe(202);
    expect((await client.fetch('/v2/team/app/manifests/v2')).status).toBe(200);

    expect((await client.fetch(`/v2/team/app/manifests/${digest}`, { method: 'DELETE' })).status).toBe(202);
    const tags = (await (await client.fetch('/v2/team/app/tags/list')).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['v2']);
    const gone = await client.fetch(`/v2/team/app/manifests/${digest}`);
    expect(gone.status).toBe(404);
    expect(await errorCodes(gone)).toEqual(['MANIFEST_UNKNOWN']);
  });
});

describe('listings', () => {
  it('pages tags in sorted order with Link headers', async () => {
    const { body } = await client.pushImage('team/app', 'b', [randomBlob(10)]);
    for (const tag of ['a', 'C', 'c', '1.0', '_x']) await client.pushManifest('team/app', tag, body.toString(), OCI_MANIFEST);
    const all = (await (await client.fetch('/v2/team/app/tags/list')).json()) as { tags: string[] };
    expect(all.tags).toEqual(['1.0', 'C', '_x', 'a', 'b', 'c']);
    const seen: string[] = [];
    let next: string | null = '/v2/team/app/tags/list?n=2';
    while (next) {
      const res: Response = await client.fetch(next);
      seen.push(...((await res.json()) as { tags: string[] }).tags);
      next = res.headers.get('Link')?.match(/^<([^>]+)>; rel="next"$/)?.[1] ?? null;
    }
    expect(seen).toEqual(all.tags);
    const bad = await client.fetch('/v2/team/app/tags/list?n=-1');
    expect(bad.status).toBe(400);
    expect(await errorCodes(bad)).toEqual(['PAGINATION_NUMBER_INVALID']);
    const unknown = await client.fetch('/v2/nobody/here/tags/list');
    expect(unknown.status).toBe(404);
    expect(await errorCodes(unknown)).toEqual(['NAME_UNKNOWN']);
  });

  it('lists nested repositories in the catalog, page by page', async () => {
    for (const repo of ['b/app', 'a', 'a/b/c', 'z']) await client.pushBlob(repo, randomBlob(4));
    const all = (await (await client.fetch('/v2/_catalog')).json()) as { repositories: string[] };
    expect(all.repositories).toEqual(['a', 'a/b/c', 'b/app', 'z']);
    const page = await client.fetch('/v2/_catalog?n=3');
    expect(((await page.json()) as { repositories: string[] }).repositories).toEqual(['a', 'a/b/c', 'b/app']);
    expect(page.headers.get('Link')).toBe('</v2/_catalog?last=b%2Fapp&n=3>; rel="next"');
    const rest = await client.fetch('/v2/_catalog?n=3&last=b%2Fapp');
    expect(((await rest.json()) as { repositories: string[] }).repositories).toEqual(['z']);
    expect(rest.headers.get('Link')).toBeNull();
  });
});

describe('referrers', () => {
  it('indexes manifests by subject and filters by artifactType', async () => {
    const subject = await client.pushImage('team/app', 'v1', [randomBlob(10)]);
    const subjectDescriptor = { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length };
    const sbom = await client.pushImage('team/app', 'sbom', [randomBlob(5)], {
      artifactType: 'application/spdx+json',
      subject: subjectDescriptor,
      annotations: { 'org.example': 'yes' },
    });
    const empty = await client.fetch(`/v2/team/app/referrers/${sha256(Buffer.from('nothing'))}`);
    expect(empty.status).toBe(200);
    expect(((await empty.json()) as { manifests: unknown[] }).manifests).toEqual([]);

    const res = await client.fetch(`/v2/team/app/referrers/${subject.digest}`);
    expect(res.headers.get('Content-Type')).toBe(OCI_INDEX);
    const index = (await res.json()) as { manifests: Record<string, unknown>[] };
    expect(index.manifests).toEqual([
      { mediaType: OCI_MANIFEST, digest: sbom.digest, size: sbom.body.length, artifactType: 'application/spdx+json', annotations: { 'org.example': 'yes' } },
    ]);
    const filtered = await client.fetch(`/v2/team/app/referrers/${subject.digest}?artifactType=application%2Fother`);
    expect(filtered.headers.get('OCI-Filters-Applied')).toBe('artifactType');
    expect(((await filtered.json()) as { manifests: unknown[] }).manifests).toEqual([]);

    expect((await client.fetch(`/v2/team/app/manifests/${sbom.digest}`, { method: 'DELETE' })).status).toBe(202);
    const after = await client.fetch(`/v2/team/app/referrers/${subject.digest}`);
    expect(((await after.json()) as { manifests: unknown[] }).manifests).toEqual([]);
  });
});

describe('conditional requests', () => {
  it('answers If-None-Match with the current digest with 304', async () => {
    const { digest } = await client.pushImage('team/app', 'v1', [randomBlob(10)]);
    // fetch() adds Cache-Control: no-cache to conditional requests (Fetch spec), so plain node:http.
    const status = (path: string, etag: string) =>
      new Promise<number>((resolve, reject) => {
        get(`${server.url}${path}`, { headers: { 'If-None-Match': `"${etag}"` } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        }).on('error', reject);
      });
    expect(await status('/v2/team/app/manifests/v1', digest)).toBe(304);
    expect(await status('/v2/team/app/manifests/v1', 'sha256:other')).toBe(200);
    const blob = await client.pushBlob('team/app', Buffer.from('cached'));
    expect(await status(`/v2/team/app/blobs/${blob}`, blob)).toBe(304);
  });
});
