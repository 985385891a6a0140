// The wharf Helm chart (charts/wharf) as the tests see it: `helm template` parsed into
// manifests, and the rendered Deployment's container turned into a `docker run` (image,
// command/args, env with secretKeyRefs resolved from the rendered Secrets, Secret volumes
// written to files, volumes as host directories or tmpfs, the securityContext as --user,
// --read-only, --cap-drop and no-new-privileges), the way a kubelet would run it.
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Helm } from './helm.js';
import { describeFailure, REPO_ROOT, type RunResult } from './processes.js';

export const CHART_DIR = join(REPO_ROOT, 'charts', 'wharf');

/** A Kubernetes object as rendered (loosely typed: the tests read into it by path). */
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string } };
}
export interface Probe {
  httpGet?: { path: string; port: string | number };
  [key: string]: unknown;
}
export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: Array<{ name?: string; containerPort: number }>;
  volumeMounts?: Array<{ name: string; mountPath: string; subPath?: string; readOnly?: boolean }>;
  securityContext?: {
    runAsUser?: number;
    runAsGroup?: number;
    runAsNonRoot?: boolean;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  livenessProbe?: Probe;
  readinessProbe?: Probe;
}
export interface Volume {
  name: string;
  secret?: { secretName: string; items?: Array<{ key: string; path: string }> };
  persistentVolumeClaim?: { claimName: string };
  emptyDir?: { medium?: string; sizeLimit?: string };
  configMap?: unknown;
}
export interface PodSpec {
  containers: Container[];
  volumes?: Volume[];
  securityContext?: { runAsUser?: number; runAsGroup?: number; fsGroup?: number; runAsNonRoot?: boolean };
}
export interface Deployment extends Manifest {
  spec: { replicas: number; template: { metadata: { annotations?: Record<string, string> }; spec: PodSpec }; strategy?: { type: string } };
}
export interface Secret extends Manifest {
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}

/** `helm template` of the chart; throws with helm's output when it fails. */
export async function renderChart(helm: Helm, args: string[] = [], release = 'reg'): Promise<Manifest[]> {
  const r = await helm.helm(['template', release, CHART_DIR, '--namespace', 'registry', ...args]);
  if (r.code !== 0) throw new Error(describeFailure(r));
  return parseManifests(r.stdout);
}

/** `helm template` expected to fail: its result. */
export function renderChartRaw(helm: Helm, args: string[] = [], release = 'reg'): Promise<RunResult> {
  return helm.helm(['template', release, CHART_DIR, '--namespace', 'registry', ...args]);
}

export function parseManifests(text: string): Manifest[] {
  return parseAllDocuments(text)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`helm template rendered invalid YAML: ${d.errors[0]!.message}`);
      return d.toJS() as Manifest | null;
    })
    .filter((m): m is Manifest => m !== null && typeof m === 'object');
}

export const ofKind = <T extends Manifest = Manifest>(ms: Manifest[], kind: string): T[] => ms.filter((m) => m.kind === kind) as T[];

