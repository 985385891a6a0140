// The physical-limit server: the least a Node registry must do, nothing more, run as
// its own process like the registries under test.
//   GET /file        streams the big test file (1 MiB reads), as a blob pull does
//   GET|HEAD /json   answers a small JSON body (the bench manifest's bytes) from memory
//   PUT /upload      hashes the body with SHA-256 and writes it to a file, as a push does
// Usage: node --import tsx bench/trivial-server.ts PORT FILE JSONFILE UPLOADDIR
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

const [port, file, jsonFile, uploadDir] = process.argv.slice(2);
if (!port || !file || !jsonFile || !uploadDir) {
  process.stderr.write('usage: trivial-server.ts PORT FILE JSONFILE UPLOADDIR\n');
  process.exit(2);
}
const json = readFileSync(jsonFile);
const fileSize = statSync(file).size;
let uploads = 0;

const server = createServer((req, res) => {
  if (req.url === '/json' && (req.method === 'GET' || req.method === 'HEAD')) {
    res.writeHead(200, { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Content-Length': json.length });
    res.end(req.method === 'GET' ? json : undefined);
    return;
  }
  if (req.url === '/file' && req.method === 'GET') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': fileSize });
    pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), res).catch(() => res.destroy());
    return;
  }
  if (req.url === '/upload' && req.method === 'PUT') {
    const hash = createHash('sha256');
    const target = join(uploadDir, `upload-${process.pid}-${uploads++}`);
    const hasher = new Transform({
      highWaterMark: 1 << 20,
      transform(chunk: Buffer, _enc, callback) {
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    pipeline(req, hasher, createWriteStream(target, { highWaterMark: 1 << 20 })).then(
      () => {
        res.writeHead(201, { 'Docker-Content-Digest': `sha256:${hash.digest('hex')}`, 'X-Path': target, 'Content-Length': 0 });
        res.end();
      },
      (err: Error) => {
        res.writeHead(500).end(err.message);
      },
    );
    return;
  }
  res.writeHead(404, { 'Content-Length': 0 }).end();
});
server.keepAliveTimeout = 75_000;
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
