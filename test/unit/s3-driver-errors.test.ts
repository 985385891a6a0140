// The S3 driver's errors and timeouts without a real S3: which failures count as the storage
// being unavailable (only S3's own and its connection's, never a client's that happens to share
// an error code), and an idle limit on requests, tried against servers on loopback that go
// silent or answer slowly.
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PathNotFoundError, StorageUnavailableError } from '../../storage/driver.js';
import { S3Driver, translate, type S3DriverOptions } from '../../storage/s3-driver.js';

const driverAt = (port: number, extra: Partial<S3DriverOptions> = {}): S3Driver =>
  new S3Driver({
    region: 'us-east-1',
    regionendpoint: `http://127.0.0.1:${port}`,
    forcepathstyle: true,
    bucket: 'b',
    // Static keys: the SDK's default chain would ask the instance metadata service.
    accesskey: 'AKIAEXAMPLEEXAMPLE00',
    secretkey: 'secretsecretsecretsecretsecretsecret0000',
    ...extra,
  });

describe('translate: what counts as S3 being unavailable', () => {
  it("a client's stream error is returned as it is, even with a network error's code", () => {
    const hangUp = Object.assign(new Error('the client closed the connection'), { code: 'ECONNRESET' });
    expect(translate(hangUp, '/p', 'b')).toBe(hangUp);
    expect(translate(new TypeError('a bug'), '/p', 'b')).not.toBeInstanceOf(StorageUnavailableError);
  });

  it("S3's answers and the connection's failures (errors out of the SDK carry $metadata) are", () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED', $metadata: { attempts: 3 } });
    const reset = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET', $metadata: { attempts: 3 } });
    const timeout = Object.assign(new Error('the request socket timed out'), { name: 'TimeoutError', $metadata: { attempts: 3 } });
    const slowDown = Object.assign(new Error('Please reduce your request rate.'), { name: 'SlowDown', $fault: 'server', $metadata: { httpStatusCode: 503 } });
    const denied = Object.assign(new Error('Access Denied'), { name: 'AccessDenied', $fault: 'client', $metadata: { httpStatusCode: 403 } });
    for (const err of [refused, reset, timeout, slowDown, denied]) expect(translate(err, '/p', 'b'), err.message).toBeInstanceOf(StorageUnavailableError);
    const missing = Object.assign(new Error('The specified key does not exist.'), { name: 'NoSuchKey', $fault: 'client', $metadata: { httpStatusCode: 404 } });
    expect(translate(missing, '/p', 'b')).toBeInstanceOf(PathNotFoundError);
    const bad = Object.assign(new Error('Invalid Argument'), { name: 'InvalidArgument', $fault: 'client', $metadata: { httpStatusCode: 400 } });
    const badTranslated = translate(bad, '/p', 'b');
    expect(badTranslated).not.toBeInstanceOf(StorageUnavailableError);
    expect(badTranslated).not.toBeInstanceOf(PathNotFoundError);
  });
});

describe('requests to a server that stops answering', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** A server that accepts connections, reads whatever comes, and never answers. */
  async function silentServer(): Promise<number> {
    const sockets = new Set<Socket>();
    const server: NetServer = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.resume();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const s of sockets) s.destroy();
          server.close(() => resolve());
        }),
    );
    return (server.address() as AddressInfo).port;
  }

  it('fail with StorageUnavailableError once no byte came for the idle limit (each attempt), for reads and writes', async () => {
    const port = await silentServer();
    const driver = driverAt(port, { idletimeout: 300, maxattempts: 2 });
    cleanups.push(() => driver.destroy());
    for (const [what, call] of [
      ['stat', () => driver.stat('/a/b')],
      ['getContent', () => driver.getContent('/a/b')],
      ['putContent', () => driver.putContent('/a/b', Buffer.from('x'))],
      // Blob reads go through their own (undici) transport, with the same idle limit and retries.
      ['reader', () => driver.reader('/a/b')],
    ] as const) {
      const started = Date.now();
      const err = await call().then(() => undefined, (e: unknown) => e);
      const ms = Date.now() - started;
      expect(err, what).toBeInstanceOf(StorageUnavailableError);
      expect(ms, `${what}: two attempts of 300 ms`).toBeGreaterThanOrEqual(550);
      expect(ms, what).toBeLessThan(5000);
    }
  });

  it('a slow answer whose bytes keep coming is not cut, however long it takes in all', async () => {
    const body = Buffer.from('0123456789abcdef');
    const server: HttpServer = createHttpServer((req, res) => {
      req.resume();
      res.writeHead(200, { 'Content-Length': String(body.length), 'Content-Type': 'application/octet-stream' });
      let sent = 0;
      const timer = setInterval(() => {
        res.write(body.subarray(sent, sent + 1));
        if (++sent === body.length) {
          clearInterval(timer);
          res.end();
        }
      }, 80);
      res.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    server.on('connection', (socket) => cleanups.push(() => void socket.destroy()));
    const driver = driverAt((server.address() as AddressInfo).port, { idletimeout: 400, maxattempts: 1 });
    cleanups.push(() => driver.destroy());
    const started = Date.now();
    const content = await driver.getContent('/slow/file');
    expect(content.toString()).toBe(body.toString());
    expect(Date.now() - started, 'longer in all than the idle limit').toBeGreaterThan(1000);
  });
});
