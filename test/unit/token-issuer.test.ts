// The token server's pieces: the signing key and its certificate, access and refresh tokens (checked
// with jose and, for real, by CNCF Distribution 2.8 configured with the certificate as
// rootcertbundle), and the login rate limiter.
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, importX509, jwtVerify, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Access } from '../../auth/access.js';
import {
  DEFAULT_REFRESH_TTL_SECONDS,
  InvalidRefreshTokenError,
  issueAccessToken,
  issueRefreshToken,
  loadOrCreateSigningKey,
  LoginRateLimiter,
  SIGNING_CERT_FILE,
  SIGNING_KEY_FILE,
  verifyRefreshToken,
  type SigningKey,
} from '../../auth/token-issuer.js';
import { DISTRIBUTION_APT_PACKAGE, DISTRIBUTION_BINARY, startDistribution, type DistributionProcess } from '../support/distribution.js';
import { Cleanup, removeTree, runOk, tempDir } from '../support/processes.js';
import { requireTool, requireTools } from '../support/tools.js';

const ISSUER = 'wharf-test-issuer';
const SERVICE = 'wharf-test';
const KID = /^(?:[A-Z2-7]{4}:){11}[A-Z2-7]{4}$/;

let dir: string;
let key: SigningKey;
let otherKey: SigningKey;

beforeAll(async () => {
  dir = await tempDir('wharf-token-');
  key = await loadOrCreateSigningKey(join(dir, 'keys'));
  otherKey = await loadOrCreateSigningKey(join(dir, 'other-keys'));
});
afterAll(() => removeTree(dir));
afterEach(() => {
  vi.useRealTimers();
});

const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

describe('loadOrCreateSigningKey', () => {
  it('creates the directory 0700, the key 0600 and a certificate on first start', async () => {
    const keys = join(dir, 'fresh', 'keys');
    const k = await loadOrCreateSigningKey(keys);
    expect(await mode(keys)).toBe(0o700);
    expect(k.keyFile).toBe(join(keys, SIGNING_KEY_FILE));
    expect(k.certificateFile).toBe(join(keys, SIGNING_CERT_FILE));
    expect(await mode(k.keyFile)).toBe(0o600);
    expect(await readFile(k.certificateFile, 'utf8')).toBe(k.certificatePem);
    expect(k.privateKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(k.kid).toMatch(KID);
  });

  it('reuses the key and certificate on restart (same kid)', async () => {
    const again = await loadOrCreateSigningKey(join(dir, 'keys'));
    expect(again.kid).toBe(key.kid);
    expect(again.certificatePem).toBe(key.certificatePem);
    expect(again.publicKey.equals(key.publicKey)).toBe(true);
    expect(again.kid).not.toBe(otherKey.kid);
  });

  it('agrees on one key when several processes start at once', async () => {
    const keys = join(dir, 'race');
    const all = await Promise.all(Array.from({ length: 6 }, () => loadOrCreateSigningKey(keys)));
    const onDisk = createPrivateKey(await readFile(join(keys, SIGNING_KEY_FILE), 'utf8'));
    for (const k of all) {
      expect(k.privateKey.equals(onDisk)).toBe(true);
      expect(new X509Certificate(k.certificatePem).checkPrivateKey(onDisk)).toBe(true);
    }
  });

  it('makes a self-signed CA certificate for the key that does not expire', async () => {
    const cert = new X509Certificate(key.certificatePem);
    expect(cert.raw.equals(key.certificateDer)).toBe(true);
    expect(cert.subject).toBe('CN=wharf token signer');
    expect(cert.issuer).toBe(cert.subject);
    expect(cert.ca).toBe(true);
    expect(cert.verify(key.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(key.privateKey)).toBe(true);
    expect(Date.parse(cert.validFrom)).toBeLessThan(Date.now() - 3600_000);
    expect(new Date(cert.validTo).getUTCFullYear()).toBe(9999);
  });

  it.skipIf(!requireTool('openssl', 'openssl'))('openssl accepts the certificate as its own trust anchor', async () => {
    const r = await runOk('openssl', ['verify', '-CAfile', key.certificateFile, key.certificateFile]);
    expect(r.stdout).toContain(': OK');
  });

  it('replaces a certificate that does not match the key, keeping the key', async () => {
    const keys = join(dir, 'stale-cert');
    const k = await loadOrCreateSigningKey(keys);
    await writeFile(k.certificateFile, otherKey.certificatePem);
    const again = await loadOrCreateSigningKey(keys);
    expect(again.kid).toBe(k.kid);
    expect(again.certificatePem).not.toBe(otherKey.certificatePem);
    expect(new X509Certificate(again.certificatePem).checkPrivateKey(again.privateKey)).toBe(true);
    expect(await readFile(k.certificateFile, 'utf8')).toBe(again.certificatePem);
  });

  it('refuses a key file that is not a P-256 key, naming the file but not its content', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['garbage', 'not a key at all SECRETSTUFF\n', /: not a PEM private key$/],
      ['rsa', generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, /must be an ECDSA P-256 key/],
      ['p384', generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, /must be an ECDSA P-256 key/],
    ];
    for (const [name, content, message] of cases) {
      const keys = join(dir, `bad-${name}`);
      await loadOrCreateSigningKey(keys);
      await writeFile(join(keys, SIGNING_KEY_FILE), content);
      const err = (await loadOrCreateSigningKey(keys).then(
        () => undefined,
        (e: unknown) => e,
      )) as Error;
      expect(err).toBeInstanceOf(Error);
      expect(err.message).toMatch(message);
      expect(err.message).toContain(join(keys, SIGNING_KEY_FILE));
      expect(err.message).not.toContain('SECRETSTUFF');
    }
  });

  it('publishes the public key as a JWK Set', async () => {
    const { keys } = key.jwks();
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', kid: key.kid, alg: 'ES256', use: 'sig', x5c: [key.certificateDer.toString('base64')] });
    expect(keys[0]).not.toHaveProperty('d');
  });
});

