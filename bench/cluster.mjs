// Several gateway processes on this machine (issue 17): `node bench/cluster.mjs [--rounds N] [--seconds S]`
// after `npm run build`. Variants, each against the same fast fake llama-server (bench/fake-upstream.mjs),
// rounds interleaved, small POSTs at 64 connections under wrk:
//   1 process                 dist/server.js
//   2 processes               two workers sharing the port through Node's cluster module (what PM2
//                             cluster mode does: bench/cluster-worker.mjs is its stand-in)
//   1 process, limit          a per-key limit counted in this process (GATEWAY_DEFAULT_RPM huge: never refuses)
//   1 proc, Redis             GATEWAY_REDIS_URL (127.0.0.1:6379), no limit: what the shared slots cost
//   1 process, limit, Redis   the same limit counted in Redis too
//   2 processes, limit, Redis
// Nothing is pinned: the gateway processes, the fake upstream, wrk and Redis share the cores, as they
// would on a real box. Prints medians of req/s, gateway CPU µs per request (every process of the
// variant), Redis CPU µs per request and Redis commands per request (INFO commandstats, so "one
// round trip per admission" is a count, not a claim). Never part of CI or `npm test`.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SMALL_BODY,
  firstJsonLine,
  freePort,
  gatewayEnv,
  killAllSync,
  median,
  runWrk,
  startProcess,
  stopAll,
  treeCpuSeconds,
  waitHttp,
  withNoise,
  wrkScript,
} from './lib.mjs';

const BENCH = dirname(fileURLToPath(import.meta.url));
const DIST = join(BENCH, '..', 'dist');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i < 0 ? dflt : args[i + 1];
};
const ROUNDS = Number(opt('--rounds', '5'));
const SECONDS = Number(opt('--seconds', '4'));
const REDIS = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const LIMIT = { GATEWAY_DEFAULT_RPM: '1000000000' };

const VARIANTS = [
  { name: '1 process', workers: 1, env: {} },
  { name: '2 processes', workers: 2, env: {} },
  { name: '1 process, limit', workers: 1, env: LIMIT },
  { name: '1 proc, Redis', workers: 1, env: {}, redis: true },
  { name: '1 proc, limit, Redis', workers: 1, env: LIMIT, redis: true },
  { name: '2 procs, limit, Redis', workers: 2, env: LIMIT, redis: true },
];

function redisInfo(section) {
  const url = new URL(REDIS);
  const out = execFileSync('redis-cli', ['-h', url.hostname, '-p', url.port || '6379', 'INFO', section], { encoding: 'utf8' });
  return out;
}

/** Redis's own CPU seconds and its total command count so far. */
function redisReading() {
  const cpu = redisInfo('cpu');
  const used = (k) => Number(new RegExp(`${k}:([\\d.]+)`).exec(cpu)?.[1] ?? 0);
  const stats = redisInfo('commandstats');
  // Round trips: the scripts (EVALSHA, EVAL) and every other command a client sent; the commands a
  // script runs inside Redis are counted by Redis under their own names (calls), not as round trips.
  let calls = 0;
  for (const m of stats.matchAll(/calls=(\d+)/g)) calls += Number(m[1]);
  let scripts = 0;
  for (const m of stats.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) scripts += Number(m[1]);
  // INFO itself counts as a command: two per reading (cpu, commandstats).
  return { cpu: used('used_cpu_user') + used('used_cpu_sys'), calls, scripts };
}

process.on('exit', killAllSync);
process.on('SIGINT', () => stopAll().finally(() => process.exit(130)));
const tmp = mkdtempSync(join(tmpdir(), 'llm-gateway-cluster-'));
const key = `sk-bench-${randomBytes(12).toString('hex')}`;
const auth = { Authorization: `Bearer ${key}` };

