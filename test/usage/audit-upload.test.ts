// The audit upload against a real S3-speaking server on 127.0.0.1 (audit-upload-server.ts): a
// finished day is stored gzip-compressed with its checksums and deleted here only then; today's file
// is left alone; the storage down keeps the file and a later try delivers it; wrong credentials are
// reported and keep it; `--today` cuts the day's file into a piece; the settings are all or none.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';
import { AuditLog } from '../../src/usage/audit-log.js';
import { AuditUploader, objectUrl, type S3Target } from '../../src/usage/audit-upload.js';
import { KEY_A, tempDir, until } from '../helpers.js';
import { startLocalS3 } from './audit-upload-server.js';

const NOW = Date.parse('2026-11-26T12:00:00Z');
const DAY1 = '{"ts":1,"requestId":"a"}\n{"ts":2,"requestId":"b"}\n';
const DAY2 = '{"ts":3,"requestId":"c"}\n';

interface LogLine {
  level: 'info' | 'error';
  o: Record<string, unknown>;
  msg: string;
}

function uploader(dir: string, target: S3Target, extra: Partial<ConstructorParameters<typeof AuditUploader>[0]> = {}) {
  const logs: LogLine[] = [];
  const up = new AuditUploader({
    auditLog: join(dir, 'audit.jsonl'),
    target,
    now: () => NOW,
    log: {
      info: (o, msg) => logs.push({ level: 'info', o: o as Record<string, unknown>, msg }),
      error: (o, msg) => logs.push({ level: 'error', o: o as Record<string, unknown>, msg }),
    },
    ...extra,
  });
  t.teardown(() => up.close());
  return { up, logs };
}

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');

t.test('finished days are uploaded oldest first, checked, then deleted here; today is untouched', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-24.jsonl'), DAY1);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY2);
  writeFileSync(join(dir, 'audit-2026-11-26.jsonl'), 'today\n');
  writeFileSync(join(dir, 'other-2026-11-20.jsonl'), 'not ours\n');
  const { up, logs } = uploader(dir, s3.target);

  const results = await up.run();
  t.same(
    results.map((r) => ({ ...r, gzipBytes: typeof r.gzipBytes })),
    [
      { file: 'audit-2026-11-24.jsonl', key: 'llm-gateway/audit-2026-11-24.jsonl.gz', ok: true, bytes: DAY1.length, gzipBytes: 'number' },
      { file: 'audit-2026-11-25.jsonl', key: 'llm-gateway/audit-2026-11-25.jsonl.gz', ok: true, bytes: DAY2.length, gzipBytes: 'number' },
    ],
  );
  t.same(
    await s3.list(),
    ['llm-gateway/audit-2026-11-24.jsonl.gz', 'llm-gateway/audit-2026-11-25.jsonl.gz'],
    'only the finished days are in the bucket',
  );
  const stored = await s3.get('llm-gateway/audit-2026-11-24.jsonl.gz');
  t.equal(stored.status, 200);
  t.equal(gunzipSync(stored.body).toString('utf8'), DAY1, 'gunzip of the object is the file, byte for byte');
  t.equal(stored.headers.get('etag'), `"${md5(stored.body)}"`, "the object's ETag is the MD5 of the gzip sent");
  t.equal(stored.headers.get('x-amz-meta-source-sha256'), sha256(DAY1), 'the source checksum travels as metadata');
  t.equal(stored.headers.get('x-amz-meta-lines'), '2');
  t.equal(stored.headers.get('content-type'), 'application/gzip');
  t.same(readdirSync(dir).sort(), ['audit-2026-11-26.jsonl', 'other-2026-11-20.jsonl'], 'uploaded files deleted; today and strangers kept');
  t.equal(readFileSync(join(dir, 'audit-2026-11-26.jsonl'), 'utf8'), 'today\n');
  t.same(up.totals, { uploaded: 2, failed: 0 });
  t.equal(up.pending, 0);
  t.equal(up.lastError, null);
  t.same(
    logs.map((l) => [l.level, l.msg, l.o.file, l.o.lines]),
    [
      ['info', 'audit file uploaded; local copy deleted', 'audit-2026-11-24.jsonl', 2],
      ['info', 'audit file uploaded; local copy deleted', 'audit-2026-11-25.jsonl', 1],
    ],
  );
  t.same(await up.run(), [], 'a second run finds nothing');
});

