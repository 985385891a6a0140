// Conformance workflow 4 (Content Management): tag delete, manifest delete, tag list after
// deletion, blob delete; plus the answers the suite accepts when deletion is disabled.
// See CONFORMANCE-NOTES.md.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestServer } from '../support/server.js';
import { expectOciError, Http, makeFixtures, MT, repoName, startConformanceServer, SUITE_ERROR_CODES, type Res } from './conformance-helpers.js';

let server: TestServer;
let http: Http;
const fx = makeFixtures();
const repo = repoName('management');
const config3 = fx.configs[3]!;
const manifest3 = fx.manifests[3]!;
const tag = 'tagtest0';
let numTags = 0;

beforeAll(async () => {
  ({ server, http } = await startConformanceServer({ deleteEnabled: true }));
});
afterAll(() => server?.close());

const tagsOf = (res: Res): string[] => {
  expect(res.status, res.text()).toBe(200);
  const body = res.json<{ name: string; tags: string[] | null }>();
  expect(body.name).toBe(repo);
  // The suite's Go decoder takes null as well as []; the spec shows a list.
  expect(body.tags === null || Array.isArray(body.tags)).toBe(true);
  return body.tags ?? [];
};

describe('management: setup', () => {
  it('pushes configs[3], the layer and manifests[3] as tagtest0', async () => {
    await http.pushBlob(repo, config3);
    await http.pushBlob(repo, fx.layer);
    await http.pushManifest(repo, tag, manifest3);
  });

  it('counts the tags before anything is deleted (GET tags/list 200)', async () => {
    const tags = tagsOf(await http.get(`/v2/${repo}/tags/list`));
    expect(tags).toEqual([tag]);
    numTags = tags.length;
  });
});

describe('management: manifest delete', () => {
  it('DELETE manifests/tagtest0 is 202 (the suite also takes 400 UNSUPPORTED or 405)', async () => {
    const res = await http.del(`/v2/${repo}/manifests/${tag}`);
    expect(res.status, res.text()).toBe(202);
    expect((await http.get(`/v2/${repo}/manifests/${tag}`)).status).toBe(404);
  });

  it('DELETE manifests/<digest> is 202, or 404 if the tag delete already took the manifest', async () => {
    const res = await http.del(`/v2/${repo}/manifests/${manifest3.digest}`);
    expect([202, 404]).toContain(res.status);
    if (res.status === 404) expect(expectOciError(res)).toContain('MANIFEST_UNKNOWN');
  });

  it('GET of the deleted manifest is 404 MANIFEST_UNKNOWN', async () => {
    const res = await http.get(`/v2/${repo}/manifests/${manifest3.digest}`, { headers: { Accept: MT.manifest } });
    expect(res.status).toBe(404);
    expect(expectOciError(res)).toContain('MANIFEST_UNKNOWN');
  });

  it('GET tags/list reflects the deletion: 200 with fewer tags, even with none left', async () => {
    const tags = tagsOf(await http.get(`/v2/${repo}/tags/list`));
    expect(tags.length).toBeLessThan(numTags);
    expect(tags).toEqual([]);
  });
});

describe('management: blob delete', () => {
  it('DELETE of the config and the layer is 202', async () => {
    for (const blob of [config3, fx.layer]) {
      const res = await http.del(`/v2/${repo}/blobs/${blob.digest}`);
      expect(res.status, res.text()).toBe(202);
    }
  });

  it('GET and HEAD of the deleted config blob are 404', async () => {
    const res = await http.get(`/v2/${repo}/blobs/${config3.digest}`);
    expect(res.status).toBe(404);
    expect(expectOciError(res)).toContain('BLOB_UNKNOWN');
    expect((await http.head(`/v2/${repo}/blobs/${config3.digest}`)).status).toBe(404);
  });
});

describe('management: spec details the suite does not check', () => {
  it('deleting one tag keeps the manifest and its other tags', async () => {
    const other = repoName('management-tags');
    await http.pushBlob(other, config3);
    await http.pushBlob(other, fx.layer);
    await http.pushManifest(other, 'one', manifest3);
    await http.pushManifest(other, 'two', manifest3);
    expect((await http.del(`/v2/${other}/manifests/one`)).status).toBe(202);
    expect((await http.get(`/v2/${other}/manifests/one`)).status).toBe(404);
    expect((await http.get(`/v2/${other}/manifests/two`)).status).toBe(200);
    expect((await http.get(`/v2/${other}/manifests/${manifest3.digest}`)).status).toBe(200);
    const body = (await http.get(`/v2/${other}/tags/list`)).json<{ tags: string[] }>();
    expect(body.tags).toEqual(['two']);
    // Deleting by digest takes every remaining tag with it.
    expect((await http.del(`/v2/${other}/manifests/${manifest3.digest}`)).status).toBe(202);
    expect((await http.get(`/v2/${other}/manifests/two`)).status).toBe(404);
  });

  it('DELETE of an unknown tag is 404 MANIFEST_UNKNOWN; of an unknown blob 404 BLOB_UNKNOWN', async () => {
    const a = await http.del(`/v2/${repo}/manifests/no-such-tag`);
    expect(a.status).toBe(404);
    expect(expectOciError(a)).toContain('MANIFEST_UNKNOWN');
    const b = await http.del(`/v2/${repo}/blobs/${fx.dummyDigest}`);
    expect(b.status).toBe(404);
    expect(expectOciError(b)).toContain('BLOB_UNKNOWN');
  });
});

describe('management: deletion disabled', () => {
  let readOnly: TestServer;
  let ro: Http;
  const other = repoName('management-nodelete');

  beforeAll(async () => {
    ({ server: readOnly, http: ro } = await startConformanceServer({ deleteEnabled: false }));
    await ro.pushBlob(other, config3);
    await ro.pushBlob(other, fx.layer);
    await ro.pushManifest(other, tag, manifest3);
  });
  afterAll(() => readOnly?.close());

  it('tag DELETE is 400 (errors[0].code UNSUPPORTED, string detail) or 405, and the tag stays', async () => {
    const res = await ro.del(`/v2/${other}/manifests/${tag}`);
    expect([400, 405]).toContain(res.status);
    const codes = expectOciError(res, SUITE_ERROR_CODES, { stringDetail: true });
    expect(codes[0]).toBe('UNSUPPORTED');
    expect((await ro.get(`/v2/${other}/manifests/${tag}`)).status).toBe(200);
  });

  it('manifest DELETE by digest is 400 or 405 UNSUPPORTED and GET still 200 (suite: 202|404 then 404|200)', async () => {
    const res = await ro.del(`/v2/${other}/manifests/${manifest3.digest}`);
    expect([400, 405]).toContain(res.status);
    expect(expectOciError(res)).toContain('UNSUPPORTED');
    expect((await ro.get(`/v2/${other}/manifests/${manifest3.digest}`)).status).toBe(200);
  });

  it('blob DELETE is 405 (or 400) UNSUPPORTED and the blob stays', async () => {
    const res = await ro.del(`/v2/${other}/blobs/${config3.digest}`);
    expect([400, 405]).toContain(res.status);
    expect(expectOciError(res)).toContain('UNSUPPORTED');
    expect((await ro.get(`/v2/${other}/blobs/${config3.digest}`)).status).toBe(200);
  });
});
