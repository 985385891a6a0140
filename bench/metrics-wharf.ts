// A third wharf on the bench's wharf data with Prometheus metrics on (http.debug.addr and
// http.debug.prometheus.enabled): the "manifest GET with metrics" figure (issue: metrics
// cost under 5% of the manifest GET throughput of the same wharf without them).
import { BenchError } from './http.js';
import { freePort, startWharfVariant, type RunningServer, type ServerOptions } from './servers.js';

export interface MetricsWharf {
  server: RunningServer;
  /** The debug address's metrics URL. */
  metricsUrl: string;
}

const MANIFEST_GETS = /^wharf_http_requests_total\{route="manifest",method="GET",status="200"\} (\d+)$/m;

export async function startMetricsWharf(workDir: string, dataDir: string, options: Omit<ServerOptions, 'workDir'>): Promise<MetricsWharf> {
  const debugPort = await freePort();
  const server = await startWharfVariant('metrics', dataDir, { ...options, workDir, label: 'wharf+metrics' }, {
    REGISTRY_HTTP_DEBUG_ADDR: `127.0.0.1:${debugPort}`,
    REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED: 'true',
  });
  const metricsUrl = `http://127.0.0.1:${debugPort}/metrics`;
  try {
    await manifestGets(metricsUrl);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return { server, metricsUrl };
}

/** Manifest GETs answered 200, as the metrics count them (0 before the first). */
export async function manifestGets(metricsUrl: string): Promise<number> {
  const res = await fetch(metricsUrl);
  const text = await res.text();
  if (res.status !== 200 || !text.includes('wharf_http_requests_total')) {
    throw new BenchError(`GET ${metricsUrl}: ${res.status}, ${text.includes('wharf_http_requests_total') ? '' : 'no wharf_http_requests_total'}`);
  }
  return Number(MANIFEST_GETS.exec(text)?.[1] ?? 0);
}
