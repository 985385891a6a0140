// Hostile input on the filesystem: the suite is test/fault/fuzz-suite.ts (fuzz-s3.test.ts runs
// the same one on S3). FAULT_FUZZ_CASES malformed requests (default 3000).
import { fuzzSuite } from './fuzz-suite.js';

fuzzSuite('filesystem');
