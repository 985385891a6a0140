// Configuration fails closed: a key wharf does not implement stops start-up with its name;
// harmless ones are accepted and reported as ignored; the cheap ones work.
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../server/config.js';
import { startRegistryServer, type RunningServer } from '../../server/listen.js';
import { createLogger } from '../../server/logger.js';
import { startServer } from '../support/server.js';
import { loadYaml, refusal, yamlRefusal } from '../support/config-files.js';
import { requireThat } from '../support/tools.js';
import { RegistryClient } from '../support/client.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const tempDir = async (): Promise<string> => {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-config-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
};


// /etc/docker/registry/config.yml as Debian's docker-registry 2.8.2+ds1-1 ships it.
const DEBIAN_CONFIG = `version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: basic-realm
    path: /etc/docker/registry
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
`;

/** Each refused feature: a file form, environment forms, and the key the refusal names. */
const REFUSED: { key: string; yaml: string; env: Record<string, string>[]; says: RegExp }[] = [
  { key: 'auth.silly', yaml: 'auth:\n  silly:\n', env: [{ REGISTRY_AUTH: 'silly' }, { REGISTRY_AUTH_SILLY_REALM: 'r' }], says: /the silly authentication method/ },
  { key: 'auth.ldap', yaml: 'auth:\n  ldap:\n    url: ldap://x\n', env: [{ REGISTRY_AUTH_LDAP_URL: 'ldap://x' }], says: /the ldap authentication method/ },
  ...['azure', 'gcs', 'swift', 'oss', 'inmemory'].map((driver) => ({
    key: `storage.${driver}`,
    yaml: `storage:\n  ${driver}:\n    bucket: b\n  delete:\n    enabled: true\n`,
    env: [{ REGISTRY_STORAGE: driver }, { [`REGISTRY_STORAGE_${driver.toUpperCase()}_BUCKET`]: 'b' }],
    says: new RegExp(`the ${driver} storage driver is not supported .*filesystem or on S3`),
  })),
  { key: 'redis', yaml: 'redis:\n  addr: localhost:6379\n', env: [{ REGISTRY_REDIS_ADDR: 'localhost:6379' }], says: /redis/ },
  {
    key: 'middleware',
    yaml: 'middleware:\n  storage:\n    - name: cloudfront\n      options: { baseurl: https://d.cloudfront.net/ }\n',
    env: [{ REGISTRY_MIDDLEWARE_STORAGE: '[{name: redirect, options: {baseurl: "https://x"}}]' }],
    says: /middleware/,
  },
  {
    key: 'storage.cache.blobdescriptor',
    yaml: 'storage:\n  cache:\n    blobdescriptor: redis\n',
    env: [{ REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR: 'redis' }],
    says: /redis blob descriptor cache/,
  },
  {
    key: 'http.tls.clientcas',
    yaml: 'http:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n    clientcas:\n      - /ca.pem\n',
    env: [{ REGISTRY_HTTP_TLS_CLIENTCAS: '[/ca.pem]' }, { REGISTRY_HTTP_TLS_CLIENTCAS_0: '/ca.pem' }],
    says: /client certificate authentication .*without a certificate/,
  },
  {
    key: 'http.tls.letsencrypt',
    yaml: 'http:\n  tls:\n    letsencrypt:\n      cachefile: /var/cache/le\n      email: a@example.com\n',
    env: [{ REGISTRY_HTTP_TLS_LETSENCRYPT_CACHEFILE: '/var/cache/le' }],
    says: /Let's Encrypt/,
  },
  {
    key: 'http.tls.ciphersuites',
    yaml: 'http:\n  tls:\n    ciphersuites:\n      - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n',
    env: [{ REGISTRY_HTTP_TLS_CIPHERSUITES: '[TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]' }],
    says: /cipher suites/,
  },
  {
    key: 'compatibility.schema1.enabled',
    yaml: 'compatibility:\n  schema1:\n    enabled: true\n',
    env: [{ REGISTRY_COMPATIBILITY_SCHEMA1_ENABLED: 'true' }],
    says: /schema 1/,
  },
  {
    key: 'compatibility.schema1.signingkeyfile',
    yaml: 'compatibility:\n  schema1:\n    signingkeyfile: /etc/registry/key.json\n',
    env: [{ REGISTRY_COMPATIBILITY_SCHEMA1_SIGNINGKEYFILE: '/etc/registry/key.json' }],
    says: /schema 1/,
  },
  {
    key: 'validation.manifests',
    yaml: 'validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://([^/]+\\.)*example\\.com/\n',
    env: [{ REGISTRY_VALIDATION_MANIFESTS_URLS_ALLOW: '["^https://"]' }],
    says: /manifest URL validation/,
  },
];

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('refused configuration', () => {
  for (const { key, yaml, env, says } of REFUSED) {
    it(`${key} (file: ${JSON.stringify(yaml.split('\n')[0])}) stops start-up`, async () => {
      const message = await yamlRefusal(`version: 0.1\n${yaml}`);
      expect(message).toMatch(new RegExp(`^${escape(key)}: `));
      expect(message).toMatch(says);
      expect(message).toMatch(/ is not supported by this version of wharf( \(.+\))?; remove the (section|key) or run a wharf that supports it$/);
    });
    for (const vars of env) {
      it(`${key} (environment: ${Object.keys(vars).join(' ')}) stops start-up`, () => {
        const [name] = Object.keys(vars);
        const message = refusal(() => loadConfig({ env: vars }));
        expect(message).toMatch(new RegExp(`^${escape(key)} \\(${name}\\): `));
        expect(message).toMatch(says);
        expect(message).toContain(`unset ${name} or run a wharf that supports it`);
      });
    }
  }

  it('says what to do, in the documented words', async () => {
    expect(await yamlRefusal('redis:\n  addr: localhost:6379\n')).toBe(
      'redis: redis is not supported by this version of wharf; remove the section or run a wharf that supports it',
    );
  });

  it('names every problem at once, and never a value (secrets stay out of the message)', () => {
    const message = refusal(() =>
      loadConfig({
        env: {
          REGISTRY_STORAGE_AZURE_ACCOUNTKEY: 'topsecret-key',
          REGISTRY_REDIS_PASSWORD: 'topsecret-pass',
          REGISTRY_AUTH_SILLY_REALM: 'topsecret-realm',
        },
      }),
    );
    expect(message.split('\n').map((line) => line.split(':')[0]).sort()).toEqual([
      'auth.silly (REGISTRY_AUTH_SILLY_REALM)',
      'redis (REGISTRY_REDIS_PASSWORD)',
      'storage.azure (REGISTRY_STORAGE_AZURE_ACCOUNTKEY)',
    ]);
    expect(message).not.toContain('topsecret');
  });

  it('refuses unknown keys: typos and settings of a newer Distribution', async () => {
    expect(await yamlRefusal('htpp:\n  addr: :5000\n')).toBe(
      'htpp: unknown configuration key, not supported by this version of wharf (a typo, or a setting of a newer Distribution); ' +
        'remove the section or correct its name',
    );
    expect(await yamlRefusal('http:\n  adress: :5000\n')).toMatch(/^http\.adress: unknown configuration key/);
    expect(await yamlRefusal('storage:\n  filesystem:\n    rootdir: /x\n')).toMatch(/^storage\.filesystem\.rootdir: unknown/);
    expect(await yamlRefusal('HTTP:\n  addr: :5000\n')).toMatch(/^HTTP: unknown/);
    expect(await yamlRefusal('http:\n  h2c:\n    enabled: true\n')).toMatch(/^http\.h2c: unknown/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_ADRESS: ':5000' } }))).toMatch(
      /^http\.adress \(REGISTRY_HTTP_ADRESS\): unknown configuration key.*unset REGISTRY_HTTP_ADRESS or correct its name$/,
    );
    expect(refusal(() => loadConfig({ env: { REGISTRY_STORAGE_DELETE_ENABLED_NOW: 'true' } }))).toMatch(/^storage\.delete\.enabled\.now /);
  });

  it('refuses bad values of keys decided by value, and other configuration versions', async () => {
    expect(await yamlRefusal('storage:\n  cache:\n    blobdescriptor: in-memory\n')).toMatch(/^storage\.cache\.blobdescriptor: expected inmemory or redis/);
    expect(await yamlRefusal('compatibility:\n  schema1:\n    enabled: maybe\n')).toMatch(/^compatibility\.schema1\.enabled: expected true or false/);
    expect(await yamlRefusal('version: 0.2\n')).toMatch(/^version: only configuration version 0\.1/);
    expect(await yamlRefusal('auth: [htpasswd]\n')).toMatch(/^auth: expected a map/);
  });

  it('accepts sections that are present but empty (they configure nothing)', async () => {
    const config = await loadYaml('auth:\nproxy:\nnotifications:\nredis: {}\nmiddleware: {}\nhttp:\n  tls:\n    clientcas: []\n');
    expect(config.ignoredKeys).toEqual([]);
    expect(loadConfig({ env: { REGISTRY_AUTH: '' } }).ignoredKeys).toEqual([]);
  });
});

