// Instructions per request, counted by valgrind's callgrind: an A/B of gateway builds that the
// machine's noise cannot move. `node bench/instructions.mjs [--get|--sse] [--warm S] [--seconds S]
// NAME=DIR[:LOG_LEVEL[:ENV=V,…]] ...` (the builds as in compare.mjs; DIR holds a built server.js).
//
// Each build runs as `valgrind --tool=callgrind --instr-atstart=no node server.js` in front of the
// fake upstream; wrk warms it up (--warm seconds, default 60: V8's optimising compiler must be done,
// or its work is what gets counted), then instrumentation is switched on for --seconds (default 30)
// of load at 8 connections, and the guest instructions (all threads: V8's compiler and GC helpers,
// libuv's pool) are divided by the requests wrk completed meanwhile. Builds run one after the other
// or, with --parallel, all at once (counts do not depend on what else runs).
//
// What it does not count: the kernel (socket and file syscalls) and time spent waiting. Under
// valgrind the gateway serves ~50 requests a second, so the recorder writes a batch each second
// of ~50 records instead of 250: per-batch costs weigh ~5× more per request than at full speed.
// --keep DIR keeps the dumps. Use it to decide whether a change removes work; quote throughput from compare.mjs.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import {
  firstJsonLine,
  freePort,
  gatewayEnv,
  killAllSync,
  runWrk,
  SHORT_STREAM_BODY,
  SMALL_BODY,
  startProcess,
  stopAll,
  stopProcess,
  waitHttp,
  wrkScript,
} from './lib.mjs';

const BENCH = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const flag = (name) => (args.includes(name) ? (args.splice(args.indexOf(name), 1), true) : false);
const WARM = Number(opt('--warm', '60'));
const SECONDS = Number(opt('--seconds', '30'));
const CONNECTIONS = Number(opt('--connections', '8'));
const GET = flag('--get');
const SSE = flag('--sse');
const PARALLEL = flag('--parallel');
// --keep DIR: keep each build's callgrind dump as DIR/NAME.callgrind (for callgrind_annotate)
const KEEP = opt('--keep', '');
const builds = args.map((a) => {
  const name = a.slice(0, a.indexOf('='));
  const [dir, level, ...rest] = a.slice(a.indexOf('=') + 1).split(':');
  const env = Object.fromEntries(
    rest
      .join(':')
      .split(',')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
  return { name, dir: resolve(dir), level: level || 'info', env };
});
if (builds.length === 0 || spawnSync('sh', ['-c', 'command -v valgrind && command -v callgrind_control']).status !== 0) {
  console.error(
    'usage: node bench/instructions.mjs [--get|--sse] [--warm S] [--seconds S] [--parallel] NAME=DIST_DIR[:LEVEL[:ENV=V,…]] ...',
  );
  console.error('(needs valgrind: apt-get install valgrind)');
  process.exit(2);
}

process.on('exit', killAllSync);
process.on('SIGINT', () => stopAll().finally(() => process.exit(130)));
const tmp = mkdtempSync(join(tmpdir(), 'llm-gateway-ir-'));
const key = `sk-bench-${randomBytes(12).toString('hex')}`;
const auth = { Authorization: `Bearer ${key}` };

async function measure(b, upPort) {
  const home = join(tmp, b.name);
  mkdirSync(home, { recursive: true });
  const port = await freePort();
  const out = join(home, 'callgrind.out');
  const env = { ...gatewayEnv({ key, upstream: `http://127.0.0.1:${upPort}`, port, logLevel: b.level, home }), ...b.env };
  const proc = startProcess(
    b.name,
    'valgrind',
    ['--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${out}`, process.execPath, join(b.dir, 'server.js')],
    { env, cwd: home, stdout: 'ignore' },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/v1/models`, { headers: auth, proc, timeoutMs: 120_000 });
  const script = GET
    ? wrkScript(home, 'models', { method: 'GET', headers: auth })
    : wrkScript(home, 'chat', {
        method: 'POST',
        body: SSE ? SHORT_STREAM_BODY : SMALL_BODY,
        headers: { ...auth, 'Content-Type': 'application/json' },
      });
  const target = `${url}${GET ? '/v1/models' : '/v1/chat/completions'}`;
  const warm = await runWrk({ url: target, script, connections: CONNECTIONS, seconds: WARM });
  execFileSync('callgrind_control', ['-i', 'on', String(proc.pid)], { stdio: 'ignore' });
  const r = await runWrk({ url: target, script, connections: CONNECTIONS, seconds: SECONDS });
  execFileSync('callgrind_control', ['-i', 'off', String(proc.pid)], { stdio: 'ignore' });
  execFileSync('callgrind_control', ['-d', String(proc.pid)], { stdio: 'ignore' });
  await stopProcess(proc, 30_000);
  // A few timeouts (wrk's 5 s) can happen with several valgrind processes on 2 cores: only
  // completed requests are counted, and the errors are shown.
  // The dump is callgrind.out.1 (the on-demand dump); its `totals:` line counts every thread.
  const text = readFileSync(`${out}.1`, 'utf8');
  if (KEEP !== '') {
    mkdirSync(KEEP, { recursive: true });
    copyFileSync(`${out}.1`, join(KEEP, `${b.name}.callgrind`));
  }
  const totals = Number(/^totals: (\d+)/m.exec(text)?.[1] ?? /^summary: (\d+)/m.exec(text)?.[1]);
  return { name: b.name, requests: r.requests, errors: r.errors, irPerRequest: totals / r.requests };
}

try {
  const up = startProcess('fake-upstream', process.execPath, [join(BENCH, 'fake-upstream.mjs')]);
  const { port: upPort } = await firstJsonLine(up);
  const results = [];
  if (PARALLEL) results.push(...(await Promise.all(builds.map((b) => measure(b, upPort)))));
  else for (const b of builds) results.push(await measure(b, upPort));
  const what = GET ? 'GET /v1/models' : SSE ? 'short streams' : 'small POST';
  console.log(`\n${what}, ${CONNECTIONS} connections, ${WARM} s warm-up, ${SECONDS} s counted (callgrind, instructions of all threads)`);
  console.log('build'.padEnd(16), 'requests'.padStart(9), 'errors'.padStart(7), 'instructions/req'.padStart(17), 'vs first'.padStart(9));
  for (const x of results)
    console.log(
      x.name.padEnd(16),
      String(x.requests).padStart(9),
      String(x.errors).padStart(7),
      Math.round(x.irPerRequest).toLocaleString('en-US').padStart(17),
      `${((100 * x.irPerRequest) / results[0].irPerRequest - 100).toFixed(1)}%`.padStart(9),
    );
} finally {
  await stopAll();
  rmSync(tmp, { recursive: true, force: true });
}
