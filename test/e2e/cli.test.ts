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
      // S3 named beside the filesystem root the test environment sets: never one of them silently.
      expect(s3.stderr).toMatch(/^wharf: configuration error: storage: both filesystem \(storage\.filesystem\.rootdirectory\) and s3 are configured/);
      const { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: _root, ...withoutRoot } = env;
      const bare = await run(bin, ['serve'], { ...withoutRoot, REGISTRY_STORAGE: 's3' });
      expect(bare.code).toBe(1);
      // S3 named without its settings: never the local disk instead.
      expect(bare.stderr).toMatch(/^wharf: configuration error: storage\.s3\.bucket: required/);

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

describe('the npm package', () => {
  it('installs from `npm pack` and serves pushes and pulls with the compiled build (no tsx)', async () => {
    const { spawn } = await import('node:child_process');
    const { freePort, waitForUrl } = await import('../support/processes.js');
    const { createHash } = await import('node:crypto');
    const dir = await mkdtemp(join(tmpdir(), 'wharf-pack-'));
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_') && !k.startsWith('VITEST') && !k.startsWith('npm_')),
    );
    delete env.NODE_OPTIONS;
    const npm = (args: string[], cwd: string) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile('npm', args, { cwd, env, timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
        );
      });
    let server: ReturnType<typeof spawn> | undefined;
    try {
      // Pack a copy, so that prepack's rebuild of dist/ never races other users of this working copy.
      const src = join(dir, 'src');
      for (const part of ['bin', 'server', 'storage', 'auth', 'mirror', 'package.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE']) {
        if (existsSync(join(ROOT, part))) await cp(join(ROOT, part), join(src, part), { recursive: true });
      }
      await symlink(join(ROOT, 'node_modules'), join(src, 'node_modules'));
      const pack = await npm(['pack', '--json', '--pack-destination', dir], src);
      expect(pack.code, pack.stderr).toBe(0);
      const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as [{ filename: string; files: { path: string }[] }];
      const files = info.files.map((f) => f.path);
      expect(files).toContain('dist/server/main.js');
      expect(files).toContain('bin/wharf.js');
      expect(files.filter((f) => !/^(bin|dist)\//.test(f) && !/^(package\.json|README\.md|LICENSE)$/.test(f))).toEqual([]);

      // Install it as users do, into an empty prefix.
      const prefix = join(dir, 'prefix');
      const install = await npm(['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(dir, info.filename)], dir);
      expect(install.code, install.stderr).toBe(0);
      expect(existsSync(join(prefix, 'lib', 'node_modules', 'wharf', 'node_modules', 'tsx'))).toBe(false);
      const wharf = join(prefix, 'bin', 'wharf');
      const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      expect(await run(wharf, ['--version'], env)).toMatchObject({ code: 0, stdout: `wharf ${pkg.version}\n` });

      // Serve, push a blob and a manifest, pull them back.
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      server = spawn(wharf, ['serve'], {
        env: { ...env, REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: join(dir, 'data'), REGISTRY_LOG_LEVEL: 'error' },
        stdio: 'ignore',
      });
      await waitForUrl(`${base}/v2/`, { timeoutMs: 20_000, what: 'the installed wharf' });
      const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
      const blob = Buffer.from('{"architecture":"amd64","os":"linux"}');
      const put = await fetch(`${base}/v2/pkg/test/blobs/uploads/?digest=${digestOf(blob)}`, { method: 'POST', body: blob as Uint8Array<ArrayBuffer> });
      expect(put.status).toBe(201);
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(blob), size: blob.length },
          layers: [],
        }),
      );
      const putManifest = await fetch(`${base}/v2/pkg/test/manifests/v1`, {
        method: 'PUT',
        body: manifest as Uint8Array<ArrayBuffer>,
        headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' },
      });
      expect(putManifest.status).toBe(201);
      const got = await fetch(`${base}/v2/pkg/test/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(got.status).toBe(200);
      expect(Buffer.from(await got.arrayBuffer()).equals(manifest)).toBe(true);
      const gotBlob = await fetch(`${base}/v2/pkg/test/blobs/${digestOf(blob)}`);
      expect(gotBlob.status).toBe(200);
      expect(Buffer.from(await gotBlob.arrayBuffer()).equals(blob)).toBe(true);
    } finally {
      if (server?.pid !== undefined && server.exitCode === null) {
        const exited = new Promise((r) => server!.once('exit', r));
        server.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
