// The four conformance workflows again, against wharf on S3 (a real Ceph RADOS Gateway,
// blob GETs redirected to presigned URLs). See CONFORMANCE-NOTES.md.
import { runWorkflowsOnS3 } from './conformance-helpers.js';

await runWorkflowsOnS3();
