// Fills the mirror's cache ahead of time (`wharf mirror warm IMAGE...`), for sites that go
// offline: each image's manifest (and, for an index, the chosen platforms' manifests) and
// every blob they reference, through the same repositories clients pull from, so the
// cache ends up exactly as a pull would leave it.
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import type { Digest } from '../storage/digest.js';
import { parseDigest } from '../storage/digest.js';
import { parseStoredManifest, type Descriptor } from '../storage/manifest.js';
import type { Registry } from '../storage/repository.js';

export interface ImageReference {
  /** The registry host the name carries (`ghcr.io`, `docker.io`); undefined: the default upstream. */
  host?: string;
  /** The repository name at that registry (`library/busybox`, `org/app`). */
  name: string;
  /** A tag or a digest. */
  reference: string;
}

const DOCKER_HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** `busybox`, `busybox:1.36`, `docker.io/library/busybox:1.36`, `ghcr.io/org/app@sha256:...`, as docker reads them. */
export function parseImageReference(text: string): ImageReference {
  let rest = text.trim();
  let reference = 'latest';
  const at = rest.indexOf('@');
  if (at >= 0) {
    reference = rest.slice(at + 1);
    rest = rest.slice(0, at);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon > rest.lastIndexOf('/')) {
      reference = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  const first = rest.split('/')[0]!;
  // Docker's rule: a first segment with a dot or a port, or `localhost`, names a registry.
  let host: string | undefined;
  if (rest.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    host = first.toLowerCase();
    rest = rest.slice(first.length + 1);
  }
  if (host === undefined || DOCKER_HUB_NAMES.has(host)) {
    if (!rest.includes('/')) rest = `library/${rest}`;
    if (host !== undefined) host = 'docker.io';
  }
  return { host, name: rest, reference };
}

export interface WarmProgress {
  /** Called when an image's blobs are known. */
  planned(image: string, blobs: number, bytes: number): void;
  /** Bytes of blob content received (from the cache or the upstream). */
  bytes(count: number): void;
  /** A blob is in the cache. */
  blobDone(digest: string, size: number): void;
  imageDone(image: string): void;
}

export interface WarmOptions {
  /** Platforms of an index to fetch (`linux/amd64`); undefined: all of them. */
  platforms?: string[];
  /** Blobs fetched at once. */
  concurrency?: number;
}

/** Warms one image; throws what the mirror would answer a client (MANIFEST_UNKNOWN, UNAVAILABLE...). */
export async function warmImage(registry: Registry, text: string, progress: WarmProgress, options: WarmOptions = {}): Promise<void> {
  const image = parseImageReference(text);
  // A registry host in the name chooses that upstream, as containerd's ?ns= does.
  const repo = registry.repository(image.name, image.host ? { namespace: image.host } : undefined);
  const top = await repo.manifests.get(image.reference);
  const blobs = new Map<string, number>();
  const collect = (content: Buffer): Descriptor[] => {
    const parsed = parseStoredManifest(content);
    for (const digest of parsed.blobs) blobs.set(digest.value, -1);
    return parsed.children;
  };
  for (const child of collect(top.content)) {
    const platform = child.platform ? `${child.platform.os}/${child.platform.architecture}${child.platform.variant ? `/${child.platform.variant}` : ''}` : undefined;
    const wanted =
      options.platforms === undefined ||
      (platform !== undefined && options.platforms.some((p) => platform === p || platform.startsWith(`${p}/`)));
    if (!wanted) continue;
    collect((await repo.manifests.get(child.digest)).content);
  }
  const digests = [...blobs.keys()].map(parseDigest);
  const sizes = await Promise.all(digests.map(async (d) => (await repo.blobs.stat(d)).size));
  progress.planned(text, digests.length, sizes.reduce((a, b) => a + b, 0));
  const queue = digests.map((digest, i) => ({ digest, size: sizes[i]! }));
  const worker = async (): Promise<void> => {
    for (let item = queue.shift(); item; item = queue.shift()) await fetchBlob(item.digest, item.size);
  };
  const fetchBlob = async (digest: Digest, size: number): Promise<void> => {
    const blob = await repo.blobs.open(digest);
    await pipeline(
      blob.stream,
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          progress.bytes(chunk.length);
          callback();
        },
      }),
    );
    progress.blobDone(digest.value, size);
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 3) }, worker));
  progress.imageDone(text);
}
