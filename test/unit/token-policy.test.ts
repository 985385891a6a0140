import { describe, expect, it } from 'vitest';
import type { Access } from '../../auth/access.js';
import { globMatches, grantAccess, isValidScopeName, parseScopes, validatePolicy, type TokenPolicy } from '../../auth/token-policy.js';

const repo = (name: string, ...actions: string[]): Access => ({ type: 'repository', name, actions });
const CATALOG: Access = { type: 'registry', name: 'catalog', actions: ['*'] };

const policy: TokenPolicy = {
  groups: { devs: ['alice', 'bob'], ops: ['carol'], empty: [] },
  rules: [
    { anonymous: true, repositories: ['public/**'], actions: ['pull'] },
    { group: 'devs', repositories: ['team/**'], actions: ['pull', 'push'] },
    { group: 'ops', repositories: ['**'], actions: ['*'], catalog: true },
    { account: 'alice', repositories: ['team/alice-*'], actions: ['delete'] },
    { account: 'dave', repositories: ['drop/*'], actions: ['push'] },
    { account: 'erin', repositories: ['mixed/*'], actions: ['pull'] },
    { account: 'erin', repositories: ['mixed/app'], actions: ['delete'] },
    { group: 'empty', repositories: ['**'], actions: ['*'] },
  ],
};

describe('grantAccess', () => {
  const cases: Array<[string, string | undefined, Access[], Access[]]> = [
    ['anonymous pulls public/**', undefined, [repo('public/base', 'pull')], [repo('public/base', 'pull')]],
    ['anonymous pulls deep under public/', undefined, [repo('public/a/b/c', 'pull')], [repo('public/a/b/c', 'pull')]],
    ['anonymous may not push to public/', undefined, [repo('public/base', 'pull', 'push')], [repo('public/base', 'pull')]],
    ['anonymous gets nothing elsewhere', undefined, [repo('team/app', 'pull')], []],
    ["'' is anonymous", '', [repo('team/app', 'pull'), repo('public/x', 'pull')], [repo('public/x', 'pull')]],
    ['"public/**" does not match "public" itself', undefined, [repo('public', 'pull')], []],
    ['a user may do what anonymous may', 'alice', [repo('public/base', 'pull')], [repo('public/base', 'pull')]],
    ['an unknown user still gets the anonymous part', 'mallory', [repo('public/base', 'pull'), repo('team/app', 'pull')], [repo('public/base', 'pull')]],
    ['group member pushes and pulls', 'bob', [repo('team/app', 'pull', 'push')], [repo('team/app', 'pull', 'push')]],
    ['group rule does not reach outside its globs', 'bob', [repo('other/app', 'pull', 'push')], []],
    ['partial grant: delete dropped, the rest kept', 'bob', [repo('team/app', 'pull', 'push', 'delete')], [repo('team/app', 'pull', 'push')]],
    ['account rule adds to group rule', 'alice', [repo('team/alice-x', 'pull', 'push', 'delete')], [repo('team/alice-x', 'pull', 'push', 'delete')]],
    ['"*" in a glob stays within a segment', 'alice', [repo('team/alice-x/sub', 'delete')], []],
    ['push implies pull, on a repository that may not exist yet', 'dave', [repo('drop/new', 'pull', 'push')], [repo('drop/new', 'pull', 'push')]],
    ['push does not imply delete', 'dave', [repo('drop/new', 'delete')], []],
    ['pull only for pull-only rules', 'erin', [repo('mixed/other', 'pull', 'push')], [repo('mixed/other', 'pull')]],
    ['rules for the same repository unite', 'erin', [repo('mixed/app', 'pull', 'push', 'delete')], [repo('mixed/app', 'pull', 'delete')]],
    ['"*" in a rule means pull, push and delete', 'carol', [repo('any/where', 'delete', 'push', 'pull')], [repo('any/where', 'pull', 'push', 'delete')]],
    ['requested "*" is granted as the allowed actions', 'bob', [repo('team/app', '*')], [repo('team/app', 'pull', 'push')]],
    ['requested "*" with all allowed', 'carol', [repo('x/y', '*')], [repo('x/y', 'pull', 'push', 'delete')]],
    ['unknown actions are never granted', 'carol', [repo('x/y', 'admin', 'pull')], [repo('x/y', 'pull')]],
    ['catalog only through catalog: true', 'carol', [CATALOG], [CATALOG]],
    ['"**" alone does not grant the catalog', 'bob', [CATALOG], []],
    ['anonymous gets no catalog', undefined, [CATALOG], []],
    ['other registry resources are never granted', 'carol', [{ type: 'registry', name: 'other', actions: ['*'] }], []],
    ['a group with no members grants nothing', 'empty', [repo('x/y', 'pull')], []],
    [
      'several scopes, each on its own; order kept; duplicates merged',
      'bob',
      [repo('team/b', 'pull'), repo('public/a', 'pull', 'push'), repo('secret/x', 'pull'), repo('team/b', 'push')],
      [repo('team/b', 'pull', 'push'), repo('public/a', 'pull')],
    ],
  ];
  it.each(cases)('%s', (_what, subject, requested, expected) => {
    expect(grantAccess(policy, subject, requested)).toEqual(expected);
  });

  it('a user named like a group is not its member; prototype names are no groups', () => {
    const p: TokenPolicy = { groups: {}, rules: [{ group: 'constructor', repositories: ['**'], actions: ['pull'] }, { group: 'devs', repositories: ['**'], actions: ['pull'] }] };
    expect(grantAccess(p, 'devs', [repo('a/b', 'pull')])).toEqual([]);
    expect(grantAccess(p, 'constructor', [repo('a/b', 'pull')])).toEqual([]);
  });

  it('a rule naming nobody applies to nobody', () => {
    const p: TokenPolicy = { groups: {}, rules: [{ repositories: ['**'], actions: ['*'], catalog: true }] };
    expect(grantAccess(p, 'alice', [repo('a/b', 'pull'), CATALOG])).toEqual([]);
    expect(grantAccess(p, undefined, [repo('a/b', 'pull')])).toEqual([]);
  });

  it('an empty policy denies everything', () => {
    expect(grantAccess({ rules: [], groups: {} }, 'root', [repo('a', 'pull'), CATALOG])).toEqual([]);
  });

  it('does not change its input', () => {
    const requested = [repo('team/app', 'push', 'pull', 'delete')];
    const copy = structuredClone(requested);
    grantAccess(policy, 'bob', requested);
    expect(requested).toEqual(copy);
  });
});

