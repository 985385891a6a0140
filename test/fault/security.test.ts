// Security: path traversal in every path parameter (repository name, digest, upload id,
// tag, and the mount/from query) never reaches outside the storage root, which lives alone
// in a fresh parent directory; error answers never show internal paths or stack traces,
// even for failures inside the store; and neither `http.secret` nor credentials from an
// Authorization header appear in the logs, captured at debug level.
import { mkdir, mkdtemp, readdir, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient, randomBlob } from '../support/client.js';
import { describeCase, encodeCase, type FuzzCase } from '../support/fault-fuzz-cases.js';
import { rawRequest, spawnWharf, type RawResponse, type WharfProcess } from '../support/fault-process.js';
import { checkStore, listFiles, V2 } from '../support/fault-store.js';

const SECRET = `wharf-http-secret-${Math.random().toString(36).slice(2)}`;
const PASSWORD = `pw-${Math.random().toString(36).slice(2)}`;
const BASIC = Buffer.from(`admin:${PASSWORD}`).toString('base64');
const BEARER = `eyJhbGciOiJub25lIn0.${Buffer.from(`{"sub":"${PASSWORD}"}`).toString('base64url')}.`;
const VICTIM = `victim-content-${Math.random().toString(36).slice(2)}`;

let parent = '';
let outside = '';
let root = '';
let wharf: WharfProcess;
let client: RegistryClient;
let digests: string[] = [];
let manifestBody = '';
const answers: { c: FuzzCase; res: RawResponse }[] = [];

function traversals(): string[] {
  return [
    '..', '../..', '../../..', '../victim', `../../${outside.split('/').pop()}/victim.txt`, '..%2f..%2f..', '%2e%2e', '%2e%2e%2f%2e%2e',
    '%252e%252e%252f', '..%5c..%5c', '..\\..\\', '....//....//', '..;/..;/', '%c0%ae%c0%ae%2f', '.%2e/.%2e', '%2e./%2e.',
    '/etc/passwd', '%2fetc%2fpasswd', root, `${root}/docker/registry/v2/blobs`, outside, `${outside}/victim.txt`, '~', '~root',
    'a/../../../../..', 'a/%2e%2e/%2e%2e/%2e%2e', 'sec/app/../../..', 'sec/app/_layers/../../..', 'sha256:../../../..',
    `sha256:${'0'.repeat(62)}/..`, '\u2025/\u2025', '%00../..', 'a%00/../..',
  ];
}

function cases(): FuzzCase[] {
  const out: FuzzCase[] = [];
  const [manifest, config] = digests;
  const manifestHeaders: [string, string][] = [['Content-Type', 'application/vnd.oci.image.manifest.v1+json']];
  const body = Buffer.from(manifestBody);
  const small = Buffer.from('traversal');
  for (const t of traversals()) {
    const add = (method: string, target: string, b?: Buffer, headers?: [string, string][]): void => void out.push({ category: 'traversal', method, target, body: b, headers });
    // Repository name.
    for (const [method, tail, b] of [['GET', '/tags/list'], ['GET', '/manifests/v1'], ['PUT', '/manifests/v1', body], ['DELETE', '/manifests/v1'],
      ['GET', `/blobs/${config}`], ['DELETE', `/blobs/${config}`], ['POST', '/blobs/uploads/'], ['POST', `/blobs/uploads/?digest=${config}`, small],
      ['GET', `/referrers/${manifest}`]] as [string, string, Buffer?][]) {
      add(method, `/v2/${t}${tail}`, b, method === 'PUT' ? manifestHeaders : undefined);
      add(method, `/v2/sec/${t}${tail}`, b, method === 'PUT' ? manifestHeaders : undefined);
    }
    // Digest and tag (reference).
    for (const method of ['GET', 'HEAD', 'DELETE']) add(method, `/v2/sec/app/blobs/${t}`);
    for (const method of ['GET', 'HEAD', 'DELETE']) add(method, `/v2/sec/app/manifests/${t}`);
    add('PUT', `/v2/sec/app/manifests/${t}`, body, manifestHeaders);
    add('GET', `/v2/sec/app/referrers/${t}`);
    add('POST', `/v2/sec/app/blobs/uploads/?digest=${t}`, small);
    // Upload id.
    for (const method of ['GET', 'PATCH', 'PUT', 'DELETE']) add(method, `/v2/sec/app/blobs/uploads/${t}${method === 'PUT' ? `?digest=${config}` : ''}`, small);
    // mount / from.
    add('POST', `/v2/sec/new/blobs/uploads/?mount=${config}&from=${t}`);
    add('POST', `/v2/sec/new/blobs/uploads/?mount=${t}&from=sec/app`);
    add('POST', `/v2/sec/new/blobs/uploads/?mount=${encodeURIComponent(t)}&from=${encodeURIComponent(t)}`);
  }
  return out;
}

