// Configuration files for config tests: write YAML to a temp file, load it, or get the
// ConfigError it is refused with. Temp dirs are removed after the file's tests.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect } from 'vitest';
import { ConfigError, loadConfig, type Config } from '../../server/config.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** A fresh temp dir, removed after the test file. */
export async function configTempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-config-'));
  dirs.push(dir);
  return dir;
}

/** Loads `yaml` as a config file, with `env` as the whole environment. */
export async function loadYaml(yaml: string, env: Record<string, string> = {}): Promise<Config> {
  const file = join(await configTempDir(), 'config.yml');
  await writeFile(file, yaml);
  return loadConfig({ file, env });
}

/** The ConfigError message loading throws (fails the test if none). */
export function refusal(load: () => unknown): string {
  try {
    load();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('the configuration loaded, but it should have been refused');
}

/** The ConfigError message a config file of `yaml` is refused with. */
export async function yamlRefusal(yaml: string): Promise<string> {
  const file = join(await configTempDir(), 'config.yml');
  await writeFile(file, yaml);
  return refusal(() => loadConfig({ file, env: {} }));
}
