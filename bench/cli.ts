// What both benches (bench/run.ts and bench/mirror.ts) do around their measurements: the
// command line, the build of dist/, the work directory, the report's header facts, the
// raw results and the exit code. One copy, so that the two cannot drift apart.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { BenchError } from './http.js';
import { REPO_ROOT, type RunningServer } from './servers.js';

/** The options both benches have; each adds its own. */
export interface CommonOptions {
  quick: boolean;
  rounds: number;
  logMode: 'info' | 'warn';
  dir?: string;
  keep: boolean;
  json?: string;
}

/** The value of the option being parsed. */
export interface ArgValue {
  (): string;
  /** As an integer >= min (default 1). */
  int(min?: number): number;
}

/**
 * `npm run <script> --quick` (without `--`) hands --quick to npm, which passes it on only
 * as npm_config_quick: put it back. With `script`, any other option of `usage` given that
 * way (and so lost) stops the bench instead.
 */
export function npmArgv(argv: string[], env: NodeJS.ProcessEnv, usage: string, script?: string): string[] {
  for (const [key, value] of Object.entries(env)) {
    if (!key.startsWith('npm_config_') || value === undefined) continue;
    const option = `--${key.slice('npm_config_'.length).replace(/_/g, '-')}`;
    if (option === '--quick' && value === 'true') argv = ['--quick', ...argv];
    else if (script !== undefined && usage.includes(`  ${option} `) && option !== '--help') {
      throw new BenchError(`npm took ${option} for itself: write \`npm run ${script} -- ${option} ...\``);
    }
  }
  return argv;
}

/**
 * Parses `argv` into `opts`: the common options here, the bench's own in `own` (false for
 * an option it does not know). Returns the options given, so that --quick only changes
 * defaults the user did not set.
 */
export function parseArgs(argv: string[], opts: CommonOptions, usage: string, own: (arg: string, value: ArgValue) => boolean): Set<string> {
  const explicit = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value: ArgValue = Object.assign(
      (): string => {
        const v = argv[++i];
        if (v === undefined) throw new BenchError(`${arg} needs a value`);
        return v;
      },
      {
        int: (min = 1): number => {
          const v = Number(value());
          if (!Number.isInteger(v) || v < min) throw new BenchError(`${arg}: expected ${min === 1 ? 'a positive integer' : `an integer >= ${min}`}`);
          return v;
        },
      },
    );
    explicit.add(arg);
    switch (arg) {
      case '--quick':
        opts.quick = true;
        break;
      case '--rounds':
        opts.rounds = value.int();
        break;
      case '--log': {
        const v = value();
        if (v !== 'info' && v !== 'warn') throw new BenchError('--log: info or warn');
        opts.logMode = v;
        break;
      }
      case '--dir':
        opts.dir = value();
        break;
      case '--keep':
        opts.keep = true;
        break;
      case '--json':
        opts.json = value();
        break;
      case '--help':
      case '-h':
        process.stdout.write(usage);
        process.exit(0);
        break;
      default:
        if (!own(arg, value)) throw new BenchError(`unknown option ${arg}\n\n${usage}`);
    }
  }
  return explicit;
}

/**
 * tsc -p tsconfig.build.json: wharf runs as users run it, from dist/. False when tsc
 * reported errors (it still emits; bin/wharf.js then runs that build).
 */
export function buildDist(): boolean {
  const result = spawnSync(process.execPath, [createRequire(import.meta.url).resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    cwd: REPO_ROOT,
    stdio: 'inherit',
  });
  return result.status === 0;
}

/**
 * Runs `fn` in --dir, or in a new directory under /var/tmp that is removed afterwards
 * unless --keep; `kept` reports a kept directory.
 */
export async function inWorkDir(opts: CommonOptions, prefix: string, fn: (workDir: string) => Promise<number>, kept: (workDir: string) => void | Promise<void>): Promise<number> {
  const ownDir = opts.dir === undefined;
  const workDir = opts.dir ?? (await mkdtemp(`/var/tmp/${prefix}`));
  try {
    return await fn(workDir);
  } finally {
    if (ownDir && !opts.keep) await rm(workDir, { recursive: true, force: true });
    else if (opts.keep) await kept(workDir);
  }
}

/** Runs the bench and exits with its code; a BenchError (usage, set-up) is shown without its stack. */
export function runMain(main: () => Promise<number>, say: (line: string) => void): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      say(err instanceof BenchError ? `bench: ${err.message}` : `bench: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}

/** An aborted run: the error, then the end of every server's log. */
export function reportAbort(err: unknown, servers: Iterable<RunningServer>, say: (line: string) => void): void {
  say(`\nABORTED: ${(err as Error).stack ?? String(err)}`);
  for (const server of servers) say(`\n--- last lines of ${server.label}'s log (${server.logPath}) ---\n${server.logTail(15)}`);
}

/** With --json or --keep: the raw results, to --json's path or results.json in the work directory. */
export async function writeResults(opts: CommonOptions, workDir: string, results: unknown, say: (line: string) => void): Promise<void> {
  if (!opts.json && !opts.keep) return;
  const path = opts.json ?? join(workDir, 'results.json');
  await writeFile(path, JSON.stringify(results, null, 2));
  say(`raw results: ${path}`);
}

/** The commit under test, and whether `paths` (what wharf runs) differ from it. */
export function wharfRevision(paths: string[]): string {
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).stdout.trim();
  const dirty = spawnSync('git', ['status', '--porcelain', '--', ...paths], { cwd: REPO_ROOT, encoding: 'utf8' }).stdout.trim();
  return head ? `${head}${dirty ? ' + uncommitted changes' : ''}` : 'unknown';
}

/** "2 x <CPU model>, 8 GiB RAM, node v20...": the start of each report's machine line. */
export function machineText(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  return `${cpus().length} x ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, node ${process.version}`;
}

/** The end of each report's SUMMARY line. */
export const missedText = (missed: string[]): string => (missed.length ? `; missed: ${missed.join('; ')}` : '');
