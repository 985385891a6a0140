// Certificate chains of the `x5c` token header, checked against the configured root bundle
// (Distribution's `auth.token.rootcertbundle`) the way Go's x509.Verify does it for
// Distribution: the leaf chains through CA intermediates from the header to a bundle
// certificate, every certificate on the path within its validity, key usages not checked.
import { X509Certificate, type KeyObject } from 'node:crypto';

/** Longest x5c accepted: real chains have 1 to 3 certificates. */
const MAX_CHAIN = 8;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Why a chain was refused; the message is short and holds no certificate data. */
export class ChainError extends Error {}

/** Every CERTIFICATE block of a PEM bundle; other blocks are ignored, as Distribution does. */
export function parseCertificateBundle(pem: string): X509Certificate[] {
  const certificates: X509Certificate[] = [];
  for (const match of pem.matchAll(PEM_CERTIFICATE)) {
    const der = Buffer.from(match[1]!.replace(/\s+/g, ''), 'base64');
    try {
      certificates.push(new X509Certificate(der));
    } catch {
      throw new Error(`root certificate bundle: certificate #${certificates.length + 1} cannot be parsed`);
    }
  }
  return certificates;
}

function withinValidity(certificate: X509Certificate, nowMs: number): boolean {
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  return Number.isFinite(from) && Number.isFinite(to) && from <= nowMs && nowMs <= to;
}

/** `parent` is `child`'s issuer (names, key identifiers) and its key verifies `child`'s signature. */
function issued(parent: X509Certificate, child: X509Certificate): boolean {
  try {
    // node's checkIssued(other) asks whether `this` was issued by `other`.
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false; // a key type node cannot verify with: not the issuer
  }
}

/** Verifies an x5c header value against `roots`; returns the leaf's public key or throws ChainError. */
export function verifyCertificateChain(x5c: unknown, roots: readonly X509Certificate[], nowMs: number): KeyObject {
  if (!Array.isArray(x5c) || x5c.length === 0 || x5c.length > MAX_CHAIN) throw new ChainError('malformed x5c header');
  const chain = x5c.map((entry) => {
    // x5c holds standard base64 DER (RFC 7515 section 4.1.6), not base64url.
    if (typeof entry !== 'string' || !BASE64.test(entry)) throw new ChainError('malformed x5c header');
    try {
      return new X509Certificate(Buffer.from(entry, 'base64'));
    } catch {
      throw new ChainError('malformed certificate in x5c header');
    }
  });
  if (roots.length === 0) throw new ChainError('x5c header but no root certificate bundle configured');

  const leaf = chain[0]!;
  const used = new Set<number>([0]);
  let current = leaf;
  for (;;) {
    if (!withinValidity(current, nowMs)) throw new ChainError('certificate outside its validity period');
    // The current certificate is itself a trust anchor (a token server's self-signed certificate).
    if (roots.some((root) => root.raw.equals(current.raw))) return leaf.publicKey;
    const anchor = roots.find((root) => issued(root, current) && withinValidity(root, nowMs));
    if (anchor) return leaf.publicKey;
    // Only CA certificates may sign others: a leaf must not mint certificates of its own.
    const next = chain.findIndex((candidate, i) => !used.has(i) && candidate.ca && issued(candidate, current));
    if (next < 0) throw new ChainError('certificate chain not rooted in the root certificate bundle');
    used.add(next);
    current = chain[next]!;
  }
}
