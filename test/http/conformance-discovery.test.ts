// Conformance workflow 3 (Content Discovery): tag listing with n/last, the referrers API
// with and without the artifactType filter, and the teardown. See CONFORMANCE-NOTES.md.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestServer } from '../support/server.js';
import {
  ANNOTATION_KEY, ARTIFACT_A, expectOciError, Http, isSuiteSorted, makeFixtures, MT, repoName, startConformanceServer, type Referrer,
  type Res, conformanceOnS3,
} from './conformance-helpers.js';

let server: TestServer;
let http: Http;
const fx = makeFixtures();
const repo = repoName('discovery');
const [manifest2, manifest3, manifest4] = [fx.manifests[2]!, fx.manifests[3]!, fx.manifests[4]!];
const { aConfig, aLayer, index, bConfig, bLayer, cLayer } = fx.refs;
const pushedTags = ['test0', 'TEST0', 'test1', 'TEST1', 'test2', 'TEST2', 'test3', 'TEST3'];
/** Every reference pushed, in order; a tagged push records the tag then the digest (newer suite). */
const manifestRefs: string[] = [];
const blobRefs: string[] = [];
let allTags: string[] = [];

beforeAll(async () => {
  ({ server, http } = await startConformanceServer({ deleteEnabled: true }));
});
afterAll(() => server?.close());

const tagsOf = (res: Res): string[] => {
  const body = res.json<{ name: string; tags: string[] | null }>();
  expect(body.name).toBe(repo);
  return body.tags ?? [];
};
const listTags = (query?: Record<string, string>) => http.get(`/v2/${repo}/tags/list`, query ? { query } : {});
const referrers = (digest: string, query?: Record<string, string>) =>
  http.get(`/v2/${repo}/referrers/${digest}`, query ? { query } : {});
const indexOf = (res: Res) => {
  expect(res.status, res.text()).toBe(200);
  expect(res.headers.get('content-type')).toBe(MT.index); // compared as a whole string by the suite
  const body = res.json<{ schemaVersion: number; mediaType: string; manifests: Array<Record<string, any>> }>();
  expect(body.schemaVersion).toBe(2);
  expect(body.mediaType).toBe(MT.index);
  expect(Array.isArray(body.manifests)).toBe(true);
  return body.manifests;
};

describe('discovery: setup', () => {
  it('pushes configs[2] and the layer', async () => {
    for (const blob of [fx.configs[2]!, fx.layer]) {
      await http.pushBlob(repo, blob);
      blobRefs.push(blob.digest);
    }
  });

  it('pushes manifests[2] under test0, TEST0 ... test3, TEST3 (201 + Location each)', async () => {
    for (const tag of pushedTags) {
      await http.pushManifest(repo, tag, manifest2);
      manifestRefs.push(tag, manifest2.digest);
    }
  });

  it('references setup: referrers before and after their subject, each answered with OCI-Subject', async () => {
    for (const blob of [fx.emptyJson, fx.refBlobA]) await http.pushBlob(repo, blob);
    // Subject manifests[4] does not exist yet for these three.
    for (const r of [aConfig, aLayer, index]) {
      await http.pushManifest(repo, r.digest, r, r.mediaType, manifest4.digest);
      manifestRefs.push(r.digest);
    }
    await http.pushBlob(repo, fx.configs[4]!);
    await http.pushBlob(repo, fx.layer);
    await http.pushManifest(repo, 'tagtest0', manifest4);
    manifestRefs.push('tagtest0', manifest4.digest);
    await http.pushBlob(repo, fx.refBlobB);
    for (const r of [bConfig, bLayer]) {
      await http.pushManifest(repo, r.digest, r, r.mediaType, manifest4.digest);
      manifestRefs.push(r.digest);
    }
    await http.pushManifest(repo, cLayer.digest, cLayer, cLayer.mediaType, manifest3.digest); // subject never pushed
    manifestRefs.push(cLayer.digest);
    blobRefs.push(fx.emptyJson.digest, fx.refBlobA.digest, fx.configs[4]!.digest, fx.layer.digest, fx.refBlobB.digest);
  });
});

