// Conformance workflow 1 (Pull), in the suite's order: setup pushes, blob and manifest
// reads, the error-code check, and both teardown orders. See CONFORMANCE-NOTES.md.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestServer } from '../support/server.js';
import { expectOciError, Http, INVALID_TAG, makeFixtures, MT, repoName, startConformanceServer, SUITE_ERROR_CODES } from './conformance-helpers.js';

let server: TestServer;
let http: Http;
const fx = makeFixtures();
const repo = repoName('pull');
const tag = 'tagtest0';
const [config0, config1] = [fx.configs[0]!, fx.configs[1]!];
const [manifest0, manifest1] = [fx.manifests[0]!, fx.manifests[1]!];

beforeAll(async () => {
  ({ server, http } = await startConformanceServer({ deleteEnabled: true }));
});
afterAll(() => server?.close());

describe('pull: setup', () => {
  it('pushes configs[0], configs[1] and the layer (POST 202 + Location, PUT ?digest= 201)', async () => {
    for (const blob of [config0, config1, fx.layer]) {
      const start = await http.post(`/v2/${repo}/blobs/uploads/`);
      expect(start.status).toBe(202);
      const done = await http.put(start.location(), { query: { digest: blob.digest }, headers: { 'Content-Type': MT.octet }, body: blob.bytes });
      expect(done.status, done.text()).toBe(201);
      expect(done.location()).toBe(`/v2/${repo}/blobs/${blob.digest}`);
      expect(done.headers.get('docker-content-digest')).toBe(blob.digest);
    }
  });

  it('pushes manifests[0] by tag and manifests[1] by digest (201 + Location)', async () => {
    await http.pushManifest(repo, tag, manifest0);
    await http.pushManifest(repo, manifest1.digest, manifest1);
  });
});

