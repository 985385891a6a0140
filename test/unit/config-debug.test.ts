// Configuration of the debug address (http.debug) and health checks (health.storagedriver).
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { loadYaml, refusal } from '../support/config-files.js';

describe('http.debug', () => {
  it('is off by default: no debug server', () => {
    const config = loadConfig({ env: {} });
    expect(config.http.debug).toBeUndefined();
    expect(config.health.storagedriver).toEqual({ enabled: false, interval: 10_000, threshold: 1 });
  });

  it("serves Distribution's keys, metrics path defaulting to /metrics", async () => {
    const config = await loadYaml('version: 0.1\nhttp:\n  debug:\n    addr: localhost:5001\n    prometheus:\n      enabled: true\n');
    expect(config.http.debug).toEqual({ addr: 'localhost:5001', prometheus: { enabled: true, path: '/metrics' } });
    expect(config.ignoredKeys).toEqual([]);
    const custom = await loadYaml('http:\n  debug:\n    addr: :5001\n    prometheus: { enabled: true, path: /prom }\n');
    expect(custom.http.debug!.prometheus.path).toBe('/prom');
    expect(loadConfig({ env: { REGISTRY_HTTP_DEBUG_ADDR: ':5001' } }).http.debug).toEqual({
      addr: ':5001',
      prometheus: { enabled: false, path: '/metrics' },
    });
  });

  it('the same from the environment', () => {
    const config = loadConfig({
      env: {
        REGISTRY_HTTP_DEBUG_ADDR: '127.0.0.1:5001',
        REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED: 'true',
        REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH: '/m',
      },
    });
    expect(config.http.debug).toEqual({ addr: '127.0.0.1:5001', prometheus: { enabled: true, path: '/m' } });
    const whole = loadConfig({ env: { REGISTRY_HTTP_DEBUG: '{addr: ":5001", prometheus: {enabled: true}}' } });
    expect(whole.http.debug).toEqual({ addr: ':5001', prometheus: { enabled: true, path: '/metrics' } });
  });

  it('reports metrics enabled without an address as ignored (Distribution serves them on the debug address only)', async () => {
    const config = await loadYaml('http:\n  debug:\n    prometheus:\n      enabled: true\n');
    expect(config.http.debug).toBeUndefined();
    expect(config.ignoredKeys.map((k) => k.key)).toEqual(['http.debug.prometheus']);
  });

  it('refuses unknown keys below http.debug, and bad values, naming the key', async () => {
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DEBUG_PPROF: 'true' } }))).toMatch(/^http\.debug\.pprof \(REGISTRY_HTTP_DEBUG_PPROF\): unknown/);
    await expect(loadYaml('http:\n  debug:\n    addr: :5001\n    tls: { certificate: x }\n')).rejects.toThrow(/^http\.debug\.tls: unknown configuration key/);
    await expect(loadYaml('http:\n  debug:\n    prometheus: { enabled: true, color: red }\n')).rejects.toThrow(/http\.debug\.prometheus\.color: unknown/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DEBUG_ADDR: 'nowhere' } }))).toMatch(/^http\.debug\.addr: expected host:port/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED: 'yes' } }))).toMatch(/http\.debug\.prometheus\.enabled: expected true or false/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DEBUG_ADDR: ':5001', REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH: 'metrics' } }))).toMatch(
      /http\.debug\.prometheus\.path: expected a path/,
    );
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DEBUG_ADDR: ':5001', REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH: '/readyz' } }))).toMatch(
      /http\.debug\.prometheus\.path: \/readyz is a health endpoint/,
    );
  });
});

describe('health', () => {
  it('serves health.storagedriver', async () => {
    const config = await loadYaml('health:\n  storagedriver:\n    enabled: true\n    interval: 30s\n    threshold: 3\n');
    expect(config.health.storagedriver).toEqual({ enabled: true, interval: 30_000, threshold: 3 });
    expect(config.ignoredKeys).toEqual([]);
    const env = loadConfig({
      env: {
        REGISTRY_HEALTH_STORAGEDRIVER_ENABLED: 'true',
        REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL: '500ms',
        REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD: '2',
      },
    });
    expect(env.health.storagedriver).toEqual({ enabled: true, interval: 500, threshold: 2 });
    expect(env.ignoredKeys).toEqual([]);
  });

  it("zero threshold and interval mean Distribution's defaults (the first failure; 10s)", async () => {
    const config = await loadYaml('health:\n  storagedriver:\n    enabled: true\n    interval: 0s\n    threshold: 0\n');
    expect(config.health.storagedriver).toEqual({ enabled: true, interval: 10_000, threshold: 1 });
  });

  it('ignores file, http and tcp checks with a warning', async () => {
    const config = await loadYaml(
      'health:\n  storagedriver:\n    enabled: true\n  file:\n    - file: /tmp/down\n  http:\n    - uri: http://server/health\n  tcp:\n    - addr: db:5432\n',
    );
    expect(config.ignoredKeys.map((k) => k.key).sort()).toEqual(['health.file', 'health.http', 'health.tcp']);
    for (const k of config.ignoredKeys) expect(k.reason).toMatch(/not run/);
    expect(config.health.storagedriver.enabled).toBe(true);
  });

  it('refuses unknown health keys and bad values', async () => {
    await expect(loadYaml('health:\n  storagedriver:\n    enabled: true\n    timeout: 5s\n')).rejects.toThrow(/health\.storagedriver\.timeout: unknown/);
    await expect(loadYaml('health:\n  disk: { path: / }\n')).rejects.toThrow(/health\.disk: unknown/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD: '-1' } }))).toMatch(/health\.storagedriver\.threshold: expected a whole number/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD: 'two' } }))).toMatch(/health\.storagedriver\.threshold/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL: 'often' } }))).toMatch(/health\.storagedriver\.interval: expected a duration/);
  });
});
