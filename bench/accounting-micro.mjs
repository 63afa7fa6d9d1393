// The write side of usage accounting alone, without HTTP: CPU per record of UsageRecorder.record()
// + flush() (the usage table's batch insert and the audit log's lines and append), for one or more
// builds, interleaved in one process: `node bench/accounting-micro.mjs [--rounds N] NAME=DIST ...`
// (DIST: a built dist/ folder, e.g. a copy taken before a change). Each round records 2,500
// records shaped like the bench's small POST (flushed in FLUSH_AT batches, as under load) into a
// fresh database and audit file per build, and takes the process's CPU time (user + system, all
// threads: the audit append runs on libuv's pool) until the last line is on disk. Prints the
// median and the best round per build: on a shared machine other processes only ever add to CPU
// time, so the best round is the nearest to a quiet one.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const ROUNDS = Number(opt('--rounds', '15'));
const RECORDS = Number(opt('--records', '2500'));
// --only store|audit: one of the two writers alone
const ONLY = opt('--only', '');
const builds = args.map((a) => ({ name: a.slice(0, a.indexOf('=')), dist: resolve(a.slice(a.indexOf('=') + 1)) }));
if (builds.length === 0) {
  console.error('usage: node bench/accounting-micro.mjs [--rounds N] [--records N] NAME=DIST_DIR ...');
  process.exit(2);
}

const tmp = mkdtempSync(join(tmpdir(), 'llm-gateway-acct-'));
const imp = (dist, file) => import(pathToFileURL(join(dist, file)).href);
for (const b of builds) {
  b.mod = {
    recorder: await imp(b.dist, 'usage/recorder.js'),
    store: await imp(b.dist, 'usage/store.js'),
    audit: await imp(b.dist, 'usage/audit-log.js'),
    db: await imp(b.dist, 'storage/db.js'),
  };
  b.cpu = [];
}

let seq = 0;
function record() {
  seq++;
  return {
    ts: Date.now(),
    requestId: `req-${seq.toString(36)}`,
    keyId: 'env-1',
    keyName: 'env-1',
    route: '/v1/chat/completions',
    model: 'bench-model',
    status: 200,
    streamed: false,
    promptTokens: 29,
    cachedTokens: 28,
    completionTokens: 5,
    estimated: false,
    ttftMs: null,
    durationMs: 1.2345678 + (seq % 1000) / 997,
    bytesIn: 100,
    bytesOut: 560,
    clientIp: '127.0.0.1',
    userAgent: null,
    outcome: 'ok',
    endUser: null,
    cost: null,
  };
}

async function once(b, round) {
  const dir = join(tmp, `${b.name}-${round}`);
  const db = b.mod.db.openDatabase(join(dir, 'gateway.db'), 'gateway');
  const recorder = new b.mod.recorder.UsageRecorder({
    ...(ONLY === 'audit' ? {} : { store: new b.mod.store.UsageStore(db) }),
    ...(ONLY === 'store' ? {} : { audit: new b.mod.audit.AuditLog(join(dir, 'audit.jsonl'), 0) }),
  });
  recorder.start(undefined, 60_000);
  await recorder.flush(); // the day's file and folder exist: not part of the measurement
  const records = Array.from({ length: RECORDS }, record);
  const c0 = process.cpuUsage();
  for (const r of records) recorder.record(r);
  await recorder.close();
  const c = process.cpuUsage(c0);
  db.close();
  rmSync(dir, { recursive: true, force: true });
  return (c.user + c.system) / RECORDS;
}

try {
  for (const b of builds) await once(b, -1); // warm-up (JIT)
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < builds.length; k++) {
      const b = builds[(k + r) % builds.length];
      b.cpu.push(await once(b, r));
    }
  }
  const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  console.log(
    `${RECORDS} records per round, ${ROUNDS} rounds; CPU µs per record (record + ${ONLY === 'audit' ? '' : 'batch insert'}${ONLY === '' ? ' + ' : ''}${ONLY === 'store' ? '' : 'audit line'})`,
  );
  console.log('build'.padEnd(12), 'median'.padStart(8), 'vs first'.padStart(9), 'best'.padStart(8), 'vs first'.padStart(9));
  const [m0, b0] = [median(builds[0].cpu), Math.min(...builds[0].cpu)];
  for (const b of builds) {
    const [m, best] = [median(b.cpu), Math.min(...b.cpu)];
    console.log(
      b.name.padEnd(12),
      m.toFixed(2).padStart(8),
      `${((100 * m) / m0 - 100).toFixed(1)}%`.padStart(9),
      best.toFixed(2).padStart(8),
      `${((100 * best) / b0 - 100).toFixed(1)}%`.padStart(9),
    );
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