describe('globMatches', () => {
  it.each([
    ['**', 'a', true],
    ['**', 'a/b/c', true],
    ['team/**', 'team/a/b', true],
    ['team/**', 'team', false],
    ['team/*', 'team/a', true],
    ['team/*', 'team/a/b', false],
    ['*/app', 'x/app', true],
    ['*/app', 'x/y/app', false],
    ['a.b/*', 'axb/c', false], // dots are literal
    ['team/app', 'team/app', true],
    ['team/app', 'team/app2', false],
    ['localhost:5000/**', 'localhost:5000/x', true],
  ])('%s ~ %s: %s', (glob, name, expected) => {
    expect(globMatches(glob, name)).toBe(expected);
  });
});

describe('validatePolicy', () => {
  it('accepts a sound policy', () => {
    expect(validatePolicy(policy)).toEqual([]);
  });

  it('reports rules that grant nothing or not what they look like', () => {
    const problems = validatePolicy({
      groups: { devs: ['a'] },
      rules: [
        { repositories: ['**'], actions: ['pull'] },
        { account: 'a', group: 'devs', repositories: ['**'], actions: ['pull'] },
        { group: 'nope', repositories: ['**'], actions: ['pull'] },
        { account: 'a', repositories: ['Team/**', ''], actions: ['pull', 'read'] },
        { account: 'a', repositories: [], actions: ['pull'] },
        { account: 'admin', repositories: [], actions: [], catalog: true },
      ],
    });
    expect(problems).toEqual([
      'rules[0]: names no account, group or anonymous: true, so it applies to nobody',
      'rules[1]: names more than one of account, group and anonymous; use one rule for each',
      'rules[2]: group "nope" is not defined',
      'rules[3]: unknown action "read" (pull, push, delete or *)',
      'rules[3]: repository glob "Team/**" cannot match a repository name',
      'rules[3]: repository glob "" cannot match a repository name',
      'rules[4]: no repositories',
    ]);
  });
});

