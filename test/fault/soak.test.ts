// The CI version of the soak (test/fault/soak.ts): 20 s of mixed load over 64 connections
// (SOAK_TEST_SECONDS to change it); the RSS peak of the second half of the measured time
// must stay within +30 % of the first half's, open file descriptors within +10 of their
// value after warm-up, with no failed request, every pulled blob hashing to its digest and
// every manifest GET serving the pushed bytes with their digest and media type.
import { describe, expect, it } from 'vitest';
import { runSoak, soakProblems } from './soak.js';

const SECONDS = Number(process.env.SOAK_TEST_SECONDS ?? 20);

describe('load and soak', () => {
  it(`keeps RSS and file descriptors flat under ${SECONDS} s of mixed load on 64 connections`, { timeout: (SECONDS + 60) * 1000 }, async () => {
    const result = await runSoak({ seconds: SECONDS, connections: 64, warmupShare: 0.4 });
    expect(result.operations).toBeGreaterThan(SECONDS * 50);
    // The content checks ran (on every blob pull and manifest GET), not just the status checks.
    expect(result.verified.blobPulls, 'blob pulls hashed').toBeGreaterThan(SECONDS * 10);
    expect(result.verified.manifestGets, 'manifest GETs compared byte for byte').toBeGreaterThan(SECONDS * 5);
    expect(soakProblems(result)).toEqual([]);
  });
});