t.test('a day counts as finished a minute after midnight (the last batch may land just after)', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY1);
  let now = Date.parse('2026-11-26T00:00:30Z');
  const { up } = uploader(dir, s3.target, { now: () => now });
  t.same(await up.waiting(), []);
  now = Date.parse('2026-11-26T00:01:01Z');
  t.same(await up.waiting(), [{ name: 'audit-2026-11-25.jsonl', path: join(dir, 'audit-2026-11-25.jsonl'), day: '2026-11-25' }]);
});

t.test('storage down: the file is kept and reported; the next try delivers it', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-24.jsonl'), DAY1);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY2);
  const { up, logs } = uploader(dir, s3.target);
  await s3.stop();

  const down = await up.run();
  t.equal(down.length, 1, 'stops at the first failure: the storage is down for all');
  t.match(down[0], { file: 'audit-2026-11-24.jsonl', ok: false, error: /ECONNREFUSED/ });
  t.same(readdirSync(dir).sort(), ['audit-2026-11-24.jsonl', 'audit-2026-11-25.jsonl'], 'nothing deleted');
  t.same(up.totals, { uploaded: 0, failed: 1 });
  t.equal(up.pending, 2);
  t.match(up.lastError, /^audit-2026-11-24\.jsonl: .*ECONNREFUSED/);
  t.same(
    logs.map((l) => [l.level, l.msg, l.o.file]),
    [['error', 'audit upload failed; the local file is kept and retried', 'audit-2026-11-24.jsonl']],
  );

  await s3.start();
  const back = await up.run();
  t.same(
    back.map((r) => [r.file, r.ok]),
    [
      ['audit-2026-11-24.jsonl', true],
      ['audit-2026-11-25.jsonl', true],
    ],
  );
  t.same(readdirSync(dir), []);
  t.equal(gunzipSync((await s3.get('llm-gateway/audit-2026-11-25.jsonl.gz')).body).toString(), DAY2);
  t.same(up.totals, { uploaded: 2, failed: 1 });
  t.equal(up.pending, 0);
  t.equal(up.lastError, null);
});

t.test('the timer retries with backoff until the storage is back', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY1);
  await s3.stop();
  const { up } = uploader(dir, s3.target, { retryMs: 20, checkMs: 60_000 });
  up.start();
  await until('two failed tries', () => up.totals.failed >= 2, 10_000);
  t.ok(existsSync(join(dir, 'audit-2026-11-25.jsonl')), 'kept while the storage is down');
  await s3.start();
  await until('delivered once the storage is back', () => up.totals.uploaded === 1, 10_000);
  t.notOk(existsSync(join(dir, 'audit-2026-11-25.jsonl')));
  t.same(await s3.list(), ['llm-gateway/audit-2026-11-25.jsonl.gz']);
  await up.close();
});

t.test('wrong credentials: refused by the storage, reported without the secret, file kept', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY1);
  const secret = 'wrong-secret-0123456789abcdef';
  const { up, logs } = uploader(dir, { ...s3.target, secretAccessKey: secret });
  const results = await up.run();
  t.same(results, [
    { file: 'audit-2026-11-25.jsonl', key: 'llm-gateway/audit-2026-11-25.jsonl.gz', ok: false, error: 'PUT → 403 SignatureDoesNotMatch' },
  ]);
  t.ok(existsSync(join(dir, 'audit-2026-11-25.jsonl')));
  t.same(await s3.list(), []);
  t.same(await up.probe(), { ok: false, text: 'HEAD bucket → 403: the credentials are refused (key id, secret, or their permissions)' });
  t.notMatch(JSON.stringify(logs), secret, 'the secret is never logged');
  const unknown = uploader(dir, { ...s3.target, accessKeyId: 'NOBODY' }).up;
  t.match(await unknown.run(), [{ ok: false, error: 'PUT → 403 InvalidAccessKeyId' }]);
  t.same(await uploader(dir, s3.target).up.probe(), { ok: true, text: 'HEAD bucket → 200' });
});

