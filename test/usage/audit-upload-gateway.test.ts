// The running gateway with GATEWAY_AUDIT_S3_* set: it uploads a finished day at start by itself,
// keeps today's file (being written), and tells /metrics and its log what happened — also when the
// storage is down (pending, failed, kept). `doctor`'s audit checks against the same storage.
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t from 'tap';
import { configWith, type Config } from '../../src/config.js';
import { auditUploadChecks } from '../../src/cli/audit.js';
import { AUTH_A, KEY_A, KEY_B, chatBody, metricValue, request, startGateway, tempDir, until } from '../helpers.js';
import { startLocalS3, type LocalS3 } from './audit-upload-server.js';

const OLD_DAY = '{"ts":1,"requestId":"old"}\n';
const SECRET_MARK = 'S3RVER';

function s3Settings(dir: string, s3: LocalS3): Partial<Config> {
  return {
    auditLog: join(dir, 'audit.jsonl'),
    auditS3Endpoint: s3.target.endpoint,
    auditS3Bucket: s3.target.bucket,
    auditS3Prefix: s3.target.prefix,
    auditS3Region: s3.target.region,
    auditS3AccessKeyId: s3.target.accessKeyId,
    auditS3SecretAccessKey: s3.target.secretAccessKey,
  };
}

async function metrics(port: number): Promise<string> {
  return (await request(port, { path: '/metrics' })).text;
}

t.test('at start the gateway ships a finished day; today stays; /metrics and the log say so', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2020-01-01.jsonl'), OLD_DAY);
  const gw = await startGateway(t, s3Settings(dir, s3), {}, { usageFlushMs: 10 });
  const uploader = gw.app.auditUpload!;
  await until('the finished day uploaded', () => uploader.totals.uploaded === 1, 10_000);
  t.same(await s3.list(), ['llm-gateway/audit-2020-01-01.jsonl.gz']);
  t.equal(gunzipSync((await s3.get('llm-gateway/audit-2020-01-01.jsonl.gz')).body).toString(), OLD_DAY);
  t.notOk(existsSync(join(dir, 'audit-2020-01-01.jsonl')), 'deleted here once stored');

  const res = await request(gw.port, {
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, 'content-type': 'application/json' },
    body: chatBody(),
  });
  t.equal(res.status, 200);
  const today = `audit-${new Date().toISOString().slice(0, 10)}.jsonl`;
  await until("today's record written", () => existsSync(join(dir, today)));
  const text = await metrics(gw.port);
  t.equal(metricValue(text, 'llm_gateway_audit_uploads_total', { result: 'uploaded' }), 1);
  t.equal(metricValue(text, 'llm_gateway_audit_uploads_total', { result: 'failed' }), 0);
  t.equal(metricValue(text, 'llm_gateway_audit_files_pending'), 0);
  t.same(readdirSync(dir), [today], "today's file is not uploaded while it is written");
  t.match(
    gw.logs.find((l) => l.msg === 'audit file uploaded; local copy deleted'),
    { level: 30, file: 'audit-2020-01-01.jsonl', key: 'llm-gateway/audit-2020-01-01.jsonl.gz', bytes: OLD_DAY.length, lines: 1 },
  );

  const cfg = configWith({ apiKeys: [KEY_A, KEY_B], ...s3Settings(dir, s3) });
  t.same(await auditUploadChecks(cfg, dir, 5000), [
    { mark: 'pass', text: `storage reachable, credentials accepted (HEAD bucket → 200): s3://audit/llm-gateway/ at ${s3.target.endpoint}` },
    { mark: 'pass', text: "no finished day's audit file waiting: all uploaded" },
  ]);
});

t.test('storage down: kept, counted pending and failed, logged; doctor fails the check', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'audit-2020-01-01.jsonl'), OLD_DAY);
  writeFileSync(join(dir, 'audit-2020-01-02.jsonl'), OLD_DAY);
  await s3.stop();
  const gw = await startGateway(t, s3Settings(dir, s3));
  const uploader = gw.app.auditUpload!;
  await until('a failed try', () => uploader.totals.failed >= 1 && uploader.pending === 2, 10_000);
  const text = await metrics(gw.port);
  t.equal(metricValue(text, 'llm_gateway_audit_uploads_total', { result: 'uploaded' }), 0);
  t.ok(metricValue(text, 'llm_gateway_audit_uploads_total', { result: 'failed' })! >= 1);
  t.equal(metricValue(text, 'llm_gateway_audit_files_pending'), 2);
  t.same(readdirSync(dir).sort(), ['audit-2020-01-01.jsonl', 'audit-2020-01-02.jsonl'], 'nothing lost');
  t.match(
    gw.logs.find((l) => l.msg === 'audit upload failed; the local file is kept and retried'),
    { level: 50, file: 'audit-2020-01-01.jsonl', err: { message: /ECONNREFUSED/ } },
  );
  t.notMatch(gw.logText(), SECRET_MARK, 'the credentials never reach the log');

  const cfg = configWith({ apiKeys: [KEY_A, KEY_B], ...s3Settings(dir, s3) });
  const checks = await auditUploadChecks(cfg, dir, 5000);
  t.match(checks, [
    {
      mark: 'fail',
      text: new RegExp(`^s3://audit/llm-gateway/ at ${s3.target.endpoint}: not reachable \\(fetch failed \\(ECONNREFUSED\\)\\)$`),
    },
    {
      mark: 'fail',
      text: '2 audit files waiting for upload (oldest 2020-01-01): the gateway retries every few minutes; its log says why ("audit upload failed"); llm-gateway audit upload tries now',
    },
  ]);
  t.same(
    await auditUploadChecks(configWith({ apiKeys: [KEY_A], auditLog: join(dir, 'audit.jsonl') }), dir, 5000),
    [],
    'upload off: no section',
  );
});
