// The wharf command line: `wharf serve [config.yml]`, `wharf mirror warm IMAGE...`,
// `wharf --version`, `wharf --help`.
import { readFileSync } from 'node:fs';
import { ConfigError, loadConfig } from './config.js';
import { startRegistryServer } from './listen.js';
import { warmCommand } from './warm-command.js';

const USAGE = `wharf - a private container registry (OCI Distribution v2)

Usage:
  wharf serve [config.yml]   serve the registry (default: :5000, storage in ./data)
  wharf mirror warm IMAGE... fill the mirror's cache ahead of time (wharf mirror warm --help)
  wharf --version            print the version
  wharf --help               print this help

Configuration uses CNCF Distribution's config.yml keys; every key can be overridden by
an environment variable named after its path, e.g. REGISTRY_HTTP_ADDR=:5000 or
REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry.
`;

function version(): string {
  // server/main.ts runs from the sources (tsx) or as dist/server/main.js: one level apart.
  for (const up of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(up, import.meta.url), 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'wharf') return pkg.version;
    } catch {
      // not at this level
    }
  }
  return 'unknown';
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--version' || command === '-v' || command === 'version') {
    process.stdout.write(`wharf ${version()}\n`);
    return 0;
  }
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'mirror' && rest[0] === 'warm') {
    try {
      return await warmCommand(rest.slice(1), process.env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      for (const line of err.message.split('\n')) process.stderr.write(`wharf: configuration error: ${line}\n`);
      return 1;
    }
  }
  if (command !== 'serve') {
    process.stderr.write(`wharf: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
    return 2;
  }
  const file = rest[0] ?? process.env.REGISTRY_CONFIGURATION_PATH;
  let config;
  try {
    config = loadConfig({ file, env: process.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      // One line per problem: every refused or unknown key is named at once.
      for (const line of err.message.split('\n')) process.stderr.write(`wharf: configuration error: ${line}\n`);
      return 1;
    }
    throw err;
  }
  let running;
  try {
    running = await startRegistryServer(config);
  } catch (err) {
    // A file a key names (htpasswd, key bundle) that cannot be used: named like any bad key.
    if (!(err instanceof ConfigError)) throw err;
    for (const line of err.message.split('\n')) process.stderr.write(`wharf: configuration error: ${line}\n`);
    return 1;
  }
  const drainMs = config.http.draintimeout;
  const stop = (signal: string): void => {
    running.logger.info({ signal, drainMs }, 'shutting down');
    running.close(drainMs).then(() => process.exit(0));
    // close() cuts the remaining connections after drainMs; this only guards against a hang.
    setTimeout(() => process.exit(0), drainMs + 5_000).unref();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  return -1; // keep running
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`wharf: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
