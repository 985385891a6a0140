// The storage driver conformance suite against the S3 driver on a real S3 server (a
// throwaway Ceph RGW on loopback, test/support/s3.ts), and what only S3 has: Distribution's
// key layout under rootdirectory, multipart writes and copies, batched deletes, errors.
import { createHash } from 'node:crypto';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PathNotFoundError, StorageUnavailableError, type FileWriter } from '../../storage/driver.js';
import { copyRanges, S3Driver, type S3DriverOptions } from '../../storage/s3-driver.js';
import { contentOf, describeStorageDriver, readAll, writeThrough } from '../support/driver-conformance.js';
import { freePort } from '../support/processes.js';
import { requireRgw, startRgw, type RgwServer } from '../support/s3.js';

const ok = requireRgw();
const MiB = 1 << 20;

function driverFor(rgw: RgwServer, extra: Partial<S3DriverOptions> = {}): S3Driver {
  return new S3Driver({
    accesskey: rgw.accessKey,
    secretkey: rgw.secretKey,
    region: rgw.region,
    regionendpoint: rgw.endpoint,
    forcepathstyle: true,
    bucket: rgw.bucket,
    chunksize: 5 * MiB,
    ...extra,
  });
}

// One RGW for the whole file (about 4 s to start); each suite has a bucket of its own.
let rgw: RgwServer | undefined;
let starting: Promise<RgwServer> | undefined;
const server = (): Promise<RgwServer> => (starting ??= startRgw().then((s) => (rgw = s)));
afterAll(async () => {
  await rgw?.stop();
});

describeStorageDriver(
  's3 (rootdirectory empty, default sizes)',
  async () => {
    const s = await server();
    const driver = driverFor(s, { chunksize: undefined });
    return { driver, cleanup: async () => driver.destroy() };
  },
  { skip: !ok },
);

describeStorageDriver(
  's3 (rootdirectory /some/root, 5 MiB parts, multipart copy above 5 MiB)',
  async () => {
    const s = await server();
    await s.createBucket('conformance2');
    const driver = driverFor(s, {
      bucket: 'conformance2',
      rootdirectory: '/some/root/',
      multipartcopythresholdsize: 5 * MiB,
      multipartcopychunksize: 5 * MiB,
      multipartcopymaxconcurrency: 3,
    });
    return { driver, cleanup: async () => driver.destroy() };
  },
  { skip: !ok },
);

