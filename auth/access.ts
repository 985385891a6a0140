// Who may do what: the seam the HTTP layer asks before every route. An open registry
// uses allowAll; htpasswd-access.ts and token-access.ts implement the same interface.
// Nothing here knows about Koa: the server passes headers in and gets a decision back.

/** One access request, in the token spec's terms: `repository:team/app:pull,push`. */
export interface Access {
  type: 'repository' | 'registry';
  name: string;
  actions: string[];
}

export interface AccessRequest {
  /** The Authorization header, if any. */
  authorization?: string;
  remoteAddress?: string;
  /** The Host the client addressed, and its scheme (for a realm that follows the request). */
  host?: string;
  protocol?: string;
}

export type AccessDecision =
  | { allowed: true; subject?: string }
  | {
      allowed: false;
      /**
       * UNAUTHORIZED: no, bad or insufficient credentials (401, with a challenge); DENIED:
       * authenticated but never allowed (403); TOOMANYREQUESTS: too many failed logins.
       */
      reason: 'UNAUTHORIZED' | 'DENIED' | 'TOOMANYREQUESTS';
      message: string;
      /** The WWW-Authenticate challenge to send back. */
      challenge?: string;
      retryAfterSeconds?: number;
    };

export interface AccessController {
  authorize(request: AccessRequest, access: Access[]): Promise<AccessDecision>;
  /** True only where anyone may pull anything (automatic cross-repository mounts rely on it). */
  readonly everyoneMayPull?: boolean;
}

/** The open registry: everyone may do everything. */
export const allowAll: AccessController = {
  authorize: async () => ({ allowed: true }),
  everyoneMayPull: true,
};

export function formatScope(access: Access): string {
  return `${access.type}:${access.name}:${access.actions.join(',')}`;
}