describe('parseScopes', () => {
  it('parses one scope', () => {
    expect(parseScopes(['repository:team/app:pull'])).toEqual([repo('team/app', 'pull')]);
  });

  it('takes repeated scope parameters and space-joined ones', () => {
    expect(parseScopes(['repository:a:pull repository:b:push', 'repository:c:delete', '  repository:d:pull  '])).toEqual([
      repo('a', 'pull'),
      repo('b', 'push'),
      repo('c', 'delete'),
      repo('d', 'pull'),
    ]);
  });

  it('splits the type at the first colon and the actions at the last: names may carry host:port/', () => {
    expect(parseScopes(['repository:localhost:5000/team/app:pull,push'])).toEqual([repo('localhost:5000/team/app', 'pull', 'push')]);
    expect(parseScopes(['repository:ghcr.io/org/app:pull'])).toEqual([repo('ghcr.io/org/app', 'pull')]);
    expect(parseScopes(['repository:Registry.Example.com:443/a:pull'])).toEqual([repo('Registry.Example.com:443/a', 'pull')]);
  });

  it('dedupes and orders actions; merges the same repository asked for twice', () => {
    expect(parseScopes(['repository:a:push,pull,push,pull'])).toEqual([repo('a', 'pull', 'push')]);
    expect(parseScopes(['repository:a:push', 'repository:a:delete repository:a:pull'])).toEqual([repo('a', 'pull', 'push', 'delete')]);
    expect(parseScopes(['repository:a:*,pull'])).toEqual([repo('a', 'pull', '*')]);
  });

  it('strips a resource class', () => {
    expect(parseScopes(['repository(plugin):vendor/plugin:pull'])).toEqual([repo('vendor/plugin', 'pull')]);
  });

  it('takes the catalog scope', () => {
    expect(parseScopes(['registry:catalog:*'])).toEqual([CATALOG]);
    expect(parseScopes(['registry:catalog:pull', 'registry:other:*'])).toEqual([]);
  });

  it('ignores unknown types, unknown actions and scopes left without actions', () => {
    expect(parseScopes(['user:bob:read', 'repository:a:read', 'repository:b:', 'repository:c:pull,read,,'])).toEqual([repo('c', 'pull')]);
  });

  it('drops malformed scopes and invalid names', () => {
    const bad = [
      '',
      'repository',
      'repository:a',
      ':a:pull',
      'REPOSITORY:a:pull',
      'repository:Team/App:pull',
      'repository:team//app:pull',
      'repository:team/app/:pull',
      'repository:/team:pull',
      'repository:../etc:pull',
      'repository:team/-app:pull',
      'repository:team/app_:pull',
      'repository:a:b:pull', // "a:b" is no name: a port needs a following path
      'repository:host:port/a:pull',
      'repository(:a:pull',
      `repository:${'a'.repeat(256)}:pull`,
    ];
    expect(parseScopes(bad)).toEqual([]);
  });

  it('accepts what the OCI name grammar allows', () => {
    const good = ['a', 'a/b/c', 'a.b', 'a_b', 'a__b', 'a-b', 'a--b', '0/1', 'team/app.v2-rc_1', 'localhost/a', `${'a'.repeat(255)}`];
    for (const name of good) expect(isValidScopeName(name), name).toBe(true);
    for (const name of ['a___b', 'a..b', 'a.-b', '-a', 'a-', 'A', 'a/B', 'a b', 'a/', '']) expect(isValidScopeName(name), name).toBe(false);
  });

  it('feeds grantAccess: a docker push request', () => {
    const requested = parseScopes(['repository:team/app:push,pull', 'repository:public/base:pull']);
    expect(grantAccess(policy, 'bob', requested)).toEqual([repo('team/app', 'pull', 'push'), repo('public/base', 'pull')]);
  });
});
