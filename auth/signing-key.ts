// The token server's signing key: an ECDSA P-256 key kept on disk, generated on first start,
// with a self-signed X.509 certificate for it. Distribution's `auth.token.rootcertbundle` only
// takes certificates, so the certificate is what other registries and services are given to
// trust wharf's tokens; it is persisted beside the key and reused as long as it matches it.
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { libtrustKeyId } from './libtrust.js';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  BasicConstraints,
  Certificate,
  Extension,
  Extensions,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_subjectKeyIdentifier,
} from '@peculiar/asn1-x509';

export const SIGNING_KEY_FILE = 'token-signing-key.pem';
export const SIGNING_CERT_FILE = 'token-signing-cert.pem';

/** CN of the generated certificate. */
const CERT_SUBJECT = 'wharf token signer';
const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const OID_COMMON_NAME = '2.5.4.3';

export interface SigningKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** libtrust key ID of the public key (what Distribution matches a token's `kid` against). */
  kid: string;
  /** The self-signed certificate: give it to Distribution as `rootcertbundle`. */
  certificatePem: string;
  /** The same certificate, DER: its base64 is the token's `x5c`. */
  certificateDer: Buffer;
  keyFile: string;
  certificateFile: string;
  /** The public key as a JWK Set, for verifiers that take JWKS. */
  jwks(): { keys: JsonWebKey[] };
}

/**
 * The signing key kept in `dir` (created 0700 if missing): `token-signing-key.pem` (PKCS#8,
 * 0600) and `token-signing-cert.pem`. Both are generated when missing; a certificate that does
 * not match the key, or has expired, is replaced. Throws when the key file is unreadable or is
 * not a P-256 key (start-up should stop: a new key would invalidate every token out there).
 */
export async function loadOrCreateSigningKey(dir: string): Promise<SigningKey> {
  const created = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) await chmod(dir, 0o700); // mode is masked by umask
  const keyFile = join(dir, SIGNING_KEY_FILE);
  const certificateFile = join(dir, SIGNING_CERT_FILE);

  let keyPem = await readIfExists(keyFile);
  if (keyPem === undefined) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    // Another process starting at the same moment may win: then its key is the key.
    keyPem = (await createExclusive(keyFile, pem, 0o600)) ? pem : await readFile(keyFile, 'utf8');
  }
  const privateKey = parsePrivateKey(keyPem, keyFile);
  const publicKey = createPublicKey(privateKey);

  let cert = usableCertificate(await readIfExists(certificateFile), privateKey);
  if (cert === undefined) {
    const fresh = new X509Certificate(selfSignedCertificate(privateKey, publicKey));
    const pem = fresh.toString();
    const existed = (await readIfExists(certificateFile)) !== undefined;
    if (existed) await replaceAtomically(certificateFile, pem, 0o644);
    else if (!(await createExclusive(certificateFile, pem, 0o644))) {
      // Lost a race to a concurrent start: use its certificate if it fits the key.
      cert = usableCertificate(await readIfExists(certificateFile), privateKey);
    }
    cert ??= fresh;
  }

  const kid = libtrustKeyId(publicKey);
  const certificateDer = cert.raw;
  return {
    privateKey,
    publicKey,
    kid,
    certificatePem: cert.toString(),
    certificateDer,
    keyFile,
    certificateFile,
    jwks: () => ({
      keys: [{ ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig', x5c: [certificateDer.toString('base64')] }],
    }),
  };
}

/** libtrust's key ID (Distribution's `kid`); one implementation, in libtrust.ts. */
export { libtrustKeyId };

function parsePrivateKey(pem: string, file: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new Error(`${file}: not a PEM private key`); // never echo the file's content
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error(`${file}: the token signing key must be an ECDSA P-256 key (ES256)`);
  }
  return key;
}

/** The certificate in `pem` if it is for `privateKey` and valid now; else undefined. */
function usableCertificate(pem: string | undefined, privateKey: KeyObject): X509Certificate | undefined {
  if (pem === undefined) return undefined;
  try {
    const cert = new X509Certificate(pem);
    const now = Date.now();
    if (!cert.checkPrivateKey(privateKey)) return undefined;
    if (Date.parse(cert.validFrom) > now || Date.parse(cert.validTo) <= now) return undefined;
    return cert;
  } catch {
    return undefined;
  }
}

/**
 * A self-signed v3 certificate for the key (DER). It is both the trust anchor and the token's
 * leaf (`x5c`), so it is a CA (Go accepts a leaf that is itself in the root pool; other
 * verifiers build leaf -> anchor and want the anchor to be a CA, as `openssl req -x509` makes it).
 * No expiry (RFC 5280's 99991231235959Z): an expired anchor would silently stop all logins.
 */
function selfSignedCertificate(privateKey: KeyObject, publicKey: KeyObject): Buffer {
  const spki = AsnConvert.parse(publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo);
  const name = new Name([
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type: OID_COMMON_NAME, value: new AttributeValue({ utf8String: CERT_SUBJECT }) })]),
  ]);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40; // positive and minimally encoded, as DER requires
  const algorithm = new AlgorithmIdentifier({ algorithm: OID_ECDSA_WITH_SHA256 }); // parameters absent (RFC 5758)
  const extension = (extnID: string, critical: boolean, value: unknown): Extension =>
    new Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: toArrayBuffer(serial),
    signature: algorithm,
    issuer: name,
    // A day back: verifiers whose clock is behind must not see a certificate "not yet valid".
    validity: new Validity({ notBefore: new Date(Date.now() - 86_400_000), notAfter: new Date('9999-12-31T23:59:59Z') }),
    subject: name,
    subjectPublicKeyInfo: spki,
    extensions: new Extensions([
      extension(id_ce_basicConstraints, true, new BasicConstraints({ cA: true })),
      extension(id_ce_keyUsage, true, new KeyUsage(KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign)),
      extension(id_ce_subjectKeyIdentifier, false, new SubjectKeyIdentifier(createHash('sha1').update(Buffer.from(spki.subjectPublicKey)).digest())),
    ]),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = sign('sha256', tbsDer, { key: privateKey, dsaEncoding: 'der' });
  const certificate = new Certificate({ tbsCertificate: tbs, signatureAlgorithm: algorithm, signatureValue: toArrayBuffer(signature) });
  return Buffer.from(AsnConvert.serialize(certificate));
}

function toArrayBuffer(bytes: Buffer): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Writes and flushes a temporary file next to `file`; returns its path. */
async function writeTemp(file: string, content: string, mode: number): Promise<string> {
  const temp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.chmod(mode); // the mode given to open is masked by umask
    await handle.writeFile(content);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  return temp;
}

/**
 * Publishes `content` at `file` whole or not at all, only if `file` does not exist yet (a
 * hard link fails with EEXIST where rename would replace). False when someone else was first.
 */
async function createExclusive(file: string, content: string, mode: number): Promise<boolean> {
  const temp = await writeTemp(file, content, mode);
  try {
    await link(temp, file);
    await syncDir(file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
    // A filesystem without hard links: publish with rename (atomic, without the race guard).
    await rename(temp, file);
    await syncDir(file);
    return true;
  } finally {
    await rm(temp, { force: true });
  }
}

async function replaceAtomically(file: string, content: string, mode: number): Promise<void> {
  const temp = await writeTemp(file, content, mode);
  try {
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDir(file);
}

/** Makes the new directory entry durable; best effort (not every filesystem allows it). */
async function syncDir(file: string): Promise<void> {
  try {
    const handle = await open(join(file, '..'), 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    /* best effort */
  }
}
