// Shared pieces of the conformance HTTP tests (see CONFORMANCE-NOTES.md): the content the
// OCI conformance suite pushes, rebuilt here, a small fetch wrapper that follows Location
// headers and authenticates the way the suite's Go client does, and the server start-up in
// the mode WHARF_CONFORMANCE_AUTH names (open, htpasswd, token).
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, type RunnerTask, type RunnerTestSuite } from 'vitest';
import { freePort } from '../support/processes.js';
import { s3Env, startRgw, type RgwServer } from '../support/s3.js';
import { startServer, type TestServer, type TestServerOptions } from '../support/server.js';

export const MT = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  empty: 'application/vnd.oci.empty.v1+json',
  octet: 'application/octet-stream',
} as const;

export const ANNOTATION_KEY = 'org.opencontainers.conformance.test';
export const ARTIFACT_A = 'application/vnd.nhl.peanut.butter.bagel';
export const ARTIFACT_B = 'application/vnd.nba.strawberry.jam.croissant';
export const ARTIFACT_INDEX = 'application/vnd.food.stand';
export const EMPTY_JSON_DIGEST = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';
export const INVALID_TAG = '.INVALID_MANIFEST_NAME';

/** The codes the suite accepts in errors[0].code (its own list: no TOOMANYREQUESTS). */
export const SUITE_ERROR_CODES = [
  'BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'MANIFEST_UNVERIFIED', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID',
  'TAG_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED',
];

