// The four conformance workflows again, against a token-protected wharf (the built-in token
// server; the client fetches Bearer tokens from the challenge's realm with Basic credentials).
// The workflow files read WHARF_CONFORMANCE_AUTH when their servers start (beforeAll), and
// vitest collects the tests they register while this file imports them. See CONFORMANCE-NOTES.md.
import { afterAll } from 'vitest';
import { expectAuthenticatedRun } from './conformance-helpers.js';

const MODE = 'token';
const previous = process.env.WHARF_CONFORMANCE_AUTH;
process.env.WHARF_CONFORMANCE_AUTH = MODE;

// Registered first, so it runs last: after the workflows' own afterAll hooks closed their servers.
// (vitest wants the first, context argument destructured; the file suite is the second.)
afterAll(({}, file) => {
  if (previous === undefined) delete process.env.WHARF_CONFORMANCE_AUTH;
  else process.env.WHARF_CONFORMANCE_AUTH = previous;
  expectAuthenticatedRun(file, MODE);
});

await import('./conformance-pull.test.js');
await import('./conformance-push.test.js');
await import('./conformance-discovery.test.js');
await import('./conformance-management.test.js');
