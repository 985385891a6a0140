// The built-in token server's endpoints: GET and POST /auth/token, and /auth/jwks with the
// public keys other services (Distribution, a proxy, CI) verify wharf's tokens with.
import type Router from '@koa/router';
import type { Context } from 'koa';
import { parseBasic } from '../../auth/challenge.js';
import { TokenRequestError, type TokenAnswer, type TokenServer } from '../../auth/token-server.js';
import { requestBody } from '../request-body.js';

/** A token request's form is a few hundred bytes; anything near this is not one. */
const FORM_LIMIT = 64 * 1024;

const STATUS: Record<TokenRequestError['kind'], number> = {
  unauthorized: 401,
  invalid_request: 400,
  unsupported_grant_type: 400,
  too_many_requests: 429,
};

export function tokenRoutes(router: Router, server: TokenServer): void {
  const answer = async (ctx: Context, work: () => Promise<TokenAnswer>): Promise<void> => {
    ctx.set('Cache-Control', 'no-store');
    try {
      const answered = await work();
      ctx.body = answered.body;
      ctx.status = 200;
      // Who logged in and how, for the access log line (never a secret).
      ctx.state.subject = answered.subject;
      ctx.state.grant = answered.grant;
    } catch (err) {
      if (!(err instanceof TokenRequestError)) throw err;
      ctx.status = STATUS[err.kind];
      if (err.retryAfterSeconds !== undefined) ctx.set('Retry-After', String(err.retryAfterSeconds));
      if (err.kind === 'unauthorized') ctx.set('WWW-Authenticate', 'Basic realm="wharf token server",charset="UTF-8"');
      // Both shapes clients read: the registry's errors list and OAuth2's error fields.
      const code = err.kind === 'unauthorized' ? 'UNAUTHORIZED' : err.kind === 'too_many_requests' ? 'TOOMANYREQUESTS' : 'UNSUPPORTED';
      const oauth = err.kind === 'unauthorized' ? 'invalid_grant' : err.kind === 'too_many_requests' ? 'slow_down' : err.kind;
      ctx.body = { errors: [{ code, message: err.message }], error: oauth, error_description: err.message };
    }
  };

  router.get('/auth/token', (ctx) =>
    answer(ctx, () => {
      const params = new URLSearchParams(ctx.querystring);
      const scopes = params.getAll('scope');
      return server.get({
        credentials: parseBasic(ctx.get('Authorization') || undefined),
        service: params.get('service') ?? undefined,
        scopes,
        offlineToken: params.get('offline_token') === 'true',
        remoteAddress: ctx.ip,
      });
    }),
  );

  router.post('/auth/token', (ctx) =>
    answer(ctx, async () => {
      const type = (ctx.get('Content-Type').split(';')[0] ?? '').trim().toLowerCase();
      if (type !== 'application/x-www-form-urlencoded') {
        throw new TokenRequestError('invalid_request', 'expected an application/x-www-form-urlencoded body');
      }
      const form = new URLSearchParams(await readForm(ctx));
      return server.post({
        grantType: form.get('grant_type') ?? undefined,
        username: form.get('username') ?? undefined,
        password: form.get('password') ?? undefined,
        refreshToken: form.get('refresh_token') ?? undefined,
        service: form.get('service') ?? undefined,
        scopes: form.getAll('scope'),
        offline: form.get('access_type') === 'offline',
        remoteAddress: ctx.ip,
      });
    }),
  );

  router.get('/auth/jwks', (ctx) => {
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.body = server.jwks();
  });
}

async function readForm(ctx: Context): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of requestBody(ctx) as AsyncIterable<Buffer>) {
    size += part.length;
    if (size > FORM_LIMIT) throw new TokenRequestError('invalid_request', 'the form is too large');
    parts.push(part);
  }
  return Buffer.concat(parts).toString('utf8');
}