t.test('--today: the day so far is cut into a piece and uploaded; the writer starts a new file', async (t) => {
  const s3 = await startLocalS3(t, 'gw-a/');
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-26.jsonl'), DAY1);
  const { up } = uploader(dir, s3.target);
  t.same(
    (await up.run(true)).map((r) => [r.file, r.key, r.ok]),
    [['audit-2026-11-26T120000Z.jsonl', 'gw-a/audit-2026-11-26T120000Z.jsonl.gz', true]],
  );
  t.same(readdirSync(dir), []);
  const log = new AuditLog(join(dir, 'audit.jsonl'), 30);
  await log.write(['{"ts":4}'], NOW);
  t.same(readdirSync(dir), ['audit-2026-11-26.jsonl'], 'later records go to a new file for the day');
  t.equal(gunzipSync((await s3.get('gw-a/audit-2026-11-26T120000Z.jsonl.gz')).body).toString(), DAY1);
});

/** A proxy in front of the storage that records each request's headers and, when told, flips a byte of what a PUT stores. */
async function corruptingProxy(t: { teardown(fn: () => unknown): void }, port: number, corrupt: () => boolean) {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method, ...req.headers });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (req.method === 'PUT' && corrupt() && body.length > 0) body[body.length - 1]! ^= 0xff;
      const up = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      up.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise((r) => server.close(r)));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

t.test('checksums: sent with the PUT; a stored object that differs is not confirmed, the file kept', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2026-11-25.jsonl'), DAY1);
  let corrupt = true;
  const proxy = await corruptingProxy(t, s3.port, () => corrupt);
  const { up } = uploader(dir, { ...s3.target, endpoint: proxy.url });
  const bad = await up.run();
  t.match(bad, [{ ok: false, error: /^PUT → ETag [0-9a-f]{32} is not the MD5 of what was sent$/ }]);
  t.ok(existsSync(join(dir, 'audit-2026-11-25.jsonl')), 'kept: the storage holds other bytes');
  corrupt = false;
  t.match(await up.run(), [{ ok: true }], 'sent again, stored right');
  const put = proxy.seen.filter((h) => h.method === 'PUT').at(-1)!;
  const stored = (await s3.get('llm-gateway/audit-2026-11-25.jsonl.gz')).body;
  t.equal(put['content-md5'], createHash('md5').update(stored).digest('base64'), 'Content-MD5 of the gzip');
  t.equal(put['x-amz-checksum-sha256'], createHash('sha256').update(stored).digest('base64'), 'x-amz-checksum-sha256 of the gzip');
  t.match(
    put.authorization,
    /^AWS4-HMAC-SHA256 Credential=S3RVER\/\d{8}\/auto\/s3\/aws4_request, SignedHeaders=[^,]*content-md5;[^,]*x-amz-checksum-sha256;/,
    'both signed',
  );
  t.same(
    proxy.seen.map((h) => h.method),
    ['PUT', 'PUT', 'HEAD'],
    'confirmed with a HEAD before the delete (the first PUT failed its ETag check: no HEAD)',
  );
});

t.test('with the upload set, the audit log never prunes a file (keepDays 0)', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2020-01-01.jsonl'), DAY1);
  t.same(await new AuditLog(join(dir, 'audit.jsonl'), 0).prune(NOW), []);
  t.ok(existsSync(join(dir, 'audit-2020-01-01.jsonl')));
  t.same(await new AuditLog(join(dir, 'audit.jsonl'), 30).prune(NOW), ['audit-2020-01-01.jsonl'], 'without it, age prunes as before');
});

