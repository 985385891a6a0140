import { describe, expect, it } from 'vitest';
import { isValidRepositoryName, isValidTag } from '../../storage/names.js';
import { digestOf, isDigest, parseDigest } from '../../storage/digest.js';
import { RegistryError } from '../../storage/errors.js';

describe('repository names', () => {
  it.each(['a', 'library/busybox', 'team/app', 'a.b_c__d--e/f0', 'x/y/z/w', 'a'.repeat(255)])('accepts %s', (name) => {
    expect(isValidRepositoryName(name)).toBe(true);
  });
  it.each([
    '', 'A', 'Team/app', '../etc', 'a/../b', '/abs', 'a//b', 'a/', '.a', 'a.', 'a___b', 'a/./b', '%2e%2e', 'a%2fb',
    'a b', 'a\u0000b', 'a'.repeat(256), 'a/-b', '_a',
  ])('rejects %j', (name) => {
    expect(isValidRepositoryName(name)).toBe(false);
  });
});

describe('tags', () => {
  it.each(['latest', '1.0', 'v1.2.3-rc.1', '_x', 'A'.repeat(128)])('accepts %s', (tag) => expect(isValidTag(tag)).toBe(true));
  it.each(['', '.x', '-x', 'a/b', 'a:b', 'A'.repeat(129), '..'])('rejects %j', (tag) => expect(isValidTag(tag)).toBe(false));
});

describe('digests', () => {
  const hex = 'a'.repeat(64);
  it('parses sha256 and sha512', () => {
    expect(parseDigest(`sha256:${hex}`)).toMatchObject({ algorithm: 'sha256', hex });
    expect(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm).toBe('sha512');
  });
  it.each([
    'sha256', `sha256:${hex.slice(1)}`, `sha256:${hex.toUpperCase()}`, `md5:${hex}`, `sha256:${hex}0`, `sha256:../${hex}`,
    `sha256:${'g'.repeat(64)}`, `SHA256:${hex}`, `sha512:${hex}`,
  ])('rejects %j with DIGEST_INVALID', (input) => {
    expect(() => parseDigest(input)).toThrow(RegistryError);
    expect(isDigest(input)).toBe(false);
    try {
      parseDigest(input);
    } catch (err) {
      expect((err as RegistryError).code).toBe('DIGEST_INVALID');
    }
  });
  it('computes the digest of content', () => {
    expect(digestOf(Buffer.from('')).value).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});
