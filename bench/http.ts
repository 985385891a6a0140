// A small HTTP client over node:http with a keep-alive agent: large bodies are streamed
// from files, responses are checked by the caller. No fetch: its body handling costs
// more CPU per byte, and the client must not be what limits a figure.
import { Agent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';

export const agent = new Agent({ keepAlive: true, maxSockets: 128, maxFreeSockets: 128 });

/** A request body: bytes, a list of byte chunks, or a stream factory (called once). */
export type Body = Buffer | Buffer[] | (() => AsyncIterable<Buffer>);

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body, unless a sink consumed it. */
  body: Buffer;
}

export class BenchError extends Error {
  override readonly name = 'BenchError';
}

export interface RequestOptions {
  method: string;
  /** Absolute URL, or a path resolved against `base`. */
  url: string;
  base: string;
  headers?: Record<string, string | number>;
  body?: Body;
  /** Consumes the response body instead of collecting it. */
  sink?: (res: IncomingMessage) => Promise<void>;
}

export function send(options: RequestOptions): Promise<Reply> {
  const url = new URL(options.url, options.base);
  // Always talk to the server under test, whatever host an absolute Location named.
  const target = new URL(options.base);
  return new Promise<Reply>((resolve, reject) => {
    let settled = false;
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    const req = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: options.method,
        path: `${url.pathname}${url.search}`,
        headers: options.headers,
        agent,
      },
      (res) => {
        const done = (body: Buffer): void => {
          if (settled) return;
          settled = true;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        };
        if (options.sink) {
          options.sink(res).then(() => done(Buffer.alloc(0)), fail);
          return;
        }
        const parts: Buffer[] = [];
        res.on('data', (chunk: Buffer) => parts.push(chunk));
        res.on('end', () => done(Buffer.concat(parts)));
        res.on('error', fail);
      },
    );
    req.on('error', fail);
    const body = options.body;
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else if (Array.isArray(body)) {
      for (let i = 0; i < body.length - 1; i++) req.write(body[i]);
      req.end(body[body.length - 1]);
    } else {
      // A server may answer (an error) before the body is sent; the response wins then.
      pipeline(body(), req).catch((err: unknown) => setTimeout(() => fail(err), 200));
    }
  });
}

/** Throws a BenchError unless the reply has the expected status. */
export function expectStatus(reply: Reply, status: number, what: string): void {
  if (reply.status !== status) {
    const text = reply.body.subarray(0, 500).toString('utf8');
    throw new BenchError(`${what}: expected HTTP ${status}, got ${reply.status} ${text}`);
  }
}

export function header(reply: Reply, name: string): string {
  const value = reply.headers[name.toLowerCase()];
  return Array.isArray(value) ? (value[0] ?? '') : (value ?? '');
}