describe('ignored configuration', () => {
  const IGNORED: [string, string][] = [
    ['log.formatter', 'log:\n  formatter: text\n'],
    ['log.hooks', 'log:\n  hooks:\n    - type: mail\n      levels: [panic]\n'],
    ['log.reportcaller', 'log:\n  reportcaller: true\n'],
    ['reporting', 'reporting:\n  bugsnag:\n    apikey: k\n'],
    ['health.file', 'health:\n  file:\n    - file: /tmp/down\n      interval: 10s\n'],
    ['http.http2', 'http:\n  http2:\n    disabled: false\n'],
    ['http.relativeurls', 'http:\n  relativeurls: true\n'],
    ['storage.filesystem.maxthreads', 'storage:\n  filesystem:\n    maxthreads: 100\n'],
    ['storage.cache.blobdescriptor', 'storage:\n  cache:\n    blobdescriptor: inmemory\n'],
    ['storage.cache.blobdescriptorsize', 'storage:\n  cache:\n    blobdescriptorsize: 10000\n'],
    ['storage.tag.concurrencylimit', 'storage:\n  tag:\n    concurrencylimit: 8\n'],
    ['validation.disabled', 'validation:\n  disabled: true\n'],
    ['validation.enabled', 'validation:\n  enabled: false\n'],
    ['compatibility.schema1.enabled', 'compatibility:\n  schema1:\n    enabled: false\n'],
    ['policy', 'policy:\n  repository:\n    classes: [image]\n'],
  ];
  for (const [key, yaml] of IGNORED) {
    it(`${key} loads, reported as ignored with a reason`, async () => {
      const config = await loadYaml(`version: 0.1\n${yaml}`);
      expect(config.ignoredKeys.map((k) => k.key)).toEqual([key]);
      expect(config.ignoredKeys[0]!.reason).not.toBe('');
    });
  }

  it('the same from the environment', () => {
    const config = loadConfig({
      env: {
        REGISTRY_LOG_FORMATTER: 'json',
        REGISTRY_HEALTH_STORAGEDRIVER_ENABLED: 'true',
        REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR: 'inmemory',
        REGISTRY_COMPATIBILITY_SCHEMA1_ENABLED: 'false',
      },
    });
    expect(config.ignoredKeys.map((k) => k.key).sort()).toEqual([
      'compatibility.schema1.enabled',
      'log.formatter',
      'storage.cache.blobdescriptor',
    ]);
  });

  it('keeps http.secret (served, not ignored)', async () => {
    const config = await loadYaml('http:\n  secret: asecretforlocaldevelopment\n');
    expect(config.http.secret).toBe('asecretforlocaldevelopment');
    expect(config.ignoredKeys).toEqual([]);
    expect(loadConfig({ env: { REGISTRY_HTTP_SECRET: '0x10' } }).http.secret).toBe('0x10');
  });

  it('logs each ignored key once at start-up, as a warning', async () => {
    const dir = await tempDir();
    const config = loadConfig({
      env: {
        REGISTRY_HTTP_ADDR: '127.0.0.1:0',
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'),
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
        REGISTRY_LOG_FORMATTER: 'text',
        REGISTRY_HEALTH_STORAGEDRIVER_ENABLED: 'true',
      },
    });
    const lines: Record<string, unknown>[] = [];
    const running = await startRegistryServer(config, createLogger('info', {}, captureLines(lines)));
    cleanups.push(() => running.close(500));
    const warnings = lines.filter((l) => l.msg === 'configuration key ignored');
    expect(warnings.map((l) => [l.level, l.key]).sort()).toEqual([
      [40, 'log.formatter'],
    ]);
  });
});

