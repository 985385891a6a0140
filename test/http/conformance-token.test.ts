// The four conformance workflows again, against a token-protected wharf (the built-in token
// server; the client fetches Bearer tokens from the challenge's realm with Basic credentials).
// See CONFORMANCE-NOTES.md.
import { runWorkflowsWithAuth } from './conformance-helpers.js';

await runWorkflowsWithAuth('token');
