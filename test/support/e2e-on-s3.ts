// Runs an end-to-end test file's tests again with wharf on S3: a real Ceph RGW started for
// the file, and every startWharf() of it storing in the RGW's bucket (blob GETs redirected
// to presigned URLs, Distribution's default on S3). Wrapper files import the suite inside
// runOnS3(), e.g. test/e2e/skopeo-s3.test.ts.
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect } from 'vitest';
import { s3Env, startRgw, type RgwServer } from './s3.js';
import { setDefaultStorage } from './wharf-process.js';

export async function runOnS3(load: () => Promise<unknown>): Promise<void> {
  let rgw: RgwServer | undefined;
  // Registered before the suite's own hooks: the gateway is up before its first wharf starts,
  // and stops after its last one stopped.
  beforeAll(async () => {
    rgw = await startRgw();
    setDefaultStorage(s3Env(rgw, { rootdirectory: '/e2e' }));
  }, 180_000);
  afterAll(async () => {
    setDefaultStorage(undefined);
    if (!rgw) return;
    try {
      // The suite's registries really stored in the bucket.
      const listed = await rgw.client().send(new ListObjectsV2Command({ Bucket: rgw.bucket, Prefix: 'e2e/docker/registry/v2/blobs/', MaxKeys: 1 }));
      expect(listed.KeyCount ?? 0, 'blobs in the bucket').toBeGreaterThan(0);
    } finally {
      await rgw.stop();
    }
  }, 60_000);
  await load();
}
