// Webhook notifications in Distribution's format: a receiver the test runs gets push, pull
// and delete events, also after it was down for a while, and requests never wait for it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { randomBlob, RegistryClient } from '../support/client.js';
import { freePort } from '../support/processes.js';
import { startServer } from '../support/server.js';

interface Envelope {
  events: { id: string; action: string; target: { repository: string; digest?: string; tag?: string; mediaType?: string; size?: number }; request: { method: string }; source: { instanceID: string } }[];
}

/** A webhook receiver on `port`: records envelopes and their headers; `up` false answers 503. */
async function receiver(port: number) {
  const received: { envelope: Envelope; type: string; auth: string | undefined }[] = [];
  const state = { up: true };
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      if (!state.up) {
        res.writeHead(503).end();
        return;
      }
      received.push({ envelope: JSON.parse(Buffer.concat(parts).toString()) as Envelope, type: req.headers['content-type'] ?? '', auth: req.headers.authorization });
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { received, state, port: (server.address() as AddressInfo).port, close: () => new Promise<void>((r) => server.close(() => r())) };
}

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

const until = async (what: () => boolean, ms: number): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!what()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe('notifications', () => {
  it('sends push, pull and delete events, and delivers what queued while the receiver was down', async () => {
    const hook = await receiver(await freePort());
    cleanups.push(hook.close);
    const endpoints = JSON.stringify([
      { name: 'test', url: `http://127.0.0.1:${hook.port}/events`, headers: { Authorization: ['Bearer hook-secret'] }, timeout: '1s', backoff: '100ms', ignore: { actions: ['mount'] } },
    ]);
    const server = await startServer({ env: { REGISTRY_NOTIFICATIONS_ENDPOINTS: endpoints } });
    cleanups.push(() => server.close());
    const client = new RegistryClient(server.url);

    const image = await client.pushImage('team/app', 'v1', [randomBlob(1000)]);
    const events = () => hook.received.flatMap((r) => r.envelope.events);
    await until(() => events().some((e) => e.action === 'push' && e.target.tag === 'v1'), 5000);
    expect(hook.received[0]!.type).toBe('application/vnd.docker.distribution.events.v1+json');
    expect(hook.received[0]!.auth).toBe('Bearer hook-secret');
    const pushes = events().filter((e) => e.action === 'push');
    expect(pushes.map((e) => e.target.mediaType).sort()).toEqual([
      'application/octet-stream',
      'application/octet-stream',
      'application/vnd.oci.image.manifest.v1+json',
    ]);
    expect(pushes.find((e) => e.target.tag === 'v1')!.target.digest).toBe(image.digest);

    // The receiver goes down: requests are answered at once all the same.
    hook.state.up = false;
    const started = Date.now();
    expect((await client.fetch('/v2/team/app/manifests/v1', { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } })).status).toBe(200);
    expect((await client.fetch(`/v2/team/app/manifests/${image.digest}`, { method: 'DELETE' })).status).toBe(202);
    expect(Date.now() - started).toBeLessThan(500);
    await new Promise((r) => setTimeout(r, 600)); // a few refused deliveries with backoff
    hook.state.up = true;
    await until(() => events().some((e) => e.action === 'delete'), 10_000);
    const pull = events().find((e) => e.action === 'pull');
    expect(pull).toMatchObject({ target: { repository: 'team/app', digest: image.digest, tag: 'v1' }, request: { method: 'GET' } });
    expect(events().find((e) => e.action === 'delete')).toMatchObject({ target: { repository: 'team/app', digest: image.digest } });
    expect(new Set(events().map((e) => e.id)).size).toBe(events().length); // each event once
  });

  it('refuses endpoints it cannot use, naming the key', () => {
    expect(() => loadConfig({ env: { REGISTRY_NOTIFICATIONS_ENDPOINTS: '[{name: a, url: "ftp://x"}]' } })).toThrow(/notifications\.endpoints\[0\]\.url/);
    expect(() => loadConfig({ env: { REGISTRY_NOTIFICATIONS_ENDPOINTS: '[{name: a, url: "http://x", queue: 5}]' } })).toThrow(/notifications\.endpoints\[0\]\.queue: unknown setting/);
    expect(loadConfig({ env: { REGISTRY_NOTIFICATIONS_ENDPOINTS: '[{name: a, url: "http://x", disabled: true}]' } }).notifications).toEqual([]);
  });
});
