// Docker swarm on a test dockerd that runs in a network namespace of its own (startDockerd
// with netns: true): a loopback TCP port of the host (wharf's) is carried into the namespace
// over a unix socket, since a unix socket's path is reachable from every network namespace
// while 127.0.0.1 is not. Inside, a small Node forwarder (entered with nsenter) listens on
// 127.0.0.1:PORT and passes every connection to the socket; outside, the test process passes
// each one on to the host's 127.0.0.1:PORT. Registry and token realm keep their URLs.
// Also: a stack file, and task states of a service as `docker service ps` reports them.
import { rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Dockerd } from './dockerd.js';
import { LOG_DIR, spawnLogged, waitFor, type LoggedProcess } from './processes.js';
import { mustToolPath } from './tools.js';

/** The tools this helper needs besides DOCKERD_TOOLS, with their Debian packages. */
export const SWARM_TOOLS: Array<[string, string]> = [
  ['nsenter', 'util-linux'],
  ['ip', 'iproute2'],
];

export interface PortForward {
  port: number;
  /** The forwarder inside the namespace. */
  inside: LoggedProcess;
  /** Connections carried so far. */
  connections(): number;
  close(): Promise<void>;
}

/** Joins two sockets both ways, half-closes passed on, an error on either ends both. */
function splice(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
}

// Runs as `node -e` inside the namespace: argv = [node, port, socketPath].
const INSIDE = `
const net = require('node:net');
const [port, path] = process.argv.slice(1);
const server = net.createServer({ allowHalfOpen: true }, (c) => {
  const u = net.connect({ path, allowHalfOpen: true });
  c.pipe(u); u.pipe(c);
  c.on('error', () => u.destroy()); u.on('error', () => c.destroy());
  c.on('close', () => u.destroy()); u.on('close', () => c.destroy());
});
server.listen(Number(port), '127.0.0.1', () => console.log('forwarder ready on 127.0.0.1:' + port));
process.on('SIGTERM', () => process.exit(0));
`;

/**
 * Makes 127.0.0.1:`port` inside the network namespace of process `nsPid` reach 127.0.0.1:`port`
 * of the host. `dir` holds the unix socket (a short path: sockets are limited to 107 bytes).
 */
export async function forwardPortIntoNetns(nsPid: number, port: number, dir: string): Promise<PortForward> {
  const socketPath = join(dir, `fwd-${port}.sock`);
  await rm(socketPath, { force: true });
  let count = 0;
  const open = new Set<Socket>();
  const outside: Server = createServer({ allowHalfOpen: true }, (c) => {
    count++;
    const upstream = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    open.add(c);
    open.add(upstream);
    c.on('close', () => open.delete(c));
    upstream.on('close', () => open.delete(upstream));
    splice(c, upstream);
  });
  await new Promise<void>((resolve, reject) => {
    outside.once('error', reject);
    outside.listen(socketPath, () => resolve());
  });
  const inside = spawnLogged('forwarder', mustToolPath('nsenter'), ['-t', String(nsPid), '-n', process.execPath, '-e', INSIDE, String(port), socketPath], {
    logFile: join(LOG_DIR, `forwarder-${port}-${Date.now()}.log`),
  });
  const close = async (): Promise<void> => {
    await inside.stop(2000);
    for (const s of open) s.destroy();
    await new Promise<void>((resolve) => outside.close(() => resolve()));
    await rm(socketPath, { force: true });
  };
  try {
    await waitFor(() => /forwarder ready/.test(inside.logTail(5)), { process: inside, timeoutMs: 15_000, what: `the forwarder of port ${port} inside the namespace` });
  } catch (err) {
    await close();
    throw err;
  }
  return { port, inside, connections: () => count, close };
}

/**
 * A stack file with one service `app` running `image` (`/bin/busybox sleep 300`) on the
 * external `host` network, one replica, restarted on failure.
 */
export async function writeStackFile(file: string, image: string): Promise<void> {
  const yaml = [
    'version: "3.8"',
    'services:',
    '  app:',
    `    image: ${JSON.stringify(image)}`,
    '    command: ["/bin/busybox", "sleep", "300"]',
    '    networks: [hostnet]',
    '    deploy:',
    '      replicas: 1',
    '      restart_policy: { condition: any, delay: 2s }',
    'networks:',
    '  hostnet:',
    '    external: true',
    '    name: host',
    '',
  ].join('\n');
  await writeFile(file, yaml);
}

export interface TaskState {
  id: string;
  /** e.g. "Running 3 seconds ago", "Rejected 1 second ago". */
  currentState: string;
  desiredState: string;
  error: string;
}

/** Every task of `service` (history included), newest first. */
export async function serviceTasks(d: Dockerd, service: string, env: NodeJS.ProcessEnv = {}): Promise<TaskState[]> {
  const r = await d.dockerOk(['service', 'ps', '--no-trunc', '--format', '{{json .}}', service], { env, timeoutMs: 30_000 });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      const t = JSON.parse(l) as { ID: string; CurrentState: string; DesiredState: string; Error: string };
      return { id: t.ID, currentState: t.CurrentState, desiredState: t.DesiredState, error: t.Error };
    });
}

/** Polls the tasks of `service` until one satisfies `match`; throws with the last states on timeout. */
export async function waitForTask(
  d: Dockerd,
  service: string,
  match: (t: TaskState) => boolean,
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; what?: string } = {},
): Promise<{ task: TaskState; all: TaskState[] }> {
  let last: TaskState[] = [];
  try {
    return await waitFor(
      async () => {
        last = await serviceTasks(d, service, opts.env);
        const task = last.find(match);
        return task ? { task, all: last } : undefined;
      },
      { timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 500, what: opts.what ?? `a task of ${service}` },
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\ntasks:\n${last.map((t) => `${t.id.slice(0, 12)} ${t.desiredState} | ${t.currentState} | ${t.error}`).join('\n')}`);
  }
}