describe('discovery: listing tags', () => {
  it('GET tags/list is 200 with {name, tags}, all pushed tags, sorted (case-insensitive or bytewise)', async () => {
    const res = await listTags();
    expect(res.status).toBe(200);
    allTags = tagsOf(res);
    expect([...allTags].sort()).toEqual([...pushedTags, 'tagtest0'].sort());
    expect(isSuiteSorted(allTags), `order: ${allTags.join(',')}`).toBe(true);
  });

  it('n limits the count: exactly n = numTags/2 tags, the first ones of the full list', async () => {
    const n = Math.floor(allTags.length / 2);
    const res = await listTags({ n: String(n) });
    expect(res.status).toBe(200);
    expect(tagsOf(res)).toEqual(allTags.slice(0, n));
  });

  it('last is exclusive: the next page has at most n tags, not `last`, and continues the order', async () => {
    const n = Math.floor(allTags.length / 2);
    const page1 = tagsOf(await listTags({ n: String(n) }));
    const last = page1[n - 1]!;
    const res = await listTags({ n: String(n), last });
    expect(res.status).toBe(200);
    const page2 = tagsOf(res);
    expect(page2.length).toBeLessThanOrEqual(n);
    expect(page2).not.toContain(last);
    expect(page2).toEqual(allTags.slice(n, 2 * n));
  });

  it('Link rel="next" (when sent) points at the following page; walking it returns every tag once', async () => {
    const seen: string[] = [];
    let path: string | null = `/v2/${repo}/tags/list?n=3`;
    for (let guard = 0; path && guard < 10; guard++) {
      const res = await http.get(path);
      expect(res.status).toBe(200);
      const page = tagsOf(res);
      expect(page.length).toBeLessThanOrEqual(3);
      seen.push(...page);
      const link = res.headers.get('link');
      if (link === null) {
        if (page.length === 3 && seen.length < allTags.length) {
          // Without a Link the client continues with last=<last tag>.
          path = `/v2/${repo}/tags/list?n=3&last=${encodeURIComponent(page[2]!)}`;
        } else path = null;
        continue;
      }
      const m = /^<([^>]+)>;\s*rel="next"$/.exec(link);
      expect(m, `Link header "${link}"`).not.toBeNull();
      const next = new URL(m![1]!, 'http://base.invalid');
      expect(next.pathname).toBe(`/v2/${repo}/tags/list`);
      expect(next.searchParams.get('n')).toBe('3');
      expect(next.searchParams.get('last')).toBe(page[page.length - 1]);
      path = next.pathname + next.search;
    }
    expect(seen).toEqual(allTags);
  });

  it('spec: n=0 is an empty list without Link; n past the end and last past the end are short, no Link', async () => {
    const zero = await listTags({ n: '0' });
    expect(zero.status).toBe(200);
    expect(tagsOf(zero)).toEqual([]);
    expect(zero.headers.get('link')).toBeNull();
    const all = await listTags({ n: '1000' });
    expect(tagsOf(all)).toEqual(allTags);
    expect(all.headers.get('link')).toBeNull();
    const after = await listTags({ last: allTags[allTags.length - 1]! });
    expect(after.status).toBe(200);
    expect(tagsOf(after)).toEqual([]);
  });

  it('spec: tags/list of an unknown repository is 404 NAME_UNKNOWN', async () => {
    const res = await http.get(`/v2/${repoName('absent')}/tags/list`);
    expect(res.status).toBe(404);
    expect(expectOciError(res)).toContain('NAME_UNKNOWN');
  });
});

