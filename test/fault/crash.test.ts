// Crash safety on the filesystem: the suite is test/fault/crash-suite.ts (crash-s3.test.ts
// runs the same one on S3). FAULT_CRASH_ITERATIONS kills (default 100).
import { crashSuite } from './crash-suite.js';

crashSuite('filesystem');
