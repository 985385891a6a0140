// Malformed requests for the hostile-input fuzz (test/fault/fuzz.test.ts), generated from
// a seeded PRNG so that a failing case reproduces with the same FAULT_SEED. Every case is
// a raw HTTP/1.1 request (fetch would normalise `..` and `%2e%2e` away and refuse to send
// a wrong Content-Length). No case may change stored content: digests are never the
// digest of the body sent, and the repositories holding content only appear next to an
// invalid part.
import { createHash } from 'node:crypto';
import type { Rng } from './fault-store.js';

export interface FuzzCase {
  category: string;
  method: string;
  target: string | Buffer;
  headers?: [string, string][];
  body?: Buffer;
  /** Do not add Content-Length for the body (the case sets its own framing). */
  rawFraming?: boolean;
  /** Half-close after sending (bodies shorter than declared). */
  end?: boolean;
}

export interface FuzzContext {
  /** A repository holding content, and digests stored in it. */
  repo: string;
  digests: string[];
  /** Live upload session ids in `uploadRepo`. */
  uploadRepo: string;
  sessions: string[];
}

const hex = (seed: string, length = 64): string => {
  let out = '';
  for (let i = 0; out.length < length; i++) out += createHash('sha256').update(`${seed}/${i}`).digest('hex');
  return out.slice(0, length);
};

export const HOSTILE_NAMES: (string | Buffer)[] = [
  '..', '../..', '../../etc', 'a/../b', 'a/./b', './a', '.', 'a/.', '%2e%2e', '%2E%2E', 'a/%2e%2e/b', '%2e%2e%2f%2e%2e%2fetc',
  '..%2f..%2fetc', '%252e%252e', 'a%2fb', '%2f', '%2fetc%2fpasswd', '/etc/passwd', '//etc', 'a//b', '/', '\\..\\..', 'a\\b',
  '%5c..%5c', 'A', 'Team/App', 'a'.repeat(256), `${'ab/'.repeat(100)}c`, 'a'.repeat(5000), '-a', 'a-', '.a', 'a.', 'a..b',
  'a___b', '_uploads', 'a/_uploads', 'a/_manifests', 'a/_layers/sha256', '_catalog', 'a~tmp-000', '~', 'ü', '%C3%BC',
  Buffer.from('caf\u00e9', 'utf8'), Buffer.from('a/\u{1F600}', 'utf8'), '%00', 'a%00b', Buffer.from([0x61, 0x00, 0x62]),
  Buffer.from([0xff, 0xfe]), '%ff', '%', '%zz', 'a%', 'a b', 'a%20b', 'a;b', 'a*b', '$(id)', '`id`', "a'b", 'a"b', '<x>',
  'a\tb', 'con', 'nul', 'a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9/../../../..',
];

export function hostileDigests(): string[] {
  const h = hex('digest');
  return [
    '', 'sha256', 'sha256:', ':', `:${h}`, 'sha256:abc', `sha256:${h.toUpperCase()}`, `sha256:${'g'.repeat(64)}`, `sha256:${h.slice(1)}`,
    `sha256:${h}0`, `md5:${h.slice(0, 32)}`, `sha384:${hex('x', 96)}`, `sha512:${h}`, `SHA256:${h}`, `sha256+b64:${h}`,
    `sha256::${h}`, `sha256:${h}/../..`, `sha256%3a${h}`, h, `sha256:../../../../etc/passwd`, `sha256:${'a'.repeat(10_000)}`,
    `sha256:%2e%2e%2f${h.slice(6)}`, `sha256:${h}%00`, `sha256:${h} `, ` sha256:${h}`, `sha256:${h.slice(0, 32)}..${h.slice(34)}`,
    `sha512:${hex('y', 127)}`, `blake3:${h}`, `sha256:${h}?x`, `sha256:${h}#`, '..', '%2e%2e', 'sha256:~', 'latest',
  ];
}

