// Builds the registry from a Config and serves it over HTTP(S).
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { LocalRegistry } from '../storage/local-registry.js';
import { purgeUploads } from '../storage/upload-purge.js';
import { parseListenAddress, type Config } from './config.js';
import { createApp } from './app.js';
import { setupAuth } from './auth-setup.js';
import { Notifier } from './notifications.js';
import { createMirror, type Mirror } from './mirror-setup.js';
import { createLogger } from './logger.js';
import { Metrics } from './metrics.js';
import { StorageHealth } from './health.js';
import { startDebugServer, type DebugServer } from './debug-server.js';
import { createStorageDriver, describeStorage } from './storage-setup.js';

export interface RunningServer {
  /** The TCP port listened on; 0 on a unix socket (http.net: unix). */
  port: number;
  server: Server;
  registry: LocalRegistry;
  /** The pull-through mirror in front of `registry`, when proxy is configured. */
  mirror?: Mirror;
  logger: Logger;
  /** The debug address's TCP port (health, metrics), when http.debug.addr is set. */
  debugPort?: number;
  /** The Prometheus metrics, when http.debug.prometheus is enabled and the debug server runs. */
  metrics?: Metrics;
  /** Stops accepting, lets in-flight requests finish, cuts the rest after `graceMs`. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Requests Node's HTTP parser rejects before Koa sees them (oversized headers, garbage)
 * still get an answer in the spec's error shape, then the connection is closed.
 */
function answerClientError(err: NodeJS.ErrnoException, socket: Duplex, logger: Logger): void {
  logger.debug({ code: err.code }, 'malformed request');
  if (!socket.writable || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const [status, text] = err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large'] : [400, 'Bad Request'];
  answerRaw(socket, status, text, `malformed request: ${text.toLowerCase()}`);
}

/** Writes a complete error response in the spec's shape on a raw socket and closes it. */
function answerRaw(socket: Duplex, status: number, text: string, message: string): void {
  const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message }] });
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n${body}`,
  );
}

export async function startRegistryServer(
  config: Config,
  logger: Logger = createLogger(config.log.level, config.log.fields),
): Promise<RunningServer> {
  for (const { key, reason } of config.ignoredKeys) logger.warn({ key, reason }, 'configuration key ignored');
  const debug = config.http.debug;
  const metrics = debug?.prometheus.enabled ? new Metrics({ httpPrefix: config.http.prefix }) : undefined;
  const driver = await createStorageDriver(config.storage, { logger, observer: metrics?.storageObserver(config.storage.driver) });
  const registry = new LocalRegistry(driver, {
    deleteEnabled: config.storage.delete.enabled,
    linkCacheTtlMs: config.storage.cache.linkttl,
  });
  const mirror = config.proxy ? createMirror(registry, config.proxy, logger) : undefined;
  const auth = await setupAuth(config.auth, logger);
  if (metrics && mirror) metrics.watchMirror(mirror);
  const checks = config.health.storagedriver;
  // Only the debug address reports the check: without it, nothing would read it.
  const storageHealth = checks.enabled && debug ? new StorageHealth(driver, { interval: checks.interval, threshold: checks.threshold }) : undefined;
  if (metrics && storageHealth) metrics.watchStorage(() => storageHealth.healthy);
  const notifier = config.notifications.length > 0 ? new Notifier(config.notifications, logger, config.http.addr) : undefined;
  const app = createApp({ config, registry: mirror?.registry ?? registry, access: auth.access, tokenServer: auth.tokenServer, logger, metrics, notifier });

  const callback = app.callback();
  let requests = 0;
  const handler: typeof callback = (req, res) => {
    requests++;
    return callback(req, res);
  };
  const idleGc = startIdleCollection(() => requests);
  // Node answers a missing Host itself, with an empty 400; wharf builds no URL from Host.
  const serverOptions = { requireHostHeader: false };
  const { tls } = config.http;
  const server = tls
    ? createHttpsServer(
        { ...serverOptions, cert: readFileSync(tls.certificate), key: readFileSync(tls.key), minVersion: tls.minimumtls },
        handler,
      )
    : createHttpServer(serverOptions, handler);
  // Registries serve long uploads and pulls: no whole-request timeout, but idle
  // keep-alive connections are closed and headers must arrive promptly.
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 75_000;
  // A connection on which nothing moves for this long (a stalled or malicious client) is closed.
  server.timeout = 300_000;
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => answerClientError(err, socket, logger));
  // Requests Node would otherwise answer with an empty body (Expect) or drop (CONNECT).
  server.on('checkExpectation', (_req, res) => {
    const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'only Expect: 100-continue is supported' }] });
    res.writeHead(417, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'Docker-Distribution-API-Version': 'registry/2.0',
      Connection: 'close',
    });
    res.end(body);
  });
  server.on('connect', (_req, socket: Duplex) => answerRaw(socket, 405, 'Method Not Allowed', 'CONNECT is not supported'));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const listening = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (config.http.net === 'unix') {
      server.listen(config.http.addr, listening);
    } else {
      const { host, port } = parseListenAddress(config.http.addr);
      server.listen(port, host, listening);
    }
  });
  const address = server.address();
  const actualPort = typeof address === 'object' && address !== null ? (address as AddressInfo).port : 0;
  logger.info({ addr: config.http.addr, net: config.http.net, port: actualPort, storage: describeStorage(config.storage), tls: Boolean(tls) }, 'wharf listening');

  let draining = false;
  let debugServer: DebugServer | undefined;
  if (debug) {
    try {
      debugServer = await startDebugServer({
        addr: debug.addr,
        driver,
        storageHealth,
        metrics,
        metricsPath: debug.prometheus.path,
        draining: () => draining,
        logger,
      });
    } catch (err) {
      server.close();
      server.closeAllConnections();
      clearInterval(idleGc);
      await mirror?.close().catch(() => undefined);
      throw err;
    }
  }
  storageHealth?.start();

  const purging = config.storage.maintenance.uploadpurging;
  let purgeTimer: NodeJS.Timeout | undefined;
  if (purging.enabled) {
    const purge = (): void => {
      purgeUploads(registry, { olderThan: new Date(Date.now() - purging.age), dryRun: purging.dryrun })
        .then((r) => logger.info({ ...r, dryRun: purging.dryrun }, 'purged stale uploads'))
        .catch((err: unknown) => logger.error({ err }, 'upload purging failed'));
    };
    // Distribution waits a random while first so that replicas do not purge at once.
    purgeTimer = setTimeout(function tick() {
      purge();
      purgeTimer = setTimeout(tick, purging.interval).unref();
    }, Math.min(purging.interval, 60_000 + Math.random() * 60_000)).unref();
  }

  return {
    port: actualPort,
    server,
    registry,
    mirror,
    logger,
    debugPort: debugServer?.port,
    metrics,
    close: (graceMs = 25_000) =>
      new Promise<void>((resolve) => {
        // Readiness fails at once, so that load balancers stop sending while requests drain.
        draining = true;
        storageHealth?.stop();
        if (purgeTimer) clearTimeout(purgeTimer);
        clearInterval(idleGc);
        // Stop accepting; in-flight requests finish. Keep-alive connections become idle
        // only after their last response, so sweep them until the server has closed.
        const sweep = setInterval(() => server.closeIdleConnections(), 50);
        const deadline = setTimeout(() => server.closeAllConnections(), graceMs);
        server.close(() => {
          clearInterval(sweep);
          clearTimeout(deadline);
          // Downloads under way stop with the server; their sessions are removed.
          void (mirror?.close() ?? Promise.resolve())
            .catch(() => undefined)
            .then(() => debugServer?.close())
            .then(() => notifier?.close()) // what is queued gets a last, bounded chance to go out
            .then(() => resolve());
        });
        server.closeIdleConnections();
      }),
  };
}

/**
 * After a burst of requests, once a second passes without any, runs a full garbage
 * collection (when node runs with --expose-gc, as bin/wharf.js does): V8 would keep the
 * burst's garbage until more allocation comes, holding tens of MB of RSS while idle.
 */
function startIdleCollection(count: () => number): NodeJS.Timeout {
  const gc = (globalThis as { gc?: () => void }).gc;
  let seen = 0;
  let sinceCollection = 0;
  return setInterval(() => {
    const now = count();
    const fresh = now - seen;
    seen = now;
    sinceCollection += fresh;
    if (fresh === 0 && sinceCollection >= 1000 && gc) {
      sinceCollection = 0;
      gc();
    }
  }, 1000).unref();
}