export const sha256 = (data: Uint8Array | string): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`;

export interface Content {
  bytes: Buffer;
  digest: string;
  size: number;
}

export function content(data: Uint8Array | string): Content {
  const bytes = Buffer.from(data);
  return { bytes, digest: sha256(bytes), size: bytes.length };
}

/** Go's json.MarshalIndent(v, "", "\t"): the suite's manifests are tab-indented. */
const indented = (value: unknown): Content => content(JSON.stringify(value, null, '\t'));

/**
 * A descriptor as the suite's Go struct marshals it: mediaType, digest, size, then the
 * optional fields, and always "newUnspecifiedField" (null unless set) - an unknown field
 * registries must keep.
 */
function descriptor(mediaType: string, target: Content, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { mediaType, digest: target.digest, size: target.size, ...extra, newUnspecifiedField: null };
}

export interface Referrer extends Content {
  artifactType: string | undefined;
  annotation: string | undefined;
  mediaType: string;
}

export interface Fixtures {
  configs: Content[];
  layer: Content;
  manifests: Content[];
  emptyJson: Content;
  blobA: Content;
  blobB: Content;
  chunk1: Buffer;
  chunk2: Buffer;
  refBlobA: Content;
  refBlobB: Content;
  /** v1.1.0 shape: no top-level mediaType, "layers": []. */
  emptyLayerManifest: Content;
  /** newer shape: mediaType set, one empty-JSON layer. */
  emptyJsonLayerManifest: Content;
  refs: { aConfig: Referrer; aLayer: Referrer; index: Referrer; bConfig: Referrer; bLayer: Referrer; cLayer: Referrer };
  dummyDigest: string;
}

export function makeFixtures(): Fixtures {
  const configs = Array.from({ length: 5 }, () =>
    indented({
      author: randomBytes(12).toString('base64url').slice(0, 16),
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [] },
    }),
  );
  // A tiny gzip stream standing in for the suite's tar.gz layer; content is opaque to the registry.
  const layer = content(gzipSync(Buffer.from(`conformance layer ${randomUUID()}\n`)));
  const configDescriptor = (c: Content): Record<string, unknown> => ({
    mediaType: MT.config,
    digest: c.digest,
    size: c.size,
    data: c.bytes.toString('base64'),
    newUnspecifiedField: Buffer.from('hello world').toString('base64'),
  });
  const manifests = configs.map((c) =>
    indented({ schemaVersion: 2, mediaType: MT.manifest, config: configDescriptor(c), layers: [descriptor(MT.layer, layer)] }),
  );
  const emptyJson = content('{}');
  const blobB = content(randomBytes(42));
  const refBlobA = content('NHL Peanut Butter on my NHL bagel');
  const refBlobB = content('NBA Strawberry Jam on my NBA croissant');
  const subject4 = descriptor(MT.manifest, manifests[4]!);
  const subject3 = descriptor(MT.manifest, manifests[3]!);
  const annotated = (value: string) => ({ annotations: { [ANNOTATION_KEY]: value } });

  const referrer = (body: Record<string, unknown>, mediaType: string, artifactType: string | undefined, annotation?: string): Referrer => ({
    ...indented(body),
    mediaType,
    artifactType,
    annotation,
  });
  const configArtifact = (type: string, blob: Content, note: string) =>
    referrer(
      { schemaVersion: 2, mediaType: MT.manifest, config: descriptor(type, blob), layers: [descriptor(MT.empty, emptyJson)], subject: subject4, ...annotated(note) },
      MT.manifest, type, note,
    );
  const layerArtifact = (type: string, blob: Content, subject: Record<string, unknown>, note?: string) =>
    referrer(
      {
        schemaVersion: 2, mediaType: MT.manifest, artifactType: type, config: descriptor(MT.empty, emptyJson),
        layers: [descriptor(type, blob)], subject, ...(note ? annotated(note) : {}),
      },
      MT.manifest, type, note,
    );
  const aConfig = configArtifact(ARTIFACT_A, refBlobA, 'test config a');
  const bConfig = configArtifact(ARTIFACT_B, refBlobB, 'test config b');
  const aLayer = layerArtifact(ARTIFACT_A, refBlobA, subject4, 'test layer a');
  const bLayer = layerArtifact(ARTIFACT_B, refBlobB, subject4, 'test layer b');
  const cLayer = layerArtifact(ARTIFACT_B, refBlobB, subject3);
  const index = referrer(
    {
      schemaVersion: 2, mediaType: MT.index, artifactType: ARTIFACT_INDEX,
      manifests: [descriptor(MT.manifest, aConfig), descriptor(MT.manifest, aLayer)],
      subject: subject4, ...annotated('test index'),
    },
    MT.index, ARTIFACT_INDEX, 'test index',
  );

  return {
    configs,
    layer,
    manifests,
    emptyJson,
    blobA: content(randomBytes(42)),
    blobB,
    chunk1: blobB.bytes.subarray(0, 22),
    chunk2: blobB.bytes.subarray(22),
    refBlobA,
    refBlobB,
    emptyLayerManifest: indented({ schemaVersion: 2, config: configDescriptor(configs[1]!), layers: [] }),
    emptyJsonLayerManifest: indented({
      schemaVersion: 2, mediaType: MT.manifest, config: configDescriptor(configs[1]!), layers: [descriptor(MT.empty, emptyJson)],
    }),
    refs: { aConfig, aLayer, index, bConfig, bLayer, cLayer },
    dummyDigest: sha256('hello world'),
  };
}

export interface Res {
  status: number;
  headers: Headers;
  /** The answer came from where a redirect led (S3 storage: a presigned URL), not from wharf. */
  redirected: boolean;
  body: Buffer;
  text(): string;
  json<T = any>(): T;
  /** What the suite's GetRelativeLocation() yields: path plus query of the Location header. */
  location(): string;
}

export interface SendOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Send the body as a stream: Transfer-Encoding chunked, no Content-Length. */
  chunked?: boolean;
}

/**
 * The path a Go client continues with after a Location header: an absolute URL keeps only
 * its path and query, an absolute path is used as is. Anything else fails the test.
 */
export function relativeLocation(location: string | null): string {
  expect(location, 'Location header').toBeTruthy();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location!)) {
    const u = new URL(location!);
    return u.pathname + u.search;
  }
  expect(location!.startsWith('/'), `Location "${location}" must be an absolute URL or an absolute path`).toBe(true);
  return location!;
}

export interface Credentials {
  username: string;
  password: string;
}

/** The parameters of a WWW-Authenticate challenge, parsed the way reggie does (`key="value"` pairs). */
export function parseChallenge(header: string | null): { scheme: string; params: Record<string, string> } | undefined {
  if (!header) return undefined;
  const scheme = /^\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)/.exec(header)?.[1];
  if (scheme === undefined) return undefined;
  const params: Record<string, string> = {};
  for (const m of header.slice(header.indexOf(scheme) + scheme.length).matchAll(/([A-Za-z_]+)="((?:[^"\\]|\\.)*)"/g)) {
    params[m[1]!.toLowerCase()] = m[2]!.replace(/\\(.)/g, '$1');
  }
  return { scheme: scheme.toLowerCase(), params };
}

/** What a client saw: final answers with and without credentials, challenges, token fetches. */
export interface AuthStats {
  requests: number;
  /** Final answers to requests that carried an Authorization header. */
  authorized: number;
  /** Final answers to requests sent without any Authorization header. */
  anonymous: number;
  challenges: number;
  tokenFetches: number;
}

export const newAuthStats = (): AuthStats => ({ requests: 0, authorized: 0, anonymous: 0, challenges: 0, tokenFetches: 0 });

/**
 * The suite's HTTP client (reggie over resty): follows nothing by itself, keeps bodies as
 * bytes. With credentials it authenticates the way reggie does: Basic once the server asked
 * for Basic; on a 401 with a Bearer challenge a token from the realm (GET with Basic, the
 * challenge's service and scope), then the request again with `Authorization: Bearer`.
 * Tokens are kept per scope string, so a repeated scope costs no new token request.
 */
export class Http {
  private basicUpFront = false;
  private readonly tokens = new Map<string, string>();

  constructor(
    readonly base: string,
    readonly credentials?: Credentials,
    readonly stats: AuthStats = newAuthStats(),
  ) {}

  private basic(): string {
    const { username, password } = this.credentials!;
    return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
  }

  /** A token for one challenge's realm, service and scope (reggie: GET, Basic, query params). */
  private async fetchToken(params: Record<string, string>): Promise<string> {
    this.stats.tokenFetches++;
    const realm = params.realm!;
    const query = new URLSearchParams({ service: params.service ?? '', scope: params.scope ?? '' });
    const res = await fetch(`${realm}${realm.includes('?') ? '&' : '?'}${query}`, {
      headers: { Accept: 'application/json', 'User-Agent': 'distribution-spec-conformance-tests', Authorization: this.basic() },
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`token request to ${realm} (${query}) answered ${res.status}: ${text.slice(0, 300)}`);
    const info = JSON.parse(text) as { token?: string; access_token?: string };
    const token = info.token || info.access_token;
    if (!token) throw new Error(`token response without token: ${text.slice(0, 300)}`);
    return token;
  }

  async send(method: string, path: string, opts: SendOptions = {}): Promise<Res> {
    let url = this.base + path;
    if (opts.query && Object.keys(opts.query).length > 0) {
      url += (path.includes('?') ? '&' : '?') + new URLSearchParams(opts.query).toString();
    }
    const bytes = opts.body === undefined ? undefined : Buffer.from(opts.body);
    const callerAuth = Object.keys(opts.headers ?? {}).some((h) => h.toLowerCase() === 'authorization');
    // Each attempt builds its request anew: a streamed body cannot be read twice.
    const attempt = (authorization: string | undefined): Promise<Response> => {
      const headers: Record<string, string> = { ...opts.headers };
      if (authorization !== undefined) headers.Authorization = authorization;
      const init: RequestInit & { duplex?: 'half' } = { method, headers, redirect: 'follow' };
      if (bytes !== undefined) {
        if (opts.chunked) {
          init.body = new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new Uint8Array(bytes));
              controller.close();
            },
          });
          init.duplex = 'half';
        } else {
          init.body = bytes;
        }
      }
      return fetch(url, init);
    };

    let authorization = this.credentials && this.basicUpFront && !callerAuth ? this.basic() : undefined;
    let res = await attempt(authorization);
    if (res.status === 401 && this.credentials && !callerAuth) {
      const challenge = parseChallenge(res.headers.get('www-authenticate'));
      if (challenge?.scheme === 'basic' && authorization === undefined) {
        this.stats.challenges++;
        this.basicUpFront = true;
        await res.arrayBuffer();
        authorization = this.basic();
        res = await attempt(authorization);
      } else if (challenge?.scheme === 'bearer' && challenge.params.realm) {
        this.stats.challenges++;
        const scope = challenge.params.scope ?? '';
        const cached = this.tokens.get(scope);
        const token = cached ?? (await this.fetchToken(challenge.params));
        this.tokens.set(scope, token);
        await res.arrayBuffer();
        authorization = `Bearer ${token}`;
        res = await attempt(authorization);
        if (res.status === 401 && cached !== undefined) {
          // A cached token that no longer works (expired): one fresh token, one more try.
          await res.arrayBuffer();
          const fresh = await this.fetchToken(challenge.params);
          this.tokens.set(scope, fresh);
          authorization = `Bearer ${fresh}`;
          res = await attempt(authorization);
        }
      }
    }
    this.stats.requests++;
    if (authorization !== undefined || callerAuth) this.stats.authorized++;
    else this.stats.anonymous++;

    const body = Buffer.from(await res.arrayBuffer());
    return {
      status: res.status,
      headers: res.headers,
      redirected: res.redirected,
      body,
      text: () => body.toString('utf8'),
      json: () => JSON.parse(body.toString('utf8')),
      location: () => relativeLocation(res.headers.get('location')),
    };
  }

  head = (path: string, opts?: SendOptions) => this.send('HEAD', path, opts);
  get = (path: string, opts?: SendOptions) => this.send('GET', path, opts);
  post = (path: string, opts?: SendOptions) => this.send('POST', path, opts);
  put = (path: string, opts?: SendOptions) => this.send('PUT', path, opts);
  patch = (path: string, opts?: SendOptions) => this.send('PATCH', path, opts);
  del = (path: string, opts?: SendOptions) => this.send('DELETE', path, opts);

  /** pushBlob as the newer suite does it: POST (201|202) then PUT ?digest= (exactly 201). */
  async pushBlob(repo: string, blob: Content): Promise<Res> {
    const start = await this.post(`/v2/${repo}/blobs/uploads/`);
    expect([201, 202], `POST /v2/${repo}/blobs/uploads/`).toContain(start.status);
    const done = await this.put(start.location(), {
      query: { digest: blob.digest },
      headers: { 'Content-Type': MT.octet },
      body: blob.bytes,
    });
    expect(done.status, `PUT upload of ${blob.digest}: ${done.text()}`).toBe(201);
    expect(done.headers.get('location')).toBeTruthy();
    return done;
  }

  /** pushManifest as the newer suite does it: exactly 201 with a Location; OCI-Subject when a subject is given. */
  async pushManifest(repo: string, reference: string, manifest: Content, mediaType: string = MT.manifest, subject?: string): Promise<Res> {
    const res = await this.put(`/v2/${repo}/manifests/${reference}`, { headers: { 'Content-Type': mediaType }, body: manifest.bytes });
    expect(res.status, `PUT /v2/${repo}/manifests/${reference}: ${res.text()}`).toBe(201);
    expect(res.headers.get('location'), 'Location of a pushed manifest').toBeTruthy();
    const dcd = res.headers.get('docker-content-digest');
    if (dcd !== null) expect(dcd).toBe(manifest.digest);
    if (subject !== undefined) expect(res.headers.get('oci-subject'), 'OCI-Subject').toBe(subject);
    return res;
  }

  /** deleteManifest of the newer suite: GET (no Accept); if 200, DELETE (202|404|405) then GET must be 404. */
  async deleteManifestRef(repo: string, ref: string): Promise<void> {
    const before = await this.get(`/v2/${repo}/manifests/${ref}`);
    if (before.status !== 200) {
      expect(before.status, `GET ${ref} before delete`).toBe(404);
      return;
    }
    const del = await this.del(`/v2/${repo}/manifests/${ref}`);
    expect([202, 404, 405], `DELETE manifests/${ref}: ${del.text()}`).toContain(del.status);
    expect((await this.get(`/v2/${repo}/manifests/${ref}`)).status, `GET ${ref} after delete`).toBe(404);
  }
}

/**
 * Checks an OCI error body and returns its codes. `stringDetail` applies the suite's Go
 * client rule: it decodes detail into a string, so an object there breaks its parser.
 */
export function expectOciError(res: Res, allowed: string[] = SUITE_ERROR_CODES, opts: { stringDetail?: boolean } = {}): string[] {
  let body: { errors?: Array<{ code?: unknown; message?: unknown; detail?: unknown }> };
  try {
    body = res.json();
  } catch {
    throw new Error(`error body is not JSON (status ${res.status}): ${res.text().slice(0, 200)}`);
  }
  expect(Array.isArray(body.errors), `errors array in ${res.text()}`).toBe(true);
  expect(body.errors!.length).toBeGreaterThan(0);
  for (const e of body.errors!) {
    expect(typeof e.code).toBe('string');
    expect(e.code as string).toMatch(/^[A-Z_]+$/);
    expect(allowed, `error code ${String(e.code)}`).toContain(e.code);
    if (e.message !== undefined) expect(typeof e.message).toBe('string');
    if (opts.stringDetail && e.detail !== undefined && e.detail !== null) {
      expect(typeof e.detail, `detail must decode into a Go string: ${JSON.stringify(e.detail)}`).toBe('string');
    }
  }
  return body.errors!.map((e) => e.code as string);
}

/** Either case-insensitive lexical order (stable) or plain byte order, as the newer suite accepts. */
export function isSuiteSorted(tags: string[]): boolean {
  const lexical = [...tags].sort((a, b) => {
    const x = a.toLowerCase();
    const y = b.toLowerCase();
    return x < y ? -1 : x > y ? 1 : 0;
  });
  const bytewise = [...tags].sort();
  const same = (other: string[]) => other.every((t, i) => t === tags[i]);
  return same(lexical) || same(bytewise);
}

/** The unique repository names one test file works in. */
export const repoName = (prefix: string): string => `conformance/${prefix}-${randomUUID().slice(0, 8)}`;

export type ConformanceAuthMode = 'open' | 'htpasswd' | 'token';

/** The mode named by WHARF_CONFORMANCE_AUTH: `open` (default), `htpasswd` or `token`. */
export function conformanceAuthMode(): ConformanceAuthMode {
  const mode = process.env.WHARF_CONFORMANCE_AUTH || 'open';
  if (mode !== 'open' && mode !== 'htpasswd' && mode !== 'token') {
    throw new Error(`WHARF_CONFORMANCE_AUTH=${mode}: expected open, htpasswd or token`);
  }
  return mode;
}

/** Every client startConformanceServer hands out counts into this (one module graph per test file). */
export const conformanceAuthStats: AuthStats = newAuthStats();

const CONFORMANCE_USER = 'conformance';
const TOKEN_SERVICE = 'wharf-conformance';

/**
 * Starts wharf for the conformance tests in the WHARF_CONFORMANCE_AUTH mode and returns it with
 * a suite-like client: `open` = no auth; `htpasswd` = Distribution's htpasswd method; `token` =
 * the built-in token server (absolute realm on a fixed port) with a rule granting the test user
 * everything, catalog included. In both auth modes an anonymous `GET /v2/` must be 401 with the
 * matching challenge and the client's must be 200, so the tests really run authenticated.
 */
export async function startConformanceServer(options: TestServerOptions = {}): Promise<{ server: TestServer; http: Http; mode: ConformanceAuthMode }> {
  const mode = conformanceAuthMode();
  if (conformanceStorage.env) options = { ...options, storageEnv: conformanceStorage.env };
  if (mode === 'open') {
    const server = await startServer(options);
    return { server, http: new Http(server.url, undefined, conformanceAuthStats), mode };
  }

  const dir = await mkdtemp(join(tmpdir(), 'wharf-conformance-auth-'));
  const credentials: Credentials = { username: CONFORMANCE_USER, password: `pw-${randomUUID()}` };
  const htpasswd = join(dir, 'htpasswd');
  const line = execFileSync('htpasswd', ['-Bbn', credentials.username, credentials.password], { encoding: 'utf8' }).trim();
  await writeFile(htpasswd, `${line}\n`);

  let env: Record<string, string>;
  let expectedChallenge: string;
  if (mode === 'htpasswd') {
    env = { REGISTRY_AUTH_HTPASSWD: JSON.stringify({ realm: 'wharf-conformance', path: htpasswd }) };
    expectedChallenge = 'Basic realm="wharf-conformance"';
  } else {
    const port = await freePort();
    const realm = `http://127.0.0.1:${port}/auth/token`;
    env = {
      REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`,
      REGISTRY_AUTH_TOKEN: JSON.stringify({ realm, service: TOKEN_SERVICE, issuer: 'wharf-conformance' }),
      REGISTRY_AUTH_TOKENSERVER: JSON.stringify({
        htpasswd,
        keydir: join(dir, 'keys'),
        rules: [{ account: CONFORMANCE_USER, repositories: ['**'], actions: ['*'], catalog: true }],
      }),
    };
    expectedChallenge = `Bearer realm="${realm}",service="${TOKEN_SERVICE}"`;
  }

  let server: TestServer;
  try {
    server = await startServer({ ...options, env: { ...options.env, ...env } });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const withCleanup: TestServer = {
    url: server.url,
    root: server.root,
    async close(keepRoot?: boolean) {
      await server.close(keepRoot);
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    const anonymous = await fetch(`${server.url}/v2/`);
    await anonymous.arrayBuffer();
    expect(anonymous.status, `${mode}: anonymous GET /v2/`).toBe(401);
    expect(anonymous.headers.get('www-authenticate') ?? '', `${mode}: challenge of GET /v2/`).toContain(expectedChallenge);
    const http = new Http(server.url, credentials, conformanceAuthStats);
    const probe = await http.get('/v2/');
    expect(probe.status, `${mode}: GET /v2/ with credentials: ${probe.text()}`).toBe(200);
    return { server: withCleanup, http, mode };
  } catch (err) {
    await withCleanup.close();
    throw err;
  }
}

/** Set by runWorkflowsOnS3: the storage every conformance server of this file uses. */
const conformanceStorage: { env?: Record<string, string> } = {};

/** Whether this file's servers store on S3, where directories are implicit. */
export const conformanceOnS3 = (): boolean => conformanceStorage.env !== undefined;

const WORKFLOWS = ['pull', 'push', 'discovery', 'management'] as const;

/**
 * For the auth wrappers, after all their tests: every workflow file registered tests here and
 * they ran (none skipped), and every answer the clients got came to a request that carried
 * credentials (Basic or Bearer) - nothing was served anonymously.
 */
export function expectAuthenticatedRun(file: Readonly<RunnerTestSuite>, mode: Exclude<ConformanceAuthMode, 'open'>): void {
  const counts: Record<string, number> = {};
  const notRun: string[] = [];
  const walk = (tasks: readonly RunnerTask[], workflow: string | undefined): void => {
    for (const task of tasks) {
      const own = workflow ?? task.name.split(':')[0]!;
      if (task.type === 'suite') walk(task.tasks, own);
      else {
        counts[own] = (counts[own] ?? 0) + 1;
        if (task.mode !== 'run' || task.result?.state === 'skip') notRun.push(task.name);
      }
    }
  };
  walk(file.tasks, undefined);
  console.info(`[${mode}] conformance tests per workflow: ${JSON.stringify(counts)}; client: ${JSON.stringify(conformanceAuthStats)}`);
  for (const workflow of WORKFLOWS) expect(counts[workflow] ?? 0, `${mode}: tests of workflow ${workflow}`).toBeGreaterThan(0);
  expect(Object.keys(counts).sort(), `${mode}: workflows`).toEqual([...WORKFLOWS].sort());
  expect(notRun, `${mode}: tests not run`).toEqual([]);
  const stats = conformanceAuthStats;
  expect(stats.requests, `${mode}: requests`).toBeGreaterThan(0);
  expect(stats.anonymous, `${mode}: answers to requests without credentials`).toBe(0);
  expect(stats.authorized, `${mode}: answers to authenticated requests`).toBe(stats.requests);
  expect(stats.challenges, `${mode}: 401 challenges answered`).toBeGreaterThan(0);
  if (mode === 'token') expect(stats.tokenFetches, 'token: tokens fetched').toBeGreaterThan(0);
  else expect(stats.tokenFetches, 'htpasswd: tokens fetched').toBe(0);
}

/**
 * Registers the four conformance workflows again, against a wharf protected by `mode`: for the
 * wrapper test files. The workflow files read WHARF_CONFORMANCE_AUTH when their servers start
 * (beforeAll), and vitest collects the tests they register while the wrapper imports them.
 */
export async function runWorkflowsWithAuth(mode: Exclude<ConformanceAuthMode, 'open'>): Promise<void> {
  const previous = process.env.WHARF_CONFORMANCE_AUTH;
  process.env.WHARF_CONFORMANCE_AUTH = mode;
  // Registered first, so it runs last: after the workflows' own afterAll hooks closed their servers.
  // (vitest wants the first, context argument destructured; the file suite is the second.)
  afterAll(({}, file) => {
    if (previous === undefined) delete process.env.WHARF_CONFORMANCE_AUTH;
    else process.env.WHARF_CONFORMANCE_AUTH = previous;
    expectAuthenticatedRun(file, mode);
  });
  await import('./conformance-pull.test.js');
  await import('./conformance-push.test.js');
  await import('./conformance-discovery.test.js');
  await import('./conformance-management.test.js');
}

/**
 * Registers the four conformance workflows against wharf on S3 (a real Ceph RGW started for
 * the file, every server on the same bucket under its own root directory), open, with blob
 * GETs redirected to presigned URLs as Distribution does by default on S3: the suite's
 * client follows them to the RGW.
 */
export async function runWorkflowsOnS3(): Promise<void> {
  let rgw: RgwServer | undefined;
  const counts = { servers: 0 };
  beforeAll(async () => {
    rgw = await startRgw();
    conformanceStorage.env = s3Env(rgw, { rootdirectory: `/conformance-${randomUUID().slice(0, 8)}` });
  }, 180_000);
  afterAll(async ({}, file) => {
    delete conformanceStorage.env;
    const objects = await rgw?.client().send(new ListObjectsV2Command({ Bucket: rgw.bucket, MaxKeys: 5 }));
    await rgw?.stop();
    const notRun: string[] = [];
    const walk = (tasks: readonly RunnerTask[]): void => {
      for (const task of tasks) {
        if (task.type === 'suite') walk(task.tasks);
        else {
          counts.servers++;
          if (task.mode !== 'run' || task.result?.state === 'skip') notRun.push(task.name);
        }
      }
    };
    walk(file.tasks);
    expect(notRun, 's3: tests not run').toEqual([]);
    expect(counts.servers, 's3: conformance tests').toBeGreaterThan(80);
    // The registries really stored in the bucket.
    expect(objects?.KeyCount ?? 0, 's3: objects in the bucket').toBeGreaterThan(0);
  });
  await import('./conformance-pull.test.js');
  await import('./conformance-push.test.js');
  await import('./conformance-discovery.test.js');
  await import('./conformance-management.test.js');
}
