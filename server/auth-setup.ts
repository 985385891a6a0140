// Builds who-may-do-what from the auth configuration: an open registry, htpasswd, or
// token verification (of an existing token server's tokens, or of wharf's own, with the
// built-in token server). Anything that cannot be enforced as configured (an unreadable
// htpasswd file, key bundle or JWKS) stops start-up with the key's name: never open by
// accident.
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { allowAll, type AccessController } from '../auth/access.js';
import { HtpasswdFile } from '../auth/htpasswd.js';
import { HtpasswdAccessController } from '../auth/htpasswd-access.js';
import { LoginRateLimiter } from '../auth/rate-limit.js';
import { loadOrCreateSigningKey } from '../auth/signing-key.js';
import { TokenAccessController } from '../auth/token-access.js';
import { validatePolicy } from '../auth/token-policy.js';
import { TokenServer } from '../auth/token-server.js';
import { TokenVerifier, type TokenVerifierOptions } from '../auth/token-verifier.js';
import { ConfigError } from './config-keys.js';
import type { AuthConfig } from './config-auth.js';

export interface AuthSetup {
  access: AccessController;
  /** The built-in token server, when configured. */
  tokenServer?: TokenServer;
}

async function loadUsers(key: string, path: string, logger: Logger): Promise<HtpasswdFile> {
  const users = new HtpasswdFile(path, {
    onError: (err: Error) => logger.error({ err: err.message, path }, 'htpasswd file unreadable; keeping the users read before'),
    onWarning: (message: string) => logger.warn({ path }, message),
  });
  try {
    await users.load();
  } catch (err) {
    throw new ConfigError(`${key}: cannot read the htpasswd file ${path}: ${(err as Error).message}`);
  }
  return users;
}

async function readKeyFile(key: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
}

export async function setupAuth(config: AuthConfig | undefined, logger: Logger): Promise<AuthSetup> {
  if (!config) return { access: allowAll };
  const limiter = new LoginRateLimiter();
  if (config.method === 'htpasswd') {
    const users = await loadUsers('auth.htpasswd.path', config.path, logger);
    logger.info({ method: 'htpasswd', realm: config.realm }, 'authentication on');
    return { access: new HtpasswdAccessController(users, config.realm, limiter) };
  }
  let tokenServer: TokenServer | undefined;
  const trustedKeys = [];
  // The built-in server's tokens carry its certificate (x5c), so it joins the root bundle.
  const bundles: string[] = [];
  if (config.server) {
    const server = config.server;
    const policy = { rules: server.rules, groups: server.groups };
    const problems = validatePolicy(policy);
    if (problems.length > 0) throw new ConfigError(problems.map((p) => `auth.tokenserver.${p}`).join('\n'));
    const users = await loadUsers('auth.tokenserver.htpasswd', server.htpasswd, logger);
    let key;
    try {
      key = await loadOrCreateSigningKey(server.keydir);
    } catch (err) {
      throw new ConfigError(`auth.tokenserver.keydir: cannot read or create the signing key in ${server.keydir}: ${(err as Error).message}`);
    }
    trustedKeys.push(key.publicKey);
    bundles.push(key.certificatePem);
    tokenServer = new TokenServer({
      users,
      key,
      issuer: config.issuer,
      service: config.service,
      policy,
      accessTtlSeconds: Math.round(server.expiration / 1000),
      refreshTtlSeconds: Math.round(server.refreshexpiration / 1000),
      limiter,
    });
  }
  let jwks;
  if (config.jwks) {
    try {
      jwks = JSON.parse(await readKeyFile('auth.token.jwks', config.jwks)) as NonNullable<TokenVerifierOptions['jwks']>;
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`auth.token.jwks: ${config.jwks} is not a JSON Web Key Set`);
    }
  }
  let verifier: TokenVerifier;
  try {
    verifier = new TokenVerifier({
      issuer: config.issuer,
      service: config.service,
      rootCertBundle: [...bundles, ...(config.rootcertbundle ? [await readKeyFile('auth.token.rootcertbundle', config.rootcertbundle)] : [])].join('\n') || undefined,
      jwks,
      trustedKeys,
      algorithms: config.signingalgorithms,
    });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`auth.token: cannot use the configured keys: ${(err as Error).message}`);
  }
  logger.info({ method: 'token', realm: config.realm, service: config.service, tokenServer: Boolean(tokenServer) }, 'authentication on');
  return {
    access: new TokenAccessController(verifier, { realm: config.realm, service: config.service, autoredirect: config.autoredirect }),
    tokenServer,
  };
}
