// Webhook notifications in Distribution's format (notifications.endpoints): an envelope of
// events (push, pull, delete of manifests and blobs) POSTed as
// application/vnd.docker.distribution.events.v1+json to each endpoint.
//
// Requests never wait for a webhook: events go into a bounded queue per endpoint (the
// oldest are dropped, and said once, when a receiver stays down longer than the queue
// lasts). A sender per endpoint posts them in batches, retrying a failed batch with
// backoff doubling from `backoff` up to a minute; a receiver that comes back gets
// everything still queued, in order. State changes (endpoint failing, back) are logged
// once each.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';

export interface NotificationEndpoint {
  name: string;
  url: string;
  headers: Record<string, string[]>;
  /** Per POST (ms). */
  timeout: number;
  /** First retry delay (ms). */
  backoff: number;
  /** Media types and actions never sent to this endpoint. */
  ignoredMediaTypes: string[];
  ignoredActions: string[];
}

export type EventAction = 'push' | 'pull' | 'delete' | 'mount';

export interface RegistryEvent {
  action: EventAction;
  repository: string;
  digest?: string;
  mediaType?: string;
  size?: number;
  tag?: string;
  /** The request that caused it. */
  request: { id: string; addr: string; host: string; method: string; useragent: string };
  actor?: string;
  /** Where the target can be fetched (a path, or an absolute URL with http.host). */
  url?: string;
}

const EVENTS_MEDIA_TYPE = 'application/vnd.docker.distribution.events.v1+json';
/** Events kept per endpoint while it is down. */
const QUEUE_LIMIT = 10_000;
const BATCH = 100;
const MAX_BACKOFF_MS = 60_000;

class EndpointSender {
  private readonly queue: object[] = [];
  private sending = false;
  private failing = false;
  private dropped = 0;
  private retryDelay: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly endpoint: NotificationEndpoint,
    private readonly logger: Logger,
  ) {
    this.retryDelay = endpoint.backoff;
  }

  enqueue(event: object): void {
    if (this.closed) return;
    if (this.queue.length >= QUEUE_LIMIT) {
      this.queue.shift();
      if (this.dropped++ === 0) this.logger.warn({ endpoint: this.endpoint.name, queued: QUEUE_LIMIT }, 'notification queue full: dropping the oldest events');
    }
    this.queue.push(event);
    if (!this.sending && !this.timer) void this.drain();
  }

  /** Waits (bounded) for queued events to go out; shutdown. */
  async flush(deadlineMs: number): Promise<void> {
    const until = Date.now() + deadlineMs;
    while ((this.queue.length > 0 || this.sending) && Date.now() < until && !this.failing) await new Promise((r) => setTimeout(r, 20));
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private async drain(): Promise<void> {
    this.sending = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const batch = this.queue.slice(0, BATCH);
        await this.post(batch); // throws on failure: the batch stays queued
        this.queue.splice(0, batch.length);
        if (this.failing) {
          this.failing = false;
          this.logger.info({ endpoint: this.endpoint.name, dropped: this.dropped }, 'notification endpoint reachable again');
          this.dropped = 0;
        }
        this.retryDelay = this.endpoint.backoff;
      }
    } catch (err) {
      if (!this.failing) {
        this.failing = true;
        this.logger.warn({ endpoint: this.endpoint.name, err: (err as Error).message }, 'notification endpoint failing; retrying with backoff');
      }
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.drain();
      }, this.retryDelay);
      this.timer.unref();
      this.retryDelay = Math.min(MAX_BACKOFF_MS, this.retryDelay * 2);
    } finally {
      this.sending = false;
    }
  }

  private async post(events: object[]): Promise<void> {
    const headers: Record<string, string> = { 'Content-Type': EVENTS_MEDIA_TYPE };
    for (const [name, values] of Object.entries(this.endpoint.headers)) headers[name] = values.join(', ');
    const res = await fetch(this.endpoint.url, {
      method: 'POST',
      headers,
      body: JSON.stringify({ events }),
      signal: AbortSignal.timeout(this.endpoint.timeout),
    });
    await res.arrayBuffer().catch(() => undefined);
    // Distribution counts 2xx and 3xx as delivered.
    if (res.status >= 400) throw new Error(`status ${res.status}`);
  }
}

export class Notifier {
  private readonly senders: { endpoint: NotificationEndpoint; sender: EndpointSender }[];
  private readonly source: { addr: string; instanceID: string };

  constructor(endpoints: NotificationEndpoint[], logger: Logger, listenAddr: string) {
    this.senders = endpoints.map((endpoint) => ({ endpoint, sender: new EndpointSender(endpoint, logger) }));
    this.source = { addr: `${hostname()}${listenAddr.startsWith(':') ? listenAddr : `:${listenAddr.split(':').pop()}`}`, instanceID: randomUUID() };
  }

  /** Queues an event for every endpoint that wants it; never waits. */
  notify(event: RegistryEvent): void {
    const envelope = {
      id: randomUUID(),
      timestamp: new Date().toISOString(),
      action: event.action,
      target: {
        mediaType: event.mediaType,
        size: event.size,
        digest: event.digest,
        length: event.size,
        repository: event.repository,
        url: event.url,
        tag: event.tag,
      },
      request: event.request,
      actor: event.actor ? { name: event.actor } : {},
      source: this.source,
    };
    for (const { endpoint, sender } of this.senders) {
      if (endpoint.ignoredActions.includes(event.action)) continue;
      if (event.mediaType && endpoint.ignoredMediaTypes.includes(event.mediaType)) continue;
      sender.enqueue(envelope);
    }
  }

  async close(deadlineMs = 2000): Promise<void> {
    await Promise.all(this.senders.map(({ sender }) => sender.flush(deadlineMs)));
  }
}
