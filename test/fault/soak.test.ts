// The CI version of the soak (test/fault/soak.ts): 20 s of mixed load over 64 connections
// (SOAK_TEST_SECONDS to change it); the RSS peak of the second half of the measured time
// must stay within +30 % of the first half's, open file descriptors within +10 of their
// value after warm-up, with no failed request.
import { describe, expect, it } from 'vitest';
import { runSoak, soakProblems } from './soak.js';

const SECONDS = Number(process.env.SOAK_TEST_SECONDS ?? 20);

describe('load and soak', () => {
  it(`keeps RSS and file descriptors flat under ${SECONDS} s of mixed load on 64 connections`, { timeout: (SECONDS + 60) * 1000 }, async () => {
    const result = await runSoak({ seconds: SECONDS, connections: 64, warmupShare: 0.4 });
    expect(result.operations).toBeGreaterThan(SECONDS * 50);
    expect(soakProblems(result)).toEqual([]);
  });
});