describe.skipIf(!ok)('S3Driver specifics', () => {
  let s: RgwServer;
  let client: S3Client;
  beforeAll(async () => {
    s = await server();
    client = s.client();
    await s.createBucket('layout');
  });
  afterAll(() => client?.destroy());

  const keysIn = async (bucket: string, prefix = ''): Promise<string[]> => {
    const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    return (res.Contents ?? []).map((o) => o.Key!).sort();
  };

  it("maps paths to keys as Distribution's s3Path: no leading slash, rootdirectory in front", async () => {
    const path = '/docker/registry/v2/repositories/team/app/_layers/sha256/abc/link';
    const plain = driverFor(s, { bucket: 'layout' });
    const slash = driverFor(s, { bucket: 'layout', rootdirectory: '/' });
    const rooted = driverFor(s, { bucket: 'layout', rootdirectory: '/registry/root' });
    try {
      expect(plain.s3Path(path)).toBe(path.slice(1));
      expect(slash.s3Path(path)).toBe(path.slice(1));
      expect(rooted.s3Path(path)).toBe(`registry/root${path}`);
      await plain.putContent(path, Buffer.from('sha256:abc'));
      await rooted.putContent(path, Buffer.from('sha256:def'));
      expect(await keysIn('layout')).toEqual([path.slice(1), `registry/root${path}`]);
      // each root sees only its own tree
      expect((await rooted.list('/')).sort()).toEqual(['/docker']);
      expect((await plain.list('/')).sort()).toEqual(['/docker', '/registry']);
      expect((await slash.getContent(path)).toString()).toBe('sha256:abc');
      await rooted.delete('/docker');
      expect(await keysIn('layout')).toEqual([path.slice(1)]);
    } finally {
      plain.destroy();
      slash.destroy();
      rooted.destroy();
    }
  });

  it('writes above one chunk as a multipart upload of chunksize parts, and small files as one PutObject', async () => {
    const driver = driverFor(s, { chunksize: 5 * MiB });
    try {
      await writeThrough(driver, '/mp/big', 12 * MiB + 1, MiB, 5);
      const head = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: 'mp/big' }));
      expect(head.ETag).toMatch(/-3"?$/); // three parts: 5 + 5 + 2 MiB
      await writeThrough(driver, '/mp/small', 5 * MiB - 1, MiB, 6);
      const small = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: 'mp/small' }));
      expect(small.ETag).not.toMatch(/-\d+"?$/);
    } finally {
      driver.destroy();
    }
  });

  it('an append to an object of 5 MiB or more copies it in S3 as the first part; a smaller one is rewritten', async () => {
    const driver = driverFor(s, { chunksize: 5 * MiB });
    try {
      await writeThrough(driver, '/ap/big', 6 * MiB, MiB, 13);
      await writeThrough(driver, '/ap/big', 1000, MiB, 14, true);
      const head = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: 'ap/big' }));
      expect(head.ETag).toMatch(/-2"?$/); // the copied 6 MiB, then the new 1000 bytes
      expect(head.ContentLength).toBe(6 * MiB + 1000);
      const whole = Buffer.concat([contentOf(6 * MiB, 13), contentOf(1000, 14)]);
      expect(sha(await readAll(await driver.reader('/ap/big')))).toBe(sha(whole));
      await writeThrough(driver, '/ap/small', 1000, MiB, 15);
      await writeThrough(driver, '/ap/small', 1000, MiB, 16, true);
      const small = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: 'ap/small' }));
      expect(small.ETag).not.toMatch(/-\d+"?$/);
      expect(small.ContentLength).toBe(2000);
    } finally {
      driver.destroy();
    }
  });

  it('a writer holds at most two part buffers', async () => {
    const driver = driverFor(s, { chunksize: 8 * MiB });
    try {
      const before = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers - before)), 5);
      try {
        await writeThrough(driver, '/mem/blob', 64 * MiB, MiB, 8);
      } finally {
        clearInterval(timer);
      }
      // two 8 MiB buffers, the 8 MiB pattern of the test itself, and slack for the SDK
      expect(peak).toBeLessThan(40 * MiB);
    } finally {
      driver.destroy();
    }
  }, 120_000);

  it('moves above multipartcopythresholdsize with UploadPartCopy', async () => {
    const driver = driverFor(s, { multipartcopythresholdsize: 5 * MiB, multipartcopychunksize: 5 * MiB });
    try {
      await writeThrough(driver, '/mc/src', 11 * MiB, MiB, 9);
      await driver.move('/mc/src', '/mc/dst');
      const head = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: 'mc/dst' }));
      expect(head.ETag).toMatch(/-2"?$/); // 5 MiB + 6 MiB (a short tail joins the part before)
      const body = await client.send(new GetObjectCommand({ Bucket: s.bucket, Key: 'mc/dst' }));
      const bytes = Buffer.from(await body.Body!.transformToByteArray());
      expect(sha(bytes)).toBe(sha(contentOf(11 * MiB, 9)));
      await expect(driver.stat('/mc/src')).rejects.toBeInstanceOf(PathNotFoundError);
    } finally {
      driver.destroy();
    }
  });

  it('copyRanges: parts of at least 5 MiB, covering every byte once', () => {
    expect(copyRanges(0, 5 * MiB)).toEqual([]);
    expect(copyRanges(3, 5 * MiB)).toEqual([[0, 3]]);
    expect(copyRanges(11 * MiB, 5 * MiB)).toEqual([[0, 5 * MiB], [5 * MiB, 11 * MiB]]);
    expect(copyRanges(15 * MiB, 5 * MiB)).toEqual([[0, 5 * MiB], [5 * MiB, 10 * MiB], [10 * MiB, 15 * MiB]]);
  });

  it('deletes more than 1000 objects below a path in batches', async () => {
    const driver = driverFor(s);
    try {
      const paths = Array.from({ length: 1003 }, (_, i) => `/many/d${i % 3}/f${i}`);
      let next = 0;
      await Promise.all(Array.from({ length: 32 }, async () => {
        while (next < paths.length) await driver.putContent(paths[next++]!, Buffer.from('x'));
      }));
      await driver.putContent('/many-other/keep', Buffer.from('y'));
      await driver.delete('/many');
      expect(await keysIn(s.bucket, 'many')).toEqual(['many-other/keep']);
    } finally {
      driver.destroy();
    }
  }, 120_000);

  it('a missing bucket and an unreachable server are StorageUnavailableError', async () => {
    const noBucket = driverFor(s, { bucket: 'no-such-bucket' });
    const port = await freePort();
    const down = driverFor(s, { regionendpoint: `http://127.0.0.1:${port}`, maxattempts: 2 });
    const badKey = driverFor(s, { secretkey: 'wrong-secret-key-wrong-secret-key-wrong0' });
    try {
      await expect(noBucket.getContent('/x')).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(noBucket.stat('/x')).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(down.stat('/x')).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(down.putContent('/x', Buffer.from('x'))).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(badKey.getContent('/x')).rejects.toBeInstanceOf(StorageUnavailableError);
    } finally {
      noBucket.destroy();
      down.destroy();
      badKey.destroy();
    }
  });

  it('a writer whose source fails keeps every byte it accepted, as one object (a client gone mid-PATCH)', async () => {
    const driver = driverFor(s, { chunksize: 5 * MiB });
    const write = (w: FileWriter, data: Buffer): Promise<void> =>
      new Promise((resolve, reject) => w.stream.write(data, (err?: Error | null) => (err ? reject(err) : resolve())));
    // What pipeline() does to the writer when the request body fails (its listener takes the 'error').
    const hangUp = (w: FileWriter): void => {
      w.stream.on('error', () => undefined);
      w.stream.destroy(Object.assign(new Error('the client closed the connection'), { code: 'ECONNRESET' }));
    };
    try {
      // Below one part: the bytes are held in the part buffer until commit.
      await driver.putContent('/cut/small', Buffer.from('earlier chunk;'));
      const small = await driver.writer('/cut/small', true);
      await write(small, contentOf(300_000, 40));
      hangUp(small);
      await small.commit();
      expect(Buffer.compare(await driver.getContent('/cut/small'), Buffer.concat([Buffer.from('earlier chunk;'), contentOf(300_000, 40)]))).toBe(0);
      // Past a part: two parts went out while the rest was buffered.
      const big = await driver.writer('/cut/big', false);
      const bytes = contentOf(12 * MiB, 41);
      for (let i = 0; i < 12; i++) await write(big, bytes.subarray(i * MiB, (i + 1) * MiB));
      hangUp(big);
      await big.commit();
      expect((await driver.stat('/cut/big')).size).toBe(12 * MiB);
      expect(sha(await readAll(await driver.reader('/cut/big')))).toBe(sha(bytes));
    } finally {
      driver.destroy();
    }
  }, 120_000);

  it("a writer whose own part fails to upload still fails its commit with StorageUnavailableError", async () => {
    const port = await freePort();
    const down = driverFor(s, { regionendpoint: `http://127.0.0.1:${port}`, maxattempts: 1 });
    try {
      const w = await down.writer('/cut/down', false);
      const failed = new Promise<Error>((resolve) => w.stream.once('error', resolve));
      w.stream.write(Buffer.alloc(6 * MiB)); // a full part: CreateMultipartUpload, refused
      expect(await failed).toBeInstanceOf(StorageUnavailableError);
      await expect(w.commit()).rejects.toBeInstanceOf(StorageUnavailableError);
    } finally {
      down.destroy();
    }
  });

  it('refuses settings it cannot honour', () => {
    const base = { region: 'us-east-1', bucket: 'b' };
    expect(() => new S3Driver({ ...base, v4auth: false })).toThrow(/v4auth/);
    expect(() => new S3Driver({ ...base, chunksize: MiB })).toThrow(/chunksize/);
    expect(() => new S3Driver({ ...base, accesskey: 'a' })).toThrow(/secretkey/);
  });

  it('a reader of a range sends a ranged GET (the server sends only those bytes)', async () => {
    const driver = driverFor(s);
    try {
      await writeThrough(driver, '/range/blob', 6 * MiB, MiB, 10);
      const part = await readAll(await driver.reader('/range/blob', 5 * MiB, 5 * MiB + 100));
      expect(Buffer.compare(part, contentOf(6 * MiB, 10).subarray(5 * MiB, 5 * MiB + 100))).toBe(0);
    } finally {
      driver.destroy();
    }
  });
});

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
