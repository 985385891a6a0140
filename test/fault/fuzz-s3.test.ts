// Hostile input on S3 (a throwaway Ceph RADOS Gateway, blob GETs redirected to presigned URLs):
// the suite of test/fault/fuzz-suite.ts, the bucket snapshotted and checked through wharf's S3
// driver and by Distribution's garbage collector on its s3 driver. FAULT_FUZZ_S3_CASES
// malformed requests (default 1500, see fuzz-suite.ts).
import { fuzzSuite } from './fuzz-suite.js';

fuzzSuite('s3');
