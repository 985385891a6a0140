// Who may do what, for the token server: parse the scopes a client asks for, then grant the
// part of them the policy allows. Deny by default; rules only ever add.
import type { Access } from './access.js';

/**
 * One grant. It applies to a subject when `anonymous` is true (everyone, logged in or not: what
 * anonymous may do, any user may do), when `account` is the subject's name, or when `group`
 * names a group of `TokenPolicy.groups` listing the subject. A rule naming none of the three
 * applies to nobody (`validatePolicy` reports it).
 */
export interface AccessRule {
  account?: string;
  group?: string;
  anonymous?: boolean;
  /** Globs over repository names: `*` within one segment, `**` across segments ("team/**": everything under team/, not "team" itself). */
  repositories: string[];
  /** `pull`, `push`, `delete`, or `*` for all three. `push` implies `pull`. */
  actions: string[];
  /**
   * Grants `registry:catalog:*`, the list of every repository name (Distribution does not filter
   * it by what the subject may pull). Only this flag grants it: no repository glob does.
   */
  catalog?: boolean;
}

export interface TokenPolicy {
  rules: AccessRule[];
  /** Group name -> account names. */
  groups: Record<string, string[]>;
}

export const REPOSITORY_ACTIONS = ['pull', 'push', 'delete'] as const;
const KNOWN_ACTIONS = new Set<string>([...REPOSITORY_ACTIONS, '*']);

/**
 * The part of `requested` that `subject` (undefined or '' = anonymous) may have: per scope only
 * the allowed actions, scopes left without any action dropped. A partial grant is not an error:
 * the registry answers 401/403 for what the token lacks. Requested `*` stands for pull, push and
 * delete and is granted as those of them that are allowed.
 */
export function grantAccess(policy: TokenPolicy, subject: string | undefined, requested: Access[]): Access[] {
  const rules = policy.rules.filter((rule) => ruleApplies(policy, rule, subject || undefined));
  const granted: Access[] = [];
  for (const want of mergeScopes(requested)) {
    if (want.type === 'registry') {
      if (want.name === 'catalog' && want.actions.includes('*') && rules.some((r) => r.catalog === true)) {
        granted.push({ type: 'registry', name: 'catalog', actions: ['*'] });
      }
      continue;
    }
    const allowed = allowedActions(rules, want.name);
    const wanted = new Set(want.actions.flatMap((a) => (a === '*' ? [...REPOSITORY_ACTIONS] : [a])));
    const actions = REPOSITORY_ACTIONS.filter((a) => wanted.has(a) && allowed.has(a));
    if (actions.length > 0) granted.push({ type: 'repository', name: want.name, actions });
  }
  return granted;
}

function ruleApplies(policy: TokenPolicy, rule: AccessRule, subject: string | undefined): boolean {
  if (rule.anonymous === true) return true;
  if (subject === undefined) return false;
  if (rule.account !== undefined && rule.account === subject) return true;
  if (rule.group !== undefined && Object.hasOwn(policy.groups, rule.group)) {
    return policy.groups[rule.group]!.includes(subject);
  }
  return false;
}

function allowedActions(rules: AccessRule[], name: string): Set<string> {
  const allowed = new Set<string>();
  for (const rule of rules) {
    if (!rule.repositories.some((glob) => globMatches(glob, name))) continue;
    for (const action of rule.actions) {
      if (action === '*') for (const a of REPOSITORY_ACTIONS) allowed.add(a);
      else allowed.add(action);
    }
  }
  if (allowed.has('push')) allowed.add('pull'); // pushing needs pull (HEAD before upload, mounts)
  return allowed;
}

const globCache = new Map<string, RegExp>();

/** `*` matches within one path segment, `**` across segments; everything else is literal. */
export function globMatches(glob: string, name: string): boolean {
  let re = globCache.get(glob);
  if (re === undefined) {
    const pattern = glob
      .split(/(\*\*|\*)/)
      .map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')))
      .join('');
    re = new RegExp(`^${pattern}$`);
    if (globCache.size < 1000) globCache.set(glob, re);
  }
  return re.test(name);
}

