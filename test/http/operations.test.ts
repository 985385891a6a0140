// Start-up and housekeeping: config files, TLS, stale upload purging, request ids.
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../server/config.js';
import { startRegistryServer, type RunningServer } from '../../server/listen.js';
import { purgeUploads } from '../../storage/upload-purge.js';
import { LocalRegistry } from '../../storage/local-registry.js';
import { FilesystemDriver } from '../../storage/filesystem-driver.js';
import { startServer, type TestServer } from '../support/server.js';
import { RegistryClient } from '../support/client.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const tempDir = async (): Promise<string> => {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-ops-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
};

describe('configuration file', () => {
  it('reads Distribution keys from YAML, env wins, ignored keys are reported', async () => {
    const dir = await tempDir();
    const file = join(dir, 'config.yml');
    await writeFile(file, `version: 0.1\nlog:\n  level: debug\nhttp:\n  addr: :5001\n  secret: s3cret\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n`);
    const config = loadConfig({ file, env: { REGISTRY_HTTP_ADDR: '127.0.0.1:0' } });
    expect(config.log.level).toBe('debug');
    expect(config.http.addr).toBe('127.0.0.1:0');
    expect(config.http.secret).toBe('s3cret');
    expect(config.storage.filesystem?.rootdirectory).toBe(`${dir}/data`);
    expect(config.storage.delete.enabled).toBe(true);
    expect(config.ignoredKeys.map((k) => k.key)).toEqual(['storage.cache.blobdescriptor']);
  });

  it('refuses to start on an unknown key in a file, naming it', async () => {
    const dir = await tempDir();
    const file = join(dir, 'config.yml');
    await writeFile(file, 'version: 0.1\nbogus:\n  key: 1\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(/^bogus: unknown configuration key/);
  });

  it('names the key of a bad value in a file', async () => {
    const dir = await tempDir();
    const file = join(dir, 'config.yml');
    await writeFile(file, 'storage:\n  maintenance:\n    uploadpurging:\n      age: forever\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(/storage\.maintenance\.uploadpurging\.age/);
  });
});

describe('TLS', () => {
  it('serves HTTPS with http.tls.certificate and key', async () => {
    const dir = await tempDir();
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const config = loadConfig({
      env: {
        REGISTRY_HTTP_ADDR: '127.0.0.1:0',
        REGISTRY_LOG_LEVEL: 'silent',
        REGISTRY_HTTP_TLS_CERTIFICATE: join(dir, 'cert.pem'),
        REGISTRY_HTTP_TLS_KEY: join(dir, 'key.pem'),
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'),
      },
    });
    const running: RunningServer = await startRegistryServer(config);
    cleanups.push(() => running.close(500));
    const status = await new Promise<{ code: number; api: string | undefined }>((resolve, reject) => {
      request({ host: '127.0.0.1', port: running.port, path: '/v2/', servername: 'localhost', ca: readFileSync(join(dir, 'cert.pem')) }, (res) => {
        res.resume();
        resolve({ code: res.statusCode!, api: res.headers['docker-distribution-api-version'] as string | undefined });
      }).on('error', reject).end();
    });
    expect(status).toEqual({ code: 200, api: 'registry/2.0' });
  });
});

describe('housekeeping', () => {
  it('purges only upload sessions older than the cut-off', async () => {
    const server: TestServer = await startServer();
    cleanups.push(() => server.close());
    const client = new RegistryClient(server.url);
    await client.pushBlob('team/app', Buffer.from('keep the repository'));
    await client.startUpload('team/app');
    await client.startUpload('team/app');
    const uploads = join(server.root, 'docker/registry/v2/repositories/team/app/_uploads');
    expect(await readdir(uploads)).toHaveLength(2);
    const local = new LocalRegistry(new FilesystemDriver({ rootDirectory: server.root }));
    expect(await purgeUploads(local, { olderThan: new Date(Date.now() - 3600_000) })).toEqual({ scanned: 2, purged: 0, abortedWrites: 0 });
    expect(await purgeUploads(local, { olderThan: new Date(Date.now() + 1000), dryRun: true })).toEqual({ scanned: 2, purged: 2, abortedWrites: 0 });
    expect(await readdir(uploads)).toHaveLength(2);
    expect(await purgeUploads(local, { olderThan: new Date(Date.now() + 1000) })).toEqual({ scanned: 2, purged: 2, abortedWrites: 0 });
    expect(await readdir(uploads)).toHaveLength(0);
  });

  it('echoes a sane X-Request-Id and makes one up otherwise', async () => {
    const server = await startServer();
    cleanups.push(() => server.close());
    const given = await fetch(`${server.url}/v2/`, { headers: { 'X-Request-Id': 'abc-123' } });
    expect(given.headers.get('X-Request-Id')).toBe('abc-123');
    const made = await fetch(`${server.url}/v2/`, { headers: { 'X-Request-Id': 'bad id\twith junk' } });
    expect(made.headers.get('X-Request-Id')).toMatch(/^[0-9a-f-]{36}$/);
  });
});