const HOSTILE_TAGS = ['-a', '.a', 'a'.repeat(129), '..', '%2e%2e', 'a%2fb', 'a:b', 'a@b', 'a b', 'ü', '%00', '~tmp-1', '_', '*'];
const HOSTILE_IDS = ['..', '%2e%2e', 'short', 'a'.repeat(129), 'abc/def', '%2f..%2f..', 'abcdefgh%00', '00000000-0000-0000-0000-000000000000', 'ABCDEFGH~tmp-1', '........'];
const RANGES = [
  '', '0-', '-1', '1-0', '0-0', '5-10', '0-99999999999999999999', 'bytes=0-9', 'bytes 0-9/10', 'bytes */10', 'abc',
  '0-9,10-19', ' 0-9', '0-9 ', '18446744073709551615-18446744073709551616', '-5-10', '0x0-0x9', 'NaN-NaN', '1e3-2e3', '0-9/*',
];
const LENGTHS = ['-1', '1e3', '0x10', '99999999999999999999', '1000000000000', ' 5', '5 5', '+5', '5.0', ''];
const MEDIA_TYPES = [
  'application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws', 'application/vnd.unknown+json', 'text/html', '', 'application/json; charset=utf-16',
  '*/*', 'application/vnd.oci.image.manifest.v1+json; x="\u00ff"',
];

const enc = (part: string | Buffer): Buffer => (typeof part === 'string' ? Buffer.from(part, 'latin1') : part);
const path = (...parts: (string | Buffer)[]): Buffer => Buffer.concat(parts.map(enc));

/** Manifests that must all be rejected (they reference nothing that exists, or are broken). */
function badManifests(rng: Rng): Buffer[] {
  const missing = `sha256:${hex(`missing-${rng.int(0, 1e9)}`)}`;
  const desc = (extra: object = {}): object => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: missing, size: 10, ...extra });
  const image = (extra: object = {}): object => ({ schemaVersion: 2, mediaType: MEDIA_TYPES[0], config: desc({ mediaType: 'application/vnd.oci.image.config.v1+json' }), layers: [desc()], ...extra });
  const docs: unknown[] = [
    image(), image({ schemaVersion: '2' }), image({ schemaVersion: 1 }), image({ layers: {} }), image({ layers: [desc({ size: -1 })] }),
    image({ layers: [desc({ size: 1e300 })] }), image({ layers: [desc({ size: '10' })] }), image({ layers: [desc({ digest: 'sha256:..' })] }),
    image({ layers: [desc({ urls: 'http://x' })] }), image({ config: null }), image({ mediaType: 'application/vnd.unknown+json' }),
    image({ mediaType: 7 }), image({ subject: { mediaType: 'x', digest: '../../a', size: 1 } }), image({ annotations: { a: 1 } }),
    image({ artifactType: {} }), image({ layers: Array.from({ length: 2000 }, () => desc()) }),
    { schemaVersion: 2, mediaType: MEDIA_TYPES[1], manifests: [{ mediaType: MEDIA_TYPES[0], digest: missing, size: 3 }] },
    { schemaVersion: 2, mediaType: MEDIA_TYPES[1], manifests: 'x' }, { schemaVersion: 2, manifests: [{}] },
    null, [], 'manifest', 42, {}, { __proto__: { schemaVersion: 2 }, constructor: { prototype: 1 } },
  ];
  const texts = docs.map((d) => JSON.stringify(d));
  const mutated = texts[0]!.split('');
  for (let i = rng.int(1, 4); i > 0; i--) mutated[rng.int(0, mutated.length - 1)] = String.fromCharCode(rng.int(0, 255));
  texts.push(mutated.join(''), texts[0]!.slice(0, rng.int(0, texts[0]!.length - 1)), `\ufeff${texts[0]}`, '', ' ', '{', '[[[['.repeat(50_000));
  const out: Buffer[] = texts.map((t) => Buffer.from(t, 'utf8'));
  out.push(Buffer.from(texts[0]!, 'utf16le'), rng.bytes(rng.int(1, 2048)));
  return out;
}