describe('environment', () => {
  it('does not take REGISTRY_CONFIGURATION_PATH for a key', () => {
    const config = loadConfig({ env: { REGISTRY_CONFIGURATION_PATH: '/etc/docker/registry/config.yml' } });
    expect(config.ignoredKeys).toEqual([]);
  });

  it('passes over Kubernetes service links of a Service named registry (reported), but not look-alikes', () => {
    const config = loadConfig({
      env: {
        REGISTRY_PORT: 'tcp://10.96.0.12:5000',
        REGISTRY_PORT_5000_TCP: 'tcp://10.96.0.12:5000',
        REGISTRY_PORT_5000_TCP_ADDR: '10.96.0.12',
        REGISTRY_PORT_5000_TCP_PORT: '5000',
        REGISTRY_PORT_5000_TCP_PROTO: 'tcp',
        REGISTRY_SERVICE_HOST: '10.96.0.12',
        REGISTRY_SERVICE_PORT: '5000',
        REGISTRY_SERVICE_PORT_HTTP: '5000',
      },
    });
    expect(config.ignoredKeys).toHaveLength(8);
    expect(config.http.addr).toBe(':5000');
    // Someone who means the port: refused, not silently ignored.
    expect(refusal(() => loadConfig({ env: { REGISTRY_PORT: '6000' } }))).toMatch(/^port \(REGISTRY_PORT\): unknown/);
  });

  it('parses a whole section from YAML, replacing it as Distribution does', async () => {
    const config = loadConfig({ env: { REGISTRY_STORAGE: '{filesystem: {rootdirectory: /srv/registry}, delete: {enabled: true}}' } });
    expect(config.storage.filesystem?.rootdirectory).toBe('/srv/registry');
    expect(config.storage.delete.enabled).toBe(true);
    const replaced = await loadYaml('storage:\n  filesystem:\n    rootdirectory: /from/file\n  delete:\n    enabled: true\n', {
      REGISTRY_STORAGE: 'filesystem',
    });
    expect(replaced.storage.delete.enabled).toBe(false);
    expect(replaced.storage.filesystem?.rootdirectory).not.toBe('/from/file');
    expect(refusal(() => loadConfig({ env: { REGISTRY_STORAGE: '{filesystem: [' } }))).toMatch(/^REGISTRY_STORAGE: not valid YAML/);
  });

  it('sets http.headers: the whole map as YAML, or one header per variable', async () => {
    const file = 'http:\n  headers:\n    X-Content-Type-Options: [nosniff]\n';
    const whole = await loadYaml(file, { REGISTRY_HTTP_HEADERS: '{X-Frame-Options: [DENY], Strict-Transport-Security: [max-age=63072000]}' });
    expect(whole.http.headers).toEqual({ 'X-Frame-Options': ['DENY'], 'Strict-Transport-Security': ['max-age=63072000'] });
    const one = await loadYaml(file, {
      REGISTRY_HTTP_HEADERS_X_FRAME_OPTIONS: 'DENY',
      REGISTRY_HTTP_HEADERS_ACCESS_CONTROL_ALLOW_METHODS: '[GET, HEAD]',
      REGISTRY_HTTP_HEADERS_X_CONTENT_TYPE_OPTIONS: '[nosniff, other]',
    });
    expect(one.http.headers).toEqual({
      'X-Content-Type-Options': ['nosniff', 'other'],
      'X-Frame-Options': ['DENY'],
      'Access-Control-Allow-Methods': ['GET', 'HEAD'],
    });
    expect(one.ignoredKeys).toEqual([]);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_HEADERS: '{"Bad Name": [x]}' } }))).toMatch(/not a valid header name/);
  });

  it('puts headers from the environment on responses, errors included', async () => {
    const server = await startServer({ env: { REGISTRY_HTTP_HEADERS_X_FRAME_OPTIONS: 'DENY', REGISTRY_HTTP_HEADERS: '{X-Team: [a, b]}' } });
    cleanups.push(() => server.close());
    for (const path of ['/v2/', '/v2/no/such/manifests/latest']) {
      const res = await fetch(`${server.url}${path}`);
      expect(res.headers.get('x-frame-options')).toBe('DENY');
      expect(res.headers.get('x-team')).toBe('a, b');
    }
  });
});

