// Upload sessions over HTTP, beyond the conformance flows: resumption across a restart,
// chunk checks, digest mismatches and concurrent pushes of one blob.
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { readdir, rm } from "node:fs/promises";
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { asBody, errorCodes, randomBlob, RegistryClient, sha256 } from '../support/client.js';

let server: TestServer;
let client: RegistryClient;
beforeEach(async () => {
  server = await startServer();
  client = new RegistryClient(server.url);
});
afterEach(() => server.close());

const blobsOnDisk = async (root: string): Promise<string[]> => {
  const dir = join(root, 'docker/registry/v2/blobs/sha256');
  const out: string[] = [];
  for (const xx of await readdir(dir).catch(() => [])) for (const hex of await readdir(join(dir, xx))) out.push(`sha256:${hex}`);
  return out;
};

describe('chunked uploads', () => {
  it('completes an upload resumed by a new process (hash state re-computed from the data)', async () => {
    const data = randomBlob(3 * 1024 * 1024 + 17);
    const digest = sha256(data);
    const location = await client.startUpload('team/app');
    const first = await client.fetch(location, {
      method: 'PATCH',
      body: asBody(data.subarray(0, 2 * 1024 * 1024)),
      headers: { 'Content-Range': `0-${2 * 1024 * 1024 - 1}`, 'Content-Type': 'application/octet-stream' },
    });
    expect(first.status).toBe(202);
    const path = new URL(client.url(first.headers.get('Location')!)).pathname;
    const root = server.root;
    await server.close(true);

    // Same storage root, fresh process state: the running hash is gone.
    server = await startServer({ root });
    onTestFinished(() => rm(root, { recursive: true, force: true }));
    const resumed = new RegistryClient(server.url);
    const status = await resumed.fetch(path);
    expect(status.status).toBe(204);
    expect(status.headers.get('Range')).toBe(`0-${2 * 1024 * 1024 - 1}`);
    const done = await resumed.fetch(`${path}?digest=${digest}`, {
      method: 'PUT',
      body: asBody(data.subarray(2 * 1024 * 1024)),
      headers: { 'Content-Range': `${2 * 1024 * 1024}-${data.length - 1}`, 'Content-Type': 'application/octet-stream' },
    });
    expect(done.status).toBe(201);
    expect(done.headers.get('Docker-Content-Digest')).toBe(digest);
    const pulled = Buffer.from(await (await resumed.fetch(`/v2/team/app/blobs/${digest}`)).arrayBuffer());
    expect(sha256(pulled)).toBe(digest);
  });

  it('answers an out-of-order chunk with 416 and the current Range, keeping the upload', async () => {
    const location = await client.startUpload('team/app');
    const ok = await client.fetch(location, { method: 'PATCH', body: 'abcd', headers: { 'Content-Range': '0-3' } });
    expect(ok.status).toBe(202);
    const next = ok.headers.get('Location')!;
    for (const range of ['0-3', '8-11', '2-5']) {
      const res = await client.fetch(next, { method: 'PATCH', body: 'efgh', headers: { 'Content-Range': range } });
      expect(res.status, range).toBe(416);
      expect(res.headers.get('Range')).toBe('0-3');
      expect(await errorCodes(res)).toEqual(['BLOB_UPLOAD_INVALID']);
    }
    const good = await client.fetch(next, { method: 'PATCH', body: 'efgh', headers: { 'Content-Range': '4-7' } });
    expect(good.headers.get('Range')).toBe('0-7');
    const done = await client.fetch(`${good.headers.get('Location')}?digest=${sha256(Buffer.from('abcdefgh'))}`, { method: 'PUT' });
    expect(done.status).toBe(201);
  });

  it('refuses a Content-Range that disagrees with Content-Length', async () => {
    const location = await client.startUpload('team/app');
    const res = await client.fetch(location, { method: 'PATCH', body: 'abcd', headers: { 'Content-Range': '0-9' } });
    expect(res.status).toBe(416);
  });

  it('streams a chunked-transfer PATCH without Content-Length', async () => {
    const data = randomBlob(1024 * 1024);
    const location = await client.startUpload('team/app');
    const body = new ReadableStream({
      start(controller) {
        for (let i = 0; i < data.length; i += 100_000) controller.enqueue(data.subarray(i, i + 100_000));
        controller.close();
      },
    });
    const res = await client.fetch(location, { method: 'PATCH', body, duplex: 'half' } as RequestInit);
    expect(res.status).toBe(202);
    expect(res.headers.get('Range')).toBe(`0-${data.length - 1}`);
    const done = await client.fetch(`${res.headers.get('Location')}?digest=${sha256(data)}`, { method: 'PUT' });
    expect(done.status).toBe(201);
  });

  it('never stores a blob whose bytes do not match the digest', async () => {
    const wrong = sha256(Buffer.from('something else'));
    const res = await client.fetch(`/v2/team/app/blobs/uploads/?digest=${wrong}`, { method: 'POST', body: 'actual bytes' });
    expect(res.status).toBe(400);
    expect(await errorCodes(res)).toEqual(['DIGEST_INVALID']);
    expect((await client.fetch(`/v2/team/app/blobs/${wrong}`, { method: 'HEAD' })).status).toBe(404);
    expect(await blobsOnDisk(server.root)).toEqual([]);
  });

  it('forgets a cancelled upload', async () => {
    const location = await client.startUpload('team/app');
    expect((await client.fetch(location, { method: 'DELETE' })).status).toBe(204);
    const res = await client.fetch(location);
    expect(res.status).toBe(404);
    expect(await errorCodes(res)).toEqual(['BLOB_UPLOAD_UNKNOWN']);
  });

  it('treats a malformed upload id as unknown, not as a path', async () => {
    for (const id of ['..', '%2e%2e', 'x', 'a'.repeat(200)]) {
      const res = await client.fetch(`/v2/team/app/blobs/uploads/${id}`);
      expect([404, 400], id).toContain(res.status);
    }
  });

  it('keeps one intact blob when 16 clients push it at once', async () => {
    const data = randomBlob(2 * 1024 * 1024);
    const results = await Promise.all(Array.from({ length: 16 }, () => client.pushBlob('team/app', data)));
    expect(new Set(results)).toEqual(new Set([sha256(data)]));
    expect(await blobsOnDisk(server.root)).toEqual([sha256(data)]);
    const pulled = Buffer.from(await (await client.fetch(`/v2/team/app/blobs/${sha256(data)}`)).arrayBuffer());
    expect(pulled.equals(data)).toBe(true);
  });
});

