// The debug address (http.debug.addr), as Distribution's: operations endpoints kept off the
// registry's address, which serves the Distribution API only. Plain HTTP, no auth: bind it
// to a private interface (or a port the network policy keeps internal).
//   GET /debug/health   Distribution's: 200 {} when healthy, 503 {"<check>": "<error>"}
//   GET /healthz        liveness: the process answers
//   GET /readyz         readiness: storage answers (and the server is not shutting down)
//   GET <prometheus.path, default /metrics>   Prometheus metrics, with prometheus.enabled
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { StorageDriver } from '../storage/driver.js';
import { parseListenAddress } from './config.js';
import { checkStorage, storageCheckName, type StorageHealth } from './health.js';
import type { Metrics } from './metrics.js';

export interface DebugServerOptions {
  addr: string;
  driver: StorageDriver;
  /** The periodic storage check (health.storagedriver.enabled); without it /readyz checks when asked. */
  storageHealth?: StorageHealth;
  metrics?: Metrics;
  metricsPath: string;
  /** True once the registry is shutting down: /readyz answers 503. */
  draining: () => boolean;
  logger: Logger;
}

export interface DebugServer {
  server: Server;
  port: number;
  close(): Promise<void>;
}

/** How long /readyz waits for storage when it checks on demand. */
const ON_DEMAND_TIMEOUT_MS = 5_000;

export async function startDebugServer(options: DebugServerOptions): Promise<DebugServer> {
  const { driver, storageHealth, metrics, metricsPath, logger } = options;

  const json = (res: ServerResponse, status: number, body: unknown, head: boolean): void => {
    const text = `${JSON.stringify(body)}\n`;
    res.writeHead(status, {
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': Buffer.byteLength(text),
      'Cache-Control': 'no-store',
    });
    res.end(head ? undefined : text);
  };

  const readiness = async (): Promise<Record<string, string>> => {
    if (options.draining()) return { shutdown: 'the registry is shutting down' };
    if (storageHealth) return storageHealth.status();
    const error = await checkStorage(driver, ON_DEMAND_TIMEOUT_MS);
    return error === undefined ? {} : { [storageCheckName(driver)]: error };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const head = req.method === 'HEAD';
    const known = path === '/debug/health' || path === '/healthz' || path === '/readyz' || (metrics !== undefined && path === metricsPath);
    if (!known) {
      json(res, 404, { error: 'not found' }, head);
      return;
    }
    if (req.method !== 'GET' && !head) {
      res.setHeader('Allow', 'GET, HEAD');
      json(res, 405, { error: 'method not allowed' }, false);
      return;
    }
    if (path === '/healthz') {
      json(res, 200, {}, head);
    } else if (path === '/debug/health') {
      const failing = storageHealth?.status() ?? {};
      json(res, Object.keys(failing).length === 0 ? 200 : 503, failing, head);
    } else if (path === '/readyz') {
      const failing = await readiness();
      json(res, Object.keys(failing).length === 0 ? 200 : 503, failing, head);
    } else if (metrics) {
      const text = await metrics.metrics();
      res.writeHead(200, { 'Content-Type': metrics.contentType, 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
      res.end(head ? undefined : text);
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      logger.error({ err }, 'debug endpoint failed');
      if (!res.headersSent) json(res, 500, { error: 'internal error' }, false);
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 75_000;
  server.headersTimeout = 30_000;
  server.requestTimeout = 60_000;

  const { host, port } = parseListenAddress(options.addr, 'http.debug.addr');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actualPort = (server.address() as AddressInfo).port;
  logger.info({ addr: options.addr, port: actualPort, metrics: metrics ? metricsPath : undefined }, 'debug server listening');
  return {
    server,
    port: actualPort,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
