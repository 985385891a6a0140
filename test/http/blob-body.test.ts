// Blob GET bodies: sent through reused buffers (server/send-body.ts). What a client must
// see: every byte right for whole blobs and ranges of any size, and on a storage fault a
// cut connection, never a wrong or silently short body; the server keeps serving.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readdirSync, readlinkSync } from 'node:fs';
import { truncate } from 'node:fs/promises';
import { get } from 'node:http';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { randomBlob, RegistryClient, sha256 } from '../support/client.js';

let server: TestServer;
let client: RegistryClient;
beforeEach(async () => {
  server = await startServer();
  client = new RegistryClient(server.url);
});
afterEach(() => server.close());

const MiB = 1024 * 1024;
const blobFile = (digest: string): string =>
  join(server.root, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data');

describe('blob GET bodies', () => {
  it('sends whole blobs of sizes around the 1 MiB buffer exactly', async () => {
    for (const size of [1, MiB - 1, MiB, MiB + 1, 2 * MiB, 3 * MiB + 12345]) {
      const data = randomBlob(size);
      const digest = await client.pushBlob('body/app', data);
      const res = await client.fetch(`/v2/body/app/blobs/${digest}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('Content-Length')).toBe(String(size));
      const got = Buffer.from(await res.arrayBuffer());
      expect(got.length).toBe(size);
      expect(sha256(got)).toBe(digest);
    }
  });

  it('sends ranges that start and end inside and across buffers', async () => {
    const data = randomBlob(3 * MiB + 999);
    const digest = await client.pushBlob('body/app', data);
    for (const [start, end] of [[0, 0], [5, MiB + 5], [MiB - 1, MiB], [MiB, 3 * MiB + 998], [2 * MiB + 7, 2 * MiB + 7]] as const) {
      const res = await client.fetch(`/v2/body/app/blobs/${digest}`, { headers: { Range: `bytes=${start}-${end}` } });
      expect(res.status).toBe(206);
      expect(res.headers.get('Content-Range')).toBe(`bytes ${start}-${end}/${data.length}`);
      expect(Buffer.from(await res.arrayBuffer()).equals(data.subarray(start, end + 1))).toBe(true);
    }
  });

  it('cuts the connection when the stored file is shorter than its size, and keeps serving', async () => {
    const data = randomBlob(3 * MiB);
    const digest = await client.pushBlob('body/app', data);
    // Learn the size first (it is cached), then damage the file under the server.
    expect((await client.fetch(`/v2/body/app/blobs/${digest}`, { method: 'HEAD' })).status).toBe(200);
    await truncate(blobFile(digest), MiB + 10);
    const outcome = await new Promise<{ received: number; complete: boolean; error?: string }>((resolve) => {
      get(`${server.url}/v2/body/app/blobs/${digest}`, (res) => {
        let received = 0;
        res.on('data', (chunk: Buffer) => (received += chunk.length));
        res.on('end', () => resolve({ received, complete: res.complete }));
        res.on('error', (err) => resolve({ received, complete: false, error: err.message }));
      }).on('error', (err) => resolve({ received: 0, complete: false, error: err.message }));
    });
    expect(outcome.complete).toBe(false);
    expect(outcome.received).toBeLessThan(data.length);
    // Another blob still comes back whole.
    const other = randomBlob(2 * MiB + 3);
    const otherDigest = await client.pushBlob('body/app', other);
    const res = await client.fetch(`/v2/body/app/blobs/${otherDigest}`);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(otherDigest);
  });

  it('survives clients that go away mid-body and serves the next ones', async () => {
    const data = randomBlob(8 * MiB);
    const digest = await client.pushBlob('body/app', data);
    const fdsBefore = openFiles(); // the server runs in this process
    for (let i = 0; i < 20; i++) {
      const controller = new AbortController();
      const res = await client.fetch(`/v2/body/app/blobs/${digest}`, { signal: controller.signal });
      const reader = res.body!.getReader();
      await reader.read();
      controller.abort();
      await reader.read().catch(() => undefined);
    }
    const res = await client.fetch(`/v2/body/app/blobs/${digest}`);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    // Every aborted response closed its blob file.
    await expect.poll(() => openFiles().filter((f) => f.endsWith('/data')).length, { timeout: 5000 }).toBeLessThanOrEqual(
      fdsBefore.filter((f) => f.endsWith('/data')).length,
    );
  });
});

function openFiles(): string[] {
  return readdirSync('/proc/self/fd').map((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return '';
    }
  });
}