describe('implemented keys', () => {
  it('serves on a unix socket with http.net: unix', async () => {
    const dir = await tempDir();
    const socketPath = join(dir, 'wharf.sock');
    const config = loadConfig({
      env: {
        REGISTRY_HTTP_NET: 'unix',
        REGISTRY_HTTP_ADDR: socketPath,
        REGISTRY_HTTP_HEADERS_X_FRAME_OPTIONS: 'DENY',
        REGISTRY_LOG_LEVEL: 'silent',
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'),
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
      },
    });
    expect(config.http.net).toBe('unix');
    const running: RunningServer = await startRegistryServer(config);
    cleanups.push(() => running.close(500));
    expect(running.port).toBe(0);
    const res = await new Promise<{ status: number; headers: IncomingHttpHeaders; body: string }>((resolve, reject) => {
      httpRequest({ socketPath, path: '/v2/', method: 'GET' }, (response) => {
        let body = '';
        response.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body }));
      })
        .on('error', reject)
        .end();
    });
    expect(res).toMatchObject({ status: 200, body: '{}' });
    expect(res.headers['docker-distribution-api-version']).toBe('registry/2.0');
    expect(res.headers['x-frame-options']).toBe('DENY');
  });

  it('checks http.net and http.addr', () => {
    expect(loadConfig({ env: {} }).http.net).toBe('tcp');
    expect(loadConfig({ env: { REGISTRY_HTTP_NET: 'tcp' } }).http.net).toBe('tcp');
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_NET: 'udp' } }))).toMatch(/^http\.net: expected tcp or unix/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_NET: 'unix' } }))).toMatch(/^http\.addr: with http\.net: unix/);
  });

  it('takes http.draintimeout as the shutdown grace period', async () => {
    expect(loadConfig({ env: {} }).http.draintimeout).toBe(25_000);
    expect((await loadYaml('http:\n  draintimeout: 60s\n')).http.draintimeout).toBe(60_000);
    expect(loadConfig({ env: { REGISTRY_HTTP_DRAINTIMEOUT: '0s' } }).http.draintimeout).toBe(0);
    expect(refusal(() => loadConfig({ env: { REGISTRY_HTTP_DRAINTIMEOUT: 'a while' } }))).toMatch(/^http\.draintimeout: expected a duration/);
  });

  it('maps http.tls.minimumtls to the lowest TLS version served; refuses 1.0 and 1.1', async () => {
    const tls = 'http:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n';
    expect((await loadYaml(tls)).http.tls?.minimumtls).toBe('TLSv1.2');
    expect((await loadYaml(`${tls}    minimumtls: tls1.3\n`)).http.tls?.minimumtls).toBe('TLSv1.3');
    expect(await yamlRefusal(`${tls}    minimumtls: tls1.0\n`)).toMatch(/^http\.tls\.minimumtls: tls1\.0 is not supported .*set tls1\.2 or tls1\.3$/);
    expect(await yamlRefusal(`${tls}    minimumtls: tls1.1\n`)).toMatch(/^http\.tls\.minimumtls: tls1\.1 is not supported/);
    expect(await yamlRefusal(`${tls}    minimumtls: ssl3\n`)).toMatch(/^http\.tls\.minimumtls: expected tls1\.2 or tls1\.3/);
  });

  it('refuses TLS 1.2 clients with minimumtls: tls1.3', async () => {
    const dir = await tempDir();
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const config = loadConfig({
      env: {
        REGISTRY_HTTP_ADDR: '127.0.0.1:0',
        REGISTRY_LOG_LEVEL: 'silent',
        REGISTRY_HTTP_TLS_CERTIFICATE: join(dir, 'cert.pem'),
        REGISTRY_HTTP_TLS_KEY: join(dir, 'key.pem'),
        REGISTRY_HTTP_TLS_MINIMUMTLS: 'tls1.3',
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'),
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
      },
    });
    const running = await startRegistryServer(config);
    cleanups.push(() => running.close(500));
    const handshake = (maxVersion: 'TLSv1.2' | 'TLSv1.3'): Promise<string> =>
      new Promise((resolve) => {
        const socket = tlsConnect({ host: '127.0.0.1', port: running.port, servername: 'localhost', rejectUnauthorized: false, maxVersion }, () => {
          resolve(socket.getProtocol() ?? 'none');
          socket.end();
        });
        socket.on('error', () => resolve('refused'));
      });
    expect(await handshake('TLSv1.3')).toBe('TLSv1.3');
    expect(await handshake('TLSv1.2')).toBe('refused');
  });

  it('adds log.fields to every log line', async () => {
    const config = await loadYaml('log:\n  fields:\n    service: registry\n    environment: staging\n', { REGISTRY_LOG_FIELDS_REGION: 'eu' });
    expect(config.log.fields).toEqual({ service: 'registry', environment: 'staging', region: 'eu' });
    const lines: Record<string, unknown>[] = [];
    createLogger('info', config.log.fields, captureLines(lines)).info('hello');
    expect(lines[0]).toMatchObject({ msg: 'hello', service: 'registry', environment: 'staging', region: 'eu' });
    expect(loadConfig({ env: { REGISTRY_LOG_FIELDS: '{environment: prod}' } }).log.fields).toEqual({ environment: 'prod' });
    expect(await yamlRefusal('log:\n  fields:\n    level: x\n')).toMatch(/^log\.fields\.level: wharf writes this field itself/);
  });

  it('caps the catalog page at catalog.maxentries', async () => {
    expect(loadConfig({ env: {} }).catalog.maxentries).toBe(10_000);
    expect(loadConfig({ env: { REGISTRY_CATALOG_MAXENTRIES: '0' } }).catalog.maxentries).toBe(10_000);
    expect(refusal(() => loadConfig({ env: { REGISTRY_CATALOG_MAXENTRIES: 'many' } }))).toMatch(/^catalog\.maxentries: expected a whole number/);
    const server = await startServer({ env: { REGISTRY_CATALOG_MAXENTRIES: '2' } });
    cleanups.push(() => server.close());
    const client = new RegistryClient(server.url);
    for (const repo of ['a/app', 'b/app', 'c/app']) await client.pushImage(repo, 'v1', [Buffer.from(repo)]);
    for (const query of ['', '?n=100']) {
      const res = await fetch(`${server.url}/v2/_catalog${query}`);
      expect(((await res.json()) as { repositories: string[] }).repositories).toEqual(['a/app', 'b/app']);
      expect(res.headers.get('Link')).toContain('last=b%2Fapp');
    }
  });
});

