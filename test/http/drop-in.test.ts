// Drop-in correctness: what happens when other processes share the storage root (blobs
// deleted under a running wharf), data an older Distribution wrote (schema 1 manifests,
// abandoned first pushes), wrong methods, answers given before a body was read, and the
// Range of a refused chunk. Each test was written against a defect found on the way.
import { createHmac } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from '../support/server.js';
import { asBody, errorCodes, randomBlob, RegistryClient, sha256 } from '../support/client.js';

let server: TestServer;
let client: RegistryClient;
beforeEach(async () => {
  server = await startServer();
  client = new RegistryClient(server.url);
});
afterEach(() => server.close());

const v2 = (root: string) => join(root, 'docker/registry/v2');
const hexOf = (digest: string) => digest.slice('sha256:'.length);
const blobDir = (root: string, digest: string) => join(v2(root), 'blobs/sha256', hexOf(digest).slice(0, 2), hexOf(digest));

const withDigest = (location: string, digest: string) => `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`;

/** What another process's garbage collector does to an unreferenced blob. */
const deleteBlobFiles = (root: string, digest: string) => rm(blobDir(root, digest), { recursive: true });

describe('blobs deleted by another process', () => {
  it('stores a blob pushed again after its bytes were deleted, though this process had seen it', async () => {
    const data = randomBlob(70_000);
    const digest = await client.pushBlob('gc/a', data);
    expect((await client.fetch(`/v2/gc/a/blobs/${digest}`)).status).toBe(200); // now surely cached
    await deleteBlobFiles(server.root, digest);

    expect(await client.pushBlob('gc/b', data)).toBe(digest);
    const res = await client.fetch(`/v2/gc/b/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    expect((await stat(join(blobDir(server.root, digest), 'data'))).size).toBe(data.length);
  });

  it('stores a blob completed by a chunked upload after its bytes were deleted', async () => {
    const data = randomBlob(40_000);
    const digest = await client.pushBlob('gc/a', data);
    await deleteBlobFiles(server.root, digest);
    const location = await client.startUpload('gc/c');
    const patch = await client.fetch(location, { method: 'PATCH', body: asBody(data), headers: { 'Content-Type': 'application/octet-stream' } });
    expect(patch.status).toBe(202);
    const put = await client.fetch(withDigest(patch.headers.get('Location')!, digest), { method: 'PUT' });
    expect(put.status).toBe(201);
    expect((await client.fetch(`/v2/gc/c/blobs/${digest}`)).status).toBe(200);
  });

  it('refuses a manifest whose blob is gone, and mounts only blobs that exist', async () => {
    const layer = randomBlob(1000);
    const pushed = await client.pushImage('gc/img', 'v1', [layer]);
    const layerDigest = sha256(layer);
    await deleteBlobFiles(server.root, layerDigest);

    const again = await client.pushManifest('gc/img', 'v2', pushed.body.toString(), 'application/vnd.oci.image.manifest.v1+json');
    expect(again.status).toBe(400);
    expect(await errorCodes(again)).toEqual(['MANIFEST_BLOB_UNKNOWN']);

    const mount = await client.fetch(`/v2/gc/other/blobs/uploads/?mount=${layerDigest}&from=gc/img`, { method: 'POST' });
    expect(mount.status).toBe(202); // not mountable: a normal upload session instead
    const automatic = await client.fetch(`/v2/gc/other/blobs/uploads/?mount=${layerDigest}`, { method: 'POST' });
    expect(automatic.status).toBe(202);
  });
});

describe('schema 1 manifests in an old Distribution root', () => {
  const SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

  /** Writes a signed schema 1 manifest and its layer in Distribution's layout, tagged `old`. */
  async function writeSchema1(root: string, repo: string): Promise<{ digest: string; body: Buffer; layer: Buffer }> {
    const layer = randomBlob(512);
    const layerDigest = sha256(layer);
    const body = Buffer.from(
      JSON.stringify(
        {
          schemaVersion: 1,
          name: repo,
          tag: 'old',
          architecture: 'amd64',
          fsLayers: [{ blobSum: layerDigest }],
          history: [{ v1Compatibility: JSON.stringify({ id: 'a'.repeat(64), created: '2016-01-01T00:00:00Z' }) }],
          signatures: [
            {
              header: { jwk: { crv: 'P-256', kid: 'ABCD:EFGH', kty: 'EC', x: 'eA', y: 'eQ' }, alg: 'ES256' },
              signature: 'c2lnbmF0dXJl',
              protected: 'eyJmb3JtYXRMZW5ndGgiOjEsImZvcm1hdFRhaWwiOiJmUSJ9',
            },
          ],
        },
        null,
        3, // prettyjws: stored exactly as indented by the client
      ),
    );
    const digest = sha256(body);
    for (const [d, bytes] of [[layerDigest, layer], [digest, body]] as const) {
      await mkdir(blobDir(root, d), { recursive: true });
      await writeFile(join(blobDir(root, d), 'data'), bytes);
    }
    const repoDir = join(v2(root), 'repositories', repo);
    const link = async (path: string, d: string) => {
      await mkdir(join(repoDir, path), { recursive: true });
      await writeFile(join(repoDir, path, 'link'), d);
    };
    await link(`_layers/sha256/${hexOf(layerDigest)}`, layerDigest);
    await link(`_manifests/revisions/sha256/${hexOf(digest)}`, digest);
    await link('_manifests/tags/old/current', digest);
    await link(`_manifests/tags/old/index/sha256/${hexOf(digest)}`, digest);
    return { digest, body, layer };
  }

  it('serves them byte for byte with their media type, lists and deletes them', async () => {
    const old = await writeSchema1(server.root, 'legacy/app');
    for (const ref of ['old', old.digest]) {
      const head = await client.fetch(`/v2/legacy/app/manifests/${ref}`, { method: 'HEAD', headers: { Accept: SCHEMA1_SIGNED } });
      expect(head.status).toBe(200);
      expect(head.headers.get('Content-Type')).toBe(SCHEMA1_SIGNED);
      expect(head.headers.get('Docker-Content-Digest')).toBe(old.digest);
      expect(Number(head.headers.get('Content-Length'))).toBe(old.body.length);
      // Clients that only name schema 2 types still get the stored bytes: nothing converts.
      const get = await client.fetch(`/v2/legacy/app/manifests/${ref}`, { headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json' } });
      expect(get.status).toBe(200);
      expect(get.headers.get('Content-Type')).toBe(SCHEMA1_SIGNED);
      expect(Buffer.from(await get.arrayBuffer()).equals(old.body)).toBe(true);
    }
    expect(await (await client.fetch('/v2/legacy/app/tags/list')).json()).toEqual({ name: 'legacy/app', tags: ['old'] });

    // A newer image with a referrer in the same repository: the referrers scan skips schema 1.
    const image = await client.pushImage('legacy/app', 'new', [randomBlob(100)]);
    const artifact = await client.pushImage('legacy/app', 'sig', [randomBlob(10)], {
      artifactType: 'application/vnd.example.sig',
      subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: image.digest, size: image.body.length },
    });
    const referrers = await client.fetch(`/v2/legacy/app/referrers/${image.digest}`);
    expect(referrers.status).toBe(200);
    expect(((await referrers.json()) as { manifests: { digest: string }[] }).manifests.map((m) => m.digest)).toEqual([artifact.digest]);
    expect((await client.fetch(`/v2/legacy/app/referrers/${old.digest}`)).status).toBe(200);

    expect((await client.fetch(`/v2/legacy/app/blobs/${sha256(old.layer)}`)).status).toBe(200);
    expect((await client.fetch(`/v2/legacy/app/manifests/${old.digest}`, { method: 'DELETE' })).status).toBe(202);
    expect((await client.fetch(`/v2/legacy/app/manifests/${old.digest}`)).status).toBe(404);
    expect((await client.fetch('/v2/legacy/app/manifests/old')).status).toBe(404);
    expect(((await (await client.fetch('/v2/legacy/app/tags/list')).json()) as { tags: string[] }).tags).toEqual(['new', 'sig']);
  });

  it('refuses new schema 1 pushes as Distribution 2.8 does (400 MANIFEST_INVALID)', async () => {
    const body = JSON.stringify({ schemaVersion: 1, name: 'legacy/app', tag: 'x', architecture: 'amd64', fsLayers: [], history: [] });
    for (const type of [SCHEMA1_SIGNED, 'application/vnd.docker.distribution.manifest.v1+json', 'application/json']) {
      const res = await client.pushManifest('legacy/app', 'x', body, type);
      expect(res.status).toBe(400);
      expect(await errorCodes(res)).toEqual(['MANIFEST_INVALID']);
    }
  });
});

describe('upload purging', () => {
  it('purges sessions of a repository that holds nothing but _uploads (an abandoned first push)', async () => {
    await server.close();
    server = await startServer({
      env: {
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'true',
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE: '1s',
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_INTERVAL: '1s',
      },
    });
    client = new RegistryClient(server.url);
    const location = await client.startUpload('abandoned/first/push');
    const sessions = join(v2(server.root), 'repositories/abandoned/first/push/_uploads');
    expect(await readdir(sessions)).toHaveLength(1);
    expect((await client.fetch(location)).status).toBe(204);
    const deadline = Date.now() + 10_000;
    while ((await readdir(sessions)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(await readdir(sessions)).toEqual([]);
    const gone = await client.fetch(location);
    expect(gone.status).toBe(404);
    expect(await errorCodes(gone)).toEqual(['BLOB_UPLOAD_UNKNOWN']);
  });
});

describe('methods', () => {
  const digest = `sha256:${'a'.repeat(64)}`;
  const cases: [string, string, string][] = [
    ['POST', '/v2/team/app/tags/list', 'GET, HEAD'],
    ['PUT', `/v2/team/app/blobs/${digest}`, 'DELETE, GET, HEAD'],
    ['PATCH', '/v2/team/app/manifests/latest', 'DELETE, GET, HEAD, PUT'],
    ['GET', '/v2/team/app/blobs/uploads/', 'POST'],
    ['DELETE', '/v2/_catalog', 'GET, HEAD'],
    ['POST', `/v2/team/app/referrers/${digest}`, 'GET, HEAD'],
  ];
  it.each(cases)('%s %s is 405 with Allow: %s', async (method, path, allow) => {
    const res = await client.fetch(path, { method });
    expect(res.status).toBe(405);
    expect(res.headers.get('Allow')).toBe(allow);
    expect(await errorCodes(res)).toEqual(['UNSUPPORTED']);
  });

  it('an unknown path is still 404', async () => {
    const res = await client.fetch('/v2/team/app/nothing/here');
    expect(res.status).toBe(404);
  });
});

/**
 * Sends a request with a body of `size` bytes over a raw socket, writing the whole body
 * before reading anything (what simple clients do), and returns what came back.
 */
function rawRequest(url: string, head: string, body: Buffer | number, chunked: boolean): Promise<{ response: string; writeError?: string }> {
  const size = typeof body === 'number' ? body : body.length;
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let response = '';
    let writeError: string | undefined;
    socket.on('data', (d) => (response += d.toString('latin1')));
    socket.on('error', (err: NodeJS.ErrnoException) => (writeError = err.code ?? err.message));
    socket.on('close', () => resolve({ response, writeError }));
    socket.on('connect', async () => {
      const framing = chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${size}`;
      socket.write(`${head}\r\nHost: test\r\n${framing}\r\nConnection: close\r\n\r\n`);
      const piece = Buffer.alloc(64 * 1024, 120);
      for (let sent = 0; sent < size && !socket.destroyed; sent += piece.length) {
        const part = typeof body === 'number' ? piece.subarray(0, Math.min(piece.length, size - sent)) : body.subarray(sent, sent + piece.length);
        const ok = socket.write(chunked ? Buffer.concat([Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n')]) : part);
        if (!ok) await new Promise((r) => socket.once('drain', r));
      }
      if (!socket.destroyed) socket.end(chunked ? '0\r\n\r\n' : '');
    });
    setTimeout(() => reject(new Error('no answer within 20 s')), 20_000).unref();
  });
}

describe('answers given before the body was read', () => {
  const MANIFEST_HEAD = 'PUT /v2/team/app/manifests/big HTTP/1.1\r\nContent-Type: application/vnd.oci.image.manifest.v1+json';

  it.each([
    ['Content-Length', false],
    ['chunked', true],
  ])('a 5 MiB manifest PUT (%s) gets its whole 413 answer, and the client can write its body', async (_framing, chunked) => {
    const { response, writeError } = await rawRequest(server.url, MANIFEST_HEAD, 5 * 1024 * 1024, chunked);
    expect(writeError).toBeUndefined();
    expect(response).toMatch(/^HTTP\/1\.1 413 /);
    expect(JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4))).toMatchObject({ errors: [{ code: 'MANIFEST_INVALID' }] });
  });

  it('a 40 MiB chunked manifest PUT still gets its answer without a reset', async () => {
    const { response, writeError } = await rawRequest(server.url, MANIFEST_HEAD, 40 * 1024 * 1024, true);
    expect(writeError).toBeUndefined();
    expect(response).toMatch(/^HTTP\/1\.1 413 /);
  });

  it('the connection stays usable after a refused body', async () => {
    const big = Buffer.alloc(5 * 1024 * 1024, 1);
    const first = await client.fetch('/v2/team/app/manifests/big', { method: 'PUT', body: asBody(big), headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' } });
    expect(first.status).toBe(413);
    expect((await client.fetch('/v2/')).status).toBe(200);
  });
});

describe('a refused over-long chunk', () => {
  it("answers RANGE_INVALID with a Range that says what is stored, and the upload resumes from it", async () => {
    const location = await client.startUpload('team/app');
    const data = randomBlob(3_000_000);
    const declared = 1_000_000;
    // Over a raw socket: fetch cannot send a body longer than its own Content-Length.
    const path = new URL(client.url(location)).pathname + new URL(client.url(location)).search;
    const { response } = await rawRequest(server.url, `PATCH ${path} HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Range: 0-${declared - 1}`, data, true);
    expect(response).toMatch(/^HTTP\/1\.1 416 /);
    const range = /\r\nRange: 0-(\d+)\r\n/i.exec(response);
    expect(range).not.toBeNull();
    const sessions = join(v2(server.root), 'repositories/team/app/_uploads');
    const [id] = await readdir(sessions);
    const stored = (await stat(join(sessions, id!, 'data'))).size;
    expect(Number(range![1]) + 1).toBe(stored);
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThanOrEqual(declared);

    // What a client does with that Range: send the rest of its blob from there.
    const status = await client.fetch(location);
    expect(status.headers.get('Range')).toBe(`0-${stored - 1}`);
    const rest = data.subarray(stored);
    const patch = await client.fetch(location, {
      method: 'PATCH',
      body: asBody(rest),
      headers: { 'Content-Range': `${stored}-${data.length - 1}`, 'Content-Type': 'application/octet-stream' },
    });
    expect(patch.status).toBe(202);
    const put = await client.fetch(withDigest(location, sha256(data)), { method: 'PUT' });
    expect(put.status).toBe(201);
  });
});

describe('upload URLs with http.secret', () => {
  it("carry Distribution's _state token, signed with the secret", async () => {
    await server.close();
    server = await startServer({ env: { REGISTRY_HTTP_SECRET: 'shared-secret' } });
    client = new RegistryClient(server.url);
    const location = await client.startUpload('team/app');
    const patch = await client.fetch(location, { method: 'PATCH', body: asBody(Buffer.from('abc')), headers: { 'Content-Type': 'application/octet-stream' } });
    const token = new URL(client.url(patch.headers.get('Location')!)).searchParams.get('_state')!;
    const raw = Buffer.from(token.replaceAll('-', '+').replaceAll('_', '/'), 'base64');
    const [mac, json] = [raw.subarray(0, 32), raw.subarray(32)];
    expect(createHmac('sha256', 'shared-secret').update(json).digest().equals(mac)).toBe(true);
    const state = JSON.parse(json.toString()) as { Name: string; UUID: string; Offset: number; StartedAt: string };
    expect(state).toMatchObject({ Name: 'team/app', Offset: 3 });
    expect(patch.headers.get('Location')).toContain(state.UUID);
    expect(Number.isNaN(Date.parse(state.StartedAt))).toBe(false);
    expect(token.length % 4).toBe(0); // padded, as Go's base64.URLEncoding requires
  });
});