describe('issueAccessToken', () => {
  const access: Access[] = [
    { type: 'repository', name: 'team/app', actions: ['pull', 'push'] },
    { type: 'registry', name: 'catalog', actions: ['*'] },
  ];

  it('signs ES256 with kid only (short tokens), and the claims Distribution reads', async () => {
    const before = Math.floor(Date.now() / 1000);
    const issued = await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice', access, ttlSeconds: 600 });
    expect(decodeProtectedHeader(issued.token)).toEqual({ typ: 'JWT', alg: 'ES256', kid: key.kid });
    const claims = decodeJwt(issued.token);
    expect(claims).toMatchObject({ iss: ISSUER, sub: 'alice', aud: SERVICE, access });
    expect(typeof claims.aud).toBe('string');
    expect(claims.iat).toBeGreaterThanOrEqual(before);
    expect(claims.nbf).toBe(claims.iat! - 1);
    expect(claims.exp).toBe(claims.iat! + 600);
    expect(claims.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(issued.expiresIn).toBe(600);
    expect(issued.issuedAt).toBe(new Date(claims.iat! * 1000).toISOString().replace('.000Z', 'Z'));
    expect(issued.issuedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  it('verifies with the public key, the JWKS and the published certificate', async () => {
    const { token } = await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice', access });
    const options = { issuer: ISSUER, audience: SERVICE, algorithms: ['ES256'], typ: 'JWT' };
    expect((await jwtVerify(token, key.publicKey, options)).payload.sub).toBe('alice');
    expect((await jwtVerify(token, createLocalJWKSet(key.jwks()), options)).payload.sub).toBe('alice');
    const fromCert = await importX509(key.certificatePem, 'ES256');
    expect((await jwtVerify(token, fromCert, options)).payload.sub).toBe('alice');
    await expect(jwtVerify(token, otherKey.publicKey, options)).rejects.toThrow();
  });

  it('anonymous: sub is empty; default lifetime 300 s; unique jti; access copied', async () => {
    const mine: Access[] = [{ type: 'repository', name: 'public/x', actions: ['pull'] }];
    const a = await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, access: mine });
    const b = await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, subject: '', access: [] });
    mine[0]!.actions.push('push');
    expect(decodeJwt(a.token)).toMatchObject({ sub: '', access: [{ type: 'repository', name: 'public/x', actions: ['pull'] }] });
    expect(decodeJwt(b.token)).toMatchObject({ sub: '', access: [] });
    expect(a.expiresIn).toBe(300);
    expect(decodeJwt(a.token).jti).not.toBe(decodeJwt(b.token).jti);
  });

  it('refuses a lifetime that is not a positive whole number of seconds', async () => {
    for (const ttlSeconds of [0, -5, 1.5, Number.NaN]) {
      await expect(issueAccessToken(key, { issuer: ISSUER, service: SERVICE, access: [], ttlSeconds })).rejects.toThrow(RangeError);
    }
  });
});