/** Internal details a body must not show, unless the request itself carried them (echoed input). */
function leaks(c: FuzzCase, body: string): string[] {
  let sent = typeof c.target === 'string' ? c.target : c.target.toString('latin1');
  try {
    sent += ` ${decodeURIComponent(sent)}`;
  } catch {
    // not decodable: compare the raw form only
  }
  const found = [root, parent, outside, VICTIM, `${tmpdir()}/`, 'docker/registry/v2', '_uploads/', 'Error:', 'node:internal', 'node_modules']
    .filter((s) => body.includes(s) && !sent.includes(s));
  if (/\n\s+at |\bat [^\s]+ \(.*:\d+:\d+\)/.test(body)) found.push('stack trace');
  return found;
}

beforeAll(async () => {
  parent = await mkdtemp(join(tmpdir(), 'wharf-sec-'));
  outside = await mkdtemp(join(tmpdir(), 'wharf-sec-outside-'));
  root = join(parent, 'root');
  await writeFile(join(outside, 'victim.txt'), VICTIM);
  const config = join(outside, 'config.yml');
  await writeFile(config, `version: 0.1\nlog:\n  level: debug\nhttp:\n  secret: ${SECRET}\nstorage:\n  delete:\n    enabled: true\n`);
  wharf = await spawnWharf({ root, configFile: config, logLevel: 'debug', outputLimit: 64 << 20 });
  client = new RegistryClient(wharf.base);
  const image = await client.pushImage('sec/app', 'v1', [randomBlob(1000)]);
  digests = [image.digest, image.manifest.config.digest, image.manifest.layers[0]!.digest];
  manifestBody = image.body.toString();
  await client.pushImage('sec/other', 'v1', [randomBlob(1000)]);
}, 60_000);

afterAll(async () => {
  await wharf?.kill();
  for (const dir of [parent, outside]) if (dir) await rm(dir, { recursive: true, force: true });
});

