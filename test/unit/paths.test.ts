// Pins every storage key to CNCF Distribution's layout: changing one breaks drop-in compatibility.
import { describe, expect, it } from 'vitest';
import * as paths from '../../storage/paths.js';
import { parseDigest } from '../../storage/digest.js';
import { checkPath, InvalidPathError } from '../../storage/driver.js';

const d = parseDigest(`sha256:ab${'c'.repeat(62)}`);
const hex = d.hex;

describe('storage layout', () => {
  it('matches Distribution 2.8 byte for byte', () => {
    const v2 = '/docker/registry/v2';
    expect(paths.blobData(d)).toBe(`${v2}/blobs/sha256/ab/${hex}/data`);
    expect(paths.layerLink('team/app', d)).toBe(`${v2}/repositories/team/app/_layers/sha256/${hex}/link`);
    expect(paths.revisionLink('team/app', d)).toBe(`${v2}/repositories/team/app/_manifests/revisions/sha256/${hex}/link`);
    expect(paths.tagCurrentLink('team/app', 'v1')).toBe(`${v2}/repositories/team/app/_manifests/tags/v1/current/link`);
    expect(paths.tagIndexLink('team/app', 'v1', d)).toBe(`${v2}/repositories/team/app/_manifests/tags/v1/index/sha256/${hex}/link`);
    expect(paths.uploadData('team/app', 'u-1234567')).toBe(`${v2}/repositories/team/app/_uploads/u-1234567/data`);
    expect(paths.uploadStartedAt('team/app', 'u-1234567')).toBe(`${v2}/repositories/team/app/_uploads/u-1234567/startedat`);
    expect(paths.referrerLink('team/app', d, d)).toBe(`${v2}/repositories/team/app/_referrers/sha256/${hex}/sha256/${hex}/link`);
  });

  it('driver paths refuse traversal and odd segments', () => {
    for (const bad of ['', 'relative', '/a/../b', '/a/./b', '/a//b', '/a/b/', '/a\u0000b', '/a b', '/a/%2e%2e']) {
      expect(() => checkPath(bad), bad).toThrow(InvalidPathError);
    }
    expect(() => checkPath('/docker/registry/v2/blobs/sha256:x')).not.toThrow();
  });
});
