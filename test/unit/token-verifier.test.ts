// TokenVerifier against tokens shaped the ways token servers sign them (x5c chains, libtrust
// and RFC 7638 kids, JWKS kids, embedded jwk) and the ways attackers forge them.
// Certificates come from the openssl CLI; keys and tokens from jose.
import { execFileSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, KeyObject, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as jose from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Access } from '../../auth/access.js';
import {
  grantsAll, jwkThumbprint, libtrustKeyId, missingAccess, TokenInvalidError, TokenVerifier, type TokenVerifierOptions, type VerifiedToken,
} from '../../auth/token-verifier.js';

// Count signature verifications: jwtVerify passes through, spied.
vi.mock('jose', async (importOriginal) => {
  const original = await importOriginal<typeof import('jose')>();
  return { ...original, jwtVerify: vi.fn(original.jwtVerify) };
});

const ISSUER = 'auth.example.com';
const SERVICE = 'registry.example.com';
const DAY = 86_400_000;
const nowSec = () => Math.floor(Date.now() / 1000);
const pull = (name: string): Access => ({ type: 'repository', name, actions: ['pull'] });

const CNF = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
`;

let dir: string;
const pem: Record<string, string> = {};
const der: Record<string, string> = {};
const key: Record<string, KeyObject> = {};

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}
function newKey(name: string, type: 'ec' | 'rsa'): string[] {
  return type === 'ec'
    ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`]
    : ['-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`];
}
function selfSigned(name: string, cn: string, ext: string, type: 'ec' | 'rsa' = 'ec'): void {
  openssl('req', '-x509', '-config', 'cnf', '-extensions', ext, ...newKey(name, type), '-subj', `/CN=${cn}`, '-days', '30', '-out', `${name}.crt`);
}
function issue(name: string, cn: string, issuer: string, ext: string, days: number, type: 'ec' | 'rsa' = 'ec'): void {
  openssl('req', '-new', '-config', 'cnf', ...newKey(name, type), '-subj', `/CN=${cn}`, '-out', `${name}.csr`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.crt`, '-CAkey', `${issuer}.key`, '-set_serial', String(Date.now()),
    '-days', String(days), '-extfile', 'cnf', '-extensions', ext, '-out', `${name}.crt`);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'wharf-token-'));
  writeFileSync(join(dir, 'cnf'), CNF);
  selfSigned('root', 'wharf test root', 'ca_ext');
  issue('int', 'wharf test intermediate', 'root', 'ca_ext', 30);
  issue('leaf', 'token signer', 'int', 'leaf_ext', 30, 'rsa');
  issue('short', 'short-lived signer', 'int', 'leaf_ext', 1);
  issue('minted', 'minted by a leaf', 'leaf', 'leaf_ext', 30); // a non-CA certificate acting as issuer
  selfSigned('evilroot', 'wharf test root', 'ca_ext'); // same name as the real root, different key
  issue('evilleaf', 'token signer', 'evilroot', 'leaf_ext', 30);
  selfSigned('self', 'self-signed token signer', 'leaf_ext');
  for (const name of ['root', 'int', 'leaf', 'short', 'minted', 'evilroot', 'evilleaf', 'self']) {
    pem[name] = readFileSync(join(dir, `${name}.crt`), 'utf8');
    der[name] = new X509Certificate(pem[name]!).raw.toString('base64');
    key[name] = createPrivateKey(readFileSync(join(dir, `${name}.key`)));
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bundle = () => pem.root! + pem.self!;

interface Keys { privateKey: jose.CryptoKey; publicKey: KeyObject }
async function keyPair(alg: string): Promise<Keys> {
  const pair = await jose.generateKeyPair(alg, { extractable: true });
  return { privateKey: pair.privateKey, publicKey: KeyObject.from(pair.publicKey) };
}

function claims(extra: Record<string, unknown> = {}): jose.JWTPayload {
  return { iss: ISSUER, aud: SERVICE, sub: 'alice', iat: nowSec(), exp: nowSec() + 300, access: [{ type: 'repository', name: 'team/app', actions: ['pull', 'push'] }], ...extra };
}
function sign(payload: jose.JWTPayload, signingKey: jose.CryptoKey | KeyObject | Uint8Array, header: jose.JWTHeaderParameters): Promise<string> {
  return new jose.SignJWT(payload).setProtectedHeader({ typ: 'JWT', ...header }).sign(signingKey);
}
function verifier(options: Partial<TokenVerifierOptions> = {}): TokenVerifier {
  return new TokenVerifier({ issuer: ISSUER, service: SERVICE, rootCertBundle: bundle(), ...options });
}
async function refused(v: TokenVerifier, token: string): Promise<TokenInvalidError> {
  const err = await v.verify(token).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(TokenInvalidError);
  const invalid = err as TokenInvalidError;
  expect(invalid.code).toBe('TOKEN_INVALID');
  if (token.length > 8) expect(invalid.message).not.toContain(token);
  const payload = token.split('.')[1];
  if (payload && payload.length > 8) expect(invalid.message).not.toContain(payload);
  return invalid;
}
const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe('key IDs', () => {
  it('libtrustKeyId is libtrust\'s: base32 of the first 240 bits of SHA-256 of the SPKI DER, 12 groups of 4', () => {
    const publicPem = createPublicKey(key.leaf!).export({ type: 'spki', format: 'pem' }) as string;
    writeFileSync(join(dir, 'leaf.pub'), publicPem);
    const cli = execFileSync('sh', ['-c', 'openssl pkey -pubin -in leaf.pub -outform DER | openssl dgst -sha256 -binary | head -c 30 | base32 -w0'], { cwd: dir }).toString().trim();
    const id = libtrustKeyId(key.leaf!);
    expect(id).toMatch(/^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
    expect(id.replaceAll(':', '')).toBe(cli);
    expect(libtrustKeyId(new X509Certificate(pem.leaf!).publicKey)).toBe(id); // a private key names its public key
  });

  it.each(['RS256', 'ES256', 'EdDSA'])('jwkThumbprint is RFC 7638 (%s)', async (alg) => {
    const { publicKey } = await keyPair(alg);
    expect(await jwkThumbprint(publicKey)).toBe(await jose.calculateJwkThumbprint(await jose.exportJWK(publicKey)));
  });
});

describe('accepted tokens', () => {
  it('x5c: leaf and intermediate chaining to a root in the bundle (RS256)', async () => {
    const exp = nowSec() + 300;
    const token = await sign(claims({ exp }), key.leaf!, { alg: 'RS256', x5c: [der.leaf!, der.int!] });
    const verified = await verifier().verify(token);
    expect(verified.subject).toBe('alice');
    expect(verified.access).toEqual([{ type: 'repository', name: 'team/app', actions: ['pull', 'push'] }]);
    expect(verified.expiresAt).toBe(exp * 1000);
  });

  it('x5c: a self-signed certificate that is itself in the bundle', async () => {
    await verifier().verify(await sign(claims(), key.self!, { alg: 'ES256', x5c: [der.self!] }));
  });

  it('kid: libtrust fingerprint of a bundle certificate\'s key (Distribution 2.x, GitLab, Harbor)', async () => {
    await verifier().verify(await sign(claims(), key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) }));
  });

  it('kid: RFC 7638 thumbprint of a bundle certificate\'s key (Distribution 3.x)', async () => {
    await verifier().verify(await sign(claims(), key.root!, { alg: 'ES256', kid: await jwkThumbprint(key.root!) }));
  });

  it.each(['RS256', 'ES256', 'EdDSA'])('kid: libtrust and RFC 7638 ids of a trusted key (%s)', async (alg) => {
    const { privateKey, publicKey } = await keyPair(alg);
    const v = verifier({ rootCertBundle: undefined, trustedKeys: [publicKey] });
    await v.verify(await sign(claims(), privateKey, { alg, kid: libtrustKeyId(publicKey) }));
    await v.verify(await sign(claims(), privateKey, { alg, kid: await jwkThumbprint(publicKey) }));
  });

  it('kid: a JWKS entry\'s kid, and the entry\'s libtrust id', async () => {
    const { privateKey, publicKey } = await keyPair('RS256');
    const jwks = { keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'signing-key-2024', use: 'sig' }] };
    const v = verifier({ rootCertBundle: undefined, jwks });
    await v.verify(await sign(claims(), privateKey, { alg: 'RS256', kid: 'signing-key-2024' }));
    await v.verify(await sign(claims(), privateKey, { alg: 'RS256', kid: libtrustKeyId(publicKey) }));
  });

  it('jwk header equal to a configured key', async () => {
    const { privateKey, publicKey } = await keyPair('ES256');
    const token = await sign(claims(), privateKey, { alg: 'ES256', jwk: await jose.exportJWK(publicKey) });
    await verifier({ trustedKeys: [publicKey] }).verify(token);
  });

  it('aud as a list with other entries; exp within the leeway; nbf and iat slightly ahead', async () => {
    const payload = claims({ aud: ['other', SERVICE, 'third'], exp: nowSec() - 30, nbf: nowSec() + 30, iat: nowSec() + 30 });
    await verifier().verify(await sign(payload, key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) }));
  });

  it('GitLab- and Harbor-shaped tokens: extra claims and access fields are ignored', async () => {
    const kid = libtrustKeyId(key.self!);
    const gitlab = await sign(claims({
      jti: 'b7f3c', auth_type: 'gitlab_or_ldap', user: { username: 'alice', user_id: 4 },
      access: [{ type: 'repository', name: 'group/project', actions: ['pull', 'push'], meta: { project_path: 'group/project', project_id: 7 } }],
    }), key.self!, { alg: 'ES256', kid });
    const harbor = await sign(claims({ sub: 'robot$ci', access: [{ type: 'repository', name: 'library/nginx', actions: ['pull'] }] }), key.self!, { alg: 'ES256', kid });
    const v = verifier();
    expect((await v.verify(gitlab)).access).toEqual([{ type: 'repository', name: 'group/project', actions: ['pull', 'push'] }]);
    expect(await v.verify(harbor)).toMatchObject({ subject: 'robot$ci', access: [pull('library/nginx')] });
  });

  it('no access claim: a valid token granting nothing; no sub: anonymous', async () => {
    const payload = claims();
    delete payload['access'];
    delete payload.sub;
    const verified = await verifier().verify(await sign(payload, key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) }));
    expect(verified).toMatchObject({ subject: '', access: [] });
  });
});

describe('refused tokens', () => {
  const kid = () => libtrustKeyId(key.self!);

  it('alg none, with or without a signature', async () => {
    const unsigned = `${b64url({ alg: 'none', typ: 'JWT', kid: kid() })}.${b64url(claims())}`;
    await refused(verifier(), `${unsigned}.`);
    await refused(verifier(), `${unsigned}.${Buffer.from('x').toString('base64url')}`);
  });

  it('HS256 with the public key PEM as HMAC secret, even when algorithms lists HS256', async () => {
    const secret = new TextEncoder().encode(new X509Certificate(pem.self!).publicKey.export({ type: 'spki', format: 'pem' }) as string);
    const token = await sign(claims(), secret, { alg: 'HS256', kid: kid() });
    await refused(verifier(), token);
    await refused(verifier({ algorithms: ['HS256', 'ES256'] }), token);
  });

  it('expired beyond the leeway, not yet valid, issued in the future, no exp', async () => {
    const v = verifier();
    for (const extra of [{ exp: nowSec() - 120 }, { nbf: nowSec() + 120 }, { iat: nowSec() + 120 }, { exp: undefined }]) {
      await refused(v, await sign(claims(extra), key.self!, { alg: 'ES256', kid: kid() }));
    }
  });

  it('wrong issuer or audience', async () => {
    const v = verifier();
    for (const extra of [{ iss: 'evil.example.com' }, { iss: `${ISSUER} ` }, { iss: undefined }, { aud: 'other' }, { aud: ['a', 'b'] }, { aud: undefined }]) {
      await refused(v, await sign(claims(extra), key.self!, { alg: 'ES256', kid: kid() }));
    }
  });

  it('unknown kid, no key named at all', async () => {
    const { privateKey, publicKey } = await keyPair('ES256');
    await refused(verifier(), await sign(claims(), privateKey, { alg: 'ES256', kid: libtrustKeyId(publicKey) }));
    await refused(verifier(), await sign(claims(), privateKey, { alg: 'ES256' }));
  });

  it('jwk header of a key that is not configured, even next to a trusted kid', async () => {
    const { privateKey, publicKey } = await keyPair('ES256');
    const jwk = await jose.exportJWK(publicKey);
    await refused(verifier(), await sign(claims(), privateKey, { alg: 'ES256', jwk }));
    await refused(verifier(), await sign(claims(), privateKey, { alg: 'ES256', jwk, kid: kid() }));
  });

  it('claims changed after signing', async () => {
    const token = await sign(claims(), key.self!, { alg: 'ES256', kid: kid() });
    const [header, , signature] = token.split('.');
    const forged = b64url(claims({ access: [{ type: 'registry', name: 'catalog', actions: ['*'] }] }));
    await refused(verifier(), `${header}.${forged}.${signature}`);
  });

  it('a signature by another key than the x5c leaf\'s', async () => {
    await refused(verifier(), await sign(claims(), key.evilleaf!, { alg: 'ES256', x5c: [der.self!] }));
  });

  it('x5c chains not rooted in the bundle', async () => {
    const v = verifier();
    const notRooted = /not rooted/;
    // A root of the same name as the trusted one, but another key.
    expect((await refused(v, await sign(claims(), key.evilleaf!, { alg: 'ES256', x5c: [der.evilleaf!, der.evilroot!] }))).reason).toMatch(notRooted);
    // The intermediate left out.
    expect((await refused(v, await sign(claims(), key.leaf!, { alg: 'RS256', x5c: [der.leaf!] }))).reason).toMatch(notRooted);
    // A leaf (CA:FALSE) acting as a CA.
    expect((await refused(v, await sign(claims(), key.minted!, { alg: 'ES256', x5c: [der.minted!, der.leaf!, der.int!] }))).reason).toMatch(notRooted);
    // No bundle configured at all: x5c cannot be trusted.
    const { publicKey } = await keyPair('ES256');
    await refused(verifier({ rootCertBundle: undefined, trustedKeys: [publicKey] }), await sign(claims(), key.self!, { alg: 'ES256', x5c: [der.self!] }));
    // Garbage.
    expect((await refused(v, await sign(claims(), key.leaf!, { alg: 'RS256', x5c: ['bm90IGEgY2VydA=='] }))).reason).toMatch(/malformed/);
  });

  it('a certificate outside its validity period', async () => {
    const token = await sign(claims({ exp: nowSec() + 10 * 86_400 }), key.short!, { alg: 'ES256', x5c: [der.short!, der.int!] });
    await verifier().verify(token);
    const err = await refused(verifier({ now: () => Date.now() + 3 * DAY }), token);
    expect(err.reason).toMatch(/validity/);
    await refused(verifier({ now: () => Date.now() - 2 * DAY }), await sign(claims({ exp: nowSec() - 2 * 86_400 + 300, iat: undefined }), key.short!, { alg: 'ES256', x5c: [der.short!, der.int!] }));
  });

  it('an algorithm not in algorithms', async () => {
    const token = await sign(claims(), key.leaf!, { alg: 'RS256', x5c: [der.leaf!, der.int!] });
    await refused(verifier({ algorithms: ['ES256'] }), token);
  });

  it('a JWKS key used with another alg than its own, a key type not matching alg', async () => {
    const { privateKey, publicKey } = await keyPair('PS256');
    const jwks = { keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'k1', alg: 'RS256' }] };
    await refused(verifier({ jwks, algorithms: ['RS256', 'PS256'] }), await sign(claims(), privateKey, { alg: 'PS256', kid: 'k1' }));
    const forged = `${b64url({ alg: 'RS256', kid: kid() })}.${b64url(claims())}.${Buffer.from('sig').toString('base64url')}`;
    await refused(verifier(), forged);
  });

  it('malformed tokens and access claims', async () => {
    const v = verifier();
    for (const token of ['', 'abc', 'a.b.c', 'a.b', `${b64url({ alg: 'ES256' })}.e30.${'A'.repeat(40_000)}`]) await refused(v, token);
    for (const access of ['repository:a:pull', [{ type: 'repository', name: 'a', actions: 'pull' }], [null]]) {
      await refused(v, await sign(claims({ access }), key.self!, { alg: 'ES256', kid: kid() }));
    }
  });
});

describe('configuration', () => {
  it('refuses no keys, unknown algorithms, an empty bundle, symmetric JWKS keys', () => {
    expect(() => new TokenVerifier({ issuer: ISSUER, service: SERVICE })).toThrow(/no token signing key/);
    expect(() => verifier({ algorithms: ['RS257'] })).toThrow(/unsupported/);
    expect(() => verifier({ algorithms: ['HS256'] })).toThrow(/no usable/);
    expect(() => verifier({ rootCertBundle: 'not pem' })).toThrow(/no certificate/);
    expect(() => verifier({ jwks: { keys: [{ kty: 'oct', k: 'c2VjcmV0' }] } })).toThrow(/not a public key/);
  });
});

describe('missingAccess', () => {
  const token = (access: Access[]): VerifiedToken => ({ subject: 'alice', access, expiresAt: Date.now() + 60_000 });

  it('grantsAll answers as missingAccess does, for every combination here', () => {
    const entries: Access[] = [
      pull('a'),
      { type: 'repository', name: 'b', actions: ['*'] },
      { type: 'repository', name: 'c', actions: ['pull'] },
      { type: 'repository', name: 'c', actions: ['push'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
      { type: 'repository', name: 'd', actions: [] },
    ];
    const names = ['a', 'b', 'c', 'd', 'e', 'catalog'];
    const actionSets = [[], ['pull'], ['push'], ['pull', 'push'], ['delete'], ['*'], ['pull', 'delete']];
    const tokens = [token([]), token(entries), token(entries.slice(2, 4)), token(entries.slice(1, 2))];
    for (const t of tokens) {
      for (const type of ['repository', 'registry'] as const) {
        for (const name of names) {
          for (const actions of actionSets) {
            const wanted: Access[] = [{ type, name, actions }];
            expect(grantsAll(t, wanted), JSON.stringify({ t: t.access, wanted })).toBe(missingAccess(t, wanted).length === 0);
            const two: Access[] = [...wanted, pull('a')];
            expect(grantsAll(t, two)).toBe(missingAccess(t, two).length === 0);
          }
        }
      }
      expect(grantsAll(t, [])).toBe(true);
    }
  });

  it('grants only the named repository and actions', () => {
    const t = token([pull('a')]);
    expect(missingAccess(t, [pull('a')])).toEqual([]);
    expect(missingAccess(t, [pull('b')])).toEqual([pull('b')]);
    expect(missingAccess(t, [{ type: 'repository', name: 'a', actions: ['pull', 'push'] }])).toEqual([{ type: 'repository', name: 'a', actions: ['push'] }]);
    expect(missingAccess(t, [{ type: 'registry', name: 'a', actions: ['pull'] }])).toHaveLength(1);
    expect(missingAccess(t, [])).toEqual([]);
  });

  it('"*" grants every action; entries for one resource add up', () => {
    const t = token([{ type: 'repository', name: 'a', actions: ['*'] }, pull('b'), { type: 'repository', name: 'b', actions: ['push'] }]);
    expect(missingAccess(t, [{ type: 'repository', name: 'a', actions: ['pull', 'push', 'delete'] }])).toEqual([]);
    expect(missingAccess(t, [{ type: 'repository', name: 'b', actions: ['pull', 'push'] }])).toEqual([]);
    expect(missingAccess(t, [{ type: 'repository', name: 'b', actions: ['delete'] }])).toHaveLength(1);
  });

  it('registry:catalog:* needs the catalog granted with *', () => {
    const catalog: Access = { type: 'registry', name: 'catalog', actions: ['*'] };
    expect(missingAccess(token([catalog]), [catalog])).toEqual([]);
    expect(missingAccess(token([{ type: 'registry', name: 'catalog', actions: ['pull'] }]), [catalog])).toEqual([catalog]);
    expect(missingAccess(token([{ type: 'repository', name: 'catalog', actions: ['*'] }]), [catalog])).toEqual([catalog]);
  });
});

describe('cache', () => {
  it('a verified token is not verified again', async () => {
    const v = verifier();
    const token = await sign(claims(), key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) });
    vi.mocked(jose.jwtVerify).mockClear();
    const first = await v.verify(token);
    for (let i = 0; i < 5; i++) expect(await v.verify(token)).toEqual(first);
    expect(jose.jwtVerify).toHaveBeenCalledTimes(1);
  });

  it('a cached token is refused once it has expired (beyond the leeway)', async () => {
    let clock = Date.now();
    const v = verifier({ now: () => clock });
    const token = await sign(claims({ exp: Math.floor(clock / 1000) + 120 }), key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) });
    await v.verify(token);
    clock += 150_000; // past exp, within the leeway: still served from the cache
    await v.verify(token);
    clock += 60_000;
    await refused(v, token);
    await refused(v, token);
  });

  it('cached() answers only for the exact token verified, and checks its expiry every time', async () => {
    let clock = Date.now();
    const v = verifier({ now: () => clock });
    const token = await sign(claims({ exp: Math.floor(clock / 1000) + 120 }), key.self!, { alg: 'ES256', kid: libtrustKeyId(key.self!) });
    expect(v.cached(token)).toBeUndefined(); // not verified yet
    const verified = await v.verify(token);
    expect(v.cached(token)).toBe(verified);
    // A copy of the string is the same token; anything else is not, however close.
    expect(v.cached(`${token} `.trimEnd())).toBe(verified);
    expect(v.cached(`${token} `)).toBeUndefined();
    expect(v.cached(token.slice(0, -1))).toBeUndefined();
    const [header, , signature] = token.split('.');
    const forged = `${header}.${b64url(claims({ sub: 'mallory', exp: Math.floor(clock / 1000) + 120 }))}.${signature}`;
    expect(v.cached(forged)).toBeUndefined();
    await refused(v, forged); // same signature, other payload: verified, and refused
    expect(v.cached(forged)).toBeUndefined();
    clock += 181_000; // past exp + leeway
    expect(() => v.cached(token)).toThrow(TokenInvalidError);
    expect(v.cached(token)).toBeUndefined(); // dropped: verify would check it from scratch (and refuse it)
    await refused(v, token);
  });
});
