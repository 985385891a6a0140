// Manifests of a repository: the bytes live in the blob store under their digest, the
// repository holds a revision link per manifest, tags point at revisions, and manifests
// with an OCI 1.1 `subject` are indexed under _referrers for the referrers API.
//
// Order of writes on PUT (each step atomic): blob bytes -> revision link -> referrer
// link -> tag index link -> tag current link. A crash between steps leaves at worst an
// unreferenced blob or an untagged revision, never a tag pointing at missing content.
//
// Online garbage collection may run meanwhile (gc-markers.ts). Before the reference check
// reads a blob, the PUT re-writes the repository's layer link of it (a link the collector
// hid is restored, for the repositories that had one), and it writes its own bytes before
// it reads their marker: the collector, which writes its marker before it reads links and
// modification times, then either sees the PUT or the PUT waits for its decision.
import { LRUCache } from 'lru-cache';
import type { StorageDriver } from './driver.js';
import { digestOf, isDigest, parseDigest, type Digest } from './digest.js';
import { RegistryError } from './errors.js';
import { KeyedMutex } from './keyed-mutex.js';
import { assertTag, isValidTag } from './names.js';
import { MAX_MANIFEST_BYTES, parseManifest, parseStoredManifest, type ParsedManifest } from './manifest.js';
import type { BlobStore } from './blob-store.js';
import { baseName, listOrEmpty, type LinkStore } from './link-store.js';
import { holdAgainstGc, readGcMarker } from './gc-markers.js';
import { layerLink, referrerEntry, referrerLink, revisionDir, revisionLink, tagCurrentLink, tagDir, tagIndexLink, tagsDir } from './paths.js';
import type { ManifestContent, PutManifestResult } from './repository.js';

export class ManifestStore {
  /** Parsed manifests by digest: immutable, so cached without expiry. */
  private readonly parsed = new LRUCache<string, ParsedManifest>({ max: 10_000 });
  /**
   * Manifest writes and deletes of one repository run one at a time: a delete by digest
   * interleaved with a PUT of the same manifest under a tag could otherwise remove the
   * revision after the PUT tagged it (a listed tag that answers 404), or pull a directory
   * from under a link being written (a 500).
   */
  private readonly locks = new KeyedMutex();

  constructor(
    private readonly driver: StorageDriver,
    private readonly blobs: BlobStore,
    private readonly links: LinkStore,
  ) {}

  /** The digest a tag or digest reference names in `repo`, or undefined. */
  async resolve(repo: string, reference: string): Promise<Digest | undefined> {
    if (isDigest(reference)) return parseDigest(reference);
    // A reference that is neither a tag nor a digest names nothing: unknown, not invalid
    // (what the spec's conformance suite expects of GET and HEAD).
    if (!isValidTag(reference)) return undefined;
    return this.links.read(tagCurrentLink(repo, reference));
  }

  async get(repo: string, reference: string): Promise<ManifestContent> {
    const digest = await this.resolve(repo, reference);
    if (!digest || !(await this.links.read(revisionLink(repo, digest)))) throw unknownManifest(reference);
    const content = await this.blobs.read(digest);
    if (!content) throw unknownManifest(reference);
    return { digest, mediaType: this.parse(digest, content).mediaType, content };
  }

  async put(repo: string, reference: string, content: Buffer, contentType: string | undefined): Promise<PutManifestResult> {
    if (content.length > MAX_MANIFEST_BYTES) {
      throw new RegistryError('MANIFEST_TOO_LARGE', `manifest exceeds ${MAX_MANIFEST_BYTES} bytes`);
    }
    const byDigest = isDigest(reference) ? parseDigest(reference) : undefined;
    if (!byDigest) assertTag(reference);
    const digest = digestOf(content, byDigest?.algorithm ?? 'sha256');
    if (byDigest && byDigest.value !== digest.value) {
      throw new RegistryError('DIGEST_INVALID', 'the manifest does not match the digest in the URL', {
        expected: byDigest.value,
        actual: digest.value,
      });
    }
    const manifest = parseManifest(content, contentType);
    return this.locks.run(repo, () => this.store(repo, reference, content, digest, manifest, byDigest));
  }

  private async store(
    repo: string,
    reference: string,
    content: Buffer,
    digest: Digest,
    manifest: ParsedManifest,
    byDigest: Digest | undefined,
  ): Promise<PutManifestResult> {
    await this.verifyReferences(repo, manifest);
    await this.putBytes(content, digest);
    this.parsed.set(digest.value, manifest);
    await this.links.write(revisionLink(repo, digest), digest);
    const subject = manifest.subject ? parseDigest(manifest.subject.digest) : undefined;
    if (subject) await this.links.write(referrerLink(repo, subject, digest), digest);
    if (!byDigest) {
      await this.links.write(tagIndexLink(repo, reference, digest), digest);
      await this.links.write(tagCurrentLink(repo, reference), digest);
    }
    return { digest, subject };
  }

