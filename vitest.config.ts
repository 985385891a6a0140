import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // End-to-end files start dockerd and friends: run files one at a time on 2 cores.
    fileParallelism: false,
    reporters: ['default'],
  },
});
