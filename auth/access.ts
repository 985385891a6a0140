// Who may do what: the seam the HTTP layer asks before every route. The core registry
// runs open (AllowAll); htpasswd and token auth implement the same interface next.
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
}

export type AccessDecision =
  | { allowed: true; subject?: string }
  | {
      allowed: false;
      /** UNAUTHORIZED: no or bad credentials (401); DENIED: authenticated but not allowed (403). */
      reason: 'UNAUTHORIZED' | 'DENIED';
      message: string;
      /** The WWW-Authenticate challenge to send back. */
      challenge?: string;
    };

export interface AccessController {
  authorize(request: AccessRequest, access: Access[]): Promise<AccessDecision>;
}

/** The open registry: everyone may do everything. */
export const allowAll: AccessController = {
  authorize: async () => ({ allowed: true }),
};

export function formatScope(access: Access): string {
  return `${access.type}:${access.name}:${access.actions.join(',')}`;
}
