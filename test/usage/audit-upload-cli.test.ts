// `llm-gateway audit upload` as a user runs it: `node dist/cli/main.js audit upload` in its own
// process and working directory, settings from .env, against the local S3 server. What it prints,
// its exit codes, and that a failure keeps the file and never prints the secret. Needs dist/ (npm
// test builds it; or npx tsc -p tsconfig.json).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { KEY_A, tempDir } from '../helpers.js';
import { startLocalS3, type LocalS3 } from './audit-upload-server.js';

const CLI = join(fileURLToPath(new URL('../..', import.meta.url)), 'dist', 'cli', 'main.js');
if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p tsconfig.json; npm test does it)`);

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(cwd: string, args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function dotEnv(dir: string, s3: LocalS3, secret = s3.target.secretAccessKey): void {
  writeFileSync(
    join(dir, '.env'),
    [
      `LLM_API_KEYS=${KEY_A}`,
      'GATEWAY_AUDIT_LOG=./data/audit.jsonl',
      `GATEWAY_AUDIT_S3_ENDPOINT=${s3.target.endpoint}`,
      `GATEWAY_AUDIT_S3_BUCKET=${s3.target.bucket}`,
      `GATEWAY_AUDIT_S3_ACCESS_KEY_ID=${s3.target.accessKeyId}`,
      `GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY=${secret}`,
      '',
    ].join('\n'),
  );
}

t.test('audit upload: finished days now, --today cuts the day so far', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  dotEnv(dir, s3);
  const data = join(dir, 'data');
  const today = new Date().toISOString().slice(0, 10);
  mkdirSync(data);
  writeFileSync(join(data, 'audit-2020-01-01.jsonl'), '{"a":1}\n');
  writeFileSync(join(data, `audit-${today}.jsonl`), '{"b":2}\n');

  const run = await runCli(dir, ['audit', 'upload']);
  t.same(run, {
    code: 0,
    stdout: 'uploaded audit-2020-01-01.jsonl → s3://audit/llm-gateway/audit-2020-01-01.jsonl.gz (8 bytes, 28 gzip); local file deleted\n',
    stderr: '',
  });
  t.same(readdirSync(data), [`audit-${today}.jsonl`]);
  t.same(await runCli(dir, ['audit', 'upload']), {
    code: 0,
    stdout: "nothing to upload: no finished day's audit file next to ./data/audit.jsonl\n",
    stderr: '',
  });

  const cut = await runCli(dir, ['audit', 'upload', '--today']);
  t.equal(cut.code, 0, cut.stderr);
  t.match(
    cut.stdout,
    new RegExp(
      `^uploaded audit-${today}T\\d{6}Z\\.jsonl → s3://audit/llm-gateway/audit-${today}T\\d{6}Z\\.jsonl\\.gz \\(8 bytes, \\d+ gzip\\); local file deleted\\n$`,
    ),
  );
  t.same(readdirSync(data), []);
  t.equal((await s3.list()).length, 2);
});

t.test('audit upload: refused credentials exit 1, keep the file, print no secret; usage and off', async (t) => {
  const s3 = await startLocalS3(t);
  const dir = tempDir(t);
  const secret = 'wrong-secret-0123456789abcdef';
  dotEnv(dir, s3, secret);
  mkdirSync(join(dir, 'data'));
  writeFileSync(join(dir, 'data', 'audit-2020-01-01.jsonl'), '{"a":1}\n');
  const run = await runCli(dir, ['audit', 'upload']);
  t.same(run, {
    code: 1,
    stdout: '',
    stderr: '✘ audit-2020-01-01.jsonl: PUT → 403 SignatureDoesNotMatch (kept; the gateway retries it)\n1 file still waiting\n',
  });
  t.ok(existsSync(join(dir, 'data', 'audit-2020-01-01.jsonl')));
  t.notMatch(run.stdout + run.stderr, secret);

  t.same(await runCli(dir, ['audit']), {
    code: 2,
    stdout: '',
    stderr: 'llm-gateway: name an action: upload\nTry: llm-gateway audit --help\n',
  });
  const off = tempDir(t);
  writeFileSync(join(off, '.env'), `LLM_API_KEYS=${KEY_A}\nGATEWAY_AUDIT_LOG=./data/audit.jsonl\n`);
  t.same(await runCli(off, ['audit', 'upload']), {
    code: 1,
    stdout: '',
    stderr:
      'llm-gateway: the upload is off: set GATEWAY_AUDIT_S3_ENDPOINT, _BUCKET, _ACCESS_KEY_ID and _SECRET_ACCESS_KEY (README: Audit to object storage)\n',
  });
  const half = tempDir(t);
  writeFileSync(
    join(half, '.env'),
    `LLM_API_KEYS=${KEY_A}\nGATEWAY_AUDIT_LOG=./a.jsonl\nGATEWAY_AUDIT_S3_ENDPOINT=${s3.target.endpoint}\n`,
  );
  const bad = await runCli(half, ['audit', 'upload']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /^llm-gateway: GATEWAY_AUDIT_S3_BUCKET is needed too: /);
});
