// CPU profile of the gateway under the 64-connection small-POST load: `npm run bench -- --profile`
// (or, after `npm run build`, `node bench/profile.mjs [seconds] [--dist DIR] [--log LEVEL]`).
// Starts the fake upstream and `node --cpu-prof dist/server.js` (LOG_LEVEL=info), drives it with wrk
// for a while, stops it with SIGTERM (the profile is written on exit) and prints self and total time
// per function, grouped by where the code lives: ours (dist/), fastify, undici, pino, node.
//
// --dist DIR profiles another build of the gateway (e.g. an experimental patch of dist/ in /tmp);
// --sse profiles short streams (2 chunks each) instead of the small POST; --get, GET /v1/models; --connections N sets wrk's -c;
// --keep FILE keeps the .cpuprofile (open it in Chrome DevTools or speedscope);
// --env K=V,K=V adds settings to the gateway's environment (e.g. GATEWAY_AUDIT_LOG=./audit.jsonl, GATEWAY_USAGE=off).
import { mkdtempSync, readdirSync, readFileSync, rmSync, copyFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  firstJsonLine,
  freePort,
  gatewayEnv,
  killAllSync,
  runWrk,
  setPinning,
  SHORT_STREAM_BODY,
  SMALL_BODY,
  startProcess,
  stopAll,
  stopProcess,
  treeCpuSeconds,
  waitHttp,
  wrkScript,
} from './lib.mjs';

const BENCH = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH);

function category(url, name) {
  if (url === '') return name.startsWith('(') ? name : 'native/V8';
  if (
    url.includes('/node_modules/fastify/') ||
    url.includes('/node_modules/find-my-way/') ||
    url.includes('/node_modules/avvio/') ||
    url.includes('/node_modules/light-my-request/') ||
    url.includes('/node_modules/fast-json-stringify') ||
    url.includes('/node_modules/@fastify/') ||
    url.includes('/node_modules/fastify-plugin/') ||
    url.includes('/node_modules/toad-cache/') ||
    url.includes('/node_modules/process-warning/') ||
    url.includes('/node_modules/fast-querystring/') ||
    url.includes('/node_modules/abstract-logging/') ||
    url.includes('/node_modules/safe-regex2/') ||
    url.includes('/node_modules/rfdc/')
  )
    return 'fastify';
  if (url.includes('/node_modules/undici/')) return 'undici';
  if (
    url.includes('/node_modules/pino') ||
    url.includes('/node_modules/sonic-boom/') ||
    url.includes('/node_modules/fast-redact/') ||
    url.includes('/node_modules/@pinojs/') ||
    url.includes('/node_modules/quick-format-unescaped/') ||
    url.includes('/node_modules/fast-safe-stringify/') ||
    url.includes('/node_modules/on-exit-leak-free/') ||
    url.includes('/node_modules/thread-stream/') ||
    url.includes('/node_modules/slow-redact/')
  )
    return 'pino';
  if (url.includes('/node_modules/')) return url.replace(/.*\/node_modules\/((?:@[^/]+\/)?[^/]+).*/, '$1');
  if (url.startsWith('node:')) return 'node';
  if (url.includes('/dist/') || url.includes('/gateway-dist')) return 'gateway (ours)';
  return 'other';
}

