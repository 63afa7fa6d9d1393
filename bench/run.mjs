// `npm run bench`: the gateway against a fast fake llama-server, next to nginx and a bare Node
// pass-through, all on 127.0.0.1. Writes bench/results/<date>.md (+ .json with every round) and the
// summary block of BENCHMARKS.md. Never part of CI or `npm test`.
//
//   npm run bench                  full run (~4–5 min)
//   npm run bench -- --quick       shorter runs, 1 round: a smoke test of the bench itself (its
//                                  report goes to the temp dir, not to bench/results)
//   npm run bench -- --profile     only the CPU profile of the gateway (bench/profile.mjs)
//   npm run bench -- --no-nginx    skip nginx
//   BENCH_PIN=0 npm run bench      do not pin processes to cores
//
// Pinning (2+ cores, taskset present): the server under test (nginx, bare, gateway) runs on core 0;
// the load side (fake upstream, wrk, stream clients) on core 1. The "direct" variant (load side
// alone) shows the ceiling of the load side, so a proxy that stays below it is the bottleneck.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, symlinkSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, release } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cpuSeconds,
  firstJsonLine,
  freePort,
  gatewayEnv,
  GATEWAY_SETTINGS_NOTE,
  killAllSync,
  machineInfo,
  median,
  rssBytes,
  runStreamClient as runStreamClientIn,
  runWrk,
  setPinning,
  SHORT_STREAM_BODY,
  SMALL_BODY,
  startProcess,
  stopAll,
  stopProcess,
  treeCpuSeconds,
  waitHttp,
  withNoise,
  wrkScript,
} from './lib.mjs';

const BENCH = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH);
const argv = new Set(process.argv.slice(2));
const QUICK = argv.has('--quick');
const NO_NGINX = argv.has('--no-nginx');

const ROUNDS = QUICK ? 1 : 3;
// The 100-stream TTFB is the noisiest number: more rounds for the streams, after a warm-up of short
// streams (STREAM_WARMUP_SECONDS of wrk at 64 connections per variant).
const STREAM_ROUNDS = QUICK ? 1 : 5;
const STREAM_WARMUP_SECONDS = QUICK ? 1 : 3;
const STREAM_WARM_BURSTS = 10; // before each measured burst, on its connections (stream-client.mjs)
const SECONDS_C64 = QUICK ? 2 : 4;
const SECONDS_C1 = QUICK ? 1 : 2;
const WARMUP_SECONDS = 1;
const STREAMS = 100;
const STREAM_CHUNKS = 500;
const STREAM_INTERVAL_MS = 2;
const IDLE_STREAMS = 1000;
const IDLE_INTERVAL_MS = 10_000;
const IDLE_SECONDS = QUICK ? 11 : 15;
const SLOW_RATE = 1024 * 1024;
const SLOW_SECONDS = QUICK ? 6 : 15;
const NOISE_LIMIT = 0.25; // cores used by other processes above which a run is repeated (up to twice)
const MAX_REPEATS = 20;

const KEY = `sk-bench-${randomBytes(12).toString('hex')}`;
const AUTH = { Authorization: `Bearer ${KEY}` };

const tmp = mkdtempSync(join(tmpdir(), 'llm-gateway-bench-'));
const log = (...a) => console.log(...a);
const t0 = Date.now();
const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(0)}s`;

// ---------------------------------------------------------------------------------------------
// Cleanup: every process we started is killed by its PID, whatever happens.
let cleaning = null;
let interrupted = false;
function cleanup() {
  cleaning ??= (async () => {
    await stopAll();
    rmSync(tmp, { recursive: true, force: true });
  })();
  return cleaning;
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    log(`\n${sig}: stopping every process the bench started…`);
    cleanup().finally(() => process.exit(130));
  });
}
process.on('uncaughtException', (err) => {
  console.error(err);
  cleanup().finally(() => process.exit(1));
});
process.on('unhandledRejection', (err) => {
  console.error(err);
  cleanup().finally(() => process.exit(1));
});

// ---------------------------------------------------------------------------------------------
// Tools

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

let aptUpdated = false;
function aptInstall(pkgs) {
  if (process.getuid?.() !== 0 || !have('apt-get')) return false;
  try {
    if (!aptUpdated) {
      log(`  apt-get update…`);
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', timeout: 120_000 });
      aptUpdated = true;
    }
    log(`  apt-get install -y ${pkgs.join(' ')}…`);
    execFileSync('apt-get', ['install', '-y', '-qq', ...pkgs], {
      stdio: 'ignore',
      timeout: 300_000,
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    return true;
  } catch {
    return false;
  }
}

function ensureTool(cmd, pkgs) {
  if (have(cmd)) return true;
  for (const pkg of pkgs) if (aptInstall([pkg]) && have(cmd)) return true;
  return false;
}

function versionOf(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n')[0].trim();
}

function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return '?';
  }
}

// ---------------------------------------------------------------------------------------------
// Servers

const SERVER_CPU = 0;
const LOAD_CPU = 1;

async function startUpstream() {
  const proc = startProcess('fake-upstream', process.execPath, [join(BENCH, 'fake-upstream.mjs')], { cpu: LOAD_CPU });
  const { port } = await firstJsonLine(proc);
  return { name: 'direct', label: 'direct (fake llama-server)', url: `http://127.0.0.1:${port}`, port, proc, pid: proc.pid };
}

// mode 'pipeline': the issue's reference ("bare"); 'pipe': the real ceiling ("bare-pipe"); see bare-proxy.mjs.
async function startBare(upstream, mode = 'pipeline') {
  const proc = startProcess(`bare-proxy-${mode}`, process.execPath, [join(BENCH, 'bare-proxy.mjs')], {
    cpu: SERVER_CPU,
    env: { ...process.env, UPSTREAM: upstream.url, KEY, BARE_MODE: mode },
  });
  const { port } = await firstJsonLine(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/v1/models`, { headers: AUTH, proc });
  return mode === 'pipe'
    ? { name: 'bare-pipe', label: 'bare node:http + undici, body.pipe(res)', url, proc, pid: proc.pid }
    : { name: 'bare', label: 'bare node:http + undici, stream.pipeline()', url, proc, pid: proc.pid };
}

// Fastify's floor: Fastify + undici with one hook and no logger (see fastify-proxy.mjs).
async function startFastify(upstream) {
  const proc = startProcess('fastify-proxy', process.execPath, [join(BENCH, 'fastify-proxy.mjs')], {
    cpu: SERVER_CPU,
    env: { ...process.env, UPSTREAM: upstream.url, KEY },
  });
  const { port } = await firstJsonLine(proc);
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/v1/models`, { headers: AUTH, proc });
  return { name: 'fastify', label: 'bare Fastify + undici (one auth hook, no logger, no JSON parse)', url, proc, pid: proc.pid };
}

