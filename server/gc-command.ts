// `wharf garbage-collect` arguments, progress and summary (the command itself is in main.ts).
// Progress is a live bar on a terminal (cli-progress) and plain lines otherwise (logs, CI,
// pipes): one per step, and for a long phase its counts every few seconds.
import { SingleBar } from 'cli-progress';
import { parseDuration } from './config.js';
import { formatBytes, type GarbageCollectResult, type GcProgress } from '../storage/garbage-collect.js';

/** Online collection's default grace period. */
export const DEFAULT_GRACE_MS = 3600_000;

export interface GcArgs {
  dryRun: boolean;
  deleteUntagged: boolean;
  online: boolean;
  graceMs: number;
  file?: string;
}

/** The parsed arguments, 'help', or a usage error's message. */
export function parseGcArgs(args: string[]): GcArgs | 'help' | { error: string } {
  const parsed: GcArgs = { dryRun: false, deleteUntagged: false, online: false, graceMs: DEFAULT_GRACE_MS };
  let grace: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--dry-run' || arg === '-d') parsed.dryRun = true;
    else if (arg === '--delete-untagged' || arg === '-m') parsed.deleteUntagged = true;
    else if (arg === '--online') parsed.online = true;
    else if (arg === '--grace' || arg.startsWith('--grace=')) {
      grace = arg === '--grace' ? args[++i] : arg.slice('--grace='.length);
      if (grace === undefined) return { error: '--grace needs a duration, e.g. --grace 1h' };
    } else if (arg === '--help' || arg === '-h') return 'help';
    else if (arg.startsWith('-') || parsed.file !== undefined) return { error: `unexpected argument ${JSON.stringify(arg)}` };
    else parsed.file = arg;
  }
  if (grace !== undefined) {
    if (!parsed.online) return { error: '--grace applies to --online only' };
    const ms = parseDuration(grace);
    if (ms === undefined) return { error: `--grace: not a duration: ${JSON.stringify(grace)} (examples: 90s, 30m, 2h)` };
    parsed.graceMs = ms;
  }
  if (parsed.online && parsed.deleteUntagged) {
    return {
      error:
        '--delete-untagged cannot be combined with --online: a manifest revision being deleted can be the one a push ' +
        'is tagging or an index is referencing at that moment. Run --delete-untagged offline, with every registry stopped',
    };
  }
  return parsed;
}

export const formatDuration = (ms: number): string =>
  ms % 3600_000 === 0 ? `${ms / 3600_000}h` : ms % 60_000 === 0 ? `${ms / 60_000}m` : `${ms / 1000}s`;

/** The last line of a run: what the tests and scripts read. */
export function gcSummary(r: GarbageCollectResult, options: { dryRun: boolean; online: boolean }): string {
  if (!options.online) {
    return (
      `${options.dryRun ? 'dry run, nothing deleted: ' : ''}${r.manifestsMarked} manifests marked, ${r.manifestsDeleted} manifests deleted, ` +
      `${r.blobsMarked} blobs marked, ${r.blobsDeleted} blobs deleted, ${formatBytes(r.bytesFreed)} (${r.bytesFreed} bytes) freed, ` +
      `${r.referrersDeleted} referrer entries, ${r.tempFilesDeleted} temporary files, ${r.uploadsPurged} upload sessions removed`
    );
  }
  return (
    `${options.dryRun ? 'dry run, nothing changed: ' : ''}online: ${r.manifestsMarked + r.manifestsRemarked} manifests marked, ` +
    `${r.blobsMarked} blobs marked, ${r.blobsDeleted} blobs deleted, ${formatBytes(r.bytesFreed)} (${r.bytesFreed} bytes) freed, ` +
    `${r.blobsHidden} blobs hidden, ${formatBytes(r.bytesHidden)} (${r.bytesHidden} bytes), ${r.blobsRestored} restored, ` +
    `${r.blobsRecent} recent, ${r.blobsWaiting} waiting, ${r.tempFilesDeleted} temporary files, ${r.uploadsPurged} upload sessions removed`
  );
}

export interface GcReporter {
  line(text: string): void;
  progress(p: GcProgress): void;
  stop(): void;
}

const UNITS: Record<GcProgress['phase'], string> = { mark: 'repositories', scan: 'blobs', sweep: 'blobs' };
const BYTES_LABEL: Record<GcProgress['phase'], string> = { mark: '', scan: 'unreferenced', sweep: 'hidden or freed' };

/** A live bar on a terminal; otherwise the step lines plus each phase's counts every few seconds. */
export function gcReporter(stream: NodeJS.WriteStream, tty = Boolean(stream.isTTY)): GcReporter {
  const describe = (p: GcProgress): string =>
    `${p.phase}: ${p.done}/${p.total} ${UNITS[p.phase]}${BYTES_LABEL[p.phase] ? `, ${formatBytes(p.bytes)} ${BYTES_LABEL[p.phase]}` : ''}`;
  if (!tty) {
    let last: GcProgress | undefined;
    let shown: GcProgress | undefined;
    const timer = setInterval(() => {
      if (last && last !== shown && last.done < last.total) stream.write(`progress: ${describe(last)}\n`);
      shown = last;
    }, 5000);
    timer.unref();
    return {
      line: (text) => stream.write(`${text}\n`),
      progress: (p) => {
        last = p;
      },
      stop: () => clearInterval(timer),
    };
  }
  // One bar per phase, redrawn in place; a step line clears it and the next update redraws it.
  let bar: SingleBar | undefined;
  let phase: string | undefined;
  const clear = (): void => {
    bar?.stop();
    bar = undefined;
  };
  return {
    line: (text) => {
      clear();
      stream.write(`${text}\n`);
    },
    progress: (p) => {
      const payload = { phase: p.phase.padEnd(5), unit: UNITS[p.phase], bytes: BYTES_LABEL[p.phase] ? `| ${formatBytes(p.bytes)} ${BYTES_LABEL[p.phase]}` : '' };
      if (phase !== p.phase) clear();
      phase = p.phase;
      if (!bar) {
        bar = new SingleBar({ format: '{phase} [{bar}] {value}/{total} {unit} {bytes}', hideCursor: true, barsize: 30, clearOnComplete: true, stream });
        bar.start(p.total, p.done, payload);
      } else {
        bar.setTotal(p.total);
        bar.update(p.done, payload);
      }
    },
    stop: clear,
  };
}
