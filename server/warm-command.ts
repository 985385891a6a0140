// `wharf mirror warm [--config FILE] [--platform OS/ARCH]... [--all-platforms] IMAGE...`
//
// Fills the mirror's cache from the configured upstreams without starting a server (a
// running wharf on the same storage sees the result: storage is the truth). Progress is a
// live bar on a terminal (cli-progress) and plain lines otherwise (logs, CI, pipes).
import { arch } from 'node:os';
import { SingleBar } from 'cli-progress';
import { LocalRegistry } from '../storage/local-registry.js';
import { warmImage, type WarmProgress } from '../mirror/warm.js';
import { loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { createMirror } from './mirror-setup.js';
import { createStorageDriver } from './storage-setup.js';

export const WARM_USAGE = `Usage: wharf mirror warm [--config FILE] [--platform OS/ARCH]... [--all-platforms] IMAGE...

Fetches each image (its manifest, the chosen platforms of an index, and every layer) into
the mirror's cache, so it can be pulled while the upstream is unreachable. IMAGE is written
as for docker pull: busybox:1.36, docker.io/library/alpine, ghcr.io/org/app@sha256:...
An index's platforms default to this machine's (linux/${goArch()}).
`;

function goArch(): string {
  const names: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return names[arch()] ?? arch();
}

const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

/** Progress for a terminal: one bar, redrawn in place. */
function barProgress(): WarmProgress & { stop(): void } {
  const bar = new SingleBar({
    format: '{image} [{bar}] {percentage}% | {done} | {rate} | layers {layers}',
    hideCursor: true,
    barsize: 30,
  });
  let total = 0;
  let received = 0;
  let blobs = 0;
  let blobsDone = 0;
  let image = '';
  const started = Date.now();
  const payload = () => ({
    image,
    done: `${mb(received)}/${mb(total)}`,
    rate: `${mb(received / Math.max(0.001, (Date.now() - started) / 1000))}/s`,
    layers: `${blobsDone}/${blobs}`,
  });
  return {
    planned(name, count, bytes) {
      image = name;
      total += bytes;
      blobs += count;
      if (blobs === count) bar.start(total, 0, payload());
      else bar.setTotal(total);
    },
    bytes(count) {
      received += count;
      bar.update(received, payload());
    },
    blobDone() {
      blobsDone++;
      bar.update(received, payload());
    },
    imageDone() {},
    stop: () => bar.stop(),
  };
}

/** Progress for logs: a line per image and layer, and the totals every few seconds. */
function lineProgress(write: (line: string) => void): WarmProgress & { stop(): void } {
  let total = 0;
  let received = 0;
  let blobs = 0;
  let blobsDone = 0;
  const started = Date.now();
  const status = (): string =>
    `${mb(received)}/${mb(total)}, ${mb(received / Math.max(0.001, (Date.now() - started) / 1000))}/s, layers ${blobsDone}/${blobs}`;
  const timer = setInterval(() => write(`progress: ${status()}`), 2000);
  timer.unref();
  return {
    planned(image, count, bytes) {
      total += bytes;
      blobs += count;
      write(`${image}: ${count} blobs, ${mb(bytes)}`);
    },
    bytes(count) {
      received += count;
    },
    blobDone(digest, size) {
      blobsDone++;
      write(`cached ${digest} (${mb(size)}); ${status()}`);
    },
    imageDone(image) {
      write(`${image}: done`);
    },
    stop: () => clearInterval(timer),
  };
}

export async function warmCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let file = env.REGISTRY_CONFIGURATION_PATH;
  let platforms: string[] | undefined = [];
  const images: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--config') file = args[++i];
    else if (arg === '--platform') platforms?.push(args[++i] ?? '');
    else if (arg === '--all-platforms') platforms = undefined;
    else if (arg === '--help' || arg === '-h') {
      process.stdout.write(WARM_USAGE);
      return 0;
    } else if (arg.startsWith('-')) {
      process.stderr.write(`wharf mirror warm: unknown option ${arg}\n\n${WARM_USAGE}`);
      return 2;
    } else images.push(arg);
  }
  if (images.length === 0) {
    process.stderr.write(WARM_USAGE);
    return 2;
  }
  if (platforms?.length === 0) platforms = [`linux/${goArch()}`];
  const config = loadConfig({ file, env });
  if (!config.proxy) {
    process.stderr.write('wharf mirror warm: no upstream configured (set proxy.remoteurl or proxy.upstreams)\n');
    return 2;
  }
  // Logs go to stderr so that they never mix with the progress display.
  const logger = createLogger(config.log.level === 'info' ? 'warn' : config.log.level, config.log.fields, process.stderr);
  const driver = await createStorageDriver(config.storage, { logger });
  const local = new LocalRegistry(driver, { linkCacheTtlMs: config.storage.cache.linkttl });
  const mirror = createMirror(local, config.proxy, logger);
  const progress = process.stdout.isTTY ? barProgress() : lineProgress((line) => process.stdout.write(`${line}\n`));
  let failed = 0;
  try {
    for (const image of images) {
      try {
        await warmImage(mirror.registry, image, progress, { platforms });
      } catch (err) {
        failed++;
        progress.stop();
        process.stderr.write(`wharf mirror warm: ${image}: ${(err as Error).message}\n`);
      }
    }
  } finally {
    progress.stop();
    await mirror.close();
  }
  const stats = mirror.stats();
  process.stdout.write(
    `warmed ${images.length - failed} of ${images.length} images; ${mb(stats.bytesFromUpstream)} from upstream, ${stats.hits} cache hits\n`,
  );
  return failed > 0 ? 1 : 0;
}