// The gateway runs from a copy of dist/ taken at the start: other people rebuilding dist/ during the
// run (npm test does) cannot mix two builds into one report.
let DIST = join(ROOT, 'dist');
function snapshotDist() {
  const dir = join(tmp, 'gateway');
  mkdirSync(dir, { recursive: true });
  cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json')); // "type": "module"
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  DIST = join(dir, 'dist');
}

async function startGateway(upstream, logLevel, extraNodeArgs = [], variant = undefined) {
  const port = await freePort();
  // A clean environment and a cwd without .env: only these settings apply.
  const env = { ...gatewayEnv({ key: KEY, upstream: upstream.url, port, logLevel, home: tmp }), ...(variant?.env ?? {}) };
  const proc = startProcess(`gateway-${logLevel}`, process.execPath, [...extraNodeArgs, join(DIST, 'server.js')], {
    cpu: SERVER_CPU,
    env,
    cwd: tmp,
    stdout: 'ignore',
  });
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/healthz`, { proc });
  await waitHttp(`${url}/v1/models`, { headers: AUTH, proc });
  const name = variant?.name ?? (logLevel === 'info' ? 'gateway' : `gateway-${logLevel}`);
  return { name, label: variant?.label ?? `gateway, LOG_LEVEL=${logLevel}`, url, proc, pid: proc.pid };
}

async function startNginx(upstream) {
  const port = await freePort();
  const dir = join(tmp, 'nginx');
  mkdirSync(dir, { recursive: true });
  const conf = `
worker_processes 1;
daemon off;
master_process on;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
${process.getuid?.() === 0 ? 'user root;' : ''}
events { worker_connections 8192; }
http {
  access_log /dev/null;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream llama {
    server 127.0.0.1:${upstream.port};
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      if ($http_authorization != "Bearer ${KEY}") { return 401; }
      proxy_pass http://llama;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const proc = startProcess('nginx', 'nginx', ['-e', join(dir, 'error.log'), '-p', dir, '-c', join(dir, 'nginx.conf')], {
    cpu: SERVER_CPU,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/v1/models`, { headers: AUTH, proc });
  return { name: 'nginx', label: 'nginx (1 worker, keepalive, bearer check)', url, proc, pid: proc.pid };
}

/** Waits until other processes leave the machine alone (or gives up after maxMs). */
async function waitForQuiet(maxMs = 30_000) {
  const until = Date.now() + maxMs;
  let noise = 0;
  do {
    ({ otherCores: noise } = await withNoise(() => sleep(1000)));
    if (noise < 0.15) return noise;
    log(`  other processes use ${noise.toFixed(2)} cores; waiting for a quieter machine…`);
  } while (Date.now() < until);
  return noise;
}

// ---------------------------------------------------------------------------------------------
// Phase 1: small non-streamed requests (wrk)

async function wrkMeasure(variant, scenario, seconds, upstream) {
  let best = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    const proxyCpu0 = variant.name === 'direct' ? 0 : treeCpuSeconds(variant.pid);
    const upCpu0 = cpuSeconds(upstream.pid);
    const { result, otherCores, wall } = await withNoise(() =>
      runWrk({ url: `${variant.url}${scenario.path}`, script: scenario.script, connections: scenario.connections, seconds, cpu: LOAD_CPU }),
    );
    const proxyCpu = variant.name === 'direct' ? 0 : treeCpuSeconds(variant.pid) - proxyCpu0;
    const upCpu = cpuSeconds(upstream.pid) - upCpu0;
    const m = {
      ...result,
      proxyCpuPerReqUs: variant.name === 'direct' ? null : (proxyCpu / result.requests) * 1e6,
      proxyCores: proxyCpu / wall,
      upstreamCores: upCpu / wall,
      noise: otherCores,
    };
    if (result.errors > 0)
      throw new Error(`${variant.name} ${scenario.name}: ${result.errors} errors (${result.status} non-2xx) out of ${result.requests}`);
    if (best === null || m.noise < best.noise) best = m;
    if (m.noise < NOISE_LIMIT || repeats >= MAX_REPEATS) break;
    repeats++;
    log(`    (${variant.name}: other processes used ${m.noise.toFixed(2)} cores; repeating)`);
  }
  return best;
}
let repeats = 0;

async function phaseSmall(variants, upstream) {
  const scenarios = [
    { name: 'GET /v1/models', key: 'models', path: '/v1/models', method: 'GET' },
    { name: 'POST /v1/chat/completions', key: 'chat', path: '/v1/chat/completions', method: 'POST', body: SMALL_BODY },
  ].flatMap((s) => {
    const script = wrkScript(tmp, s.key, {
      method: s.method,
      body: s.body,
      headers: { ...AUTH, ...(s.body ? { 'Content-Type': 'application/json' } : {}) },
    });
    return [1, 64].map((c) => ({ ...s, id: `${s.key}-c${c}`, connections: c, script }));
  });
  log(
    `\n[1/4] small requests: ${scenarios.length} scenarios × ${variants.length} variants × ${ROUNDS} rounds (${SECONDS_C1} s at 1 connection, ${SECONDS_C64} s at 64) (${elapsed()})`,
  );
  for (const v of variants) {
    for (const s of scenarios.filter((x) => x.connections === 64)) {
      await runWrk({ url: `${v.url}${s.path}`, script: s.script, connections: 64, seconds: WARMUP_SECONDS, cpu: LOAD_CPU });
    }
  }
  const rounds = {}; // id -> variant -> [measurement]
  for (let r = 1; r <= ROUNDS; r++) {
    for (const s of scenarios) {
      const line = [];
      for (const v of variants) {
        const m = await wrkMeasure(v, s, s.connections === 1 ? SECONDS_C1 : SECONDS_C64, upstream);
        ((rounds[s.id] ??= {})[v.name] ??= []).push(m);
        line.push(`${v.name} ${fmtInt(m.rps)}/s p50 ${fmtInt(m.p50)}µs`);
      }
      log(`  round ${r} ${s.name} c${s.connections}: ${line.join(' | ')} (${elapsed()})`);
    }
  }
  const summary = {};
  for (const s of scenarios) {
    summary[s.id] = { name: s.name, connections: s.connections, variants: {} };
    for (const v of variants) {
      const ms = rounds[s.id][v.name];
      summary[s.id].variants[v.name] = {
        rps: median(ms.map((m) => m.rps)),
        p50: median(ms.map((m) => m.p50)),
        p99: median(ms.map((m) => m.p99)),
        proxyCpuPerReqUs: v.name === 'direct' ? null : median(ms.map((m) => m.proxyCpuPerReqUs)),
        proxyCores: median(ms.map((m) => m.proxyCores)),
        upstreamCores: median(ms.map((m) => m.upstreamCores)),
        noise: Math.max(...ms.map((m) => m.noise)),
        rounds: ms,
      };
    }
  }
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Phase 2: streams

function streamClient(args) {
  const proc = startProcess('stream-client', process.execPath, [join(BENCH, 'stream-client.mjs'), JSON.stringify({ key: KEY, ...args })], {
    cpu: LOAD_CPU,
  });
  return proc;
}

const runStreamClient = (args) => runStreamClientIn({ key: KEY, cpu: LOAD_CPU, ...args });

async function phaseStreams(variants, upstream) {
  log(
    `\n[2/4] streams: ${STREAMS} concurrent × ${STREAM_CHUNKS} chunks every ${STREAM_INTERVAL_MS} ms, ${STREAM_ROUNDS} rounds; hold-back check 1 stream × 50 chunks every 10 ms (${elapsed()})`,
  );
  // Phase 1 warmed the request path with non-streamed requests; the stream path (SSE relay, taps)
  // still runs unoptimised code for its first thousands of streams, and the gateway has more of it to
  // warm than the bare proxies. Every variant gets the same warm-up of short streams.
  const sse = wrkScript(tmp, 'sse', { method: 'POST', body: SHORT_STREAM_BODY, headers: { ...AUTH, 'Content-Type': 'application/json' } });
  for (const v of variants)
    await runWrk({ url: `${v.url}/v1/chat/completions`, script: sse, connections: 64, seconds: STREAM_WARMUP_SECONDS, cpu: LOAD_CPU });
  const holdCheck = {};
  for (const v of variants) {
    let r = null;
    for (let attempt = 0; attempt < 3; attempt++) {
      const { result, otherCores } = await withNoise(() =>
        runStreamClient({ mode: 'streams', url: v.url, streams: 1, chunks: 50, interval_ms: 10 }),
      );
      if (r === null || otherCores < r.noise) r = { ...result, noise: otherCores };
      if (otherCores < NOISE_LIMIT) break;
    }
    // Held back: a chunk that had not reached the client by the time the next one was sent.
    holdCheck[v.name] = {
      received: r.received,
      expected: r.expectedChunks,
      done: r.done,
      outOfOrder: r.outOfOrder,
      heldBack: r.heldBack,
      lagMaxMs: r.lagMs.max,
      lagP50Ms: r.lagMs.p50,
      ttfbMs: r.ttfbMs.p50,
      noise: r.noise,
    };
  }
  log(
    `  hold-back check: ${variants.map((v) => `${v.name} ${holdCheck[v.name].received}/${holdCheck[v.name].expected} held ${holdCheck[v.name].heldBack} ttfb ${fmt2(holdCheck[v.name].ttfbMs)} max lag ${fmt2(holdCheck[v.name].lagMaxMs)} ms`).join(' | ')}`,
  );
  const rounds = {};
  for (let r = 1; r <= STREAM_ROUNDS; r++) {
    const line = [];
    for (const v of variants) {
      let best = null;
      for (let attempt = 0; attempt < 3; attempt++) {
        const proxyCpu0 = v.name === 'direct' ? 0 : treeCpuSeconds(v.pid);
        const upCpu0 = cpuSeconds(upstream.pid);
        const { result, otherCores } = await withNoise(() =>
          runStreamClient({
            mode: 'streams',
            url: v.url,
            streams: STREAMS,
            chunks: STREAM_CHUNKS,
            interval_ms: STREAM_INTERVAL_MS,
            warm_bursts: STREAM_WARM_BURSTS,
          }),
        );
        const proxyCpu = v.name === 'direct' ? 0 : treeCpuSeconds(v.pid) - proxyCpu0;
        const upCpu = cpuSeconds(upstream.pid) - upCpu0;
        const m = {
          ...result,
          proxyCpuPer1000: v.name === 'direct' ? null : proxyCpu / (result.received / 1000),
          upstreamCpuPer1000: upCpu / (result.received / 1000),
          noise: otherCores,
        };
        if (best === null || m.noise < best.noise) best = m;
        if (m.noise < NOISE_LIMIT || repeats >= MAX_REPEATS) break;
        repeats++;
        log(`    (${v.name}: other processes used ${m.noise.toFixed(2)} cores; repeating)`);
      }
      (rounds[v.name] ??= []).push(best);
      line.push(
        `${v.name} ttfb ${fmt1(best.ttfbMs.p50)} lag ${fmt2(best.lagMs.p50)}/${fmt2(best.lagMs.p99)} ms cpu ${best.proxyCpuPer1000 === null ? '-' : fmt3(best.proxyCpuPer1000)}`,
      );
    }
    log(`  round ${r}: ${line.join(' | ')} (${elapsed()})`);
  }
  const summary = {};
  for (const v of variants) {
    const ms = rounds[v.name];
    summary[v.name] = {
      ttfbP50: median(ms.map((m) => m.ttfbMs.p50)),
      ttfbP99: median(ms.map((m) => m.ttfbMs.p99)),
      ttfbP50Min: Math.min(...ms.map((m) => m.ttfbMs.p50)),
      ttfbP50Max: Math.max(...ms.map((m) => m.ttfbMs.p50)),
      lagP50: median(ms.map((m) => m.lagMs.p50)),
      lagP99: median(ms.map((m) => m.lagMs.p99)),
      gapP50: median(ms.map((m) => m.gapMs.p50)),
      gapP99: median(ms.map((m) => m.gapMs.p99)),
      cpuPer1000: v.name === 'direct' ? null : median(ms.map((m) => m.proxyCpuPer1000)),
      upstreamCpuPer1000: median(ms.map((m) => m.upstreamCpuPer1000)),
      clientCpu: median(ms.map((m) => m.clientCpu)),
      wall: median(ms.map((m) => m.wall)),
      complete: ms.every((m) => m.received === m.expectedChunks && m.done === m.streams && m.outOfOrder === 0 && m.errorCount === 0),
      coalescedPct: median(ms.map((m) => (100 * m.heldBackInGateway) / m.received)),
      noise: Math.max(...ms.map((m) => m.noise)),
      holdCheck: holdCheck[v.name],
      rounds: ms,
    };
  }
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Phases 3 and 4: memory (fresh gateway and bare processes, measured side by side)

function sampler(targets, everyMs) {
  const samples = Object.fromEntries(targets.map((t) => [t.name, []]));
  const take = () => {
    for (const t of targets) {
      try {
        samples[t.name].push({ at: Date.now(), rss: rssBytes(t.pid) });
      } catch {
        /* exited */
      }
    }
  };
  take();
  const timer = setInterval(take, everyMs);
  return { samples, take, stop: () => clearInterval(timer) };
}

const maxRss = (list, from = 0) => Math.max(...list.filter((s) => s.at >= from).map((s) => s.rss));

async function phaseIdle(targets) {
  log(
    `\n[3/4] idle streams: ${IDLE_STREAMS} open streams per target, one chunk every ${IDLE_INTERVAL_MS / 1000} s, ${IDLE_SECONDS} s (${elapsed()})`,
  );
  const before = Object.fromEntries(targets.map((t) => [t.name, rssBytes(t.pid)]));
  const s = sampler(targets, 250);
  const atMeasure = {};
  const runs = targets.map(async (t) => {
    const proc = streamClient({ mode: 'idle', url: t.url, streams: IDLE_STREAMS, interval_ms: IDLE_INTERVAL_MS, seconds: IDLE_SECONDS });
    let buf = '';
    let result = null;
    let open = null;
    proc.child.stdout.on('data', (d) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.event === 'open') open = msg;
        if (msg.event === 'measure') atMeasure[t.name] = rssBytes(t.pid);
        if (msg.mode === 'idle') result = msg;
      }
    });
    const code = await proc.exit;
    if (code !== 0 || result === null) throw new Error(`idle client for ${t.name} failed (${code}): ${proc.stderr}`);
    return [t.name, { ...result, openMs: open?.openMs }];
  });
  const results = Object.fromEntries(await Promise.all(runs));
  s.stop();
  const summary = {};
  for (const t of targets) {
    summary[t.name] = { rssBefore: before[t.name], rssOpen: atMeasure[t.name], rssPeak: maxRss(s.samples[t.name]), ...results[t.name] };
  }
  log(
    `  ${targets.map((t) => `${t.name}: ${summary[t.name].open} open, RSS ${mb(summary[t.name].rssBefore)} → ${mb(summary[t.name].rssOpen)} MB (peak ${mb(summary[t.name].rssPeak)})`).join(' | ')} (${elapsed()})`,
  );
  return summary;
}

async function phaseSlow(targets) {
  log(`\n[4/4] slow reader: one 100 MB stream per target read at ${SLOW_RATE / 1048576} MB/s for ${SLOW_SECONDS} s (${elapsed()})`);
  await sleep(1000); // settle after start-up
  const before = Object.fromEntries(targets.map((t) => [t.name, rssBytes(t.pid)]));
  const s = sampler(targets, 500);
  const started = {};
  const runs = targets.map(async (t) => {
    const proc = streamClient({ mode: 'slow', url: t.url, rate: SLOW_RATE, seconds: SLOW_SECONDS });
    let buf = '';
    let result = null;
    proc.child.stdout.on('data', (d) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.event === 'started') started[t.name] = Date.now();
        if (msg.mode === 'slow') result = msg;
      }
    });
    const code = await proc.exit;
    if (code !== 0 || result === null) throw new Error(`slow client for ${t.name} failed (${code}): ${proc.stderr}`);
    return [t.name, result];
  });
  const results = Object.fromEntries(await Promise.all(runs));
  s.stop();
  const summary = {};
  for (const t of targets) {
    const list = s.samples[t.name];
    const start = started[t.name] ?? 0;
    const during = list.filter((x) => x.at >= start);
    // Growth after the first seconds (buffers filling up once) vs. at the end: flat means no leak.
    const mid = during.find((x) => x.at >= start + 3000)?.rss ?? NaN;
    const end = during.length ? during[during.length - 1].rss : NaN;
    summary[t.name] = {
      rssBefore: before[t.name],
      rssPeak: maxRss(list),
      growth: maxRss(list) - before[t.name],
      rssAt3s: mid,
      rssEnd: end,
      driftAfter3s: end - mid,
      ...results[t.name],
    };
  }
  log(
    `  ${targets.map((t) => `${t.name}: read ${mb(summary[t.name].bytes)} MB at ${fmt2(summary[t.name].rateMBps)} MB/s, RSS ${mb(summary[t.name].rssBefore)} → peak ${mb(summary[t.name].rssPeak)} MB (+${mb(summary[t.name].growth)})`).join(' | ')} (${elapsed()})`,
  );
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Formatting

const fmtInt = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
const fmt1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const fmt2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '–');
const fmt3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : '–');
const mb = (b) => (Number.isFinite(b) ? (b / 1048576).toFixed(1) : '–');
const signed = (x, f = fmtInt) => (Number.isFinite(x) ? `${x >= 0 ? '+' : '−'}${f(Math.abs(x))}` : '–');
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : '–');
const yes = (ok) => (ok === null ? 'n/a' : ok ? '**met**' : '**missed**');

function targetsTable(small, streams, idle, slow, gw = 'gateway') {
  const rows = [];
  const tp = (id) => small[id].variants[gw].rps / small[id].variants.bare.rps;
  for (const id of ['models-c64', 'chat-c64']) {
    rows.push([
      `throughput ≥ 0.9× bare (${small[id].name}, 64 conn.)`,
      ratio(small[id].variants[gw].rps, small[id].variants.bare.rps),
      yes(tp(id) >= 0.9),
    ]);
  }
  for (const id of ['models-c1', 'chat-c1']) {
    const add = small[id].variants[gw].p50 - small[id].variants.bare.p50;
    rows.push([`added latency ≤ bare + 50 µs (${small[id].name}, 1 conn., p50)`, `${signed(add)} µs`, yes(add <= 50)]);
  }
  // The same two targets against the faster pass-through (pipe() instead of pipeline()).
  if (small['chat-c64'].variants['bare-pipe']) {
    for (const id of ['models-c64', 'chat-c64']) {
      const r = small[id].variants[gw].rps / small[id].variants['bare-pipe'].rps;
      rows.push([
        `stricter: throughput ≥ 0.9× bare-pipe (${small[id].name}, 64 conn.)`,
        ratio(small[id].variants[gw].rps, small[id].variants['bare-pipe'].rps),
        yes(r >= 0.9),
      ]);
    }
    for (const id of ['models-c1', 'chat-c1']) {
      const add = small[id].variants[gw].p50 - small[id].variants['bare-pipe'].p50;
      rows.push([`stricter: added latency ≤ bare-pipe + 50 µs (${small[id].name}, 1 conn., p50)`, `${signed(add)} µs`, yes(add <= 50)]);
    }
  }
  const ttfb = streams[gw].ttfbP50 - streams.bare.ttfbP50;
  const lag50 = streams[gw].lagP50 - streams.bare.lagP50;
  const lag99 = streams[gw].lagP99 - streams.bare.lagP99;
  rows.push(['streams: TTFB ≤ bare + 1 ms (p50)', `${signed(ttfb, fmt2)} ms`, yes(ttfb <= 1)]);
  rows.push([
    'streams: per-chunk lag ≤ bare + 1 ms (p50 / p99)',
    `${signed(lag50, fmt2)} / ${signed(lag99, fmt2)} ms`,
    yes(lag50 <= 1 && lag99 <= 1),
  ]);
  const cpu = streams[gw].cpuPer1000 / streams.bare.cpuPer1000;
  rows.push([
    'streams: CPU per 1,000 chunks ≤ 1.2× bare',
    `${fmt3(streams[gw].cpuPer1000)} s vs ${fmt3(streams.bare.cpuPer1000)} s = ${ratio(streams[gw].cpuPer1000, streams.bare.cpuPer1000)}`,
    yes(cpu <= 1.2),
  ]);
  if (streams['bare-pipe']) {
    const strict = streams[gw].cpuPer1000 / streams['bare-pipe'].cpuPer1000;
    rows.push([
      'stricter: streams CPU per 1,000 chunks ≤ 1.2× bare-pipe',
      `${fmt3(streams[gw].cpuPer1000)} s vs ${fmt3(streams['bare-pipe'].cpuPer1000)} s = ${ratio(streams[gw].cpuPer1000, streams['bare-pipe'].cpuPer1000)}`,
      yes(strict <= 1.2),
    ]);
  }
  const hc = streams[gw].holdCheck;
  rows.push([
    'streams: no chunk held back',
    `${hc.received}/${hc.expected} chunks in order, ${hc.heldBack} held back; 100×500: ${streams[gw].complete ? 'all complete' : 'INCOMPLETE'}`,
    yes(hc.heldBack === 0 && hc.received === hc.expected && hc.outOfOrder === 0 && streams[gw].complete),
  ]);
  if (idle?.gateway)
    rows.push([
      `${IDLE_STREAMS} idle streams ≤ 150 MB RSS`,
      `${mb(idle.gateway.rssPeak)} MB peak (${idle.gateway.open} open)`,
      yes(idle.gateway.rssPeak <= 150 * 1048576 && idle.gateway.open === IDLE_STREAMS),
    ]);
  if (slow?.gateway)
    rows.push(['slow reader: RSS growth ≤ 20 MB', `+${mb(slow.gateway.growth)} MB`, yes(slow.gateway.growth <= 20 * 1048576)]);
  return ['| target | measured (gateway, LOG_LEVEL=info) | |', '| --- | --- | --- |', ...rows.map((r) => `| ${r.join(' | ')} |`)].join(
    '\n',
  );
}

function report(ctx) {
  const { info, small, streams, idle, slow, variants, notes, pinned, startedAt, seconds, repeatsUsed } = ctx;
  const names = variants.map((v) => v.name);
  const L = [];
  L.push(`# Benchmark results ${startedAt.slice(0, 10)}`);
  L.push('');
  L.push(
    `Run \`npm run bench\` at ${startedAt} (${seconds.toFixed(0)} s). Medians of ${ROUNDS} interleaved round(s) (streams: ${STREAM_ROUNDS}).`,
  );
  L.push('');
  L.push('## Machine');
  L.push('');
  L.push(
    `- CPU: ${info.machine.model}${info.machine.mhz ? ` @ ${info.machine.mhz} MHz` : ''}, ${info.machine.cores} cores, ${info.machine.memGiB} GiB RAM; Linux ${info.kernel}`,
  );
  L.push(
    `- Node ${process.version}; fastify ${info.versions.fastify}, undici ${info.versions.undici}, pino ${info.versions.pino}; ${info.wrk}; ${info.nginx ?? 'nginx: not available'}`,
  );
  L.push(`- Gateway build: \`${info.git}\`; run as \`node dist/server.js\` with ${GATEWAY_SETTINGS_NOTE}; stdout to /dev/null`);
  L.push(
    `- Pinning: ${pinned ? 'server under test (nginx / bare / gateway) on core 0; fake upstream, wrk and stream clients on core 1' : 'off'}`,
  );
  L.push(
    `- Other processes on the machine: ${fmt2(info.noiseAtStart)} cores busy at start; runs with more than ${NOISE_LIMIT} cores of other load were repeated up to twice, keeping the quietest (${repeatsUsed} repeats in all); the "noise" columns show the most seen in any kept round.`,
  );
  for (const n of notes) L.push(`- Note: ${n}`);
  L.push('');
  L.push('Variants: ' + variants.map((v) => `**${v.name}** = ${v.label}`).join('; ') + '.');
  L.push('');
  L.push('## Targets');
  L.push('');
  L.push(targetsTable(small, streams, idle, slow));
  L.push('');
  L.push('## 1. Small non-streamed requests (wrk, 1 thread)');
  L.push('');
  L.push(
    `${SECONDS_C1} s per run at 1 connection, ${SECONDS_C64} s at 64; latency from wrk (µs). "CPU/req" is the server's own CPU time per request (all its threads; nginx: master + worker); "upstream" is the fake llama-server's CPU use in cores (it shares core 1 with wrk).`,
  );
  for (const id of Object.keys(small)) {
    const s = small[id];
    L.push('');
    L.push(`### ${s.name}, ${s.connections} connection${s.connections > 1 ? 's' : ''}`);
    L.push('');
    L.push('| variant | req/s | p50 µs | p99 µs | server CPU/req µs | server cores | upstream cores | noise cores |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const n of names) {
      const v = s.variants[n];
      L.push(
        `| ${n} | ${fmtInt(v.rps)} | ${fmtInt(v.p50)} | ${fmtInt(v.p99)} | ${v.proxyCpuPerReqUs === null ? '–' : fmt1(v.proxyCpuPerReqUs)} | ${n === 'direct' ? '–' : fmt2(v.proxyCores)} | ${fmt2(v.upstreamCores)} | ${fmt2(v.noise)} |`,
      );
    }
    if (s.connections > 1) {
      const bound = names.filter((n) => n !== 'direct' && s.variants[n].proxyCores < 0.9);
      if (bound.length)
        L.push(
          '',
          `${bound.join(', ')} used less than 0.9 of its core: ${bound.length > 1 ? 'their' : 'its'} throughput here is limited by the load side (fake upstream + wrk on core 1, whose ceiling is the direct row), so it is a lower bound and a ratio against it an upper bound.`,
        );
    }
  }
  L.push('');
  L.push('### Ratios');
  L.push('');
  L.push('| | GET /v1/models | POST /v1/chat/completions |');
  L.push('| --- | ---: | ---: |');
  for (const gw of names.filter((n) => n.startsWith('gateway'))) {
    if (names.includes('nginx'))
      L.push(
        `| ${gw}/nginx throughput (64 conn.) | ${ratio(small['models-c64'].variants[gw].rps, small['models-c64'].variants.nginx.rps)} | ${ratio(small['chat-c64'].variants[gw].rps, small['chat-c64'].variants.nginx.rps)} |`,
      );
    L.push(
      `| ${gw}/bare throughput (64 conn.) | ${ratio(small['models-c64'].variants[gw].rps, small['models-c64'].variants.bare.rps)} | ${ratio(small['chat-c64'].variants[gw].rps, small['chat-c64'].variants.bare.rps)} |`,
    );
    L.push(
      `| ${gw}/bare-pipe throughput (64 conn.) | ${ratio(small['models-c64'].variants[gw].rps, small['models-c64'].variants['bare-pipe']?.rps)} | ${ratio(small['chat-c64'].variants[gw].rps, small['chat-c64'].variants['bare-pipe']?.rps)} |`,
    );
    for (const base of ['direct', 'bare', 'bare-pipe']) {
      if (!small['chat-c1'].variants[base]) continue;
      const add = (id, p) => signed(small[id].variants[gw][p] - small[id].variants[base][p]);
      L.push(
        `| ${gw} − ${base} added latency, 1 conn. (p50 / p99 µs) | ${add('models-c1', 'p50')} / ${add('models-c1', 'p99')} | ${add('chat-c1', 'p50')} / ${add('chat-c1', 'p99')} |`,
      );
    }
    L.push(
      `| ${gw}/bare CPU per request (64 conn.) | ${ratio(small['models-c64'].variants[gw].proxyCpuPerReqUs, small['models-c64'].variants.bare.proxyCpuPerReqUs)} | ${ratio(small['chat-c64'].variants[gw].proxyCpuPerReqUs, small['chat-c64'].variants.bare.proxyCpuPerReqUs)} |`,
    );
  }
  if (names.includes('nginx')) {
    for (const b of names.filter((n) => n.startsWith('bare'))) {
      L.push(
        `| ${b}/nginx throughput (64 conn.) | ${ratio(small['models-c64'].variants[b].rps, small['models-c64'].variants.nginx.rps)} | ${ratio(small['chat-c64'].variants[b].rps, small['chat-c64'].variants.nginx.rps)} |`,
      );
    }
  }
  L.push('');
  L.push(`## 2. Streams: ${STREAMS} concurrent chat streams × ${STREAM_CHUNKS} chunks, ${STREAM_INTERVAL_MS} ms apart`);
  L.push('');
  L.push(
    `Before the rounds every variant gets ${STREAM_WARMUP_SECONDS} s of short streams (wrk, 64 connections). The client writes raw HTTP/1.1 on keep-alive sockets (the 100 requests go out in ~1 ms). Each round first opens as many connections as there will be streams (as SDK clients and tunnels keep theirs) and sends ${STREAM_WARM_BURSTS} bursts of short streams on them, unrecorded, then pauses 0.3 s: TTFB measures a warm proxy, not TCP handshakes or the load core. TTFB: request sent → first chunk received. Lag: upstream send → client receive, per chunk (CLOCK_MONOTONIC, same machine). Gap: time between two chunks of one stream at the client. CPU: the server's utime+stime (/proc/<pid>/stat) per 1,000 chunks. Coalesced: chunks that reached the client in the same socket read as the next one, after that one had been sent.`,
  );
  L.push('');
  L.push(
    '| variant | TTFB p50 / p99 ms (p50 range over rounds) | lag p50 / p99 ms | gap p50 / p99 ms | CPU s / 1,000 chunks | upstream CPU s / 1,000 | all chunks, in order | coalesced % | 1 stream alone: TTFB / lag p50 ms | hold-back check (1 stream × 50 × 10 ms) | noise cores |',
  );
  L.push('| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |');
  for (const n of names) {
    const v = streams[n];
    const hc = v.holdCheck;
    L.push(
      `| ${n} | ${fmt1(v.ttfbP50)} / ${fmt1(v.ttfbP99)} (${fmt1(v.ttfbP50Min)}–${fmt1(v.ttfbP50Max)}) | ${fmt2(v.lagP50)} / ${fmt2(v.lagP99)} | ${fmt2(v.gapP50)} / ${fmt2(v.gapP99)} | ${v.cpuPer1000 === null ? '–' : fmt3(v.cpuPer1000)} | ${fmt3(v.upstreamCpuPer1000)} | ${v.complete ? 'yes' : 'NO'} | ${fmt1(v.coalescedPct)} | ${fmt2(hc.ttfbMs)} / ${fmt2(hc.lagP50Ms)} | ${hc.received}/${hc.expected}, ${hc.heldBack} held back, max lag ${fmt2(hc.lagMaxMs)} ms | ${fmt2(v.noise)} |`,
    );
  }
  L.push('');
  L.push('| | TTFB p50 / p99 ms | lag p50 / p99 ms | gap p50 / p99 ms | CPU per chunk |');
  L.push('| --- | ---: | ---: | ---: | ---: |');
  for (const gw of names.filter((n) => n.startsWith('gateway'))) {
    for (const base of ['direct', 'bare', 'bare-pipe'].filter((b) => streams[b])) {
      const d = (k) => signed(streams[gw][k] - streams[base][k], fmt2);
      L.push(
        `| ${gw} − ${base} | ${d('ttfbP50')} / ${d('ttfbP99')} | ${d('lagP50')} / ${d('lagP99')} | ${d('gapP50')} / ${d('gapP99')} | ${base === 'direct' ? '' : ratio(streams[gw].cpuPer1000, streams[base].cpuPer1000)} |`,
      );
    }
  }
  if (idle) {
    L.push('');
    L.push(`## 3. ${IDLE_STREAMS} idle streams (one chunk every ${IDLE_INTERVAL_MS / 1000} s, ${IDLE_SECONDS} s, fresh processes)`);
    L.push('');
    L.push('| variant | RSS before MB | RSS with all open MB | peak MB | streams open | chunks per stream (min–max) | time to open all |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const [n, v] of Object.entries(idle)) {
      L.push(
        `| ${n} | ${mb(v.rssBefore)} | ${mb(v.rssOpen)} | ${mb(v.rssPeak)} | ${v.open}/${v.requested}${v.failed ? ` (${v.failed} failed: ${v.errors.join('; ')})` : ''} | ${v.chunksMin}–${v.chunksMax} | ${v.openMs} ms |`,
      );
    }
  }
  if (slow) {
    L.push('');
    L.push(`## 4. Slow reader (100 MB stream read at ~${SLOW_RATE / 1048576} MB/s for ${SLOW_SECONDS} s, fresh processes)`);
    L.push('');
    L.push('| variant | RSS before MB | peak MB | growth MB | RSS at 3 s → end MB | read | rate MB/s |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const [n, v] of Object.entries(slow)) {
      L.push(
        `| ${n} | ${mb(v.rssBefore)} | ${mb(v.rssPeak)} | +${mb(v.growth)} | ${mb(v.rssAt3s)} → ${mb(v.rssEnd)} | ${mb(v.bytes)} MB | ${fmt2(v.rateMBps)} |`,
      );
    }
  }
  L.push('');
  return L.join('\n');
}

function updateBenchmarksMd(ctx, resultsFile) {
  const file = join(ROOT, 'BENCHMARKS.md');
  const START = '<!-- bench:summary:start (written by npm run bench) -->';
  const END = '<!-- bench:summary:end -->';
  const { small, streams, variants } = ctx;
  const names = variants.map((v) => v.name);
  const rows = names.map((n) => {
    const s = (id) => small[id].variants[n];
    const st = streams[n];
    return `| ${n} | ${fmtInt(s('models-c64').rps)} | ${fmtInt(s('chat-c64').rps)} | ${fmtInt(s('models-c1').p50)} / ${fmtInt(s('models-c1').p99)} | ${fmtInt(s('chat-c1').p50)} / ${fmtInt(s('chat-c1').p99)} | ${fmt1(st.ttfbP50)} | ${fmt2(st.lagP50)} / ${fmt2(st.lagP99)} | ${st.cpuPer1000 === null ? '–' : fmt3(st.cpuPer1000)} |`;
  });
  const block = [
    START,
    `Latest run: [${relative(ROOT, resultsFile)}](${relative(ROOT, resultsFile)}) — ${ctx.info.machine.model}, ${ctx.info.machine.cores} cores, Node ${process.version}, ${ctx.startedAt}.`,
    '',
    '| variant | GET /v1/models req/s (64 conn.) | POST chat req/s (64 conn.) | GET 1 conn. p50 / p99 µs | POST 1 conn. p50 / p99 µs | stream TTFB p50 ms | chunk lag p50 / p99 ms | CPU s / 1,000 chunks |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    targetsTable(small, streams, ctx.idle, ctx.slow),
    END,
  ].join('\n');
  let text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n\n## Latest results\n\n';
  const a = text.indexOf(START);
  const b = text.indexOf(END);
  text = a >= 0 && b > a ? text.slice(0, a) + block + text.slice(b + END.length) : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, text);
}

// ---------------------------------------------------------------------------------------------

async function mainProfile() {
  // Imported here: profile.mjs shares lib.mjs's process registry, so cleanup() covers it too.
  const { profileGateway, formatAnalysis } = await import('./profile.mjs');
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  if (!ensureTool('wrk', ['wrk'])) throw new Error('wrk is needed (Debian: apt-get install -y wrk) and could not be installed');
  snapshotDist();
  const seconds = QUICK ? 4 : 10;
  const keep = join(tmpdir(), `llm-gateway-${startedAt.slice(0, 10)}.cpuprofile`);
  log(`Profiling the gateway (LOG_LEVEL=info) under wrk -c64 POST /v1/chat/completions for ${seconds} s…`);
  const res = await profileGateway({ seconds, dist: DIST, logLevel: 'info', keep });
  const text = [
    `# CPU profile ${startedAt}`,
    '',
    `\`node --cpu-prof\` on the gateway (LOG_LEVEL=info, core 0) under \`wrk -t1 -c64\` small POST /v1/chat/completions (core 1, with the fake upstream): ${Math.round(res.rps)} req/s while profiled, ${res.cpuPerReqUs.toFixed(1)} µs of gateway CPU per request. Build \`${gitDescribe()}\`, ${machineInfo().model}, Node ${process.version}.`,
    '',
    '```',
    formatAnalysis(res.analysis, { requests: res.profiledRequests }),
    '```',
    '',
  ].join('\n');
  const dir = QUICK ? tmpdir() : join(BENCH, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${QUICK ? 'llm-gateway-' : ''}${startedAt.slice(0, 10)}-profile.md`);
  writeFileSync(file, text);
  log(`\n${text}\nWrote ${file}; the raw profile is ${keep} (Chrome DevTools → Performance, or speedscope).`);
}

function gitDescribe() {
  try {
    return execFileSync('git', ['describe', '--always', '--dirty'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    return '?';
  }
}

async function main() {
  const startedAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const notes = [];
  const machine = machineInfo();
  const git = gitDescribe();
  log(`LLM Gateway benchmark — ${machine.model}, ${machine.cores} cores, Node ${process.version}, build ${git}`);
  if (!existsSync(join(ROOT, 'dist', 'server.js'))) throw new Error('dist/server.js is missing: run `npm run build` (npm run bench does)');
  snapshotDist();

  if (!ensureTool('wrk', ['wrk'])) throw new Error('wrk is needed (Debian: apt-get install -y wrk) and could not be installed');
  let nginxOk = !NO_NGINX && ensureTool('nginx', ['nginx-light', 'nginx']);
  if (NO_NGINX) notes.push('nginx skipped (--no-nginx).');
  else if (!nginxOk)
    notes.push('nginx is not installed and could not be installed (apt-get install -y nginx-light); its column is missing.');

  const pinned = process.env.BENCH_PIN !== '0' && machine.cores >= 2 && have('taskset');
  setPinning(pinned);
  const info = {
    machine,
    kernel: release(),
    git,
    versions: { fastify: pkgVersion('fastify'), undici: pkgVersion('undici'), pino: pkgVersion('pino') },
    wrk: versionOf('wrk', ['--version']).replace(/ Copyright.*/, ''),
    nginx: nginxOk ? versionOf('nginx', ['-v']) : null,
  };

  log('Checking that the machine is quiet…');
  info.noiseAtStart = await waitForQuiet();

  const upstream = await startUpstream();
  const bare = await startBare(upstream);
  const gateway = await startGateway(upstream, 'info');
  const barePipe = await startBare(upstream, 'pipe');
  const fastify = await startFastify(upstream);
  // Features on vs off, in the same run: usage accounting off; per-key limits on (high enough never
  // to refuse, so every request pays for checking and counting them).
  const gatewayNoUsage = await startGateway(upstream, 'info', [], {
    name: 'gateway-nousage',
    label: 'gateway, GATEWAY_USAGE=off',
    env: { GATEWAY_USAGE: 'off' },
  });
  const gatewayLimits = await startGateway(upstream, 'info', [], {
    name: 'gateway-limits',
    label: 'gateway, every per-key limit on (never reached)',
    env: {
      GATEWAY_DEFAULT_RPM: '100000000',
      GATEWAY_DEFAULT_TPM: '100000000',
      GATEWAY_DEFAULT_TPD: '100000000',
      GATEWAY_DEFAULT_CONCURRENCY: '100000',
    },
  });
  let nginx = null;
  if (nginxOk) {
    try {
      nginx = await startNginx(upstream);
    } catch (err) {
      notes.push(`nginx did not start: ${String(err.message).split('\n')[0]}`);
      nginxOk = false;
    }
  }
  const variants = [upstream, ...(nginx ? [nginx] : []), bare, barePipe, fastify, gateway, gatewayNoUsage, gatewayLimits];
  log(`Started: ${variants.map((v) => `${v.name} ${v.url} (pid ${v.pid})`).join(', ')}`);

  const small = await phaseSmall(variants, upstream);
  const streams = await phaseStreams(variants, upstream);

  // Memory phases on fresh processes, so RSS is what the streams cost and not what phase 1 left.
  for (const v of [bare, barePipe, fastify, gateway, gatewayNoUsage, gatewayLimits, ...(nginx ? [nginx] : [])]) await stopProcess(v.proc);
  const freshBare = await startBare(upstream);
  const freshGateway = await startGateway(upstream, 'info');
  await sleep(1000);
  const idle = await phaseIdle([freshGateway, freshBare]);
  // Fresh again: the idle phase's garbage would otherwise be collected during the slow-reader window
  // and hide growth.
  for (const v of [freshGateway, freshBare]) await stopProcess(v.proc);
  const slowGateway = await startGateway(upstream, 'info');
  const slowBare = await startBare(upstream);
  const slow = await phaseSlow([slowGateway, slowBare]);

  const seconds = (Date.now() - t0) / 1000;
  const ctx = { info, small, streams, idle, slow, variants, notes, pinned, startedAt, seconds, repeatsUsed: repeats };
  const dir = QUICK ? tmpdir() : join(BENCH, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${QUICK ? 'llm-gateway-bench-quick-' : ''}${startedAt.slice(0, 10)}.md`);
  writeFileSync(file, report(ctx));
  const strip = (o) => JSON.parse(JSON.stringify(o, (k, v) => (k === 'proc' ? undefined : v)));
  writeFileSync(
    file.replace(/\.md$/, '.json'),
    `${JSON.stringify(strip({ ...ctx, variants: variants.map(({ name, label }) => ({ name, label })) }), null, 1)}\n`,
  );
  if (!QUICK) updateBenchmarksMd(ctx, file);
  log(`\n${targetsTable(small, streams, idle, slow)}\n`);
  log(`Wrote ${QUICK ? file : relative(ROOT, file)}${QUICK ? '' : ' and the summary in BENCHMARKS.md'} (${seconds.toFixed(0)} s).`);
}

(argv.has('--profile') ? mainProfile() : main())
  .then(() => cleanup())
  .then(() => process.exit(0))
  .catch(async (err) => {
    // Interrupted: the signal handler is already cleaning up and exits 130.
    if (interrupted) return cleanup().finally(() => process.exit(130));
    console.error(`\nbench failed: ${err.stack ?? err}`);
    await cleanup();
    process.exit(1);
  });
