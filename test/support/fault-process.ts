// The fault suite's wharf: a real `bin/wharf.js serve` child process (so that a
// crash, a SIGKILL or a leak is the child's, never the test runner's), plus raw-socket
// HTTP for requests fetch refuses to send, and /proc readings of the child.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, REPO_ROOT, sleep } from './processes.js';

export { sleep };

const WHARF_BIN = join(REPO_ROOT, 'bin', 'wharf.js');

export interface WharfProcess {
  pid: number;
  port: number;
  /** http://127.0.0.1:PORT */
  base: string;
  /** The filesystem storage root ('' when `storageEnv` chose other storage). */
  root: string;
  child: ChildProcess;
  /** Everything the child wrote to stdout and stderr so far (the last `outputLimit` bytes). */
  output(): string;
  /** Whether the child is still running. */
  alive(): boolean;
  /** Resolves when the child has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends SIGKILL and waits for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (graceful), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  /** The filesystem storage root (REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY); unused with `storageEnv`. */
  root?: string;
  /**
   * Variables that select the storage instead of `root` (FaultStorage.env: s3Env() for a
   * bucket); the filesystem root variable is then not set.
   */
  storageEnv?: Record<string, string>;
  /** Extra REGISTRY_* variables. */
  env?: Record<string, string>;
  /** A config.yml passed as `serve <file>`. */
  configFile?: string;
  logLevel?: string;
  port?: number;
  readyTimeoutMs?: number;
  outputLimit?: number;
}

const running = new Set<ChildProcess>();
// Never leave a wharf behind, whatever happens to the test run. Only our own children.
process.once('exit', () => {
  for (const child of running) if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
});



