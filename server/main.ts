// The wharf command line: `wharf serve [config.yml]`, `wharf mirror warm IMAGE...`,
// `wharf garbage-collect [config.yml] [--dry-run] [--delete-untagged | --online [--grace D]]`, `wharf --version`, `wharf --help`.
import { readFileSync } from 'node:fs';
import { ConfigError, loadConfig } from './config.js';
import { startRegistryServer } from './listen.js';
import { warmCommand } from './warm-command.js';
import { createStorageDriver, describeStorage } from './storage-setup.js';
import { garbageCollect } from '../storage/garbage-collect.js';
import { formatDuration, gcReporter, gcSummary, parseGcArgs } from './gc-command.js';

const USAGE = `wharf - a private container registry (OCI Distribution v2)

Usage:
  wharf serve [config.yml]   serve the registry (default: :5000, storage in ./data)
  wharf mirror warm IMAGE... fill the mirror's cache ahead of time (wharf mirror warm --help)
  wharf garbage-collect [config.yml] [--dry-run|-d] [--delete-untagged|-m]
                             delete blobs no manifest references, as Distribution's
                             garbage-collect does. OFFLINE: stop every registry (wharf or
                             Distribution) serving the storage first
  wharf garbage-collect [config.yml] --online [--grace 1h] [--dry-run|-d]
                             the same while wharf registries keep serving the storage
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
  if (command === 'garbage-collect') return garbageCollectCommand(rest);
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

const GC_USAGE = `Usage: wharf garbage-collect [config.yml] [--dry-run|-d] [--delete-untagged|-m]
       wharf garbage-collect [config.yml] --online [--grace DURATION] [--dry-run|-d]

Deletes every blob no manifest references, in Distribution's way (same marks, same
result): every manifest of every repository is kept, with its config and layers (an
index: its child manifests); with --delete-untagged, manifests no tag points at are
deleted first (children of a kept index stay). Also removes referrer entries of deleted
manifests, temporary files a crash left (older than 1h) and upload sessions older than
storage.maintenance.uploadpurging.age (when upload purging is enabled).

Without --online it is offline: stop every registry serving the storage before running
it. Blobs pushed while it runs could be deleted.

With --online, wharf registries (any number of replicas) keep serving the storage. A blob
is collected in two steps, each only for blobs no manifest references: a blob whose data
and repository links are older than the grace period is hidden (its repository links are
removed; a manifest pushed later that references it brings them back); a blob hidden at
least a grace period earlier is deleted by a later run. A push whose manifest comes within
the grace period of uploading its blobs (within grace - linkttl of a HEAD) never loses one.
Run it periodically; one online collection at a time. The grace period must exceed the
registries' storage.cache.linkttl. Not with --delete-untagged, not with a Distribution
writing to the same storage.

  --dry-run, -d          report what would be deleted (or hidden), change nothing
  --delete-untagged, -m  delete manifests that no tag points at (offline only)
  --online               collect while registries serve the storage
  --grace DURATION       with --online: how long an unreferenced blob is left alone
                         after its last use, and again after it was hidden (default 1h;
                         e.g. 90s, 30m, 24h)
`;

async function garbageCollectCommand(args: string[]): Promise<number> {
  const parsed = parseGcArgs(args);
  if (parsed === 'help') {
    process.stdout.write(GC_USAGE);
    return 0;
  }
  if ('error' in parsed) {
    process.stderr.write(`wharf: garbage-collect: ${parsed.error}\n\n${GC_USAGE}`);
    return 2;
  }
  const { dryRun, deleteUntagged, online, graceMs } = parsed;
  const files = parsed.file === undefined ? [] : [parsed.file];
  let config;
  try {
    config = loadConfig({ file: files[0] ?? process.env.REGISTRY_CONFIGURATION_PATH, env: process.env });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const line of err.message.split('\n')) process.stderr.write(`wharf: configuration error: ${line}\n`);
    return 1;
  }
  if (online && graceMs <= config.storage.cache.linkttl) {
    process.stderr.write(
      `wharf: garbage-collect: --grace ${formatDuration(graceMs)} must exceed storage.cache.linkttl (${formatDuration(config.storage.cache.linkttl)}): ` +
        'replicas may answer from their caches for that long\n',
    );
    return 2;
  }
  const root = config.storage.filesystem?.rootdirectory;
  const purging = config.storage.maintenance.uploadpurging;
  const reporter = gcReporter(process.stdout);
  const out = (line: string): void => reporter.line(line);
  const mode = online ? ` --online (grace ${formatDuration(graceMs)})` : deleteUntagged ? ' --delete-untagged' : '';
  out(`garbage-collect${dryRun ? ' (dry run)' : ''}${mode}: ${describeStorage(config.storage)}`);
  try {
    const driver = await createStorageDriver(config.storage);
    const now = new Date();
    const r = await garbageCollect(driver, {
      dryRun,
      deleteUntagged,
      rootDirectory: root,
      uploadsStartedBefore: purging.enabled ? new Date(now.getTime() - purging.age) : undefined,
      now,
      progress: out,
      onProgress: (p) => reporter.progress(p),
      online: online ? { graceMs } : undefined,
    });
    out(gcSummary(r, { dryRun, online }));
    return 0;
  } catch (err) {
    reporter.stop();
    process.stderr.write(`wharf: garbage-collect failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    reporter.stop();
  }
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
