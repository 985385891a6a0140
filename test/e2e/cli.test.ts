// The `wharf` command as users run it: bin/wharf.js executed directly, running the compiled
// build when it is current and the TypeScript sources (through tsx) when it is not.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(bin: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: 30_000, env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('the wharf command', () => {
  it('prints its version and help, and refuses unknown commands', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const bin = join(ROOT, 'bin', 'wharf.js');
    expect(await run(bin, ['--version'])).toMatchObject({ code: 0, stdout: `wharf ${pkg.version}\n` });
    const help = await run(bin, ['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('wharf serve [config.yml]');
    const unknown = await run(bin, ['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
  });

  it('runs the sources, not an older build, when a source file changed after the build', async () => {
    // A copy of the project whose compiled main.js answers with a marker: if it runs, the
    // output shows it.
    const dir = await mkdtemp(join(tmpdir(), 'wharf-cli-'));
    try {
      for (const part of ['bin', 'server', 'storage', 'auth', 'mirror', 'dist', 'package.json']) {
        await cp(join(ROOT, part), join(dir, part), { recursive: true });
      }
      await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
      await writeFile(join(dir, 'dist', 'server', 'main.js'), "process.stdout.write('compiled build\\n');\n");
      const bin = join(dir, 'bin', 'wharf.js');
      const past = new Date(Date.now() - 60_000);
      const future = new Date(Date.now() + 60_000);

      // Build newer than every source: the build runs.
      await utimes(join(dir, 'dist', 'server', 'main.js'), future, future);
      expect((await run(bin, ['--version'])).stdout).toBe('compiled build\n');

      // A source edited after the build: the sources run.
      await utimes(join(dir, 'dist', 'server', 'main.js'), past, past);
      const fromSources = await run(bin, ['--version']);
      expect(fromSources.code).toBe(0);
      expect(fromSources.stdout).toMatch(/^wharf \d+\.\d+\.\d+\n$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses to start on configuration it does not implement, naming the key', async () => {
    const bin = join(ROOT, 'bin', 'wharf.js');
    const dir = await mkdtemp(join(tmpdir(), 'wharf-cli-config-'));
    // Only what the test sets: REGISTRY_* variables of the calling shell stay out. Should
    // wharf start after all, it listens on a free port over a temporary root.
    const env: NodeJS.ProcessEnv = {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('VITEST'))),
      REGISTRY_HTTP_ADDR: '127.0.0.1:0',
      REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'),
    };
    delete env.NODE_OPTIONS;
    try {
      const file = join(dir, 'config.yml');
      await writeFile(file, 'version: 0.1\nauth:\n  silly:\n    realm: silly-realm\n    service: silly-service\n');
      const auth = await run(bin, ['serve', file], env);
      expect(auth.code).toBe(1);
      expect(auth.stderr).toBe(
        'wharf: configuration error: auth.silly: the silly authentication method is not supported by this version of wharf; ' +
          'remove the section or run a wharf that supports it\n',
      );
      // An htpasswd file that cannot be read: never an open registry instead.
      await writeFile(file, `version: 0.1\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: ${join(dir, 'missing-htpasswd')}\n`);
      const unreadable = await run(bin, ['serve', file], env);
      expect(unreadable.code).toBe(1);
      expect(unreadable.stderr).toMatch(/^wharf: configuration error: auth\.htpasswd\.path: cannot read the htpasswd file /);

      const s3 = await run(bin, ['serve'], { ...env, REGISTRY_STORAGE: 's3' });
      expect(s3.code).toBe(1);
      expect(s3.stderr).toMatch(/^wharf: configuration error: storage\.s3 \(REGISTRY_STORAGE\): the s3 storage driver is not supported/);

      if (existsSync('/etc/docker/registry/config.yml')) {
        // Debian's shipped config turns on htpasswd with a directory as the file: refused.
        const debian = await run(bin, ['serve', '/etc/docker/registry/config.yml'], env);
        expect(debian.code).toBe(1);
        expect(debian.stderr).toContain('auth.htpasswd.path');
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
