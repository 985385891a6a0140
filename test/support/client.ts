// A small registry client over fetch for HTTP tests: what a push or pull does, step by step.
import { createHash, randomBytes } from 'node:crypto';

export const sha256 = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
/** Node Buffers are valid fetch bodies; TypeScript's DOM types only want ArrayBuffer-backed ones. */
export const asBody = (data: Uint8Array): BodyInit => data as Uint8Array<ArrayBuffer>;
export const randomBlob = (size: number): Buffer => randomBytes(size);

export interface OciError {
  code: string;
  message: string;
  detail?: unknown;
}

/** The OCI error codes of a response, checking the body has the spec's shape. */
export async function errorCodes(res: Response): Promise<string[]> {
  const body = (await res.json()) as { errors: OciError[] };
  if (!Array.isArray(body.errors) || body.errors.length === 0) throw new Error(`not an OCI error body: ${JSON.stringify(body)}`);
  for (const e of body.errors) if (typeof e.code !== 'string' || typeof e.message !== 'string') throw new Error('bad error entry');
  return body.errors.map((e) => e.code);
}

export class RegistryClient {
  constructor(readonly base: string) {}

  url(path: string): string {
    return path.startsWith('http') ? path : `${this.base}${path}`;
  }

  fetch(path: string, init?: RequestInit): Promise<Response> {
    return fetch(this.url(path), init);
  }

  /** Monolithic push: POST ?digest= with the body. */
  async pushBlob(repo: string, data: Uint8Array): Promise<string> {
    const digest = sha256(data);
    const res = await this.fetch(`/v2/${repo}/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: asBody(data),
      headers: { 'Content-Type': 'application/octet-stream' },
    });
    if (res.status === 202) {
      // Registries without single-request pushes (Distribution 2.8) open a session instead.
      const location = res.headers.get('Location')!;
      const put = await this.fetch(`${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, {
        method: 'PUT',
        body: asBody(data),
        headers: { 'Content-Type': 'application/octet-stream' },
      });
      if (put.status !== 201) throw new Error(`push blob: ${put.status} ${await put.text()}`);
      return digest;
    }
    if (res.status !== 201) throw new Error(`push blob: ${res.status} ${await res.text()}`);
    return digest;
  }

  async startUpload(repo: string): Promise<string> {
    const res = await this.fetch(`/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    if (res.status !== 202) throw new Error(`start upload: ${res.status} ${await res.text()}`);
    return res.headers.get('Location')!;
  }

  async pushManifest(repo: string, reference: string, manifest: unknown, mediaType: string): Promise<Response> {
    return this.fetch(`/v2/${repo}/manifests/${reference}`, {
      method: 'PUT',
      body: typeof manifest === 'string' ? manifest : JSON.stringify(manifest),
      headers: { 'Content-Type': mediaType },
    });
  }

  /** Pushes a config and one layer per given blob, then an OCI image manifest; returns its digest and body. */
  async pushImage(repo: string, tag: string, layers: Uint8Array[], extra: Record<string, unknown> = {}) {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
    const configDigest = await this.pushBlob(repo, config);
    const layerDescriptors = [];
    for (const layer of layers) {
      layerDescriptors.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await this.pushBlob(repo, layer), size: layer.length });
    }
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layerDescriptors,
      ...extra,
    };
    const body = Buffer.from(JSON.stringify(manifest));
    const res = await this.pushManifest(repo, tag, body.toString(), manifest.mediaType);
    if (res.status !== 201) throw new Error(`push manifest: ${res.status} ${await res.text()}`);
    return { digest: sha256(body), body, manifest };
  }
}
