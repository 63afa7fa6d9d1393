// Helpers for the benchmark runner: child processes (each one killed by its PID at the end, also on
// error and SIGINT), free ports, /proc readings (CPU seconds, RSS, other processes' CPU), wrk.
import { spawn, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

// ---------------------------------------------------------------------------------------------
// Processes

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const children = new Map(); // pid -> { name, child }

/** `taskset -c <cpu>` prefix when pinning is on and taskset exists. */
let pinning = false;
export function setPinning(on) {
  pinning = on;
}

/**
 * Starts a child process and registers it for cleanup. `cpu` pins it (taskset execs the command,
 * so the PID is the command's own). stdout: 'pipe' | 'ignore' (i.e. /dev/null).
 */
export function startProcess(name, command, args, { env = process.env, cwd, cpu, stdout = 'pipe', stderr = 'pipe' } = {}) {
  const [cmd, argv] = pinning && cpu !== undefined ? ['taskset', ['-c', String(cpu), command, ...args]] : [command, args];
  const child = spawn(cmd, argv, { env, cwd, stdio: ['ignore', stdout, stderr] });
  const proc = { name, child, pid: child.pid, stderr: '', exited: false, exitCode: null };
  children.set(child.pid, proc);
  if (child.stderr) child.stderr.on('data', (d) => (proc.stderr = (proc.stderr + d).slice(-4000)));
  proc.exit = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      proc.exited = true;
      proc.exitCode = code ?? signal;
      children.delete(child.pid);
      resolve(proc.exitCode);
    });
    // A command that cannot start (wrk or nginx not installed: ENOENT) never exits: end it here.
    child.on('error', (err) => {
      proc.stderr += String(err);
      if (child.pid === undefined) {
        proc.exited = true;
        proc.exitCode = -1;
        resolve(-1);
      }
    });
  });
  return proc;
}

/** Waits for the first stdout line that parses as JSON (our servers print {"port":N}). */
export function firstJsonLine(proc, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${proc.name}: no output after ${timeoutMs} ms; stderr: ${proc.stderr}`)), timeoutMs);
    proc.child.stdout.on('data', (d) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const value = JSON.parse(line);
          clearTimeout(timer);
          resolve(value);
          return;
        } catch {
          /* not yet */
        }
      }
    });
    proc.exit.then((code) => reject(new Error(`${proc.name} exited (${code}) before it was ready: ${proc.stderr}`)));
  });
}

/** Collects a child's whole stdout and resolves with it when it exits. */
export function collectStdout(proc) {
  let out = '';
  proc.child.stdout.on('data', (d) => (out += d));
  // 'exit' can come before the last of stdout has been read: wait for both.
  const ended = new Promise((resolve) => proc.child.stdout.once('close', resolve));
  return Promise.all([proc.exit, ended]).then(([code]) => ({ code, out }));
}

/** Runs bench/stream-client.mjs once ({ key, cpu, mode, url, ... }) and resolves with its result line. */
export async function runStreamClient({ cpu, ...args }) {
  const proc = startProcess('stream-client', process.execPath, [join(BENCH_DIR, 'stream-client.mjs'), JSON.stringify(args)], { cpu });
  const { code, out } = await collectStdout(proc);
  const lines = out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const result = lines.find((l) => l.mode !== undefined);
  if (code !== 0 || result === undefined) throw new Error(`stream client failed (${code}): ${out} ${proc.stderr}`);
  return result;
}

/** SIGTERM by PID, then SIGKILL after graceMs. */
export async function stopProcess(proc, graceMs = 2000) {
  if (proc.exited) return;
  try {
    process.kill(proc.pid, 'SIGTERM');
  } catch {
    return;
  }
  const killed = await Promise.race([proc.exit.then(() => true), sleep(graceMs).then(() => false)]);
  if (!killed) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await Promise.race([proc.exit, sleep(1000)]);
  }
}

export async function stopAll() {
  await Promise.all([...children.values()].map((p) => stopProcess(p)));
}

/** Last resort in process.on('exit'): synchronous SIGKILL of every child still registered. */
export function killAllSync() {
  for (const pid of children.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export function livePids() {
  return [...children.keys()];
}

// ---------------------------------------------------------------------------------------------
// The gateway's environment in every bench: a clean one (nothing from the caller's shell or a .env),
// the given settings, and everything else at its default as a user would run it. The exception is
// admission: the fake llama-server stands for one with 1024 slots, so that the fair queue lets every
// request through (64 connections, 1,000 idle streams) and the bench measures the pass-through, not
// the queue's 429s.
/** The small chat POST of the throughput runs. */
export const SMALL_BODY = '{"model":"bench-model","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}';
/** A short stream (2 chunks, 1 ms apart): the cost of starting a stream; also the streams' warm-up. */
export const SHORT_STREAM_BODY =
  '{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"Hi"}],"bench":{"mode":"chunks","chunks":2,"interval_ms":1}}';

export const GATEWAY_SETTINGS_NOTE =
  'GATEWAY_MAX_INFLIGHT=1024 (a llama-server with 1024 slots: the fair queue never rejects); every other setting at its default (usage recording on, its SQLite file in a temp dir)';
export function gatewayEnv({ key, upstream, port, logLevel, home }) {
  return {
    PATH: process.env.PATH,
    HOME: home,
    LLM_API_KEYS: key,
    LLM_UPSTREAM: upstream,
    GATEWAY_PORT: String(port),
    GATEWAY_HOST: '127.0.0.1',
    GATEWAY_SHUTDOWN_GRACE_MS: '1000',
    GATEWAY_MAX_INFLIGHT: '1024',
    LOG_LEVEL: logLevel,
  };
}

// ---------------------------------------------------------------------------------------------
// Network

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls url until it answers `status` (default 200). */
export async function waitHttp(url, { headers = {}, status = 200, timeoutMs = 15_000, proc } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (proc?.exited) throw new Error(`${proc.name} exited (${proc.exitCode}): ${proc.stderr}`);
    try {
      const res = await fetch(url, { headers });
      await res.arrayBuffer();
      if (res.status === status) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err.message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (${last})`);
}