function shortUrl(url) {
  return url
    .replace(/^file:\/\//, '')
    .replace(/.*\/node_modules\//, '')
    .replace(/.*\/dist\//, 'dist/')
    .replace(/^node:/, 'node:');
}

/** Self and total (inclusive) time per function from a .cpuprofile. */
export function analyse(profile) {
  const nodes = new Map(profile.nodes.map((n) => [n.id, { ...n, self: 0 }]));
  const samples = profile.samples;
  const deltas = profile.timeDeltas;
  let total = 0;
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0; // a sample's time is the delta to the next one
    const n = nodes.get(samples[i]);
    n.self += dt;
    if (n.callFrame.functionName !== '(idle)') total += dt; // percentages are of busy time
  }
  const keyOf = (n) => `${n.callFrame.functionName || '(anonymous)'}\u0000${n.callFrame.url}\u0000${n.callFrame.lineNumber}`;
  const fns = new Map();
  const fn = (n) => {
    const k = keyOf(n);
    let f = fns.get(k);
    if (!f) {
      f = {
        name: n.callFrame.functionName || '(anonymous)',
        url: n.callFrame.url,
        line: n.callFrame.lineNumber + 1,
        cat: category(n.callFrame.url, n.callFrame.functionName),
        self: 0,
        total: 0,
      };
      fns.set(k, f);
    }
    return f;
  };
  // Total time: DFS, counting a function once per stack even when it recurses.
  const onStack = new Map();
  const root = profile.nodes[0];
  const subtotal = new Map();
  const stack = [[nodes.get(root.id), false]];
  while (stack.length) {
    const [n, done] = stack.pop();
    const k = keyOf(n);
    if (!done) {
      onStack.set(k, (onStack.get(k) ?? 0) + 1);
      stack.push([n, true]);
      for (const c of n.children ?? []) stack.push([nodes.get(c), false]);
    } else {
      let t = n.self;
      for (const c of n.children ?? []) t += subtotal.get(c);
      subtotal.set(n.id, t);
      const count = onStack.get(k);
      onStack.set(k, count - 1);
      const f = fn(n);
      f.self += n.self;
      if (count === 1) f.total += t;
    }
  }
  const cats = new Map();
  for (const f of fns.values()) cats.set(f.cat, (cats.get(f.cat) ?? 0) + f.self);
  return { total, fns: [...fns.values()], cats: [...cats.entries()].sort((a, b) => b[1] - a[1]) };
}

export function formatAnalysis({ total, fns, cats }, { top = 30, requests } = {}) {
  const pct = (x) => `${((100 * x) / total).toFixed(1)}%`;
  const usPerReq = (x) => (requests ? ` ${(x / requests).toFixed(1)} µs/req` : '');
  const L = [];
  L.push(
    `Profile: ${(total / 1e6).toFixed(2)} s of busy samples${requests ? ` over ${requests} requests` : ''}; percentages are of busy (non-idle) time`,
  );
  L.push('');
  L.push('Self time by origin:');
  for (const [c, t] of cats) L.push(`  ${c.padEnd(18)} ${pct(t).padStart(6)}${usPerReq(t)}`);
  L.push('');
  L.push(`Top ${top} functions by self time:`);
  for (const f of fns
    .filter((x) => !x.name.startsWith('(idle'))
    .sort((a, b) => b.self - a.self)
    .slice(0, top)) {
    L.push(`  ${pct(f.self).padStart(6)}  ${f.cat.padEnd(15)} ${f.name}  ${shortUrl(f.url)}${f.url ? `:${f.line}` : ''}`);
  }
  L.push('');
  L.push('Ours / fastify / undici / pino by total (inclusive) time, top 30:');
  for (const f of fns
    .filter((x) => ['gateway (ours)', 'fastify', 'undici', 'pino'].includes(x.cat))
    .sort((a, b) => b.total - a.total)
    .slice(0, 30)) {
    L.push(
      `  ${pct(f.total).padStart(6)} total ${pct(f.self).padStart(6)} self  ${f.cat.padEnd(15)} ${f.name}  ${shortUrl(f.url)}:${f.line}`,
    );
  }
  return L.join('\n');
}

export async function profileGateway({
  seconds = 10,
  dist = join(ROOT, 'dist'),
  logLevel = 'info',
  keep,
  connections = 64,
  sse = false,
  get = false,
  extraEnv = {},
} = {}) {
  setPinning(process.env.BENCH_PIN !== '0' && spawnSync('sh', ['-c', 'command -v taskset']).status === 0);
  const tmp = mkdtempSync(join(tmpdir(), 'llm-gateway-prof-'));
  const key = `sk-bench-${randomBytes(12).toString('hex')}`;
  try {
    const up = startProcess('fake-upstream', process.execPath, [join(BENCH, 'fake-upstream.mjs')], { cpu: 1 });
    const { port: upPort } = await firstJsonLine(up);
    const port = await freePort();
    const env = { ...gatewayEnv({ key, upstream: `http://127.0.0.1:${upPort}`, port, logLevel, home: tmp }), ...extraEnv };
    const gw = startProcess(
      'gateway-prof',
      process.execPath,
      ['--cpu-prof', `--cpu-prof-dir=${tmp}`, '--cpu-prof-interval=200', join(dist, 'server.js')],
      { cpu: 0, env, cwd: tmp, stdout: 'ignore' },
    );
    const url = `http://127.0.0.1:${port}`;
    await waitHttp(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` }, proc: gw });
    const script = get
      ? wrkScript(tmp, 'models', { method: 'GET', headers: { Authorization: `Bearer ${key}` } })
      : wrkScript(tmp, 'chat', {
          method: 'POST',
          body: sse ? SHORT_STREAM_BODY : SMALL_BODY,
          headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
        });
    const target = `${url}${get ? '/v1/models' : '/v1/chat/completions'}`;
    const warm = await runWrk({ url: target, script, connections, seconds: 2, cpu: 1 }); // warm-up (profiled too)
    const cpu0 = treeCpuSeconds(gw.pid);
    const r = await runWrk({ url: target, script, connections, seconds, cpu: 1 });
    if (r.errors > 0 || warm.errors > 0)
      throw new Error(
        `the gateway answered ${r.errors + warm.errors} requests with errors (non-2xx or socket errors): the profile would show the error path`,
      );
    const cpu = treeCpuSeconds(gw.pid) - cpu0;
    await stopProcess(gw, 10_000);
    await stopProcess(up);
    const file = readdirSync(tmp).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error(`no .cpuprofile written: ${gw.stderr}`);
    if (keep) {
      mkdirSync(dirname(keep), { recursive: true });
      copyFileSync(join(tmp, file), keep);
    }
    const profile = JSON.parse(readFileSync(join(tmp, file), 'utf8'));
    return {
      rps: r.rps,
      requests: r.requests,
      profiledRequests: warm.requests + r.requests,
      cpuPerReqUs: (cpu / r.requests) * 1e6,
      analysis: analyse(profile),
    };
  } finally {
    await stopAll();
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.on('exit', killAllSync);
  process.on('SIGINT', () => stopAll().finally(() => process.exit(130)));
  const args = process.argv.slice(2);
  const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const seconds = Number(args.find((a) => /^\d+$/.test(a)) ?? 10);
  const connections = Number(opt('--connections') ?? 64);
  const sse = args.includes('--sse');
  const get = args.includes('--get');
  const res = await profileGateway({
    seconds,
    dist: opt('--dist') ?? join(ROOT, 'dist'),
    logLevel: opt('--log') ?? 'info',
    keep: opt('--keep'),
    connections,
    sse,
    get,
    extraEnv: Object.fromEntries(
      (opt('--env') ?? '')
        .split(',')
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    ),
  });
  console.log(
    `gateway under wrk -c${connections} ${get ? 'GET /v1/models' : `POST /v1/chat/completions${sse ? ' (short streams)' : ''}`} for ${seconds} s: ${Math.round(res.rps)} req/s, ${res.cpuPerReqUs.toFixed(1)} µs CPU per request (while profiled)\n`,
  );
  console.log(formatAnalysis(res.analysis, { requests: res.profiledRequests }));
}
