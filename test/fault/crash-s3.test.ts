// Crash safety on S3 (a throwaway Ceph RADOS Gateway, blob GETs redirected to presigned URLs):
// the suite of test/fault/crash-suite.ts, wharf killed and restarted on the same bucket and
// rootdirectory, the bucket checked through wharf's S3 driver and by Distribution's garbage
// collector on its s3 driver.
//
// 30 kills by default (FAULT_CRASH_S3_ITERATIONS), not the filesystem's 100: a kill costs
// ~2-3 times as much on S3 (gateway round trips for every request and check, a longer
// workload window so that pushes get acknowledged before the kill), and 30 keep this file
// within the 2-3 minutes CI can spend on it on the 2-core machine (measured 122-178 s under
// load) while still carrying dozens of upload sessions across restarts. See crash-suite.ts.
import { crashSuite } from './crash-suite.js';

crashSuite('s3');