t.test('addressing: path-style, or virtual-hosted when the endpoint names the bucket', async (t) => {
  const base = { bucket: 'audit', prefix: '', region: 'auto', accessKeyId: 'k', secretAccessKey: 's' };
  t.equal(
    objectUrl({ ...base, endpoint: 'https://acc.r2.cloudflarestorage.com' }, 'a.gz'),
    'https://acc.r2.cloudflarestorage.com/audit/a.gz',
  );
  t.equal(
    objectUrl({ ...base, endpoint: 'https://audit.s3.eu-west-1.amazonaws.com' }, 'a.gz'),
    'https://audit.s3.eu-west-1.amazonaws.com/a.gz',
  );
});

t.test('settings: all or none, only with an audit log, checked at boot', async (t) => {
  const all = {
    LLM_API_KEYS: KEY_A,
    GATEWAY_AUDIT_LOG: './data/audit.jsonl',
    GATEWAY_AUDIT_S3_ENDPOINT: 'https://acc.r2.cloudflarestorage.com/',
    GATEWAY_AUDIT_S3_BUCKET: 'audit',
    GATEWAY_AUDIT_S3_ACCESS_KEY_ID: 'id123',
    GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY: 'secret-value-123',
  };
  const c = loadConfig(all);
  t.same(
    [c.auditS3Endpoint, c.auditS3Bucket, c.auditS3Prefix, c.auditS3Region],
    ['https://acc.r2.cloudflarestorage.com', 'audit', 'llm-gateway/', 'auto'],
  );
  t.equal(loadConfig({ ...all, GATEWAY_AUDIT_S3_PREFIX: 'team/gw-a' }).auditS3Prefix, 'team/gw-a/', 'a trailing / is added');
  const refused = (env: Record<string, string>, message: string): void => {
    t.throws(() => loadConfig(env), new ConfigError(message.split(' ')[0]!, message.slice(message.indexOf(' ') + 1)), message);
  };
  refused(
    { ...all, GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY: '', GATEWAY_AUDIT_S3_BUCKET: '' },
    'GATEWAY_AUDIT_S3_BUCKET is needed too: the audit upload needs GATEWAY_AUDIT_S3_ENDPOINT, GATEWAY_AUDIT_S3_BUCKET, GATEWAY_AUDIT_S3_ACCESS_KEY_ID, GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY (missing: GATEWAY_AUDIT_S3_BUCKET, GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY)',
  );
  refused(
    { ...all, GATEWAY_AUDIT_LOG: '' },
    'GATEWAY_AUDIT_LOG must be set when GATEWAY_AUDIT_S3_* are: its daily files are what is uploaded',
  );
  refused({ ...all, GATEWAY_AUDIT_S3_ENDPOINT: 'ftp://x' }, 'GATEWAY_AUDIT_S3_ENDPOINT must be an http(s) URL, got protocol "ftp:"');
  refused(
    { ...all, GATEWAY_AUDIT_S3_BUCKET: 'My_Bucket' },
    'GATEWAY_AUDIT_S3_BUCKET must be a bucket name (3-63 lower-case letters, digits, dots, hyphens), got "My_Bucket"',
  );
  refused(
    { ...all, GATEWAY_AUDIT_S3_PREFIX: '/abs' },
    'GATEWAY_AUDIT_S3_PREFIX must be a folder such as llm-gateway/ (letters, digits, . _ - /; no leading /), got "/abs"',
  );
  let message = '';
  try {
    loadConfig({ ...all, GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY: 'has space secret' });
  } catch (err) {
    message = (err as Error).message;
  }
  t.equal(message, 'GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY must not contain whitespace', 'a bad secret is named, never echoed');
  t.equal(loadConfig({ LLM_API_KEYS: KEY_A }).auditS3Endpoint, '', 'none set: off');
});
