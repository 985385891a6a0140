// Digests: `algorithm:encoded` as the OCI image spec defines them. Only registered
// algorithms whose encoding we can verify are accepted; everything else is DIGEST_INVALID
// before it can reach a storage path.
import { createHash, type Hash } from 'node:crypto';
import { RegistryError } from './errors.js';

export type DigestAlgorithm = 'sha256' | 'sha512';

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export interface Digest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  /** The canonical string form, `sha256:...`. */
  readonly value: string;
}

/** Parses and validates a digest string; throws DIGEST_INVALID with the reason. */
export function parseDigest(input: string): Digest {
  if (input.length > 256 || !DIGEST_GRAMMAR.test(input)) {
    throw new RegistryError('DIGEST_INVALID', 'invalid digest format', { digest: input.slice(0, 256) });
  }
  const colon = input.indexOf(':');
  const algorithm = input.slice(0, colon);
  const hex = input.slice(colon + 1);
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new RegistryError('DIGEST_INVALID', `unsupported digest algorithm ${algorithm}`, { digest: input });
  }
  if (hex.length !== HEX_LENGTH[algorithm] || !/^[a-f0-9]+$/.test(hex)) {
    throw new RegistryError('DIGEST_INVALID', `invalid ${algorithm} digest encoding`, { digest: input });
  }
  return { algorithm, hex, value: input };
}

/** Whether `input` is a valid, supported digest; tests without throwing (a hot path). */
export function isDigest(input: string): boolean {
  return /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/.test(input);
}

export function newHash(algorithm: DigestAlgorithm = 'sha256'): Hash {
  return createHash(algorithm);
}

export function digestOf(data: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): Digest {
  const hex = createHash(algorithm).update(data).digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}

export function digestFromHash(hash: Hash, algorithm: DigestAlgorithm): Digest {
  const hex = hash.digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}
