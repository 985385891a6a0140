// test/e2e/podman.test.ts again, with wharf on S3 (a real Ceph RGW; see test/support/e2e-on-s3.ts).
import { runOnS3 } from '../support/e2e-on-s3.js';

await runOnS3(() => import('./podman.test.js'));
