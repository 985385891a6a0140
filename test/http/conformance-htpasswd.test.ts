// The four conformance workflows again, against an htpasswd-protected wharf (Basic
// credentials, as the suite sends them with OCI_USERNAME/OCI_PASSWORD). See CONFORMANCE-NOTES.md.
import { runWorkflowsWithAuth } from './conformance-helpers.js';

await runWorkflowsWithAuth('htpasswd');