export async function spawnWharf(options: SpawnOptions): Promise<WharfProcess> {
  const port = options.port ?? (await freePort());
  const limit = options.outputLimit ?? 1 << 20;
  const args = ['serve', ...(options.configFile ? [options.configFile] : [])];
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    NODE_ENV: 'production',
    REGISTRY_HTTP_ADDR: `127.0.0.1:${port}`,
    ...(options.storageEnv ?? { REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: options.root }),
    REGISTRY_STORAGE_DELETE_ENABLED: 'true',
    REGISTRY_LOG_LEVEL: options.logLevel ?? 'warn',
    REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED: 'false',
    ...options.env,
  };
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
  // Executed directly, as the `wharf` command is: its #! line carries wharf's node flags.
  const child = spawn(WHARF_BIN, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let output = '';
  const collect = (data: Buffer): void => {
    output += data.toString('utf8');
    if (output.length > limit) output = output.slice(output.length - limit);
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  const base = `http://127.0.0.1:${port}`;
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  const proc: WharfProcess = {
    pid: child.pid!,
    port,
    base,
    root: options.root ?? '',
    child,
    output: () => output,
    alive,
    exited,
    async kill() {
      if (alive()) child.kill('SIGKILL');
      await exited;
    },
    async stop(graceMs = 5000) {
      if (!alive()) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => alive() && child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + (options.readyTimeoutMs ?? 20_000);
  for (;;) {
    if (!alive()) throw new Error(`wharf exited during start-up:\n${output.slice(-4000)}`);
    try {
      const res = await fetch(`${base}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return proc;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await proc.kill();
      throw new Error(`wharf did not answer /v2/ within the start-up timeout:\n${output.slice(-4000)}`);
    }
    await sleep(20);
  }
}

/** Resident set size (bytes) and open file descriptors of a process, from /proc. */
export function procStats(pid: number): { rss: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return { rss: m ? Number(m[1]) * 1024 : 0, fds: readdirSync(`/proc/${pid}/fd`).length };
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a socket: for framing fuzz, header floods and slow clients.

export interface RawResponse {
  /** Status of the first response, undefined when the server closed without answering. */
  status?: number;
  headers: Record<string, string>;
  body: string;
  /** The server closed the connection (or reset it). */
  closed: boolean;
  /** Socket error code, if any (ECONNRESET, EPIPE...). */
  error?: string;
  timedOut: boolean;
}

export type RawPart = string | Buffer | { delayMs: number };

export interface RawOptions {
  /** Half-close (FIN) after the last part. */
  end?: boolean;
  timeoutMs?: number;
}

/** Sends `parts` on a fresh connection and reads the first response. */
export function rawRequest(port: number, parts: RawPart[], options: RawOptions = {}): Promise<RawResponse> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let settled = false;
    let error: string | undefined;
    let closed = false;
    let timedOut = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...parseResponse(Buffer.concat(chunks)), closed, error, timedOut });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      finish();
    }, options.timeoutMs ?? 5000);
    socket.on('data', (data: Buffer) => {
      chunks.push(data);
      if (completeResponse(Buffer.concat(chunks))) finish();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.on('connect', async () => {
      for (const part of parts) {
        if (settled || socket.destroyed) return;
        if (typeof part === 'object' && !Buffer.isBuffer(part)) await sleep(part.delayMs);
        else await new Promise<void>((done) => socket.write(part, () => done()));
      }
      if (options.end && !socket.destroyed) socket.end();
    });
  });
}

function headerEnd(data: Buffer): number {
  return data.indexOf('\r\n\r\n');
}

function parseHead(data: Buffer): { status?: number; headers: Record<string, string>; bodyStart: number } {
  const end = headerEnd(data);
  if (end < 0) return { headers: {}, bodyStart: -1 };
  const lines = data.subarray(0, end).toString('latin1').split('\r\n');
  let offset = 0;
  // Skip interim 1xx responses (100 Continue).
  const statusMatch = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (statusMatch && statusMatch[1]!.startsWith('1')) {
    offset = end + 4;
    const rest = parseHead(data.subarray(offset));
    return { ...rest, bodyStart: rest.bodyStart < 0 ? -1 : rest.bodyStart + offset };
  }
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: statusMatch ? Number(statusMatch[1]) : undefined, headers, bodyStart: end + 4 };
}

function completeResponse(data: Buffer): boolean {
  const head = parseHead(data);
  if (head.bodyStart < 0 || head.status === undefined) return false;
  const length = head.headers['content-length'];
  if (length === undefined) return false; // read until close
  return data.length - head.bodyStart >= Number(length);
}

function parseResponse(data: Buffer): { status?: number; headers: Record<string, string>; body: string } {
  const head = parseHead(data);
  if (head.bodyStart < 0) return { headers: {}, body: '' };
  let body = data.subarray(head.bodyStart);
  const length = head.headers['content-length'];
  if (length !== undefined) body = body.subarray(0, Number(length));
  return { status: head.status, headers: head.headers, body: body.toString('utf8') };
}

// ---------------------------------------------------------------------------------------
// Checks on responses.

/** Why `body` is not the spec's error shape `{"errors":[{code,message}]}`, or undefined when it is. */
export function ociErrorProblem(body: string): string | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    return `not JSON: ${JSON.stringify(body.slice(0, 120))}`;
  }
  const errors = (doc as { errors?: unknown })?.errors;
  if (!Array.isArray(errors) || errors.length === 0) return `no errors array: ${body.slice(0, 120)}`;
  for (const e of errors as Record<string, unknown>[]) {
    if (typeof e?.code !== 'string' || typeof e?.message !== 'string') return `bad error entry: ${body.slice(0, 120)}`;
  }
  return undefined;
}

/** The first OCI error code in a body, or '-' */
export function firstCode(body: string): string {
  try {
    return (JSON.parse(body) as { errors: { code: string }[] }).errors[0]!.code;
  } catch {
    return '-';
  }
}

/** Lines the server logged as unexpected failures (pino level >= 50). */
export function errorLogLines(output: string): string[] {
  return output.split('\n').filter((line) => /"level":(5\d|60)/.test(line));
}

// ---------------------------------------------------------------------------------------
// node:http requests: the response is read even when the server answers before the body
// is sent (fetch would abort the upload instead), and nothing hangs past the timeout.

export interface SimpleResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  ms: number;
}

export function httpRequest(
  base: string,
  method: string,
  path: string,
  options: { body?: Buffer; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<SimpleResponse> {
  const { port } = new URL(base);
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.body && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-length')) {
      headers['Content-Length'] = String(options.body.length);
    }
    const req = request({ host: '127.0.0.1', port: Number(port), method, path, headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8'), ms: Date.now() - started }));
      res.on('error', reject);
    });
    req.setTimeout(options.timeoutMs ?? 30_000, () => req.destroy(new Error(`${method} ${path}: no answer within ${options.timeoutMs ?? 30_000} ms`)));
    // The server may answer (and stop reading) before the whole body is sent: keep the answer.
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
    });
    req.end(options.body);
  });
}