describe('refresh tokens', () => {
  const expected = { issuer: ISSUER, service: SERVICE };

  it('round trip: the subject comes back, as often as it is presented (no rotation)', async () => {
    const { token, expiresIn } = await issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: 'a$b+c@d.e' });
    expect(expiresIn).toBe(DEFAULT_REFRESH_TTL_SECONDS);
    expect(DEFAULT_REFRESH_TTL_SECONDS).toBe(90 * 86400);
    const claims = decodeJwt(token);
    expect(claims.exp! - claims.iat!).toBe(90 * 86400);
    expect(await verifyRefreshToken(key, token, expected)).toBe('a$b+c@d.e');
    expect(await verifyRefreshToken(key, token, expected)).toBe('a$b+c@d.e');
    // Another process with the same key on disk accepts it too.
    expect(await verifyRefreshToken(await loadOrCreateSigningKey(join(dir, 'keys')), token, expected)).toBe('a$b+c@d.e');
  });

  it('an access token is never a refresh token', async () => {
    const { token } = await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice', access: [] });
    await expect(verifyRefreshToken(key, token, expected)).rejects.toThrow(InvalidRefreshTokenError);
    // Not even one made to look like a refresh token in its claims, keeping the access token's header.
    const forged = await new SignJWT({ iss: ISSUER, sub: 'alice', aud: `${SERVICE}#refresh`, token_use: 'refresh', iat: 1, exp: 4e9 })
      .setProtectedHeader({ typ: 'JWT', alg: 'ES256', kid: key.kid })
      .sign(key.privateKey);
    await expect(verifyRefreshToken(key, forged, expected)).rejects.toThrow(InvalidRefreshTokenError);
  });

  it('a refresh token is never an access token', async () => {
    const { token } = await issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice' });
    // Refused on typ alone, and on aud alone (what Distribution checks).
    await expect(jwtVerify(token, key.publicKey, { issuer: ISSUER, audience: SERVICE, typ: 'JWT' })).rejects.toThrow();
    await expect(jwtVerify(token, key.publicKey, { issuer: ISSUER, audience: SERVICE })).rejects.toThrow(/aud/);
    expect(decodeJwt(token)).not.toHaveProperty('access');
  });

  it('refuses other services, issuers and keys, tampering and expiry; messages never hold the token', async () => {
    const { token } = await issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice', ttlSeconds: 3600 });
    const reason = (p: Promise<unknown>): Promise<string> =>
      p.then(
        () => 'accepted',
        (e: unknown) => {
          expect(e).toBeInstanceOf(InvalidRefreshTokenError);
          expect(String(e) + JSON.stringify(e)).not.toContain(token.split('.')[2]!);
          return (e as InvalidRefreshTokenError).reason;
        },
      );
    expect(await reason(verifyRefreshToken(key, token, { issuer: ISSUER, service: 'other' }))).toBe('invalid');
    expect(await reason(verifyRefreshToken(key, token, { issuer: 'other', service: SERVICE }))).toBe('invalid');
    expect(await reason(verifyRefreshToken(otherKey, token, expected))).toBe('invalid');
    const [h, p, s] = token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as Record<string, unknown>;
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: 'root' })).toString('base64url')}.${s}`;
    expect(await reason(verifyRefreshToken(key, tampered, expected))).toBe('invalid');
    expect(await reason(verifyRefreshToken(key, 'not-a-jwt', expected))).toBe('invalid');
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 3600_000 + 30_000); // within the 60 s leeway
    expect(await reason(verifyRefreshToken(key, token, expected))).toBe('accepted');
    vi.setSystemTime(Date.now() + 60_000);
    expect(await reason(verifyRefreshToken(key, token, expected))).toBe('expired');
  });

  it('needs a subject and a sane lifetime', async () => {
    await expect(issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: '' })).rejects.toThrow();
    await expect(issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: 'a', ttlSeconds: 0 })).rejects.toThrow(RangeError);
  });
});

const haveDistribution = requireTools([[DISTRIBUTION_BINARY, DISTRIBUTION_APT_PACKAGE]]);

describe.skipIf(!haveDistribution)('Distribution 2.8 with rootcertbundle = the certificate', () => {
  const cleanup = new Cleanup();
  let registry: DistributionProcess;

  beforeAll(async () => {
    registry = await startDistribution({
      root: join(dir, 'distribution-root'),
      auth: { token: { realm: 'http://127.0.0.1:9/auth/token', service: SERVICE, issuer: ISSUER, rootcertbundle: key.certificateFile } },
    });
    cleanup.add('distribution', () => registry.stop());
  });
  afterAll(() => cleanup.run());

  const get = (path: string, token?: string, method = 'GET'): Promise<Response> =>
    fetch(`${registry.url}${path}`, { method, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  const tokenFor = async (access: Access[], k = key, extra: { service?: string; issuer?: string } = {}): Promise<string> =>
    (await issueAccessToken(k, { issuer: extra.issuer ?? ISSUER, service: extra.service ?? SERVICE, subject: 'alice', access })).token;

  it('GET /v2/: 401 with a Bearer challenge without a token, 200 with one', async () => {
    const anonymous = await get('/v2/');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toBe(`Bearer realm="http://127.0.0.1:9/auth/token",service="${SERVICE}"`);
    expect((await get('/v2/', await tokenFor([]))).status).toBe(200);
    const anonToken = (await issueAccessToken(key, { issuer: ISSUER, service: SERVICE, access: [] })).token;
    expect((await get('/v2/', anonToken)).status).toBe(200);
  });

  it('finds the key by kid alone (libtrust key ID) when the token has no x5c', async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ iss: ISSUER, sub: 'alice', aud: SERVICE, exp: now + 60, nbf: now - 1, iat: now, jti: 'kid-only', access: [] })
      .setProtectedHeader({ typ: 'JWT', alg: 'ES256', kid: key.kid })
      .sign(key.privateKey);
    expect((await get('/v2/', token)).status).toBe(200);
    const wrongKid = await new SignJWT({ iss: ISSUER, sub: 'alice', aud: SERVICE, exp: now + 60, nbf: now - 1, iat: now, jti: 'kid-only', access: [] })
      .setProtectedHeader({ typ: 'JWT', alg: 'ES256', kid: otherKey.kid })
      .sign(key.privateKey);
    expect((await get('/v2/', wrongKid)).status).toBe(401);
  });

  it('honours the access claim: pull, push and the catalog', async () => {
    const pull: Access[] = [{ type: 'repository', name: 'team/app', actions: ['pull'] }];
    const push: Access[] = [{ type: 'repository', name: 'team/app', actions: ['pull', 'push'] }];
    const tags = await get('/v2/team/app/tags/list', await tokenFor(pull));
    expect(tags.status).toBe(404); // allowed; the repository does not exist
    expect(((await tags.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe('NAME_UNKNOWN');
    expect((await get('/v2/team/app/tags/list', await tokenFor([]))).status).toBe(401);
    expect((await get('/v2/team/other/tags/list', await tokenFor(pull))).status).toBe(401);
    expect((await get('/v2/team/app/blobs/uploads/', await tokenFor(push), 'POST')).status).toBe(202);
    expect((await get('/v2/team/app/blobs/uploads/', await tokenFor(pull), 'POST')).status).toBe(401);
    expect((await get('/v2/_catalog', await tokenFor([{ type: 'registry', name: 'catalog', actions: ['*'] }]))).status).toBe(200);
    expect((await get('/v2/_catalog', await tokenFor(push))).status).toBe(401);
  });

  it('refuses refresh tokens, tokens for another service or issuer, and tokens of another key', async () => {
    const refresh = (await issueRefreshToken(key, { issuer: ISSUER, service: SERVICE, subject: 'alice' })).token;
    expect((await get('/v2/', refresh)).status).toBe(401);
    expect((await get('/v2/', await tokenFor([], key, { service: 'elsewhere' }))).status).toBe(401);
    expect((await get('/v2/', await tokenFor([], key, { issuer: 'someone-else' }))).status).toBe(401);
    expect((await get('/v2/', await tokenFor([], otherKey))).status).toBe(401);
  });
});

describe('LoginRateLimiter', () => {
  const clock = () => {
    let now = 1_000_000;
    return { now: () => now, advance: (ms: number) => (now += ms) };
  };

  it('locks a user name after maxFailures, from any address, for lockMs', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 3, windowMs: 60_000, lockMs: 30_000, now: t.now });
    for (let i = 0; i < 3; i++) {
      expect(limiter.check('alice', `10.0.0.${i}`).allowed).toBe(true);
      limiter.failed('alice', `10.0.0.${i}`);
    }
    expect(limiter.check('alice', '10.9.9.9')).toEqual({ allowed: false, retryAfterSeconds: 30 });
    expect(limiter.check('bob', '10.0.0.1').allowed).toBe(true); // the addresses are not locked
    t.advance(29_500);
    expect(limiter.check('alice', '10.9.9.9')).toEqual({ allowed: false, retryAfterSeconds: 1 });
    t.advance(500);
    expect(limiter.check('alice', '10.9.9.9').allowed).toBe(true);
    limiter.failed('alice', '10.9.9.9'); // a fresh window: one failure does not lock again
    expect(limiter.check('alice', '10.9.9.9').allowed).toBe(true);
  });

  it('counts a retried attempt (the same credentials, as containerd retries them) once per window', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 3, windowMs: 60_000, lockMs: 30_000, now: t.now });
    for (let i = 0; i < 10; i++) limiter.failed('cory', '10.0.0.1', 'hash-of-cory-and-typo');
    expect(limiter.check('cory', '10.0.0.1').allowed).toBe(true);
    limiter.failed('cory', '10.0.0.1', 'second-guess');
    limiter.failed('cory', '10.0.0.1', 'third-guess');
    expect(limiter.check('cory', '10.0.0.1').allowed).toBe(false); // three different guesses do lock
    t.advance(61_000);
    limiter.failed('cory', '10.0.0.1', 'hash-of-cory-and-typo'); // the window passed: it counts again
    expect(limiter.check('cory', '10.0.0.1').allowed).toBe(true);
  });

  it('locks an address after maxFailuresPerAddress (default 4 × maxFailures), whatever the names', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 5, now: t.now });
    for (let i = 0; i < 19; i++) limiter.failed(`user${i}`, '192.0.2.7');
    expect(limiter.check('someone', '192.0.2.7').allowed).toBe(true);
    limiter.failed('user19', '192.0.2.7');
    expect(limiter.check('someone', '192.0.2.7')).toEqual({ allowed: false, retryAfterSeconds: 60 });
    expect(limiter.check('someone', '192.0.2.8').allowed).toBe(true);
    const strict = new LoginRateLimiter({ maxFailures: 5, maxFailuresPerAddress: 2, now: t.now });
    strict.failed('a', '192.0.2.9');
    strict.failed('b', '192.0.2.9');
    expect(strict.check('c', '192.0.2.9').allowed).toBe(false);
  });

  it('forgets failures older than the window', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 3, windowMs: 10_000, now: t.now });
    limiter.failed('alice', 'ip');
    limiter.failed('alice', 'ip');
    t.advance(10_000);
    limiter.failed('alice', 'ip');
    limiter.failed('alice', 'ip');
    expect(limiter.check('alice', 'ip').allowed).toBe(true);
    limiter.failed('alice', 'ip');
    expect(limiter.check('alice', 'ip').allowed).toBe(false);
  });

  it('a success clears the user name, not the address', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 3, maxFailuresPerAddress: 4, now: t.now });
    limiter.failed('alice', 'ip');
    limiter.failed('alice', 'ip');
    limiter.succeeded('alice', 'ip');
    limiter.failed('alice', 'ip');
    limiter.failed('alice', 'ip');
    expect(limiter.check('alice', 'other-ip').allowed).toBe(true); // 2 since the success
    expect(limiter.check('bob', 'ip').allowed).toBe(false); // the address counted all 4
  });

  it('keeps at most maxEntries records per kind', () => {
    const t = clock();
    const limiter = new LoginRateLimiter({ maxFailures: 1, maxEntries: 100, now: t.now });
    for (let i = 0; i < 1000; i++) limiter.failed(`user${i}`, `ip${i}`);
    expect(limiter.check('user999', 'x').allowed).toBe(false);
    expect(limiter.check('user0', 'x').allowed).toBe(true); // evicted, oldest first
  });

  it('refuses nonsensical settings', () => {
    expect(() => new LoginRateLimiter({ maxFailures: 0 })).toThrow(RangeError);
    expect(() => new LoginRateLimiter({ lockMs: -1 })).toThrow(RangeError);
  });
});