  /**
   * Stores a manifest fetched from elsewhere (the mirror's upstream) without checking that
   * its blobs are here: a pull-through cache holds manifests before their layers. The
   * digest must already be verified against the bytes.
   */
  async putUnchecked(repo: string, content: Buffer, digest: Digest): Promise<ParsedManifest> {
    const manifest = parseStoredManifest(content);
    await this.locks.run(repo, async () => {
      await this.putBytes(content, digest);
      this.parsed.set(digest.value, manifest);
      await this.links.write(revisionLink(repo, digest), digest);
      const subject = manifest.subject ? parseDigest(manifest.subject.digest) : undefined;
      if (subject) await this.links.write(referrerLink(repo, subject, digest), digest);
    });
    return manifest;
  }

  /** Points a tag at a manifest already in the repository. */
  tag(repo: string, tag: string, digest: Digest): Promise<void> {
    assertTag(tag);
    return this.locks.run(repo, async () => {
      await this.links.write(tagIndexLink(repo, tag, digest), digest);
      await this.links.write(tagCurrentLink(repo, tag), digest);
    });
  }

  /** By digest: the revision, its referrer entry and every tag pointing at it. By tag: the tag. */
  delete(repo: string, reference: string): Promise<void> {
    return this.locks.run(repo, () => this.remove(repo, reference));
  }

  private async remove(repo: string, reference: string): Promise<void> {
    if (!isDigest(reference)) {
      assertTag(reference);
      if (!(await this.links.remove(tagDir(repo, reference)))) throw unknownManifest(reference);
      return;
    }
    const digest = parseDigest(reference);
    if (!(await this.links.read(revisionLink(repo, digest)))) throw unknownManifest(reference);
    for (const tag of await this.tags(repo)) {
      const current = await this.links.read(tagCurrentLink(repo, tag));
      if (current?.value === digest.value) await this.links.remove(tagDir(repo, tag));
    }
    const content = await this.blobs.read(digest);
    const subject = content ? this.parse(digest, content).subject : undefined;
    if (subject) await this.links.remove(referrerEntry(repo, parseDigest(subject.digest), digest));
    await this.links.remove(revisionDir(repo, digest));
  }

  /** Tag names of a repository, sorted bytewise (the order the spec asks for). */
  async tags(repo: string): Promise<string[]> {
    const names = (await listOrEmpty(this.driver, tagsDir(repo))).map(baseName);
    return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  /** The parsed form of stored manifest content. */
  parse(digest: Digest, content: Buffer): ParsedManifest {
    let manifest = this.parsed.get(digest.value);
    if (!manifest) {
      manifest = parseStoredManifest(content);
      this.parsed.set(digest.value, manifest);
    }
    return manifest;
  }

  /**
   * Writes a manifest's bytes, then makes sure a collector deleting the same (until now
   * unreferenced) digest either saw them or finished before they were written.
   */
  private async putBytes(content: Buffer, digest: Digest): Promise<void> {
    await holdAgainstGc(this.driver, digest, async () => {
      await this.blobs.put(content, digest);
    });
  }

  /**
   * Whether a blob the manifest references is in the repository, asked of storage. Its
   * layer link is written again first (see the header): a link online garbage collection
   * hid from this repository is restored, one it is about to hide is seen by it.
   */
  private async claimLayer(repo: string, d: Digest): Promise<boolean> {
    const link = layerLink(repo, d);
    if (!(await this.links.read(link, { fresh: true }))) {
      // Not linked: only a blob the collector hid from this very repository may come back.
      const marker = await readGcMarker(this.driver, d);
      if (!marker?.repos.includes(repo)) return false;
    }
    await holdAgainstGc(this.driver, d, () => this.links.write(link, d));
    return (await this.blobs.stored(d)) !== undefined;
  }

  /**
   * Every blob and child manifest must be in the repository now: asked of storage, never
   * of a cache, since accepting the manifest acknowledges that it can be pulled whole.
   */
  private async verifyReferences(repo: string, manifest: ParsedManifest): Promise<void> {
    const missing: string[] = [];
    const present = async (link: string, d: Digest): Promise<boolean> =>
      Boolean(await this.links.read(link, { fresh: true })) && (await this.blobs.stored(d)) !== undefined;
    // An index may list one child for several platforms: each is checked once.
    const children = new Map(manifest.children.map((child) => parseDigest(child.digest)).map((d) => [d.value, d]));
    await runAtMost(REFERENCE_CHECKS_AT_ONCE, [
      ...manifest.blobs.map((d) => async () => {
        if (!(await this.claimLayer(repo, d))) missing.push(d.value);
      }),
      ...[...children.values()].map((d) => async () => {
        if (!(await present(revisionLink(repo, d), d))) missing.push(d.value);
      }),
    ]);
    if (missing.length > 0) {
      throw new RegistryError('MANIFEST_BLOB_UNKNOWN', `manifest references ${missing.length} unknown blob(s)`, {
        digests: missing.sort(),
      });
    }
  }
}

/**
 * Reference checks of one manifest PUT running at once. Each is a few storage round trips; a
 * manifest with thousands of layers checked all at once filled the S3 client's sockets
 * (~6000 requests queued for 20 s) and stalled every other request behind them.
 */
export const REFERENCE_CHECKS_AT_ONCE = 16;

/** Runs `tasks`, at most `limit` at a time; after a failure, starts no more and rejects with it. */
async function runAtMost(limit: number, tasks: Array<() => Promise<void>>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < tasks.length) {
      try {
        await tasks[next++]!();
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

const unknownManifest = (reference: string): RegistryError =>
  new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown to registry', { reference: reference.slice(0, 200) });