export function one<T extends Manifest = Manifest>(ms: Manifest[], kind: string): T {
  const found = ofKind<T>(ms, kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, rendered ${found.length}`);
  return found[0]!;
}

/** A Secret the user creates before installing (`kubectl create secret generic NAME --from-file=...`). */
export function existingSecret(name: string, data: Record<string, string>): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name },
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  };
}

/** A Secret's decoded contents. */
export function secretData(secret: Secret): Record<string, string> {
  const out: Record<string, string> = { ...(secret.stringData ?? {}) };
  for (const [k, v] of Object.entries(secret.data ?? {})) out[k] = Buffer.from(v, 'base64').toString('utf8');
  return out;
}

export function secretValue(ms: Manifest[], name: string, key: string): string {
  const secret = ofKind<Secret>(ms, 'Secret').find((s) => s.metadata.name === name);
  if (secret === undefined) throw new Error(`no Secret ${name} rendered (or given as existing)`);
  const data = secretData(secret);
  if (!(key in data)) throw new Error(`Secret ${name} has no key ${key}`);
  return data[key]!;
}

export function wharfContainer(dep: Deployment): Container {
  const c = dep.spec.template.spec.containers.find((x) => x.name === 'wharf');
  if (c === undefined) throw new Error('no container named wharf in the Deployment');
  return c;
}

/** The container port a probe (or anything naming a port) points at. */
export function portNumber(c: Container, port: string | number): number {
  if (typeof port === 'number') return port;
  const p = c.ports?.find((x) => x.name === port);
  if (p === undefined) throw new Error(`container has no port named ${port}`);
  return p.containerPort;
}

export interface DockerRun {
  /** Arguments after `docker`: run -d --name ... IMAGE ARGS. */
  args: string[];
  /** Host directories standing in for the pod's PVC/emptyDir volumes, by volume name. */
  volumeDirs: Record<string, string>;
  container: Container;
}

/**
 * `docker run` arguments for the Deployment's wharf container, as a kubelet would run it:
 * Secret volumes are written under `workDir` (mode 0644 files, as defaultMode), PVCs and
 * disk emptyDirs become host directories owned by the pod's user (what fsGroup does), memory
 * emptyDirs become tmpfs. The container joins `network` (default host, so its ports are
 * reachable on 127.0.0.1). `existing` are objects already in the cluster that the rendered
 * Deployment refers to (Secrets named by `existingSecret` values).
 */
export async function dockerRunFromDeployment(
  rendered: Manifest[],
  opts: { workDir: string; name: string; network?: string; volumeDirs?: Record<string, string>; existing?: Manifest[] },
): Promise<DockerRun> {
  const ms = [...rendered, ...(opts.existing ?? [])];
  const dep = one<Deployment>(rendered, 'Deployment');
  const pod = dep.spec.template.spec;
  const c = wharfContainer(dep);
  const sc = { ...pod.securityContext, ...c.securityContext };
  const args = ['run', '-d', '--name', opts.name, '--network', opts.network ?? 'host'];
  const uid = sc.runAsUser;
  const gid = sc.runAsGroup ?? uid;
  if (uid !== undefined) args.push('--user', `${uid}:${gid ?? uid}`);
  if (pod.securityContext?.fsGroup !== undefined) args.push('--group-add', String(pod.securityContext.fsGroup));
  if (c.securityContext?.readOnlyRootFilesystem) args.push('--read-only');
  for (const cap of c.securityContext?.capabilities?.drop ?? []) args.push('--cap-drop', cap);
  for (const cap of c.securityContext?.capabilities?.add ?? []) args.push('--cap-add', cap);
  if (c.securityContext?.allowPrivilegeEscalation === false) args.push('--security-opt', 'no-new-privileges');

  for (const e of c.env ?? []) {
    let value = e.value;
    if (e.valueFrom?.secretKeyRef) value = secretValue(ms, e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key);
    else if (e.valueFrom) throw new Error(`env ${e.name}: only value and secretKeyRef are supported here`);
    args.push('-e', `${e.name}=${value ?? ''}`);
  }

  const volumeDirs: Record<string, string> = { ...opts.volumeDirs };
  const fsOwner = pod.securityContext?.fsGroup ?? gid;
  for (const m of c.volumeMounts ?? []) {
    const vol = pod.volumes?.find((v) => v.name === m.name);
    if (vol === undefined) throw new Error(`volumeMount ${m.name} has no volume`);
    const ro = m.readOnly ? ':ro' : '';
    if (vol.secret) {
      const dir = join(opts.workDir, 'secret', vol.name);
      const secret = ofKind<Secret>(ms, 'Secret').find((s) => s.metadata.name === vol.secret!.secretName);
      if (secret === undefined) throw new Error(`volume ${vol.name}: Secret ${vol.secret.secretName} is not rendered by the chart`);
      const data = secretData(secret);
      const items = vol.secret.items ?? Object.keys(data).map((key) => ({ key, path: key }));
      for (const item of items) {
        if (!(item.key in data)) throw new Error(`volume ${vol.name}: Secret ${secret.metadata.name} has no key ${item.key}`);
        await mkdir(dirname(join(dir, item.path)), { recursive: true, mode: 0o755 });
        await writeFile(join(dir, item.path), data[item.key]!, { mode: 0o644 });
      }
      args.push('-v', `${m.subPath ? join(dir, m.subPath) : dir}:${m.mountPath}${ro}`);
    } else if (vol.emptyDir?.medium === 'Memory') {
      if (m.subPath) throw new Error('subPath of a memory emptyDir is not supported here');
      args.push('--tmpfs', `${m.mountPath}:rw,exec,mode=1777`);
    } else if (vol.persistentVolumeClaim || vol.emptyDir) {
      let dir = volumeDirs[vol.name];
      if (dir === undefined) {
        dir = join(opts.workDir, 'volume', vol.name);
        await mkdir(dir, { recursive: true, mode: 0o775 });
        if (uid !== undefined) await chown(dir, uid, fsOwner ?? uid);
        volumeDirs[vol.name] = dir;
      }
      args.push('-v', `${m.subPath ? join(dir, m.subPath) : dir}:${m.mountPath}${ro}`);
    } else {
      throw new Error(`volume ${vol.name}: only secret, persistentVolumeClaim and emptyDir are supported here`);
    }
  }

  if (c.command !== undefined && c.command.length > 0) args.push('--entrypoint', c.command[0]!);
  args.push(c.image, ...(c.command?.slice(1) ?? []), ...(c.args ?? []));
  return { args, volumeDirs, container: c };
}
