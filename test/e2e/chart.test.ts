// The Helm chart charts/wharf: `helm lint` and `helm template` with the default values and
// with the S3, token-server and mirror values of charts/wharf/ci/, checks on what it renders
// (probes on the real health paths, secrets only in Secrets, the replica rule, the schema);
// then the rendered container run by a private dockerd on an image built offline
// (scripts/build-offline-image.sh), with pushes and pulls through it and its probes
// answering: with the default values (a PVC), the token-server values (docker login), the
// S3 + token-server values on a real Ceph RGW (two replicas, one signing key from a Secret)
// and the mirror values (an upstream wharf on loopback); and the chart itself packaged,
// pushed into a running wharf and pulled back.
import { existsSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { hashSync } from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import {
  CHART_DIR,
  dockerRunFromDeployment,
  existingSecret,
  one,
  ofKind,
  parseManifests,
  portNumber,
  renderChart,
  renderChartRaw,
  secretData,
  secretValue,
  wharfContainer,
  type Deployment,
  type Manifest,
  type Probe,
  type Secret,
} from '../support/chart-render.js';
import { DOCKERD_TOOLS, startDockerd, type Dockerd } from '../support/dockerd.js';
import { helmAvailable, privateHelm, type Helm } from '../support/helm.js';
import { ALL_MANIFEST_TYPES, importBaseImage, getManifest, requireBusybox, sha256, type DockerImage } from '../support/images.js';
import { requireRgw, startRgw, type RgwServer } from '../support/s3.js';
import { Cleanup, describeFailure, freePort, REPO_ROOT, removeTree, run, tempDir, waitFor, type RunResult } from '../support/processes.js';
import { all, requireRoot, requireTools } from '../support/tools.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const helmIsAvailable = helmAvailable();

const VALUES = {
  s3: join(CHART_DIR, 'ci', 's3-values.yaml'),
  token: join(CHART_DIR, 'ci', 'token-values.yaml'),
  mirror: join(CHART_DIR, 'ci', 'mirror-values.yaml'),
};
const SETUPS: Array<[string, string[]]> = [
  ['default values', []],
  ['S3 values', ['-f', VALUES.s3]],
  ['token-server values', ['-f', VALUES.token]],
  ['mirror values', ['-f', VALUES.mirror]],
];

/** Every string inside a value, recursively. */
function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

const configOf = (ms: Manifest[], release = 'reg'): Record<string, any> => {
  const secret = ofKind<Secret>(ms, 'Secret').find((s) => s.metadata.name === `${release}-wharf`);
  if (secret === undefined) throw new Error('no config Secret');
  return parseYaml(secretData(secret)['config.yml']!) as Record<string, any>;
};

describe.skipIf(!helmIsAvailable)('the wharf Helm chart: lint and template', () => {
  const cleanup = new Cleanup();
  let helm: Helm;

  beforeAll(async () => {
    helm = await privateHelm();
    cleanup.add('helm home', () => helm.cleanup());
  }, 300_000);
  afterAll(() => cleanup.run(), 60_000);

  it.each(SETUPS)('helm lint --strict passes with the %s', async (_name, args) => {
    const r = await helm.helm(['lint', CHART_DIR, '--strict', ...args]);
    expect(r.code, describeFailure(r)).toBe(0);
    expect(r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
  });

  it.each(SETUPS)('renders with the %s: probes on the health endpoints, a non-root read-only container, config in a Secret', async (_name, args) => {
    const ms = await renderChart(helm, args);
    const dep = one<Deployment>(ms, 'Deployment');
    const c = wharfContainer(dep);
    const config = configOf(ms);

    // Probes: GET /healthz and /readyz on the port wharf's debug address listens on.
    expect(c.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'debug' });
    expect(c.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'debug' });
    expect(config.http.debug.addr).toBe(`:${portNumber(c, 'debug')}`);
    expect(config.http.addr).toBe(`:${portNumber(c, 'registry')}`);
    expect(config.version).toBe('0.1');

    // Non-root, read-only root filesystem, nothing extra.
    expect(dep.spec.template.spec.securityContext?.runAsNonRoot).toBe(true);
    expect(c.securityContext).toMatchObject({ runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect(c.securityContext?.runAsUser).not.toBe(0);
    expect(c.volumeMounts?.find((m) => m.mountPath === '/tmp')).toBeDefined();

    // config.yml comes from a Secret, at the path the command reads; a checksum restarts pods.
    expect(c.args).toEqual(['serve', '/etc/wharf/config.yml']);
    const mount = c.volumeMounts?.find((m) => m.mountPath === '/etc/wharf/config.yml');
    expect(mount?.subPath).toBe('config.yml');
    const vol = dep.spec.template.spec.volumes?.find((v) => v.name === mount?.name);
    expect(vol?.secret?.secretName).toBe('reg-wharf');
    expect(dep.spec.template.metadata.annotations?.['checksum/config']).toMatch(/^[0-9a-f]{64}$/);

    // No ConfigMaps at all, and no secret value in anything but a Secret.
    expect(ofKind(ms, 'ConfigMap')).toEqual([]);
    const secretValues = ofKind<Secret>(ms, 'Secret')
      .flatMap((s) => Object.entries(secretData(s)))
      .filter(([k]) => k !== 'config.yml')
      .map(([, v]) => v.trim())
      .filter((v) => v.length >= 8);
    const nonSecretText = ms.filter((m) => m.kind !== 'Secret').flatMap(strings).join('\n');
    for (const v of secretValues) expect(nonSecretText).not.toContain(v);
    for (const word of ['never-in-a-configmap', 'AKIATESTACCESSKEY0001', '$2y$05$']) expect(nonSecretText).not.toContain(word);
  });

  it('default values: one replica on a PVC, Recreate, ClusterIP service, no ingress/PDB/ServiceMonitor', async () => {
    const ms = await renderChart(helm);
    const dep = one<Deployment>(ms, 'Deployment');
    expect(dep.spec.replicas).toBe(1);
    expect(dep.spec.strategy?.type).toBe('Recreate');
    const pvc = one(ms, 'PersistentVolumeClaim');
    const data = dep.spec.template.spec.volumes?.find((v) => v.name === 'data');
    expect(data?.persistentVolumeClaim?.claimName).toBe(pvc.metadata.name);
    expect(wharfContainer(dep).volumeMounts?.find((m) => m.name === 'data')?.mountPath).toBe('/var/lib/registry');
    expect(configOf(ms).storage.filesystem.rootdirectory).toBe('/var/lib/registry');
    expect(one(ms, 'Service').spec).toMatchObject({ type: 'ClusterIP', ports: [{ name: 'registry', port: 5000, targetPort: 'registry' }] });
    for (const kind of ['Ingress', 'PodDisruptionBudget', 'ServiceMonitor']) expect(ofKind(ms, kind)).toEqual([]);
    // http.secret: from the Secret as an env variable, kept out of config.yml (and its checksum).
    const env = wharfContainer(dep).env ?? [];
    expect(env.find((e) => e.name === 'REGISTRY_HTTP_SECRET')?.valueFrom?.secretKeyRef).toEqual({ name: 'reg-wharf', key: 'httpSecret' });
  });

  it('S3 values: three replicas, no PVC, credentials from a Secret as env, PDB, ingress with TLS, ServiceMonitor', async () => {
    const ms = await renderChart(helm, ['-f', VALUES.s3]);
    const dep = one<Deployment>(ms, 'Deployment');
    expect(dep.spec.replicas).toBe(3);
    expect(dep.spec.strategy).toBeUndefined();
    expect(ofKind(ms, 'PersistentVolumeClaim')).toEqual([]);
    const config = configOf(ms);
    expect(config.storage.filesystem).toBeUndefined();
    expect(config.storage.s3).toMatchObject({ region: 'eu-west-1', bucket: 'wharf-test-bucket', rootdirectory: '/registry', encrypt: true });
    expect(JSON.stringify(config)).not.toContain('AKIATESTACCESSKEY0001');
    const env = wharfContainer(dep).env ?? [];
    const ref = (name: string) => env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
    expect(ref('REGISTRY_STORAGE_S3_ACCESSKEY')).toEqual({ name: 'reg-wharf-s3', key: 'accessKey' });
    expect(ref('REGISTRY_STORAGE_S3_SECRETKEY')).toEqual({ name: 'reg-wharf-s3', key: 'secretKey' });
    const s3 = ofKind<Secret>(ms, 'Secret').find((s) => s.metadata.name === 'reg-wharf-s3')!;
    expect(secretData(s3)).toEqual({ accessKey: 'AKIATESTACCESSKEY0001', secretKey: 'test-s3-secret-key-never-in-a-configmap' });
    expect(one(ms, 'PodDisruptionBudget').spec).toMatchObject({ minAvailable: 2 });
    const ingress = one(ms, 'Ingress') as Manifest & { spec: any };
    expect(ingress.spec.tls).toEqual([{ hosts: ['registry.example.com'], secretName: 'registry-example-com-tls' }]);
    expect(ingress.spec.rules[0].http.paths[0].backend.service).toEqual({ name: 'reg-wharf', port: { name: 'registry' } });
    const sm = one(ms, 'ServiceMonitor') as Manifest & { spec: any };
    expect(sm.spec.endpoints).toEqual([expect.objectContaining({ port: 'debug', path: '/metrics' })]);
    const metricsService = ofKind(ms, 'Service').find((s) => s.metadata.labels?.['app.kubernetes.io/component'] === 'metrics') as Manifest & { spec: any };
    expect(metricsService.spec.ports).toEqual([expect.objectContaining({ name: 'debug', targetPort: 'debug' })]);
    expect(sm.spec.selector.matchLabels).toMatchObject({ 'app.kubernetes.io/component': 'metrics' });
    expect(config.http.debug.prometheus).toEqual({ enabled: true, path: '/metrics' });
  });

  it('token-server values: auth.token + auth.tokenserver, the users Secret mounted where config.yml says', async () => {
    const ms = await renderChart(helm, ['-f', VALUES.token]);
    const config = configOf(ms);
    expect(config.auth.token).toEqual({ realm: 'https://registry.example.com/auth/token', service: 'registry.example.com', issuer: 'registry.example.com' });
    expect(config.auth.tokenserver.rules).toHaveLength(2);
    expect(config.auth.tokenserver.groups).toEqual({ admins: ['alice'] });
    const dep = one<Deployment>(ms, 'Deployment');
    const mount = wharfContainer(dep).volumeMounts!.find((m) => m.name === 'users')!;
    expect(`${mount.mountPath}/htpasswd`).toBe(config.auth.tokenserver.htpasswd);
    const vol = dep.spec.template.spec.volumes!.find((v) => v.name === 'users')!;
    expect(vol.secret).toEqual({ secretName: 'reg-wharf', items: [{ key: 'htpasswd', path: 'htpasswd' }] });
    expect(secretData(ofKind<Secret>(ms, 'Secret').find((s) => s.metadata.name === 'reg-wharf')!).htpasswd).toMatch(/^alice:\$2y\$/);
  });

  it('mirror values: proxy section, default-upstream credentials from a Secret as env', async () => {
    const ms = await renderChart(helm, ['-f', VALUES.mirror]);
    const config = configOf(ms);
    expect(config.proxy).toMatchObject({ remoteurl: 'https://registry-1.docker.io', ttl: '10m', localnamespaces: ['team/'], prefetch: true, cachesize: '200GiB' });
    expect(config.proxy.upstreams['ghcr.io']).toMatchObject({ urls: ['https://ghcr.io'], repositories: ['org/**'] });
    expect(config.proxy.username).toBeUndefined();
    const env = wharfContainer(one<Deployment>(ms, 'Deployment')).env ?? [];
    expect(env.find((e) => e.name === 'REGISTRY_PROXY_PASSWORD')?.valueFrom?.secretKeyRef).toEqual({ name: 'reg-wharf-mirror', key: 'password' });
    expect(one(ms, 'PersistentVolumeClaim').spec).toMatchObject({ resources: { requests: { storage: '200Gi' } } });
  });

  it('S3 + token-server values: the signing key from a Secret in a memory key directory, refused without one', async () => {
    const s3Token = ['-f', VALUES.s3, '-f', VALUES.token];
    const missing = await renderChartRaw(helm, s3Token);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('auth.tokenServer with storage.type s3 needs a signing key every replica shares');
    expect(missing.stderr).toContain('auth.tokenServer.signingKey.existingSecret');

    // An existing Secret (the user's key): mounted by subPath into a memory emptyDir, where wharf writes its certificate.
    const ms = await renderChart(helm, [...s3Token, '--set', 'auth.tokenServer.signingKey.existingSecret=registry-token-key,auth.tokenServer.signingKey.existingSecretKey=key.pem']);
    const dep = one<Deployment>(ms, 'Deployment');
    expect(dep.spec.replicas).toBe(3);
    const keydir = configOf(ms).auth.tokenserver.keydir as string;
    const mounts = wharfContainer(dep).volumeMounts!;
    expect(mounts.find((m) => m.name === 'token-signer')).toEqual({ name: 'token-signer', mountPath: keydir });
    expect(mounts.find((m) => m.name === 'token-signing-key')).toEqual({ name: 'token-signing-key', mountPath: `${keydir}/token-signing-key.pem`, subPath: 'token-signing-key.pem', readOnly: true });
    const volumes = dep.spec.template.spec.volumes!;
    expect(volumes.find((v) => v.name === 'token-signer')?.emptyDir).toEqual({ medium: 'Memory', sizeLimit: '1Mi' });
    expect(volumes.find((v) => v.name === 'token-signing-key')?.secret).toEqual({ secretName: 'registry-token-key', items: [{ key: 'key.pem', path: 'token-signing-key.pem' }] });
    expect(volumes.find((v) => v.name === 'data')).toBeUndefined();

    // The PEM as a value: into the release Secret, never into config.yml.
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = privateKey.export({ type: 'sec1', format: 'pem' }) as string;
    const keyFile = join(helm.home, 'signing-key-values.yaml');
    await writeFile(keyFile, stringifyYaml({ auth: { tokenServer: { signingKey: { pem } } } }));
    const inline = await renderChart(helm, [...s3Token, '-f', keyFile]);
    expect(secretValue(inline, 'reg-wharf', 'token-signing-key.pem')).toBe(pem);
    expect(one<Deployment>(inline, 'Deployment').spec.template.spec.volumes!.find((v) => v.name === 'token-signing-key')?.secret?.secretName).toBe('reg-wharf');
    expect(JSON.stringify(configOf(inline))).not.toContain('PRIVATE KEY');

    const both = await renderChartRaw(helm, ['-f', VALUES.token, '--set', 'auth.tokenServer.keyDir=/keys,auth.tokenServer.signingKey.existingSecret=k']);
    expect(both.stderr).toContain('set signingKey or keyDir, not both');
    const notPem = await renderChartRaw(helm, ['-f', VALUES.token, '--set', 'auth.tokenServer.signingKey.pem=secret']);
    expect(notPem.stderr).toMatch(/signingKey\.pem/);
  });

  it('renders storage.redirect.disable as a value: false by default (Distribution redirects to presigned S3 URLs)', async () => {
    expect(configOf(await renderChart(helm, ['-f', VALUES.s3])).storage.redirect).toEqual({ disable: false });
    expect(configOf(await renderChart(helm, ['-f', VALUES.s3, '--set', 'storage.redirect.disable=true'])).storage.redirect).toEqual({ disable: true });
    const badType = await renderChartRaw(helm, ['-f', VALUES.s3, '--set-string', 'storage.redirect.disable=yes']);
    expect(badType.stderr).toMatch(/storage\.redirect\.disable/);
  });

  it('refuses more than one replica without S3, with a clear message', async () => {
    for (const args of [['--set', 'replicaCount=2'], ['-f', VALUES.mirror, '--set', 'replicaCount=3'], ['-f', VALUES.token, '--set', 'replicaCount=2']]) {
      const r = await renderChartRaw(helm, args);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('more than one replica needs shared storage. Set storage.type=s3');
    }
    // helm lint reports a template's `fail` (as INFO: lint renders in a lenient mode).
    const lint = await helm.helm(['lint', CHART_DIR, '--set', 'replicaCount=2']);
    expect(lint.stdout + lint.stderr).toContain('more than one replica needs shared storage');
    const s3NoBucket = await renderChartRaw(helm, ['--set', 'storage.type=s3,replicaCount=2']);
    expect(s3NoBucket.stderr).toContain('storage.s3.bucket is empty');
  });

  it('refuses unknown or mistyped values through values.schema.json, and auth that cannot work', async () => {
    const typo = await renderChartRaw(helm, ['--set', 'replicas=2']);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/Additional property replicas is not allowed/);
    const badType = await renderChartRaw(helm, ['--set', 'storage.type=gcs']);
    expect(badType.stderr).toMatch(/storage\.type/);
    const noUsers = await renderChartRaw(helm, ['--set', 'auth.htpasswd.enabled=true']);
    expect(noUsers.stderr).toContain('need users');
    const noRealm = await renderChartRaw(helm, ['--set', 'auth.token.enabled=true,auth.tokenServer.enabled=true,auth.users=x']);
    expect(noRealm.stderr).toContain('auth.token.realm');
  });

  it('the config checksum changes with config.yml, so pods restart', async () => {
    const a = one<Deployment>(await renderChart(helm), 'Deployment').spec.template.metadata.annotations!;
    const b = one<Deployment>(await renderChart(helm, ['--set', 'log.level=debug']), 'Deployment').spec.template.metadata.annotations!;
    const c = one<Deployment>(await renderChart(helm), 'Deployment').spec.template.metadata.annotations!;
    expect(b['checksum/config']).not.toBe(a['checksum/config']);
    expect(c['checksum/config']).toBe(a['checksum/config']);
  });

  it('renders the three `helm install` setups of the README', async () => {
    const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Installing with Helm'), readme.indexOf('## Tests'));
    const commands = section
      .replace(/\\\n\s*/g, ' ')
      .split('\n')
      .filter((l) => l.startsWith('helm install '));
    expect(commands).toHaveLength(3);
    for (const line of commands) {
      const [, , release, chart, ...args] = line.split(/\s+/).map((w) => w.replace(/^'(.*)'$/, '$1'));
      expect(chart).toBe('charts/wharf');
      const ms = await renderChart(helm, args, release);
      expect(one(ms, 'Deployment').metadata.name).toBe(`${release}-wharf`);
    }
  });

  it('documents every value in charts/wharf/README.md', async () => {
    const readme = await readFile(join(CHART_DIR, 'README.md'), 'utf8');
    const values = parseYaml(await readFile(join(CHART_DIR, 'values.yaml'), 'utf8')) as Record<string, unknown>;
    const schema = JSON.parse(await readFile(join(CHART_DIR, 'values.schema.json'), 'utf8')) as { properties: Record<string, { properties?: Record<string, unknown> }> };
    const missing: string[] = [];
    const walk = (obj: Record<string, unknown>, prefix: string, depth: number): void => {
      for (const [k, v] of Object.entries(obj)) {
        const path = prefix + k;
        // Sections are walked into; their leaves (and free-form maps) are what the README names.
        if (depth < 3 && v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0 && !/(Context|Headers|upstreams|groups|resources|Annotations|annotations|labels|Labels|fields)$/.test(k)) {
          walk(v as Record<string, unknown>, `${path}.`, depth + 1);
        } else if (!readme.includes(`\`${path}\``)) {
          missing.push(path);
        }
      }
    };
    walk(values, '', 0);
    expect(missing).toEqual([]);
    expect(Object.keys(schema.properties).filter((k) => k !== 'global').sort()).toEqual(Object.keys(values).sort());
  });
});

const dockerAvailable = helmIsAvailable && all(requireTools([...DOCKERD_TOOLS, ['ldd', 'libc-bin']]), requireBusybox(), requireRoot('a private dockerd'));
const rgwAvailable = dockerAvailable && requireRgw();

/** One htpasswd line (bcrypt, cost 5, as `htpasswd -nbB` makes it). */
const htpasswdLine = (user: string, password: string): string => `${user}:${hashSync(password, 5)}\n`;

describe.skipIf(!dockerAvailable)('the chart\'s rendered container, run by docker on the offline image', () => {
  const cleanup = new Cleanup();
  let helm: Helm;
  let d: Dockerd;
  let work: string;
  let registryPort: number;
  let debugPort: number;
  let manifests: Manifest[];
  let volumeDirs: Record<string, string> = {};
  let rgwStarting: Promise<RgwServer> | undefined;
  const IMAGE = 'wharf-offline:chart-test';
  const PASSWORD = 'chart-test-alice-password';

  interface Ports {
    registry: number;
    debug: number;
  }
  const freePorts = async (): Promise<Ports> => ({ registry: await freePort(), debug: await freePort() });

  /** `helm template` for a pod of the offline image on these ports, with `args` (the values, as a user gives them). */
  const renderPod = (ports: Ports, args: string[] = []): Promise<Manifest[]> =>
    renderChart(helm, [
      '--set', `image.repository=${IMAGE.split(':')[0]}`,
      '--set', `image.tag=${IMAGE.split(':')[1]}`,
      '--set', `containerPorts.registry=${ports.registry},containerPorts.debug=${ports.debug}`,
      ...args,
    ]);
  const renderFor = (): Promise<Manifest[]> =>
    renderPod({ registry: registryPort, debug: debugPort }, ['--set', 'storage.delete.enabled=true,metrics.enabled=true']);

  /** A values file, as a user writes one: `-f <file>`. */
  async function valuesFile(name: string, values: Record<string, unknown>): Promise<string[]> {
    const file = join(work, name);
    await writeFile(file, stringifyYaml(values));
    return ['-f', file];
  }

  /**
   * Runs the rendered Deployment's container as `name` and waits until GET /v2/ on its registry
   * port answers `status` (401 with auth on). `existing`: Secrets the user made before installing.
   */
  async function startPod(
    name: string,
    ms: Manifest[],
    opts: { dirs?: Record<string, string>; existing?: Manifest[]; status?: number } = {},
  ): Promise<{ volumeDirs: Record<string, string>; host: string }> {
    const podDir = join(work, name);
    await mkdir(podDir, { recursive: true });
    const spec = await dockerRunFromDeployment(ms, { workDir: podDir, name, volumeDirs: opts.dirs, existing: opts.existing });
    const port = portNumber(spec.container, 'registry');
    await d.dockerOk(spec.args);
    cleanup.add(`container ${name}`, () => d.docker(['rm', '-f', name], { timeoutMs: 30_000 }));
    try {
      await waitFor(
        async () => {
          const res = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(2000) });
          await res.arrayBuffer();
          return res.status === (opts.status ?? 200);
        },
        { timeoutMs: 60_000, intervalMs: 250, what: `the wharf container ${name} on 127.0.0.1:${port}` },
      );
    } catch (err) {
      const logs = await d.docker(['logs', '--tail', '40', name]);
      throw new Error(`${(err as Error).message}\n--- docker logs ${name}\n${logs.stdout}${logs.stderr}`);
    }
    return { volumeDirs: spec.volumeDirs, host: `127.0.0.1:${port}` };
  }

  async function startContainer(name: string): Promise<void> {
    volumeDirs = (await startPod(name, manifests, { dirs: volumeDirs })).volumeDirs;
  }

  /** The liveness and readiness probes of the rendered Deployment answer 200 (readiness within the kubelet's patience). */
  async function expectProbes(ms: Manifest[]): Promise<void> {
    const c = wharfContainer(one<Deployment>(ms, 'Deployment'));
    const url = (p: Probe): string => `http://127.0.0.1:${portNumber(c, p.httpGet!.port)}${p.httpGet!.path}`;
    const readiness = c.readinessProbe!;
    const patienceMs = 1000 * Number(readiness.periodSeconds) * Number(readiness.failureThreshold);
    await waitFor(async () => (await fetch(url(readiness))).status === 200, { timeoutMs: patienceMs, intervalMs: 250, what: url(readiness) });
    for (const probe of [c.livenessProbe!, readiness]) {
      expect(probe.httpGet!.port).toBe('debug');
      expect((await fetch(url(probe))).status, url(probe)).toBe(200);
    }
  }

  /** docker rmi, docker pull, and the image's file checked by running it. */
  async function pullAndCheck(ref: string, image: DockerImage): Promise<void> {
    await d.docker(['rmi', ref]);
    await d.dockerOk(['pull', ref]);
    const out = await d.dockerOk(['run', '--rm', '--network', 'none', ref, 'sha256sum', '/data/small.bin']);
    expect(out.stdout.trim()).toBe(`${image.files['/data/small.bin']}  /data/small.bin`);
  }

  const login = (host: string, user: string, password: string) => d.docker(['login', host, '-u', user, '--password-stdin'], { input: password });

  beforeAll(async () => {
    helm = await privateHelm();
    cleanup.add('helm home', () => helm.cleanup());
    work = await tempDir('wharf-chart-');
    cleanup.add('work dir', () => removeTree(work));
    // The RGW starts while the image builds; the S3 run awaits it.
    if (rgwAvailable) {
      const starting = startRgw();
      starting.catch(() => undefined);
      rgwStarting = starting;
      cleanup.add('rgw', async () => (await starting.catch(() => undefined))?.stop());
    }
    d = await startDockerd();
    cleanup.add('dockerd', () => d.stop());
    const build = await run(join(REPO_ROOT, 'scripts', 'build-offline-image.sh'), [IMAGE], { env: d.env, timeoutMs: 300_000 });
    if (build.code !== 0) throw new Error(describeFailure(build));
    registryPort = await freePort();
    debugPort = await freePort();
    manifests = await renderFor();
  }, 600_000);

  afterAll(() => cleanup.run(), 120_000);

  it('starts from the rendered Deployment: non-root, read-only root filesystem, config from the Secret', async () => {
    await startContainer('wharf-chart-1');
    const inspect = JSON.parse((await d.dockerOk(['inspect', 'wharf-chart-1'])).stdout) as Array<{ Config: { User: string; Image: string }; HostConfig: { ReadonlyRootfs: boolean; CapDrop: string[] } }>;
    expect(inspect[0]!.Config.User).toBe('65532:65532');
    expect(inspect[0]!.Config.Image).toBe(IMAGE);
    expect(inspect[0]!.HostConfig.ReadonlyRootfs).toBe(true);
    expect(inspect[0]!.HostConfig.CapDrop).toEqual(['ALL']);
    // It really cannot write its root filesystem, and it runs as 65532.
    const exec = await d.docker(['exec', 'wharf-chart-1', '/bin/sh', '-c', 'id -u; touch /app/x 2>&1; touch /var/lib/registry/probe && echo volume-writable']);
    expect(exec.stdout).toMatch(/^65532\n/);
    expect(exec.stdout).toMatch(/Read-only file system/);
    expect(exec.stdout).toContain('volume-writable');
  }, 120_000);

  it('answers the probes the chart renders, on the ports it names', async () => {
    const c = wharfContainer(one<Deployment>(manifests, 'Deployment'));
    for (const probe of [c.livenessProbe!, c.readinessProbe!]) {
      const port = portNumber(c, probe.httpGet!.port);
      expect(port).toBe(debugPort);
      const res = await fetch(`http://127.0.0.1:${port}${probe.httpGet!.path}`);
      expect(res.status, probe.httpGet!.path).toBe(200);
    }
    expect((await fetch(`http://127.0.0.1:${debugPort}/debug/health`)).status).toBe(200);
    const metrics = await fetch(`http://127.0.0.1:${debugPort}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain('wharf_http_requests_total');
    // The registry port serves the Distribution API only.
    expect((await fetch(`http://127.0.0.1:${registryPort}/healthz`)).status).toBe(404);
  }, 60_000);

  it('takes a docker push and serves the pull back, storing on the volume', async () => {
    const ref = `127.0.0.1:${registryPort}/team/app:1.0`;
    const image = await importBaseImage(d, ref);
    const push = await d.dockerOk(['push', ref]);
    const digest = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)?.[1];
    expect(digest).toBeDefined();
    const m = await getManifest(`http://127.0.0.1:${registryPort}`, 'team/app', '1.0');
    expect(m.status).toBe(200);
    expect(sha256(m.body)).toBe(digest);
    // On the PVC stand-in, in Distribution's layout.
    const dataDir = volumeDirs.data!;
    expect(existsSync(join(dataDir, 'docker', 'registry', 'v2', 'repositories', 'team', 'app'))).toBe(true);

    await d.dockerOk(['rmi', ref]);
    await d.dockerOk(['pull', ref]);
    const out = await d.dockerOk(['run', '--rm', '--network', 'none', ref, 'sha256sum', '/data/small.bin']);
    expect(out.stdout.trim()).toBe(`${image.files['/data/small.bin']}  /data/small.bin`);
  }, 180_000);

  it('keeps the images on the volume across a restart of the pod', async () => {
    await d.dockerOk(['rm', '-f', 'wharf-chart-1']);
    await startContainer('wharf-chart-2');
    const ref = `127.0.0.1:${registryPort}/team/app:1.0`;
    await d.dockerOk(['rmi', ref]);
    await d.dockerOk(['pull', ref]);
    const readyz = await fetch(`http://127.0.0.1:${debugPort}/readyz`);
    expect(readyz.status).toBe(200);
  }, 180_000);

  it('runs with the token-server values: docker login as a user of auth.users, push and pull; the signing key made on the volume; anonymous pulls refused; probes answer', async () => {
    const ports = await freePorts();
    const host = `127.0.0.1:${ports.registry}`;
    // ci/token-values.yaml, pointed at this host, with a user whose password the test knows.
    const ms = await renderPod(ports, [
      '-f', VALUES.token,
      ...(await valuesFile('token.yaml', { httpHost: `http://${host}`, auth: { users: htpasswdLine('alice', PASSWORD), token: { realm: `http://${host}/auth/token` } } })),
    ]);
    const pod = await startPod('wharf-chart-token', ms, { status: 401 });
    const challenge = await fetch(`http://${host}/v2/`);
    expect(challenge.headers.get('www-authenticate')).toContain(`Bearer realm="http://${host}/auth/token"`);
    await expectProbes(ms);

    expect((await login(host, 'alice', 'wrong-password')).code).not.toBe(0);
    const ok = await login(host, 'alice', PASSWORD);
    expect(ok.code, describeFailure(ok)).toBe(0);
    const ref = `${host}/team/app:1.0`;
    const image = await importBaseImage(d, ref);
    await d.dockerOk(['push', ref]);
    await pullAndCheck(ref, image);
    // No keyDir and no signingKey on filesystem storage: the key is made under the root, on the volume.
    expect(existsSync(join(pod.volumeDirs.data!, 'wharf', 'token', 'token-signing-key.pem'))).toBe(true);

    await d.dockerOk(['logout', host]);
    await d.dockerOk(['rmi', ref]);
    const anonymous = await d.docker(['pull', ref]);
    expect(anonymous.code).not.toBe(0);
    expect(anonymous.stderr).toMatch(/denied|unauthorized|authentication required/i);
    await d.dockerOk(['rm', '-f', 'wharf-chart-token']);
  }, 180_000);

  it.skipIf(!rgwAvailable)('runs with the S3 and token-server values on a real RGW: two replicas on one bucket and one signing key (an existing Secret), login and push through one, pull through the other; redirects follow storage.redirect.disable; probes answer', async () => {
    const rgw = await rgwStarting!;
    const [a, b] = [await freePorts(), await freePorts()];
    const realm = `http://127.0.0.1:${a.registry}/auth/token`;
    // The user's key, made as the chart's README says (openssl ecparam ... writes SEC1 PEM), in a Secret of their own.
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const keySecret = existingSecret('registry-token-key', { 'token-signing-key.pem': privateKey.export({ type: 'sec1', format: 'pem' }) as string });
    const values = await valuesFile('s3-rgw.yaml', {
      storage: {
        s3: {
          region: rgw.region,
          regionEndpoint: rgw.endpoint,
          bucket: rgw.bucket,
          forcePathStyle: true,
          secure: false,
          encrypt: false, // RGW without a KMS/SSE-S3 setup
          credentials: { accessKey: rgw.accessKey, secretKey: rgw.secretKey },
        },
      },
      // Every replica sends clients for tokens to the same realm (replica A stands in for the ingress).
      auth: { users: htpasswdLine('alice', PASSWORD), token: { realm }, tokenServer: { signingKey: { existingSecret: 'registry-token-key' } } },
    });
    // ci/s3-values.yaml + ci/token-values.yaml, pointed at the RGW. Replica B streams blobs
    // (storage.redirect.disable=true), A redirects as Distribution does: one run shows both.
    const base = ['-f', VALUES.s3, '-f', VALUES.token, ...values];
    const msA = await renderPod(a, [...base, '--set', `httpHost=http://127.0.0.1:${a.registry}`]);
    const msB = await renderPod(b, [...base, '--set', `httpHost=http://127.0.0.1:${b.registry}`, '--set', 'storage.redirect.disable=true']);

    const config = configOf(msA);
    expect(one<Deployment>(msA, 'Deployment').spec.replicas).toBe(3);
    expect(config.storage.s3).toMatchObject({ regionendpoint: rgw.endpoint, forcepathstyle: true, secure: false, region: rgw.region, bucket: rgw.bucket, rootdirectory: '/registry' });
    expect(JSON.stringify(config)).not.toContain(rgw.secretKey);
    expect(config.storage.redirect).toEqual({ disable: false });
    expect(configOf(msB).storage.redirect).toEqual({ disable: true });
    expect(config.auth.tokenserver.keydir).toBe('/etc/wharf/token-signer');
    expect(one<Deployment>(msA, 'Deployment').spec.template.spec.volumes!.find((v) => v.name === 'data')).toBeUndefined();

    const [podA, podB] = await Promise.all([
      startPod('wharf-chart-s3-a', msA, { existing: [keySecret], status: 401 }),
      startPod('wharf-chart-s3-b', msB, { existing: [keySecret], status: 401 }),
    ]);
    await expectProbes(msA);
    await expectProbes(msB);
    // The key from the Secret, and the certificate each pod made for it in the memory emptyDir.
    const keydir = await d.dockerOk(['exec', 'wharf-chart-s3-a', 'ls', '/etc/wharf/token-signer']);
    expect(keydir.stdout.split('\n').filter(Boolean).sort()).toEqual(['token-signing-cert.pem', 'token-signing-key.pem']);

    expect((await login(podA.host, 'alice', PASSWORD)).code).toBe(0);
    const refA = `${podA.host}/team/s3app:1.0`;
    const image = await importBaseImage(d, refA);
    await d.dockerOk(['push', refA]);
    const s3 = rgw.client();
    try {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: rgw.bucket, Prefix: 'registry/docker/registry/v2/repositories/team/s3app/' }));
      expect(listed.KeyCount ?? 0).toBeGreaterThan(0);
    } finally {
      s3.destroy();
    }

    // B's login: B challenges with A's realm, A signs, B verifies with the same key.
    const loginB = await login(podB.host, 'alice', PASSWORD);
    expect(loginB.code, describeFailure(loginB)).toBe(0);
    await d.dockerOk(['rmi', refA]);
    const refB = `${podB.host}/team/s3app:1.0`;
    await pullAndCheck(refB, image); // streamed by B
    await d.dockerOk(['rmi', refB]);
    await pullAndCheck(refA, image); // blobs from presigned RGW URLs

    // A blob GET: A answers 307 to the RGW, B the bytes; one token (from A) is good on both.
    const tokenRes = await fetch(`${realm}?service=registry.example.com&scope=repository:team/s3app:pull`, {
      headers: { Authorization: `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}` },
    });
    expect(tokenRes.status).toBe(200);
    const { token } = (await tokenRes.json()) as { token: string };
    const manifest = JSON.parse((await (await fetch(`http://${podA.host}/v2/team/s3app/manifests/1.0`, { headers: { Authorization: `Bearer ${token}`, Accept: ALL_MANIFEST_TYPES } })).text())) as { layers: Array<{ digest: string }> };
    const digest = manifest.layers[0]!.digest;
    const fromA = await fetch(`http://${podA.host}/v2/team/s3app/blobs/${digest}`, { headers: { Authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(fromA.status).toBe(307);
    const location = fromA.headers.get('location')!;
    expect(location.startsWith(`${rgw.endpoint}/${rgw.bucket}/registry/docker/registry/v2/blobs/`)).toBe(true);
    expect(sha256(Buffer.from(await (await fetch(location)).arrayBuffer()))).toBe(digest);
    const fromB = await fetch(`http://${podB.host}/v2/team/s3app/blobs/${digest}`, { headers: { Authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(fromB.status).toBe(200);
    expect(sha256(Buffer.from(await fromB.arrayBuffer()))).toBe(digest);
    await d.dockerOk(['rm', '-f', 'wharf-chart-s3-a', 'wharf-chart-s3-b']);
  }, 240_000);

  it('runs with the mirror values: pulls through from an upstream wharf on loopback with the credentials of the mirror Secret; probes answer', async () => {
    // The upstream wants the user and password of ci/mirror-values.yaml.
    const ci = parseYaml(await readFile(VALUES.mirror, 'utf8')) as { mirror: { username: string; password: string } };
    const htpasswd = join(work, 'upstream-htpasswd');
    await writeFile(htpasswd, htpasswdLine(ci.mirror.username, ci.mirror.password));
    const upstream = await startWharf({ env: { REGISTRY_AUTH_HTPASSWD: JSON.stringify({ realm: 'upstream', path: htpasswd }) }, readyStatus: 401 });
    cleanup.add('upstream wharf', () => upstream.stop());
    expect((await login(upstream.host, ci.mirror.username, ci.mirror.password)).code).toBe(0);
    const upRef = `${upstream.host}/library/app:1.0`;
    const image = await importBaseImage(d, upRef);
    await d.dockerOk(['push', upRef]);
    await d.dockerOk(['rmi', upRef]);

    const ports = await freePorts();
    const ms = await renderPod(ports, ['-f', VALUES.mirror, ...(await valuesFile('mirror.yaml', { mirror: { remoteUrl: upstream.url } }))]);
    expect(configOf(ms).proxy.remoteurl).toBe(upstream.url);
    const env = wharfContainer(one<Deployment>(ms, 'Deployment')).env ?? [];
    expect(env.find((e) => e.name === 'REGISTRY_PROXY_USERNAME')?.valueFrom?.secretKeyRef).toEqual({ name: 'reg-wharf-mirror', key: 'username' });
    const pod = await startPod('wharf-chart-mirror', ms);
    await expectProbes(ms);

    await pullAndCheck(`${pod.host}/library/app:1.0`, image);
    // Cached on the mirror's volume, in Distribution's layout.
    expect(existsSync(join(pod.volumeDirs.data!, 'docker', 'registry', 'v2', 'repositories', 'library', 'app'))).toBe(true);
    await d.dockerOk(['rm', '-f', 'wharf-chart-mirror']);
  }, 180_000);
});

describe.skipIf(!helmIsAvailable)('the chart as an OCI artifact: helm package, push to wharf, pull back', () => {
  const cleanup = new Cleanup();
  let helm: Helm;
  let wharf: WharfProcess;

  beforeAll(async () => {
    helm = await privateHelm();
    cleanup.add('helm home', () => helm.cleanup());
    wharf = await startWharf();
    cleanup.add('wharf', () => wharf.stop());
  }, 300_000);
  afterAll(() => cleanup.run(), 60_000);

  it('packages, pushes, pulls back byte for byte, and renders from the registry', async () => {
    const ok = async (args: string[]): Promise<RunResult> => {
      const r = await helm.helm(args);
      if (r.code !== 0) throw new Error(describeFailure(r));
      return r;
    };
    const chartYaml = parseYaml(await readFile(join(CHART_DIR, 'Chart.yaml'), 'utf8')) as { version: string };
    await ok(['package', CHART_DIR, '--destination', 'pkg']);
    const file = `wharf-${chartYaml.version}.tgz`;
    expect(await readdir(join(helm.home, 'pkg'))).toEqual([file]);
    const packaged = await readFile(join(helm.home, 'pkg', file));
    const push = await ok(['push', join(helm.home, 'pkg', file), `oci://${wharf.host}/charts`, '--plain-http']);
    expect(push.stdout + push.stderr).toContain(`Pushed: ${wharf.host}/charts/wharf:${chartYaml.version}`);

    await mkdir(join(helm.home, 'pulled'));
    await ok(['pull', `oci://${wharf.host}/charts/wharf`, '--version', chartYaml.version, '--plain-http', '--destination', 'pulled']);
    expect((await readFile(join(helm.home, 'pulled', file))).equals(packaged)).toBe(true);

    // The package carries the schema and leaves the ci/ values out.
    const list = await run('tar', ['-tzf', join(helm.home, 'pulled', file)]);
    expect(list.stdout).toContain('wharf/values.schema.json');
    expect(list.stdout).toContain('wharf/templates/deployment.yaml');
    expect(list.stdout).not.toContain('wharf/ci/');

    const rendered = await ok(['template', 'demo', `oci://${wharf.host}/charts/wharf`, '--version', chartYaml.version, '--plain-http']);
    expect(one<Deployment>(parseManifests(rendered.stdout), 'Deployment').metadata.name).toBe('demo-wharf');
    const failing = await helm.helm(['template', 'demo', `oci://${wharf.host}/charts/wharf`, '--version', chartYaml.version, '--plain-http', '--set', 'replicaCount=2']);
    expect(failing.stderr).toContain('more than one replica needs shared storage');
  }, 180_000);
});
