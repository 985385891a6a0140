// Load generators run as separate processes: wrk for GET (its --latency output is
// parsed), ApacheBench for HEAD. wrk cannot measure HEAD: its HTTP parser is not told
// the response belongs to a HEAD request, so it waits for the Content-Length bytes that
// never come (0 requests complete). `ab -i -k` knows HEAD responses carry no body, and
// `-e` writes its percentiles with microsecond resolution.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { BenchError } from './http.js';

export interface LoadResult {
  tool: 'wrk' | 'ab';
  requests: number;
  seconds: number;
  reqPerSec: number;
  /** Latency percentiles, milliseconds. */
  p50: number;
  p99: number;
}

export interface LoadOptions {
  url: string;
  connections: number;
  durationSeconds: number;
  headers?: Record<string, string>;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new BenchError(`${cmd} ${args.join(' ')} failed (${signal ?? code}):\n${out}\n${err}`));
    });
  });
}

const UNIT_MS: Record<string, number> = { us: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };

function durationMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new BenchError(`wrk: cannot read duration ${JSON.stringify(text)}`);
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

/** Parses wrk --latency output; throws on any socket error or non-2xx/3xx response. */
export function parseWrk(output: string): LoadResult {
  const fail = (why: string): never => {
    throw new BenchError(`wrk: ${why}\n${output}`);
  };
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(output) ?? fail('no Requests/sec line');
  const total = /(\d+) requests in ([\d.]+\w+),/.exec(output) ?? fail('no "requests in" line');
  const pct = (p: number): number => {
    const m = new RegExp(`^\\s+${p}(?:\\.0+)?%\\s+([\\d.]+\\w+)\\s*$`, 'm').exec(output) ?? fail(`no ${p}% latency`);
    return durationMs(m[1]!);
  };
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(output);
  if (non2xx && Number(non2xx[1]) > 0) fail(`${non2xx[1]} responses were not 2xx/3xx`);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  if (socket && socket.slice(1).some((n) => Number(n) > 0)) fail(`socket errors: ${socket[0]}`);
  const requests = Number(total[1]);
  if (requests === 0) fail('no request completed');
  return {
    tool: 'wrk',
    requests,
    seconds: durationMs(total[2]!) / 1000,
    reqPerSec: Number(rps[1]),
    p50: pct(50),
    p99: pct(99),
  };
}

export async function wrk(options: LoadOptions & { threads: number }): Promise<LoadResult> {
  const args = ['-t', String(options.threads), '-c', String(options.connections), '-d', `${options.durationSeconds}s`, '--latency'];
  for (const [name, value] of Object.entries(options.headers ?? {})) args.push('-H', `${name}: ${value}`);
  args.push(options.url);
  return parseWrk(await run('wrk', args, (options.durationSeconds + 30) * 1000));
}

/** Parses ab's report and its -e percentile file; throws on any failed or non-2xx request. */
export function parseAb(output: string, csv: string): LoadResult {
  const fail = (why: string): never => {
    throw new BenchError(`ab: ${why}\n${output}`);
  };
  const num = (re: RegExp, what: string): number => Number((re.exec(output) ?? fail(`no ${what}`))[1]);
  const requests = num(/Complete requests:\s+(\d+)/, 'Complete requests');
  const failed = num(/Failed requests:\s+(\d+)/, 'Failed requests');
  if (failed > 0) fail(`${failed} failed requests`);
  const non2xx = /Non-2xx responses:\s+(\d+)/.exec(output);
  if (non2xx && Number(non2xx[1]) > 0) fail(`${non2xx[1]} non-2xx responses`);
  const keepAlive = num(/Keep-Alive requests:\s+(\d+)/, 'Keep-Alive requests');
  if (keepAlive < requests * 0.99) fail(`only ${keepAlive} of ${requests} requests used keep-alive`);
  if (requests === 0) fail('no request completed');
  const percentiles = new Map<number, number>();
  for (const line of csv.split('\n')) {
    const m = /^(\d+),([\d.]+)$/.exec(line.trim());
    if (m) percentiles.set(Number(m[1]), Number(m[2]));
  }
  const pct = (p: number): number => percentiles.get(p) ?? fail(`no ${p}% in the percentile file`);
  return {
    tool: 'ab',
    requests,
    seconds: num(/Time taken for tests:\s+([\d.]+) seconds/, 'Time taken'),
    reqPerSec: num(/Requests per second:\s+([\d.]+)/, 'Requests per second'),
    p50: pct(50),
    p99: pct(99),
  };
}

export async function abHead(options: LoadOptions & { csvPath: string }): Promise<LoadResult> {
  // -t alone caps the run at 50000 requests; -n after it raises the cap (ab keeps a
  // record per request, so not unboundedly).
  const args = ['-q', '-i', '-k', '-c', String(options.connections), '-t', String(options.durationSeconds), '-n', '5000000'];
  args.push('-e', options.csvPath);
  for (const [name, value] of Object.entries(options.headers ?? {})) args.push('-H', `${name}: ${value}`);
  args.push(options.url);
  const output = await run('ab', args, (options.durationSeconds + 30) * 1000);
  return parseAb(output, readFileSync(options.csvPath, 'utf8'));
}