describe('pull: blobs', () => {
  it('HEAD of a nonexistent blob is 404 with no body', async () => {
    const res = await http.head(`/v2/${repo}/blobs/${fx.dummyDigest}`);
    expect(res.status).toBe(404);
    expect(res.body.length).toBe(0);
  });

  it('HEAD of an existing blob is 200 with its digest and length', async () => {
    const res = await http.head(`/v2/${repo}/blobs/${config0.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(config0.digest);
    expect(res.headers.get('content-length')).toBe(String(config0.size));
    expect(res.body.length).toBe(0);
  });

  it('GET of a nonexistent blob is 404 BLOB_UNKNOWN', async () => {
    const res = await http.get(`/v2/${repo}/blobs/${fx.dummyDigest}`);
    expect(res.status).toBe(404);
    expect(expectOciError(res)).toContain('BLOB_UNKNOWN');
  });

  it('GET of an existing blob is 200 with the exact bytes', async () => {
    const res = await http.get(`/v2/${repo}/blobs/${config0.digest}`);
    expect(res.status).toBe(200);
    expect(res.body.equals(config0.bytes)).toBe(true);
    // Redirected to storage (S3), the bytes come from there: the digest header was on the 307.
    if (!res.redirected) expect(res.headers.get('docker-content-digest')).toBe(config0.digest);
    expect(res.headers.get('content-encoding')).toBeNull();
  });

  it('serves a blob under Go-like request headers (Accept-Encoding: gzip) uncompressed', async () => {
    const res = await http.get(`/v2/${repo}/blobs/${fx.layer.digest}`, {
      headers: { 'Accept-Encoding': 'gzip', 'User-Agent': 'distribution-spec-conformance-tests' },
    });
    expect(res.status).toBe(200);
    expect(res.body.equals(fx.layer.bytes)).toBe(true);
  });
});

describe('pull: manifests', () => {
  const accept = { Accept: MT.manifest };

  it('HEAD of the invalid tag ".INVALID_MANIFEST_NAME" is 404 (not 400)', async () => {
    expect((await http.head(`/v2/${repo}/manifests/${INVALID_TAG}`)).status).toBe(404);
  });

  it.each([
    ['manifests[0] by digest', () => manifest0.digest, () => manifest0],
    ['manifests[1] by digest', () => manifest1.digest, () => manifest1],
    ['manifests[0] by tag', () => tag, () => manifest0],
  ])('HEAD %s is 200 with Docker-Content-Digest and Content-Length', async (_name, ref, want) => {
    const res = await http.head(`/v2/${repo}/manifests/${ref()}`, { headers: accept });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(want().digest);
    expect(res.headers.get('content-length')).toBe(String(want().size));
    expect(res.headers.get('content-type')).toBe(MT.manifest);
  });

  it('GET of the invalid tag is 404 with an OCI error body', async () => {
    const res = await http.get(`/v2/${repo}/manifests/${INVALID_TAG}`, { headers: accept });
    expect(res.status).toBe(404);
    expectOciError(res);
  });

  it.each([
    ['manifests[0] by digest', () => manifest0.digest, () => manifest0],
    ['manifests[1] by digest', () => manifest1.digest, () => manifest1],
    ['manifests[0] by tag', () => tag, () => manifest0],
  ])('GET %s is 200 with the stored bytes (unknown fields and nulls kept)', async (_name, ref, want) => {
    const res = await http.get(`/v2/${repo}/manifests/${ref()}`, { headers: accept });
    expect(res.status).toBe(200);
    expect(res.body.equals(want().bytes)).toBe(true);
    expect(res.headers.get('content-type')).toBe(MT.manifest);
    expect(res.headers.get('docker-content-digest')).toBe(want().digest);
  });

  it('GET without any Accept header still returns the OCI manifest (the teardown helper sends none)', async () => {
    const res = await http.get(`/v2/${repo}/manifests/${manifest1.digest}`);
    expect(res.status).toBe(200);
    expect(res.body.equals(manifest1.bytes)).toBe(true);
  });
});

describe('pull: error codes', () => {
  it('GET manifests/sha256:totallywrong is 400 or 404; a 400 body parses with the Go client (string detail)', async () => {
    const res = await http.get(`/v2/${repo}/manifests/sha256:totallywrong`, { headers: { 'Content-Type': MT.manifest } });
    expect([400, 404]).toContain(res.status);
    expectOciError(res, SUITE_ERROR_CODES, { stringDetail: true });
  });

  it('PUT manifests/sha256:totallywrong with body "blablabla" (v1.0 variant) is 400 or 404 with a parseable body', async () => {
    const res = await http.put(`/v2/${repo}/manifests/sha256:totallywrong`, { headers: { 'Content-Type': MT.manifest }, body: 'blablabla' });
    expect([400, 404]).toContain(res.status);
    expectOciError(res, SUITE_ERROR_CODES, { stringDetail: true });
  });

  it('GET manifests of an unknown repository is 404 with NAME_UNKNOWN or MANIFEST_UNKNOWN', async () => {
    const res = await http.get(`/v2/${repoName('nothing-here')}/manifests/latest`, { headers: acceptManifest() });
    expect(res.status).toBe(404);
    expect(['NAME_UNKNOWN', 'MANIFEST_UNKNOWN']).toContain(expectOciError(res)[0]);
  });
});

describe('pull: teardown (manifests before blobs, the default)', () => {
  it('deletes manifests with the newer helper: tag and digests, each DELETE 202 then GET 404', async () => {
    // pushManifest recorded [tagtest0, d0, d1]; deleteManifests walks them backwards.
    for (const ref of [manifest1.digest, manifest0.digest, tag]) await http.deleteManifestRef(repo, ref);
    // v1.1.0 teardown: a second DELETE by digest must still be within 2xx/405 - or 404 once gone.
    const again = await http.del(`/v2/${repo}/manifests/${manifest0.digest}`);
    expect(again.status).toBe(404);
    expect(expectOciError(again)).toContain('MANIFEST_UNKNOWN');
  });

  it('deletes configs[0], configs[1] and the layer with 202, then 404 BLOB_UNKNOWN', async () => {
    for (const blob of [config0, config1, fx.layer]) {
      const del = await http.del(`/v2/${repo}/blobs/${blob.digest}`);
      expect(del.status, del.text()).toBe(202);
      expect((await http.get(`/v2/${repo}/blobs/${blob.digest}`)).status).toBe(404);
      const again = await http.del(`/v2/${repo}/blobs/${blob.digest}`);
      expect(again.status).toBe(404);
      expect(expectOciError(again)).toContain('BLOB_UNKNOWN');
    }
  });
});

describe('pull: teardown with OCI_DELETE_MANIFEST_BEFORE_BLOBS=false', () => {
  const other = repoName('pull-blobs-first');

  it('deletes blobs still referenced by manifests (202), then the manifests (202, GET 404)', async () => {
    for (const blob of [config0, fx.layer]) await http.pushBlob(other, blob);
    await http.pushManifest(other, tag, manifest0);
    for (const blob of [config0, fx.layer]) {
      const del = await http.del(`/v2/${other}/blobs/${blob.digest}`);
      expect(del.status, `DELETE referenced blob: ${del.text()}`).toBe(202);
    }
    for (const ref of [manifest0.digest, tag]) await http.deleteManifestRef(other, ref);
  });
});

function acceptManifest(): Record<string, string> {
  return { Accept: MT.manifest };
}
