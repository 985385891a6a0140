// Graceful shutdown as an orchestrator does it: SIGTERM while a push is under way. wharf
// stops accepting connections, lets the push finish, then exits 0 (within http.draintimeout).
import { request } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { startWharf } from '../support/wharf-process.js';

describe('graceful shutdown', () => {
  it('lets a push in flight complete after SIGTERM, refuses new connections, and exits 0', async () => {
    const wharf = await startWharf({ env: { REGISTRY_HTTP_DRAINTIMEOUT: '20s' } });
    try {
      const data = randomBytes(4 * 1024 * 1024);
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      // A monolithic push whose body trickles in over about two seconds.
      const pushed = new Promise<number>((resolve, reject) => {
        const req = request(`${wharf.url}/v2/drain/app/blobs/uploads/?digest=${digest}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(data.length) },
        });
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        let offset = 0;
        const tick = setInterval(() => {
          const part = data.subarray(offset, offset + 256 * 1024);
          offset += part.length;
          if (part.length > 0) req.write(part);
          if (offset >= data.length) {
            clearInterval(tick);
            req.end();
          }
        }, 120);
      });
      await new Promise((r) => setTimeout(r, 400));
      process.kill(wharf.process.pid, 'SIGTERM');
      await new Promise((r) => setTimeout(r, 200));
      const refused = await fetch(`${wharf.url}/v2/`, { signal: AbortSignal.timeout(2000) }).then(
        (r) => `status ${r.status}`,
        (err: Error) => `error ${(err.cause as { code?: string } | undefined)?.code ?? err.message}`,
      );
      expect(refused).toMatch(/^error/); // not accepting any more
      expect(await pushed).toBe(201);
      const exit = await wharf.process.exited;
      expect(exit).toMatchObject({ code: 0 });
    } finally {
      await wharf.stop().catch(() => undefined);
    }
  });
});
