// TokenAccessController: what a request with a Bearer token is answered, on the first request
// (full verification) and on every later one (the cached verification, taken without parsing
// when the header is "Bearer <token>"): the same decisions, the same challenges.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as jose from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Access, AccessRequest } from '../../auth/access.js';
import { issueAccessToken, loadOrCreateSigningKey, type SigningKey } from '../../auth/token-issuer.js';
import { TokenAccessController } from '../../auth/token-access.js';
import { TokenVerifier } from '../../auth/token-verifier.js';

vi.mock('jose', async (importOriginal) => {
  const original = await importOriginal<typeof import('jose')>();
  return { ...original, jwtVerify: vi.fn(original.jwtVerify) };
});

const REALM = 'https://auth.example.com/token';
const pull = (name: string): Access[] => [{ type: 'repository', name, actions: ['pull'] }];
const push = (name: string): Access[] => [{ type: 'repository', name, actions: ['pull', 'push'] }];

let dir: string;
let key: SigningKey;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wharf-token-access-'));
  key = await loadOrCreateSigningKey(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function setup(options: { autoredirect?: boolean } = {}) {
  const clock = { now: Date.now() };
  const verifier = new TokenVerifier({ issuer: 'issuer', service: 'registry', trustedKeys: [key.publicKey], now: () => clock.now });
  const controller = new TokenAccessController(verifier, { realm: REALM, service: 'registry', ...options });
  const token = async (ttlSeconds = 300, access = pull('team/app')): Promise<string> =>
    (await issueAccessToken(key, { issuer: 'issuer', service: 'registry', subject: 'alice', access, ttlSeconds })).token;
  return { clock, controller, token };
}

/** A request whose address, host and scheme must not be read. */
function request(authorization: string | undefined): AccessRequest {
  const untouchable = (): never => {
    throw new Error('read on the allowed path');
  };
  return Object.defineProperties({ authorization } as AccessRequest, {
    remoteAddress: { get: untouchable },
    host: { get: untouchable },
    protocol: { get: untouchable },
  });
}

describe('TokenAccessController', () => {
  it('verifies a token once and allows it on every request, however the header writes Bearer', async () => {
    const { controller, token } = setup();
    const t = await token();
    vi.mocked(jose.jwtVerify).mockClear();
    for (const header of [`Bearer ${t}`, `Bearer ${t}`, `bearer ${t}`, `BEARER  ${t}`, `Bearer ${t}  `, `Bearer\t${t}`]) {
      expect(await controller.authorize(request(header), pull('team/app')), header).toEqual({ allowed: true, subject: 'alice' });
    }
    expect(jose.jwtVerify).toHaveBeenCalledTimes(1);
  });

  it('refuses a cached token once it has expired, on the fast path too', async () => {
    const { clock, controller, token } = setup();
    const t = await token(120);
    expect((await controller.authorize(request(`Bearer ${t}`), pull('team/app'))).allowed).toBe(true);
    clock.now += 150_000; // past exp, within the 60 s leeway
    expect((await controller.authorize(request(`Bearer ${t}`), pull('team/app'))).allowed).toBe(true);
    clock.now += 60_000;
    for (const header of [`Bearer ${t}`, `bearer ${t}`]) {
      expect(await controller.authorize(request(header), pull('team/app'))).toMatchObject({
        allowed: false,
        reason: 'UNAUTHORIZED',
        challenge: `Bearer realm="${REALM}",service="registry",scope="repository:team/app:pull",error="invalid_token"`,
      });
    }
  });

  it('checks the scope on every request: another repository, or push, is insufficient_scope', async () => {
    const { controller, token } = setup();
    const t = await token();
    expect((await controller.authorize(request(`Bearer ${t}`), pull('team/app'))).allowed).toBe(true);
    expect(await controller.authorize(request(`Bearer ${t}`), pull('team/other'))).toMatchObject({
      allowed: false,
      challenge: `Bearer realm="${REALM}",service="registry",scope="repository:team/other:pull",error="insufficient_scope"`,
    });
    expect(await controller.authorize(request(`Bearer ${t}`), push('team/app'))).toMatchObject({ allowed: false, message: 'the token does not grant this access' });
    expect(await controller.authorize(request(`Bearer ${t}`), [])).toEqual({ allowed: true, subject: 'alice' }); // GET /v2/
  });

  it('answers missing, malformed and altered tokens as before', async () => {
    const { controller, token } = setup();
    const t = await token();
    await controller.authorize(request(`Bearer ${t}`), pull('team/app')); // cached
    const challenge = `Bearer realm="${REALM}",service="registry",scope="repository:team/app:pull"`;
    for (const header of [undefined, '', 'Basic YWxpY2U6cHc=', 'Bearer', 'Bearer ', `Bearer ${t} x`, `Bearer ${t}!`, `Token ${t}`]) {
      expect(await controller.authorize(request(header), pull('team/app')), String(header)).toEqual({
        allowed: false,
        reason: 'UNAUTHORIZED',
        message: 'authentication required',
        challenge,
      });
    }
    const [h, p, s] = t.split('.');
    for (const altered of [`${t}x`, `${h}.${p}x.${s}`, `${h}.${p}`, t.slice(1)]) {
      expect(await controller.authorize(request(`Bearer ${altered}`), pull('team/app'))).toMatchObject({
        allowed: false,
        message: 'the token is invalid or expired',
        challenge: `${challenge},error="invalid_token"`,
      });
    }
  });

  it('with autoredirect, the realm of a refusal follows the request', async () => {
    const { controller } = setup({ autoredirect: true });
    const decision = await controller.authorize({ authorization: undefined, host: 'registry.internal:5000', protocol: 'http' }, pull('team/app'));
    expect(decision).toMatchObject({ allowed: false, challenge: 'Bearer realm="http://registry.internal:5000/token",service="registry",scope="repository:team/app:pull"' });
  });
});
