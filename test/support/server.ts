// Starts a real wharf HTTP server in this process on a loopback port, over a fresh
// temporary storage root. HTTP tests talk to it with fetch like any client would.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../server/config.js';
import { startRegistryServer } from '../../server/listen.js';

export interface TestServer {
  /** Base URL without trailing slash, e.g. http://127.0.0.1:41234 */
  url: string;
  /** Storage root directory (the Distribution layout lives under docker/registry/v2 inside it). */
  root: string;
  /** Stops the server; removes a root it created itself unless `keepRoot`. */
  close(keepRoot?: boolean): Promise<void>;
}

export interface TestServerOptions {
  root?: string;
  deleteEnabled?: boolean;
  /** Extra config overrides, as REGISTRY_* style environment entries. */
  env?: Record<string, string>;
  /** Variables selecting another storage driver (s3Env()); the filesystem root is then unused. */
  storageEnv?: Record<string, string>;
}

export async function startServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const ownRoot = opts.root === undefined;
  const root = opts.root ?? (await mkdtemp(join(tmpdir(), 'wharf-test-')));
  const config = loadConfig({
    env: {
      REGISTRY_HTTP_ADDR: '127.0.0.1:0',
      REGISTRY_LOG_LEVEL: 'silent',
      ...(opts.storageEnv ?? { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: root }),
      REGISTRY_STORAGE_DELETE_ENABLED: String(opts.deleteEnabled ?? true),
      ...opts.env,
    },
  });
  const server = await startRegistryServer(config);
  return {
    url: `http://127.0.0.1:${server.port}`,
    root,
    async close(keepRoot = false) {
      await server.close(2000);
      if (ownRoot && !keepRoot) await rm(root, { recursive: true, force: true });
    },
  };
}