// ---------------------------------------------------------------------------------------------
// /proc

let clkTck = 100;
try {
  clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* 100 */
}

/** utime+stime of a process (all its threads), in seconds. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / clkTck;
}

/** VmRSS in bytes. */
export function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/**
 * Busy CPU seconds of the whole machine (all cores) from /proc/stat, steal (time the hypervisor gave
 * to someone else) included. irq/softirq count too: the kernel charges those ticks to the task that
 * was running as well, so our processes' utime+stime include their own loopback TCP work.
 */
export function machineBusySeconds() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = v;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / clkTck;
}

/** Every process on the machine: pid -> { ppid, cpu (seconds) }. */
function processTable() {
  const table = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(Number(name), { ppid: Number(f[1]), cpu: (Number(f[11]) + Number(f[12])) / clkTck });
    } catch {
      /* gone */
    }
  }
  return table;
}

function treeCpu(table, pid) {
  let total = table.get(pid)?.cpu ?? 0;
  for (const [child, info] of table) if (info.ppid === pid) total += treeCpu(table, child);
  return total;
}

/** CPU seconds of pid and all its live descendants (nginx: master + worker). */
export function treeCpuSeconds(pid) {
  return treeCpu(processTable(), pid);
}

/** CPU seconds used so far by this process, its reaped children (wrk, clients: cutime+cstime) and its live ones. */
export function ourCpuSeconds() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  let total = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / clkTck;
  const table = processTable();
  for (const pid of children.keys()) total += treeCpu(table, pid);
  return total;
}

/**
 * Measures how much CPU other processes on the machine (not ours) use during fn(): returns
 * { result, otherCores }: their average use, in cores, over fn's wall time. A shared machine (other
 * people's test runs) shows up here and in the report.
 */
export async function withNoise(fn) {
  const busy0 = machineBusySeconds();
  const ours0 = ourCpuSeconds();
  const t0 = performance.now();
  const result = await fn();
  const wall = (performance.now() - t0) / 1000;
  const busy = machineBusySeconds() - busy0;
  const ours = ourCpuSeconds() - ours0;
  return { result, otherCores: Math.max(0, (busy - ours) / wall), wall };
}

export function machineInfo() {
  const cpus = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpus)?.[1] ?? 'unknown';
  const mhz = /cpu MHz\s*:\s*(.*)/.exec(cpus)?.[1];
  let cores = 0;
  try {
    cores = Number(execFileSync('nproc', { encoding: 'utf8' }).trim());
  } catch {
    /* below */
  }
  const mem = /MemTotal:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return { model, mhz: mhz ? Number(mhz).toFixed(0) : undefined, cores, memGiB: mem ? (Number(mem[1]) / 1024 / 1024).toFixed(1) : '?' };
}

// ---------------------------------------------------------------------------------------------
// Statistics

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function median(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

// ---------------------------------------------------------------------------------------------
// wrk

/** Writes a wrk Lua script for one request shape; done() prints one JSON line (latencies in µs). */
export function wrkScript(dir, name, { method, body, headers }) {
  const lua = [
    `wrk.method = ${JSON.stringify(method)}`,
    body === undefined ? '' : `wrk.body = ${luaString(body)}`,
    ...Object.entries(headers).map(([k, v]) => `wrk.headers[${luaString(k)}] = ${luaString(v)}`),
    'function done(summary, latency, requests)',
    '  local e = summary.errors',
    '  io.write(string.format(\'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%.1f,"p99":%.1f,"mean":%.1f,"max":%.1f}\\n\',',
    '    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,',
    '    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))',
    'end',
  ].join('\n');
  const file = join(dir, `${name}.lua`);
  writeFileSync(file, lua);
  return file;
}

function luaString(s) {
  return `"${String(s).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

/**
 * One wrk run. Returns { rps, p50, p99 (µs), errors } or throws when wrk fails.
 * wrk runs one thread (-t1) on the load-side core.
 */
export async function runWrk({ url, script, connections, seconds, cpu }) {
  const proc = startProcess(
    'wrk',
    'wrk',
    ['-t1', `-c${connections}`, `-d${Math.max(1, Math.round(seconds))}s`, '--timeout', '5s', '-s', script, url],
    { cpu },
  );
  const { code, out } = await collectStdout(proc);
  const line = out.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (code !== 0 || line === undefined) throw new Error(`wrk failed (${code}): ${out} ${proc.stderr}`);
  const r = JSON.parse(line.slice(8));
  const errors = r.connect + r.read + r.write + r.status + r.timeout;
  return {
    rps: r.requests / (r.duration_us / 1e6),
    p50: r.p50,
    p99: r.p99,
    mean: r.mean,
    max: r.max,
    requests: r.requests,
    errors,
    status: r.status,
  };
}