/** Problems that should stop start-up: rules that grant nothing or not what they look like. */
export function validatePolicy(policy: TokenPolicy): string[] {
  const problems: string[] = [];
  policy.rules.forEach((rule, i) => {
    const at = `rules[${i}]`;
    const who = [rule.account !== undefined, rule.group !== undefined, rule.anonymous === true].filter(Boolean).length;
    if (who === 0) problems.push(`${at}: names no account, group or anonymous: true, so it applies to nobody`);
    if (who > 1) problems.push(`${at}: names more than one of account, group and anonymous; use one rule for each`);
    if (rule.group !== undefined && !Object.hasOwn(policy.groups, rule.group)) problems.push(`${at}: group "${rule.group}" is not defined`);
    for (const action of rule.actions) {
      if (!KNOWN_ACTIONS.has(action)) problems.push(`${at}: unknown action "${action}" (pull, push, delete or *)`);
    }
    for (const glob of rule.repositories) {
      if (glob === '' || /[^a-z0-9._/*:-]/.test(glob)) problems.push(`${at}: repository glob "${glob}" cannot match a repository name`);
    }
    if (rule.repositories.length === 0 && rule.catalog !== true) problems.push(`${at}: no repositories`);
  });
  return problems;
}

// Repository names: the OCI grammar's path components, optionally behind a registry host
// (`localhost:5000/team/app`, `ghcr.io/org/app`) since clients of a mirror send those.
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const HOST = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?';
const REPOSITORY_NAME = new RegExp(`^(?:${HOST}/)?${COMPONENT}(?:/${COMPONENT})*$`);
/** Distribution's limit on a repository name. */
const MAX_NAME_LENGTH = 255;

export function isValidScopeName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && REPOSITORY_NAME.test(name);
}

/**
 * The `scope` query parameters of a token request: each value may hold several scopes separated
 * by spaces. `type:name:actions` is split at the first ':' (type) and the last ':' (actions), so
 * a name may carry `host:port/`. A resource class (`repository(plugin)`) is dropped; unknown
 * types, unknown actions, invalid names and scopes left without actions are ignored; the same
 * resource asked for twice is merged. Actions come back deduplicated in the order pull, push,
 * delete, *.
 */
export function parseScopes(values: string[]): Access[] {
  const parsed: Access[] = [];
  for (const value of values) {
    for (const scope of value.split(/\s+/)) {
      const access = parseScope(scope);
      if (access !== undefined) parsed.push(access);
    }
  }
  return mergeScopes(parsed);
}

function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last === first) return undefined;
  const typeMatch = /^([a-z0-9]+)(?:\([a-z0-9]+\))?$/.exec(scope.slice(0, first));
  const name = scope.slice(first + 1, last);
  const actions = scope.slice(last + 1).split(',');
  if (typeMatch?.[1] === 'repository') {
    if (!isValidScopeName(name)) return undefined;
    return withActions({ type: 'repository', name, actions: [] }, actions, KNOWN_ACTIONS);
  }
  if (typeMatch?.[1] === 'registry' && name === 'catalog') {
    return withActions({ type: 'registry', name, actions: [] }, actions, new Set(['*']));
  }
  return undefined;
}

const ACTION_ORDER = ['pull', 'push', 'delete', '*'];

function withActions(access: Access, actions: string[], known: Set<string>): Access | undefined {
  const kept = ACTION_ORDER.filter((a) => known.has(a) && actions.includes(a));
  return kept.length > 0 ? { ...access, actions: kept } : undefined;
}

/** One entry per (type, name), actions united, in first-seen order. */
function mergeScopes(scopes: Access[]): Access[] {
  const byKey = new Map<string, Access>();
  for (const scope of scopes) {
    const key = `${scope.type}:${scope.name}`;
    const seen = byKey.get(key);
    if (seen === undefined) byKey.set(key, { type: scope.type, name: scope.name, actions: [...scope.actions] });
    else seen.actions = ACTION_ORDER.filter((a) => seen.actions.includes(a) || scope.actions.includes(a));
  }
  return [...byKey.values()];
}