describe("Debian's docker-registry config.yml", () => {
  // Debian's file turns on htpasswd authentication with `path: /etc/docker/registry`, a
  // directory (Distribution refuses to start on it too): it loads, but starting refuses,
  // naming the key, rather than serving open; without the auth section it serves.
  async function expectDebian(yaml: string): Promise<void> {
    const withAuth = await loadYaml(yaml);
    expect(withAuth.auth).toEqual({ method: 'htpasswd', realm: 'basic-realm', path: '/etc/docker/registry' });
    const root = mkdtempSync(join(tmpdir(), 'wharf-debian-'));
    try {
      const started = startRegistryServer(
        { ...withAuth, http: { ...withAuth.http, addr: '127.0.0.1:0' }, storage: { ...withAuth.storage, driver: 'filesystem', filesystem: { fsync: true, rootdirectory: root }, s3: undefined } },
        createLogger('silent'),
      );
      await expect(started).rejects.toThrow(/^auth\.htpasswd\.path: cannot read the htpasswd file \/etc\/docker\/registry/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
    const withoutAuth = yaml.replace(/^auth:\n(?: .*\n)*/m, '');
    expect(withoutAuth).not.toContain('htpasswd');
    const config = await loadYaml(withoutAuth);
    expect(config.log.fields).toEqual({ service: 'registry' });
    expect(config.storage.filesystem?.rootdirectory).toBe('/var/lib/docker-registry');
    expect(config.storage.delete.enabled).toBe(true);
    expect(config.http.addr).toBe(':5000');
    expect(config.http.headers).toEqual({ 'X-Content-Type-Options': ['nosniff'] });
    expect(config.ignoredKeys.map((k) => k.key).sort()).toEqual(['storage.cache.blobdescriptor']);
  }

  it('as shipped (fixture): starting refuses its htpasswd path, naming the key', () => expectDebian(DEBIAN_CONFIG));

  // Debian's docker-registry ships the file; CI installs it, so there this never skips.
  const installed = requireThat(existsSync('/etc/docker/registry/config.yml'), 'no /etc/docker/registry/config.yml', 'apt-get install -y docker-registry');
  it.skipIf(!installed)('the installed /etc/docker/registry/config.yml', async () => {
    await expectDebian(readFileSync('/etc/docker/registry/config.yml', 'utf8'));
  });
});

/** A pino destination that parses each JSON line into `lines`. */
function captureLines(lines: Record<string, unknown>[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
}

describe('proxy (the pull-through mirror)', () => {
  it("reads Distribution's keys, file and environment", () => {
    const config = loadConfig({
      env: {
        REGISTRY_PROXY_REMOTEURL: 'https://registry-1.docker.io/',
        REGISTRY_PROXY_USERNAME: 'bot',
        REGISTRY_PROXY_PASSWORD: 'secret',
        REGISTRY_PROXY_TTL: '10m',
      },
    });
    expect(config.proxy).toMatchObject({
      defaultUpstream: { host: 'docker.io', urls: ['https://registry-1.docker.io'], username: 'bot', password: 'secret' },
      upstreams: [],
      ttl: 600_000,
      localnamespaces: [],
      prefetch: true,
    });
    expect(loadConfig({ env: {} }).proxy).toBeUndefined();
  });

  it("reads wharf's upstreams, local namespaces and cache size", () => {
    const config = loadConfig({
      env: {
        REGISTRY_PROXY_UPSTREAMS: '{ghcr.io: {urls: [https://a.example, https://b.example], username: u, password: p, maxconnections: 4, repositories: ["org/**"]}, "quay.io": {}}',
        REGISTRY_PROXY_LOCALNAMESPACES: 'team/,infra/',
        REGISTRY_PROXY_CACHESIZE: '20GiB',
        REGISTRY_PROXY_PREFETCH: 'false',
      },
    });
    expect(config.proxy?.defaultUpstream).toBeUndefined();
    expect(config.proxy?.upstreams).toEqual([
      { host: 'ghcr.io', urls: ['https://a.example', 'https://b.example'], username: 'u', password: 'p', maxconnections: 4, repositories: ['org/**'] },
      { host: 'quay.io', urls: ['https://quay.io'], username: undefined, password: undefined, maxconnections: 16, repositories: undefined },
    ]);
    expect(config.proxy?.localnamespaces).toEqual(['team/', 'infra/']);
    expect(config.proxy?.cachesize).toBe(20 * 2 ** 30);
    expect(config.proxy?.prefetch).toBe(false);
  });

  it('refuses what it cannot do, naming the key', () => {
    const refused: [Record<string, string>, RegExp][] = [
      [{ REGISTRY_PROXY_REMOTEURL: 'ftp://x' }, /proxy\.remoteurl: expected an http or https URL/],
      [{ REGISTRY_PROXY_REMOTEURL: 'https://u:p@registry.example' }, /proxy\.remoteurl: put credentials in username and password/],
      [{ REGISTRY_PROXY_USERNAME: 'bot' }, /proxy\.username: set proxy\.remoteurl or proxy\.upstreams/],
      [{ REGISTRY_PROXY_UPSTREAMS: '{ghcr.io: {bandwidth: 10}}' }, /proxy\.upstreams\.ghcr\.io\.bandwidth: unknown upstream setting/],
      [{ REGISTRY_PROXY_UPSTREAMS: '{ghcr.io: {}}', REGISTRY_PROXY_PASSWORD: 'p' }, /proxy\.password: belongs to proxy\.remoteurl/],
      [{ REGISTRY_PROXY_REMOTEURL: 'https://r.example', REGISTRY_PROXY_CACHESIZE: 'lots' }, /proxy\.cachesize: expected a size/],
      [{ REGISTRY_PROXY_REMOTEURL: 'https://r.example', REGISTRY_PROXY_SCHEDULER: 'x' }, /proxy\.scheduler.*unknown configuration key/],
    ];
    for (const [env, message] of refused) expect(() => loadConfig({ env }), JSON.stringify(env)).toThrow(message);
  });
});

describe('auth', () => {
  it('reads htpasswd and token settings, file and environment', async () => {
    expect(loadConfig({ env: { REGISTRY_AUTH_HTPASSWD_REALM: 'r', REGISTRY_AUTH_HTPASSWD_PATH: '/etc/htpasswd' } }).auth).toEqual({
      method: 'htpasswd',
      realm: 'r',
      path: '/etc/htpasswd',
    });
    const token = await loadYaml(
      'auth:\n  token:\n    realm: https://auth.example.com/token\n    service: registry.example.com\n    issuer: auth.example.com\n    rootcertbundle: /certs/ca.pem\n    signingalgorithms: [ES256, RS256]\n',
    );
    expect(token.auth).toMatchObject({ method: 'token', service: 'registry.example.com', issuer: 'auth.example.com', rootcertbundle: '/certs/ca.pem', signingalgorithms: ['ES256', 'RS256'], autoredirect: false });
    const server = loadConfig({
      env: {
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: '/srv/registry',
        REGISTRY_AUTH_TOKEN: '{realm: "https://r.example/auth/token", service: r.example, issuer: wharf}',
        REGISTRY_AUTH_TOKENSERVER: '{htpasswd: /etc/htpasswd, expiration: 10m, rules: [{anonymous: true, repositories: ["public/**"], actions: [pull]}]}',
      },
    }).auth;
    expect(server).toMatchObject({ method: 'token', server: { htpasswd: '/etc/htpasswd', keydir: '/srv/registry/wharf/token', expiration: 600_000 } });
    expect(loadConfig({ env: {} }).auth).toBeUndefined();
  });

  it('refuses what it cannot enforce, naming the key', async () => {
    const refused: [Record<string, string>, RegExp][] = [
      [{ REGISTRY_AUTH: 'htpasswd' }, /^auth\.htpasswd\.realm: required/],
      [{ REGISTRY_AUTH_HTPASSWD_REALM: 'r' }, /^auth\.htpasswd\.path: required/],
      [{ REGISTRY_AUTH_HTPASSWD_REALM: 'r', REGISTRY_AUTH_HTPASSWD_PATH: '/p', REGISTRY_AUTH_HTPASSWD_CACHE: '1' }, /^auth\.htpasswd\.cache: unknown setting/],
      [{ REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/t", service: s, issuer: i}' }, /^auth\.token: set rootcertbundle or jwks/],
      [{ REGISTRY_AUTH_TOKEN: '{realm: /relative, service: s, issuer: i, jwks: /j}' }, /^auth\.token\.realm: expected an absolute/],
      [{ REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/t", service: s, issuer: i, jwks: /j, signingalgorithms: [HS256]}' }, /signingalgorithms: "HS256" is not supported/],
      [{ REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/t", service: s, issuer: i, jwks: /j, autoredirectpath: /x}' }, /^auth\.token\.autoredirectpath: unknown setting/],
      [{ REGISTRY_AUTH_TOKENSERVER: '{htpasswd: /h}' }, /^auth\.tokenserver: set auth\.token too/],
      [{ REGISTRY_AUTH_HTPASSWD: '{realm: r, path: /p}', REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/t", service: s, issuer: i, jwks: /j}' }, /^auth: configure one method/],
      [
        { REGISTRY_AUTH_TOKEN: '{realm: "https://a.example/t", service: s, issuer: i}', REGISTRY_AUTH_TOKENSERVER: '{htpasswd: /h, rules: [{account: a, group: g, repositories: [x], actions: [pull]}]}' },
        /rules\[0\]: give exactly one of account, group or anonymous/,
      ],
    ];
    for (const [env, message] of refused) expect(() => loadConfig({ env }), JSON.stringify(env)).toThrow(message);
  });
});

describe('storage: s3', () => {
  const S3_YAML = [
    'storage:',
    '  s3:',
    '    region: us-east-1',
    '    regionendpoint: http://127.0.0.1:7480',
    '    bucket: registry',
    '    rootdirectory: /wharf',
    '    accesskey: AKIAEXAMPLE',
    '    secretkey: verysecret',
    '    forcepathstyle: true',
    '    secure: "false"',
    '    chunksize: 5242880',
    '    multipartcopythresholdsize: "33554432"',
    '    storageclass: REDUCED_REDUNDANCY',
    '    objectacl: private',
    '    useragent: something',
    '  redirect:',
    '    disable: true',
    '',
  ].join('\n');

  it("reads Distribution's keys from a file", async () => {
    const config = await loadYaml(S3_YAML);
    expect(config.storage.driver).toBe('s3');
    expect(config.storage.filesystem).toBeUndefined();
    expect(config.storage.s3).toEqual({
      region: 'us-east-1',
      regionendpoint: 'http://127.0.0.1:7480',
      bucket: 'registry',
      rootdirectory: '/wharf',
      accesskey: 'AKIAEXAMPLE',
      secretkey: 'verysecret',
      forcepathstyle: true,
      secure: false,
      chunksize: 5242880,
      multipartcopythresholdsize: 33554432,
      storageclass: 'REDUCED_REDUNDANCY',
    });
    expect(config.storage.redirect.disable).toBe(true);
    expect(config.ignoredKeys.map((k) => k.key).sort()).toEqual(['storage.s3.useragent']);
  });

  it('reads the environment form, and redirects by default as Distribution does on S3', () => {
    const config = loadConfig({
      env: {
        REGISTRY_STORAGE: 's3',
        REGISTRY_STORAGE_S3_REGION: 'eu-west-1',
        REGISTRY_STORAGE_S3_BUCKET: 'b',
        REGISTRY_STORAGE_S3_ENCRYPT: 'true',
        REGISTRY_STORAGE_S3_KEYID: 'arn:aws:kms:key',
      },
    });
    expect(config.storage).toMatchObject({ driver: 's3', s3: { region: 'eu-west-1', bucket: 'b', encrypt: true, keyid: 'arn:aws:kms:key' } });
    expect(config.storage.redirect.disable).toBe(false);
    // Keys alone select S3 too.
    expect(loadConfig({ env: { REGISTRY_STORAGE_S3_REGION: 'r', REGISTRY_STORAGE_S3_BUCKET: 'b' } }).storage.driver).toBe('s3');
  });

  it('never falls back to the local disk: s3 without its settings, or two drivers, stop start-up', async () => {
    expect(await yamlRefusal('storage: s3\n')).toMatch(/^storage\.s3\.bucket: required/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_STORAGE: 's3' } }))).toMatch(/^storage\.s3\.bucket: required/);
    expect(refusal(() => loadConfig({ env: { REGISTRY_STORAGE_S3_BUCKET: 'b' } }))).toMatch(/^storage\.s3\.region: required/);
    const both = await loadYaml('storage:\n  filesystem:\n    rootdirectory: /data\n').catch((err: Error) => err);
    expect(both).not.toBeInstanceOf(Error);
    expect(
      refusal(() => loadConfig({ env: { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: '/data', REGISTRY_STORAGE_S3_REGION: 'r', REGISTRY_STORAGE_S3_BUCKET: 'b' } })),
    ).toMatch(/^storage: both filesystem \(storage\.filesystem\.rootdirectory\) and s3 are configured/);
  });

  it('refuses what it cannot honour, naming the setting', async () => {
    const base = 'storage:\n  s3:\n    region: r\n    bucket: b\n';
    expect(await yamlRefusal(`${base}    bucketname: typo\n`)).toMatch(/^storage\.s3\.bucketname: unknown setting/);
    expect(await yamlRefusal(`${base}    objectacl: public-read\n`)).toMatch(/^storage\.s3\.objectacl: object ACLs other than private/);
    expect(await yamlRefusal(`${base}    accelerate: true\n`)).toMatch(/^storage\.s3\.accelerate:/);
    expect(await yamlRefusal(`${base}    v4auth: false\n`)).toMatch(/^storage\.s3\.v4auth: signature version 2/);
    expect(await yamlRefusal(`${base}    accesskey: a\n`)).toMatch(/^storage\.s3: accesskey and secretkey go together/);
    expect(await yamlRefusal(`${base}    chunksize: lots\n`)).toMatch(/^storage\.s3\.chunksize: expected a whole number/);
    // The token server keeps its key under the filesystem root by default: on S3 it must be given.
    const token = 'auth:\n  token:\n    realm: http://r/auth/token\n    service: s\n    issuer: i\n  tokenserver:\n    htpasswd: /etc/htpasswd\n';
    expect(await yamlRefusal(`${base}${token}`)).toMatch(/^auth\.tokenserver\.keydir: required with S3 storage/);
  });

  it('stops start-up on sizes S3 cannot take, naming the setting', async () => {
    const config = await loadYaml('storage:\n  s3:\n    region: r\n    bucket: b\n    chunksize: 1048576\nhttp:\n  addr: 127.0.0.1:0\n');
    await expect(startRegistryServer(config, createLogger('silent'))).rejects.toThrow(/^storage\.s3: chunksize must be between 5242880/);
  });
});
