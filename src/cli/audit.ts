// `llm-gateway audit upload [--today]`: ships the audit log's finished days to object storage now,
// the same way the running gateway does every few minutes (usage/audit-upload.ts), and the doctor's
// "Audit to object storage" checks. Settings come from .env and the environment, as the gateway reads
// them; the process's environment is not changed. A credential is never printed.
import { resolve } from 'node:path';
import type { Config } from '../config.js';
import { AuditUploader, s3TargetOf, type AuditFile } from '../usage/audit-upload.js';
import { Failure, UsageError, commandLine, run } from './common.js';
import { gatewayEnvironment, gatewaySettings } from './stack/settings.js';

const DAY_MS = 86_400_000;

type Mark = 'pass' | 'warn' | 'fail' | 'skip';
export interface AuditCheck {
  readonly mark: Mark;
  readonly text: string;
}

/** The uploader for these settings with GATEWAY_AUDIT_LOG resolved against `cwd`, or null when the upload is off. */
function uploaderFor(config: Config, cwd: string, timeoutMs?: number): AuditUploader | null {
  const target = s3TargetOf(config);
  if (target === null) return null;
  return new AuditUploader({ auditLog: resolve(cwd, config.auditLog), target, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
}

function where(config: Config): string {
  return `s3://${config.auditS3Bucket}/${config.auditS3Prefix} at ${config.auditS3Endpoint}`;
}

/** doctor: does the storage accept the credentials, are finished days piling up? None when the upload is off. */
export async function auditUploadChecks(config: Config, cwd: string, timeoutMs: number, now = Date.now()): Promise<AuditCheck[]> {
  const uploader = uploaderFor(config, cwd, timeoutMs);
  if (uploader === null) return [];
  const out: AuditCheck[] = [];
  const probe = await uploader.probe();
  out.push(
    probe.ok
      ? { mark: 'pass', text: `storage reachable, credentials accepted (${probe.text}): ${where(config)}` }
      : { mark: 'fail', text: `${where(config)}: ${probe.text}` },
  );
  const waiting = await uploader.waiting();
  out.push(waitingCheck(waiting, now));
  return out;
}

function waitingCheck(waiting: readonly AuditFile[], now: number): AuditCheck {
  if (waiting.length === 0) return { mark: 'pass', text: "no finished day's audit file waiting: all uploaded" };
  const oldest = waiting[0]!.day;
  const yesterday = new Date(now - DAY_MS).toISOString().slice(0, 10);
  const text = `${waiting.length} audit ${waiting.length === 1 ? 'file' : 'files'} waiting for upload (oldest ${oldest}): the gateway retries every few minutes; its log says why ("audit upload failed"); llm-gateway audit upload tries now`;
  // Just after midnight yesterday's file waits for the next check: normal. Older means it keeps failing.
  return { mark: oldest < yesterday ? 'fail' : 'warn', text };
}

const AUDIT_HELP = `Usage: llm-gateway audit upload [--today]

Uploads the audit log's finished days (GATEWAY_AUDIT_LOG's audit-YYYY-MM-DD.jsonl files whose
UTC day has ended) to the object storage set by GATEWAY_AUDIT_S3_*, gzip-compressed, as
<prefix>audit-YYYY-MM-DD.jsonl.gz. Each local file is deleted once the storage has confirmed it
(size and checksum); a failed one is kept and the running gateway retries it. The running gateway
does the same by itself every few minutes: this command is for now.

Options:
  --today      also today's file so far: it is renamed to audit-YYYY-MM-DDTHHMMSSZ.jsonl (the
               gateway starts a new one), then uploaded like a finished day
  -h, --help   show help

Exit codes: 0 every file uploaded (or none waiting), 1 an upload failed or settings are wrong, 2 usage.
`;

export function auditCommand(argv: string[]): Promise<number> {
  return run('llm-gateway audit --help', async () => {
    const args = commandLine(argv, { today: { type: 'boolean' } }, AUDIT_HELP, true);
    if (args === null) return 0;
    const [action, ...extra] = args.positionals;
    if (action !== 'upload') throw new UsageError(action === undefined ? 'name an action: upload' : `unknown action "${action}"`);
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
    const settings = gatewaySettings(gatewayEnvironment(null, process.env));
    if (settings.config === undefined) throw new Failure(settings.error);
    const config = settings.config;
    if (config.auditLog === '') throw new Failure('no audit log: GATEWAY_AUDIT_LOG is empty');
    const uploader = uploaderFor(config, process.cwd());
    if (uploader === null)
      throw new Failure(
        'the upload is off: set GATEWAY_AUDIT_S3_ENDPOINT, _BUCKET, _ACCESS_KEY_ID and _SECRET_ACCESS_KEY (README: Audit to object storage)',
      );
    const results = await uploader.run(args.values.today === true);
    if (results.length === 0) {
      process.stdout.write(`nothing to upload: no finished day's audit file next to ${config.auditLog}\n`);
      return 0;
    }
    const bucket = config.auditS3Bucket;
    for (const r of results) {
      if (r.ok && r.gzipBytes === undefined) process.stdout.write(`${r.file}: already uploaded by another process\n`);
      else if (r.ok)
        process.stdout.write(`uploaded ${r.file} → s3://${bucket}/${r.key} (${r.bytes} bytes, ${r.gzipBytes} gzip); local file deleted\n`);
      else process.stderr.write(`✘ ${r.file}: ${r.error} (kept; the gateway retries it)\n`);
    }
    if (uploader.pending > 0 && results.some((r) => !r.ok))
      process.stderr.write(`${uploader.pending} ${uploader.pending === 1 ? 'file' : 'files'} still waiting\n`);
    return results.every((r) => r.ok) ? 0 : 1;
  });
}
