// helm against wharf: charts as OCI artifacts. Package a chart, push it, pull it back byte for
// byte, show and render it straight from the registry, and let helm pick the newest version.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helmAvailable, privateHelm, type Helm } from '../support/helm.js';
import { getBlob, getManifest, listTags, sha256 } from '../support/images.js';
import { Cleanup, describeFailure, type RunResult } from '../support/processes.js';
import { startWharf, type WharfProcess } from '../support/wharf-process.js';

const available = helmAvailable();

const HELM_CONFIG = 'application/vnd.cncf.helm.config.v1+json';
const HELM_CHART = 'application/vnd.cncf.helm.chart.content.v1.tar+gzip';

describe.skipIf(!available)('helm charts in wharf (OCI)', () => {
  const cleanup = new Cleanup();
  let wharf: WharfProcess;
  let helm: Helm;
  let chart010: Buffer;
  let digest010: string;

  const ok = async (args: string[]): Promise<RunResult> => {
    const r = await helm.helm(args);
    if (r.code !== 0) throw new Error(describeFailure(r));
    return r;
  };
  const oci = (path: string): string => `oci://${wharf.host}/${path}`;

  beforeAll(async () => {
    wharf = await startWharf();
    cleanup.add('wharf', () => wharf.stop());
    helm = await privateHelm();
    cleanup.add('helm home', () => helm.cleanup());
    await ok(['create', 'mychart']);
    await ok(['package', 'mychart', '--destination', 'pkg']);
    await ok(['package', 'mychart', '--version', '0.2.0', '--destination', 'pkg']);
    chart010 = await readFile(join(helm.home, 'pkg', 'mychart-0.1.0.tgz'));
    // helm pull does not create its --destination.
    for (const d of ['pulled', 'latest', 'none']) await mkdir(join(helm.home, d));
  }, 300_000);

  afterAll(() => cleanup.run(), 60_000);

  it('pushes a packaged chart as an OCI artifact', async () => {
    const push = await ok(['push', join(helm.home, 'pkg', 'mychart-0.1.0.tgz'), oci('charts'), '--plain-http']);
    const output = push.stdout + push.stderr;
    expect(output).toContain(`Pushed: ${wharf.host}/charts/mychart:0.1.0`);
    digest010 = /Digest: (sha256:[0-9a-f]{64})/.exec(output)?.[1] ?? '';

    const m = await getManifest(wharf.url, 'charts/mychart', '0.1.0');
    expect(m.status).toBe(200);
    expect(m.digest).toBe(digest010);
    expect(sha256(m.body)).toBe(digest010);
    const manifest = JSON.parse(m.body.toString()) as { config: { mediaType: string; digest: string }; layers: Array<{ mediaType: string; digest: string }> };
    expect(manifest.config.mediaType).toBe(HELM_CONFIG);
    expect(manifest.layers.map((l) => [l.mediaType, l.digest])).toEqual([[HELM_CHART, sha256(chart010)]]);
    const blob = await getBlob(wharf.url, 'charts/mychart', sha256(chart010));
    expect(blob.body.equals(chart010)).toBe(true);
  }, 120_000);

  it('pulls the chart back byte for byte', async () => {
    await ok(['pull', oci('charts/mychart'), '--version', '0.1.0', '--plain-http', '--destination', 'pulled']);
    expect((await readFile(join(helm.home, 'pulled', 'mychart-0.1.0.tgz'))).equals(chart010)).toBe(true);
  }, 120_000);

  it('shows and renders the chart straight from the registry', async () => {
    const show = await ok(['show', 'chart', oci('charts/mychart'), '--version', '0.1.0', '--plain-http']);
    expect(show.stdout).toMatch(/^name: mychart$/m);
    expect(show.stdout).toMatch(/^version: 0\.1\.0$/m);
    const values = await ok(['show', 'values', oci('charts/mychart'), '--version', '0.1.0', '--plain-http']);
    expect(values.stdout.trim()).toBe((await readFile(join(helm.home, 'mychart', 'values.yaml'), 'utf8')).trim());
    const rendered = await ok(['template', 'demo', oci('charts/mychart'), '--version', '0.1.0', '--plain-http']);
    expect(rendered.stdout).toContain('kind: Deployment');
    expect(rendered.stdout).toContain('name: demo-mychart');
  }, 120_000);

  it('picks the newest version from the tag list when none is given', async () => {
    await ok(['push', join(helm.home, 'pkg', 'mychart-0.2.0.tgz'), oci('charts'), '--plain-http']);
    expect((await listTags(wharf.url, 'charts/mychart')).tags).toEqual(['0.1.0', '0.2.0']);
    await ok(['pull', oci('charts/mychart'), '--plain-http', '--destination', 'latest']);
    const pulled = await readFile(join(helm.home, 'latest', 'mychart-0.2.0.tgz'));
    expect(pulled.equals(await readFile(join(helm.home, 'pkg', 'mychart-0.2.0.tgz')))).toBe(true);
  }, 120_000);

  it('fails to pull a version that is not there', async () => {
    const r = await helm.helm(['pull', oci('charts/mychart'), '--version', '9.9.9', '--plain-http', '--destination', 'none']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/not found/i);
  }, 60_000);
});