try {
  const up = startProcess('fake-upstream', process.execPath, [join(BENCH, 'fake-upstream.mjs')]);
  const { port: upPort } = await firstJsonLine(up);
  for (const v of VARIANTS) {
    const port = await freePort();
    const home = join(tmp, v.name.replace(/[^a-z0-9]+/gi, '-'));
    mkdirSync(home, { recursive: true });
    const env = {
      ...gatewayEnv({ key, upstream: `http://127.0.0.1:${upPort}`, port, logLevel: 'info', home }),
      ...v.env,
      ...(v.redis ? { GATEWAY_REDIS_URL: REDIS, GATEWAY_REDIS_PREFIX: `bench${randomBytes(4).toString('hex')}:` } : {}),
      CLUSTER_WORKERS: String(v.workers),
      CLUSTER_EXEC: join(DIST, 'server.js'),
    };
    const script = v.workers === 1 ? join(DIST, 'server.js') : join(BENCH, 'cluster-worker.mjs');
    v.proc = startProcess(v.name, process.execPath, [script], { env, cwd: home, stdout: 'ignore' });
    v.url = `http://127.0.0.1:${port}`;
    await waitHttp(`${v.url}/v1/models`, { headers: auth, proc: v.proc });
    process.stderr.write(`${v.name}: ready\n`);
  }
  const post = wrkScript(tmp, 'chat', { method: 'POST', body: SMALL_BODY, headers: { ...auth, 'Content-Type': 'application/json' } });
  for (const v of VARIANTS) await runWrk({ url: `${v.url}/v1/chat/completions`, script: post, connections: 64, seconds: 2 });
  const res = Object.fromEntries(VARIANTS.map((v) => [v.name, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < VARIANTS.length; k++) {
      const v = VARIANTS[(k + r) % VARIANTS.length];
      const cpu0 = treeCpuSeconds(v.proc.pid);
      const redis0 = redisReading();
      const { result: m, otherCores } = await withNoise(() =>
        runWrk({ url: `${v.url}/v1/chat/completions`, script: post, connections: 64, seconds: SECONDS }),
      );
      const cpu = treeCpuSeconds(v.proc.pid) - cpu0;
      const redis1 = redisReading();
      if (m.errors) throw new Error(`${v.name}: ${m.errors} errors`);
      res[v.name].push({
        rps: m.rps,
        cpuUs: (cpu / m.requests) * 1e6,
        redisUs: ((redis1.cpu - redis0.cpu) / m.requests) * 1e6,
        redisCalls: (redis1.calls - redis0.calls - 2) / m.requests,
        redisScripts: (redis1.scripts - redis0.scripts) / m.requests,
        p99: m.p99,
        noise: otherCores,
      });
    }
    process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
  }
  const base = median(res['1 process'].map((x) => x.rps));
  console.log(`\nsmall POST, 64 connections, ${SECONDS} s × ${ROUNDS} rounds (medians); nothing pinned`);
  console.log(
    'variant'.padEnd(24),
    'req/s'.padStart(8),
    'vs 1 proc'.padStart(10),
    'gw CPU µs/req'.padStart(14),
    'Redis CPU µs/req'.padStart(17),
    'scripts/req'.padStart(12),
    'in-Redis cmds/req'.padStart(18),
    'p99 µs'.padStart(8),
    'noise'.padStart(6),
  );
  for (const v of VARIANTS) {
    const med = (k) => median(res[v.name].map((x) => x[k]));
    console.log(
      v.name.padEnd(24),
      med('rps').toFixed(0).padStart(8),
      `${(med('rps') / base).toFixed(2)}×`.padStart(10),
      med('cpuUs').toFixed(1).padStart(14),
      med('redisUs').toFixed(1).padStart(17),
      med('redisScripts').toFixed(2).padStart(12),
      med('redisCalls').toFixed(1).padStart(18),
      med('p99').toFixed(0).padStart(8),
      Math.max(...res[v.name].map((x) => x.noise))
        .toFixed(2)
        .padStart(6),
    );
  }
} finally {
  await stopAll();
  rmSync(tmp, { recursive: true, force: true });
}