describe('discovery: listing referrers', () => {
  const expectDescriptor = (d: Record<string, any>, want: Referrer) => {
    expect(d.mediaType).toBe(want.mediaType);
    expect(d.size).toBe(want.size);
    expect(d.artifactType).toBe(want.artifactType);
    // The suite: exactly one annotation per descriptor, the referrer's own.
    expect(d.annotations).toEqual({ [ANNOTATION_KEY]: want.annotation });
  };

  it('referrers of a digest nobody points at: 200, image index Content-Type, empty manifests', async () => {
    expect(indexOf(await referrers(fx.dummyDigest))).toEqual([]);
  });

  it('referrers of manifests[4]: exactly the 5 referrers, distinct, with artifactType and their one annotation', async () => {
    const list = indexOf(await referrers(manifest4.digest));
    expect(list).toHaveLength(5);
    const byDigest = new Map(list.map((d) => [d.digest as string, d]));
    expect(byDigest.size).toBe(5);
    for (const want of [aConfig, aLayer, index, bConfig, bLayer]) {
      expect(byDigest.has(want.digest), `referrer ${want.annotation}`).toBe(true);
      expectDescriptor(byDigest.get(want.digest)!, want);
    }
  });

  it('artifactType filter: OCI-Filters-Applied "artifactType" and exactly the 2 type-A referrers (or all 5 unfiltered)', async () => {
    const res = await referrers(manifest4.digest, { artifactType: ARTIFACT_A });
    const list = indexOf(res);
    const applied = res.headers.get('oci-filters-applied');
    if (applied === null) {
      expect(list).toHaveLength(5); // the suite only warns
      return;
    }
    expect(applied).toBe('artifactType');
    expect(list.map((d) => d.digest).sort()).toEqual([aConfig.digest, aLayer.digest].sort());
    for (const d of list) expectDescriptor(d, d.digest === aConfig.digest ? aConfig : aLayer);
  });

  it('spec: wharf applies the filter (header present) and an unmatched type gives an empty list', async () => {
    const res = await referrers(manifest4.digest, { artifactType: 'application/vnd.nobody' });
    expect(res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(indexOf(res)).toEqual([]);
  });

  it('referrers of the never-pushed manifests[3]: exactly the dangling referrer', async () => {
    const list = indexOf(await referrers(manifest3.digest));
    expect(list).toHaveLength(1);
    expect(list[0]!.digest).toBe(cLayer.digest);
    expect(list[0]!.artifactType).toBe(cLayer.artifactType);
  });

  it('spec: an invalid digest is 400 (not 404)', async () => {
    const res = await http.get(`/v2/${repo}/referrers/sha256:totallywrong`);
    expect(res.status).toBe(400);
    expect(expectOciError(res)).toContain('DIGEST_INVALID');
  });
});

describe('discovery: teardown', () => {
  it('deletes every pushed reference backwards: GET 200 -> DELETE 202 -> GET 404', async () => {
    for (const ref of [...manifestRefs].reverse()) await http.deleteManifestRef(repo, ref);
    expect(indexOf(await referrers(manifest4.digest))).toEqual([]);
    expect(indexOf(await referrers(manifest3.digest))).toEqual([]);
  });

  it('v1.1.0 references teardown: deleting already-deleted manifests is 404 (accepted: 2xx/404/405)', async () => {
    for (const r of [index, aConfig, aLayer, bConfig, bLayer]) {
      const res = await http.del(`/v2/${repo}/manifests/${r.digest}`);
      expect(res.status).toBe(404);
      expect(expectOciError(res)).toContain('MANIFEST_UNKNOWN');
    }
  });

  it('deletes the blobs: 202 the first time (v1.1.0 does not accept 404 for configs[2]/layer), then 404', async () => {
    for (const digest of new Set(blobRefs)) {
      const res = await http.del(`/v2/${repo}/blobs/${digest}`);
      expect(res.status, `DELETE blob ${digest}: ${res.text()}`).toBe(202);
      expect((await http.del(`/v2/${repo}/blobs/${digest}`)).status).toBe(404);
    }
  });

  it('wharf: tags went with their manifests, so tags/list is 200 with no tags (on S3: the repository is gone)', async () => {
    const res = await listTags();
    if (conformanceOnS3()) {
      // S3 has no directories: with its last object the repository is gone, as with Distribution on S3.
      expect(res.status).toBe(404);
      expect(expectOciError(res)).toEqual(['NAME_UNKNOWN']);
      return;
    }
    expect(res.status).toBe(200);
    expect(tagsOf(res)).toEqual([]);
  });
});
