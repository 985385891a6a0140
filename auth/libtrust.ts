// Key identifiers that token servers put in the `kid` header, computed from a public key:
// libtrust's fingerprint (Distribution 2.x, docker_auth, GitLab, Harbor) and the RFC 7638
// JWK thumbprint (Distribution 3.x). Both are derived from the key alone, so a token
// server and the registry agree on them without sharing anything but the key.
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** The public half of a key; a private key gives its public key, a secret key is refused. */
export function publicKeyOf(key: KeyObject): KeyObject {
  if (key.type === 'public') return key;
  if (key.type === 'private') return createPublicKey(key);
  throw new TypeError('a public or private key is required, not a secret key');
}

/** RFC 4648 base32 without padding. */
function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1; // keep only the bits not yet emitted, so `value` never overflows
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

/**
 * libtrust key ID (docker/libtrust `keyIDFromCryptoKey`): SHA-256 of the DER
 * SubjectPublicKeyInfo, first 240 bits, base32, 12 groups of 4 joined with ':'.
 */
export function libtrustKeyId(key: KeyObject): string {
  const der = publicKeyOf(key).export({ type: 'spki', format: 'der' });
  const encoded = base32(createHash('sha256').update(der).digest().subarray(0, 30));
  return encoded.match(/.{4}/g)!.join(':');
}

/** RFC 7638 thumbprint, synchronous: the verifier indexes its keys in its constructor. */
export function jwkThumbprintSync(key: KeyObject): string {
  const jwk = publicKeyOf(key).export({ format: 'jwk' });
  // Only the required members, in lexicographic order, no whitespace (RFC 7638 section 3.2).
  let members: Record<string, unknown>;
  switch (jwk.kty) {
    case 'RSA':
      members = { e: jwk.e, kty: jwk.kty, n: jwk.n };
      break;
    case 'EC':
      members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
      break;
    case 'OKP':
      members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
      break;
    default:
      throw new TypeError(`unsupported key type for a JWK thumbprint: ${String(jwk.kty)}`);
  }
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key. */
export async function jwkThumbprint(key: KeyObject): Promise<string> {
  return jwkThumbprintSync(key);
}