/** One random malformed request. */
export function fuzzCase(rng: Rng, ctx: FuzzContext): FuzzCase {
  const name = (): string | Buffer => rng.pick(HOSTILE_NAMES);
  const digest = (): string => rng.pick(hostileDigests());
  const session = (): string => (ctx.sessions.length > 0 && rng.chance(0.8) ? rng.pick(ctx.sessions) : rng.pick(HOSTILE_IDS));
  const small = (): Buffer => rng.bytes(rng.int(0, 64));
  switch (rng.int(0, 10)) {
    case 0: {
      const [method, tail] = rng.pick([['GET', '/tags/list'], ['GET', '/manifests/latest'], ['HEAD', '/manifests/latest'], ['DELETE', '/manifests/latest'],
        ['PUT', '/manifests/latest'], ['GET', `/blobs/${ctx.digests[0]}`], ['DELETE', `/blobs/${ctx.digests[0]}`], ['POST', '/blobs/uploads/'],
        ['GET', `/referrers/${ctx.digests[0]}`], ['PATCH', '/blobs/uploads/abcdefgh-1234']] as const);
      return { category: 'name', method, target: path('/v2/', name(), tail), body: method === 'PUT' || method === 'PATCH' ? small() : undefined };
    }
    case 1: {
      const d = digest();
      return rng.pick<FuzzCase>([
        { category: 'digest', method: rng.pick(['GET', 'HEAD', 'DELETE']), target: `/v2/${ctx.repo}/blobs/${d}` },
        { category: 'digest', method: rng.pick(['GET', 'HEAD', 'DELETE']), target: `/v2/${ctx.repo}/manifests/${d}` },
        { category: 'digest', method: 'GET', target: `/v2/${ctx.repo}/referrers/${d}` },
        { category: 'digest', method: 'POST', target: `/v2/${ctx.repo}/blobs/uploads/?digest=${d}`, body: small() },
        { category: 'digest', method: 'PUT', target: `/v2/${ctx.uploadRepo}/blobs/uploads/${session()}?digest=${d}`, body: small() },
        { category: 'digest', method: 'POST', target: `/v2/${ctx.uploadRepo}/blobs/uploads/?mount=${d}&from=${rng.pick([ctx.repo, '../x', '%2e%2e'])}` },
        { category: 'digest', method: 'POST', target: `/v2/${ctx.uploadRepo}/blobs/uploads/?mount=${rng.pick(ctx.digests)}&from=${encodeURIComponent(String(name()))}` },
      ]);
    }
    case 2: {
      // Content-Range malformed, out of place, or disagreeing with the (correct) Content-Length.
      const body = small();
      const start = rng.int(0, 3) * 32;
      const range = rng.chance(0.6) ? rng.pick(RANGES) : `${start}-${start + body.length - 1 + rng.pick([-2, -1, 1, 1000])}`;
      const method = rng.pick(['PATCH', 'PATCH', 'PUT']);
      const q = method === 'PUT' ? `?digest=sha256:${hex(`r${rng.int(0, 1e9)}`)}` : '';
      return { category: 'content-range', method, target: `/v2/${ctx.uploadRepo}/blobs/uploads/${session()}${q}`, headers: [['Content-Range', range]], body };
    }
    case 3: {
      const declared = rng.pick(LENGTHS);
      const method = rng.pick(['PATCH', 'POST', 'PUT']);
      const target = method === 'PATCH' ? `/v2/${ctx.uploadRepo}/blobs/uploads/${session()}`
        : method === 'POST' ? `/v2/${ctx.uploadRepo}/blobs/uploads/?digest=sha256:${hex(`l${rng.int(0, 1e9)}`)}` : `/v2/${ctx.uploadRepo}/manifests/t1`;
      return { category: 'content-length', method, target, headers: declared ? [['Content-Length', declared]] : [], body: small(), rawFraming: true, end: true };
    }
    case 4: {
      // Body shorter or longer than declared; or broken chunked encoding.
      const body = rng.bytes(rng.int(10, 3000));
      const method = rng.pick(['PATCH', 'POST', 'PUT']);
      const target = method === 'PATCH' ? `/v2/${ctx.uploadRepo}/blobs/uploads/${session()}`
        : method === 'POST' ? `/v2/${ctx.uploadRepo}/blobs/uploads/?digest=sha256:${hex(`b${rng.int(0, 1e9)}`)}` : `/v2/${ctx.uploadRepo}/manifests/t2`;
      const framing = rng.int(0, 3);
      if (framing === 0) return { category: 'short-body', method, target, headers: [['Content-Length', String(body.length + rng.int(1, 10_000))]], body, rawFraming: true, end: true };
      if (framing === 1) return { category: 'long-body', method, target, headers: [['Content-Length', String(rng.int(0, body.length - 1))]], body, rawFraming: true };
      const chunk = rng.pick([`zz\r\n${body.toString('latin1')}`, `${body.length.toString(16)}\r\n${body.toString('latin1')}`, `-1\r\nx\r\n0\r\n\r\n`, `ffffffffffffffffff\r\nx`, `5\r\nabc\r\n0\r\n\r\n`]);
      return { category: 'bad-chunked', method, target, headers: [['Transfer-Encoding', 'chunked']], body: Buffer.from(chunk, 'latin1'), rawFraming: true, end: true };
    }
    case 5:
    case 6: {
      const manifest = rng.pick(badManifests(rng));
      const tag = rng.chance(0.85) ? `fz${rng.int(0, 50)}` : rng.chance(0.5) ? rng.pick(HOSTILE_TAGS) : `sha256:${hex(`m${rng.int(0, 1e9)}`)}`;
      return { category: 'manifest', method: 'PUT', target: `/v2/${ctx.uploadRepo}/manifests/${tag}`, headers: [['Content-Type', rng.pick(MEDIA_TYPES)]], body: manifest };
    }
    case 7: {
      const method = rng.pick(['GET', 'PUT', 'DELETE', 'PATCH']);
      return { category: 'tag', method, target: `/v2/${ctx.repo}/manifests/${rng.pick(HOSTILE_TAGS)}`, body: method === 'PUT' ? small() : undefined };
    }
    case 8: {
      const id = rng.pick(HOSTILE_IDS);
      return { category: 'upload-id', method: rng.pick(['GET', 'PATCH', 'PUT', 'DELETE']), target: `/v2/${ctx.uploadRepo}/blobs/uploads/${id}${rng.chance(0.3) ? `?digest=${digest()}` : ''}`, body: small() };
    }
    case 9: {
      const q = rng.pick(['n=-1', 'n=1e3', 'n=99999999999', 'n[]=1', 'n=', 'n=abc', 'last=%00', 'last=%zz', 'n=1&n=2', 'last=' + 'z'.repeat(3000), 'n=0x10', '%zz=%zz']);
      const target = rng.pick([`/v2/_catalog?${q}`, `/v2/${ctx.repo}/tags/list?${q}`, `/v2/${ctx.repo}/referrers/${ctx.digests[0]}?artifactType=${q}`, `/v2/?${q}`]);
      return { category: 'query', method: 'GET', target };
    }
    default: {
      const method = rng.pick(['FOO', 'get', 'PROPFIND', 'TRACE', 'OPTIONS', 'MKCOL', 'PURGE', 'LINK', 'SEARCH', 'G ET', 'GET\x00']);
      const target = rng.pick(['/v2/', `/v2/${ctx.repo}/tags/list`, '*', 'http://evil.example/v2/', '/v2/../../../etc/passwd', `/${'x'.repeat(rng.int(1, 20_000))}`, '', '\x7f']);
      return { category: 'method-target', method, target, body: rng.chance(0.3) ? small() : undefined };
    }
  }
}

/** The bytes of a case: request line, Host, Connection: close, its headers, its body. */
export function encodeCase(c: FuzzCase): Buffer {
  const headers = [...(c.headers ?? [])];
  if (c.body && !c.rawFraming) headers.push(['Content-Length', String(c.body.length)]);
  const head = Buffer.concat([
    Buffer.from(`${c.method} `, 'latin1'),
    enc(c.target),
    Buffer.from(` HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1'),
  ]);
  return c.body ? Buffer.concat([head, c.body]) : head;
}

/** A printable form of a case for failure messages. */
export function describeCase(c: FuzzCase): string {
  const target = enc(c.target).toString('latin1');
  return `[${c.category}] ${c.method} ${JSON.stringify(target.length > 160 ? `${target.slice(0, 160)}...(${target.length})` : target)} ${JSON.stringify(c.headers ?? [])} body=${c.body?.length ?? 0}`;
}