describe('blob reads', () => {
  it('serves ranges with 206 and refuses ranges past the end with 416', async () => {
    const data = randomBlob(1000);
    const digest = await client.pushBlob('team/app', data);
    const part = await client.fetch(`/v2/team/app/blobs/${digest}`, { headers: { Range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('Content-Range')).toBe('bytes 100-199/1000');
    expect(Buffer.from(await part.arrayBuffer()).equals(data.subarray(100, 200))).toBe(true);
    const bad = await client.fetch(`/v2/team/app/blobs/${digest}`, { headers: { Range: 'bytes=1000-' } });
    expect(bad.status).toBe(416);
    expect(bad.headers.get('Content-Range')).toBe('bytes */1000');
  });

  it('only serves blobs linked into the repository asked for', async () => {
    const digest = await client.pushBlob('team/app', randomBlob(10));
    const res = await client.fetch(`/v2/other/app/blobs/${digest}`);
    expect(res.status).toBe(404);
    expect(await errorCodes(res)).toEqual(['BLOB_UNKNOWN']);
  });

  it('mounts across repositories, and automatically without from', async () => {
    const digest = await client.pushBlob('team/app', randomBlob(10));
    const mounted = await client.fetch(`/v2/team/copy/blobs/uploads/?mount=${digest}&from=team/app`, { method: 'POST' });
    expect(mounted.status).toBe(201);
    expect(mounted.headers.get('Location')).toBe(`/v2/team/copy/blobs/${digest}`);
    const auto = await client.fetch(`/v2/team/auto/blobs/uploads/?mount=${digest}`, { method: 'POST' });
    expect(auto.status).toBe(201);
    const missing = await client.fetch(`/v2/team/none/blobs/uploads/?mount=${sha256(Buffer.from('x'))}&from=team/app`, { method: 'POST' });
    expect(missing.status).toBe(202);
    expect(missing.headers.get('Docker-Upload-UUID')).toBeTruthy();
  });

  it('rejects bad names and digests with the spec codes', async () => {
    const cases: [string, number, string][] = [
      ['/v2/Team/app/blobs/sha256:' + 'a'.repeat(64), 400, 'NAME_INVALID'],
      ['/v2/te%2e%2e/x/blobs/sha256:' + 'a'.repeat(64), 400, 'NAME_INVALID'],
      ['/v2/team/app/blobs/sha256:abc', 400, 'DIGEST_INVALID'],
      ['/v2/team/app/blobs/md5:' + 'a'.repeat(32), 400, 'DIGEST_INVALID'],
    ];
    for (const [path, status, code] of cases) {
      const res = await client.fetch(path);
      expect(res.status, path).toBe(status);
      expect(await errorCodes(res)).toEqual([code]);
    }
  });
});