describe('security', () => {
  it('keeps every path built from a request inside the storage root', { timeout: 60_000 }, async () => {
    const all = cases();
    for (let i = 0; i < all.length; i += 16) {
      await Promise.all(all.slice(i, i + 16).map(async (c) => answers.push({ c, res: await rawRequest(wharf.port, [encodeCase(c)], { timeoutMs: 10_000 }) })));
    }
    console.log(`[security] ${all.length} traversal requests: ${[...new Set(answers.map((a) => a.res.status))].sort().join(', ')}`);
    expect(wharf.alive()).toBe(true);
    // Nothing was created next to the root or next to the victim file.
    expect(await readdir(parent)).toEqual(['root']);
    expect((await readdir(outside)).sort()).toEqual(['config.yml', 'victim.txt']);
    // Inside the root: only the registry tree, only safe path segments.
    const files = await listFiles(root);
    const odd = files.filter((f) => !f.startsWith(`${V2}/`) || f.split('/').some((s) => !/^[A-Za-z0-9._:-]+$/.test(s) || s === '..' || s === '.'));
    expect(odd).toEqual([]);
    const repos = new Set((await listFiles(join(root, V2, 'repositories'))).map((f) => f.slice(0, f.search(/\/_/))));
    expect([...repos].filter((r) => !['sec/app', 'sec/other', 'sec/new'].includes(r))).toEqual([]);
    // No traversal request succeeded in writing: only the tags pushed on purpose exist.
    expect(await (await client.fetch('/v2/sec/app/tags/list')).json()).toEqual({ name: 'sec/app', tags: ['v1'] });
    const linked = await listFiles(join(root, V2, 'repositories/sec'));
    expect(linked.filter((f) => f.startsWith('new/') && !f.includes('/_uploads/'))).toEqual([]);
    expect((await checkStore(root)).problems).toEqual([]);
    for (const { c, res } of answers) {
      expect(res.status, describeCase(c)).toBeDefined();
      expect(res.status!, `${describeCase(c)} -> ${res.body.slice(0, 200)}`).toBeLessThan(500);
      if (res.status === 200 || res.status === 201 || res.status === 202) {
        // Only new upload sessions may start (POST with a name that is valid after all, or a mount that falls back).
        expect(c.method, `${describeCase(c)} was accepted: ${res.status}`).toMatch(/^(GET|HEAD|POST)$/);
      }
      expect(res.body.includes(VICTIM), describeCase(c)).toBe(false);
    }
  });

  it('shows no internal path, stack trace or error text in any answer', async () => {
    const bad = answers.map(({ c, res }) => ({ c, found: leaks(c, res.body) })).filter((x) => x.found.length > 0);
    expect(bad.slice(0, 10).map(({ c, found }) => `${describeCase(c)}: ${found.join(', ')}`)).toEqual([]);
  });

  it('answers failures inside the store with a generic error that names no path', async () => {
    // A repository whose stored bytes are broken in ways that make the filesystem
    // report errors carrying full paths (ELOOP: a symlink to itself).
    const image = await client.pushImage('sec/broken', 'v1', [randomBlob(500)]);
    const layer = image.manifest.layers[0]!.digest.slice(7);
    const manifest = image.digest.slice(7);
    for (const hex of [layer, manifest]) {
      const data = join(root, V2, 'blobs/sha256', hex.slice(0, 2), hex, 'data');
      await unlink(data);
      await symlink(data, data);
    }
    await mkdir(join(root, V2, 'repositories/sec/broken/_manifests/tags/loop/current'), { recursive: true });
    const tagLink = join(root, V2, 'repositories/sec/broken/_manifests/tags/loop/current/link');
    await symlink(tagLink, tagLink);
    // A fresh process: nothing cached.
    await wharf.kill();
    wharf = await spawnWharf({ root, configFile: join(outside, 'config.yml'), logLevel: 'debug', outputLimit: 64 << 20 });
    client = new RegistryClient(wharf.base);
    const targets = [`/v2/sec/broken/blobs/sha256:${layer}`, `/v2/sec/broken/manifests/v1`, `/v2/sec/broken/manifests/sha256:${manifest}`, '/v2/sec/broken/manifests/loop'];
    for (const target of targets) {
      const res = await client.fetch(target, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      const body = await res.text();
      expect(res.status, `${target}: ${body}`).toBeGreaterThanOrEqual(400);
      expect(leaks({ category: 'broken', method: 'GET', target }, body), `${target}: ${body}`).toEqual([]);
    }
    // The log, for operators, does name the failure.
    expect(wharf.output()).toMatch(/ELOOP/);
    for (const hex of [layer, manifest]) await unlink(join(root, V2, 'blobs/sha256', hex.slice(0, 2), hex, 'data'));
    await rm(join(root, V2, 'repositories/sec/broken'), { recursive: true });
  });

  it('never writes http.secret or credentials to the logs (debug level)', async () => {
    const auth = [`Basic ${BASIC}`, `Bearer ${BEARER}`, `Basic ${Buffer.from(`${SECRET}:${SECRET}`).toString('base64')}`];
    for (const authorization of auth) {
      for (const path of ['/v2/', '/v2/sec/app/tags/list', '/v2/sec/app/manifests/v1', '/v2/sec/app/blobs/sha256:bad', '/v2/NOPE/tags/list', `/v2/_catalog?n=x`]) {
        const res = await client.fetch(path, { headers: { Authorization: authorization, 'Proxy-Authorization': authorization, Cookie: `session=${PASSWORD}` } });
        await res.arrayBuffer();
      }
      await client.fetch('/v2/sec/app/blobs/uploads/', { method: 'POST', headers: { Authorization: authorization } }).then((r) => r.arrayBuffer());
      await rawRequest(wharf.port, [`GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: ${authorization}\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`]);
      await rawRequest(wharf.port, [`GARBAGE\r\nAuthorization: ${authorization}\r\n\r\n`]);
    }
    await wharf.stop();
    const logs = wharf.output();
    expect(logs.split('\n').filter((l) => l.includes('"level":20')).length, 'debug lines were captured').toBeGreaterThan(0);
    expect(logs).toMatch(/"method":"GET"/);
    for (const secret of [SECRET, PASSWORD, BASIC, BEARER, Buffer.from(SECRET).toString('base64').slice(0, 12)]) {
      expect(logs.includes(secret), `the logs contain ${secret.slice(0, 12)}...`).toBe(false);
    }
  });
});
