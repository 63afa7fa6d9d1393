// Several gateways under PM2 (issue 17): pm2-config.json's gateway "instances": 2 started from the
// menu runs two dist/server.js processes in PM2 cluster mode on one GATEWAY_PORT, sharing the
// machine's Redis (a prefix of this test's own). What a person sees: a table row per instance, both
// answering (each instance's own log shows requests), doctor listing each instance and Redis, and
// both stopping gracefully on `k`. The test has its own PM2_HOME and kills that daemon at the end.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { runMenu } from '../../src/cli/menu.js';
import { Pm2, daemonRunning } from '../../src/cli/pm2.js';
import { defaultStackConfig } from '../../src/cli/stack/pm2-config.js';
import { REDIS_URL, redisPrefix } from '../cluster/harness.js';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, freePort, request, until } from '../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const SERVER = join(ROOT, 'dist', 'server.js');
const WAIT_MS = 30_000;
const PROMPT = /q quit\n> $/;

if (!existsSync(SERVER)) throw new Error('dist/ is missing: build first (npx tsc -p tsconfig.json; npm test does it)');

function alive(pid: number): boolean {
  const stat = spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim();
  return stat !== '' && !stat.startsWith('Z');
}

function psShows(text: string): boolean {
  return spawnSync('ps', ['-eo', 'stat=,args='], { encoding: 'utf8' })
    .stdout.split('\n')
    .some((line) => line.includes(text) && !line.trim().startsWith('Z'));
}

async function killDaemon(home: string): Promise<void> {
  if (daemonRunning(home)) {
    const pm2 = await Pm2.connect(home);
    const pids = (await pm2.list()).flatMap((p) => (p.pid === null ? [] : [p.pid]));
    await pm2.killDaemon();
    await until('the processes PM2 ran to end', () => pids.every((pid) => !alive(pid)), WAIT_MS, 50);
  }
  await until(`no process of ${home} in ps`, () => !psShows(home), WAIT_MS, 50);
}

/** The status table's rows for names starting with `prefix`: [name, state, pid, uptime, restarts, memory, cpu]. */
function rows(screenText: string, prefix: string): string[][] {
  const tables = screenText.split('NAME').slice(1);
  const last = tables[tables.length - 1] ?? '';
  return last
    .split('\n')
    .filter((l) => l.trimStart().startsWith(prefix))
    .map((l) => l.trim().split(/\s{2,}/));
}

t.test('instances: 2 runs two gateways on one port in PM2 cluster mode; menu and doctor show each', async (t) => {
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const dir = mkdtempSync(join(tmpdir(), 'gw-pm2-cluster-'));
  const home = join(dir, 'pm2');
  t.teardown(async () => {
    await killDaemon(home);
    rmSync(dir, { recursive: true, force: true });
  });
  const port = await freePort();
  const prefix = redisPrefix();
  writeFileSync(
    join(dir, '.env'),
    `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${port}\nGATEWAY_DB=./data/gateway.db\n` +
      `GATEWAY_REDIS_URL=${REDIS_URL}\nGATEWAY_REDIS_PREFIX=${prefix}\nGATEWAY_SHUTDOWN_GRACE_MS=2000\n`,
  );
  const config = defaultStackConfig() as Record<string, Record<string, unknown>>;
  config.llama!.enabled = false;
  config.tunnel!.enabled = false;
  config.gateway!.args = [SERVER];
  config.gateway!.instances = 2;
  writeFileSync(join(dir, 'pm2-config.json'), JSON.stringify(config, null, 2));

  const input = new PassThrough();
  const output = new PassThrough();
  let text = '';
  output.on('data', (d: Buffer) => (text += d.toString('utf8')));
  const done = runMenu({
    input,
    output,
    pm2Home: home,
    configPath: join(dir, 'pm2-config.json'),
    env: { PATH: process.env.PATH ?? '', HOME: dir },
    settleMs: 500,
    color: false,
  });
  t.teardown(async () => {
    input.end();
    await done.catch(() => 0);
  });
  const screenAfter = async (keys: string): Promise<string> => {
    const from = text.length;
    if (keys !== '') input.write(`${keys}\n`);
    await until(`the menu after ${JSON.stringify(keys)}`, () => PROMPT.test(text.slice(from)), WAIT_MS, 50);
    return text.slice(from);
  };

  const first = await screenAfter('');
  t.same(rows(first, 'gateway')[0]?.slice(0, 2), ['gateway', 'not started']);
  t.match(first, new RegExp(`redis +127\\.0\\.0\\.1:6379 +up · PING in [\\d.]+ ms .*key prefix ${prefix}\n`), 'Redis under the table');
  t.notMatch(first, /[✘⚠]/, 'instances 2 with GATEWAY_REDIS_URL is a consistent set-up');

  let screen = await screenAfter('2');
  t.match(screen, /Starting gateway…\n✔ gateway online: 2 instances \(pids \d+, \d+\)\n/);
  const table = rows(screen, 'gateway:');
  t.same(
    table.map((r) => r.slice(0, 2)),
    [
      ['gateway:0', 'online'],
      ['gateway:1', 'online'],
    ],
    'one row per instance',
  );
  for (const r of table) {
    t.match(r[2], /^\d+$/, 'pid');
    t.equal(r[4], '0', 'no restart');
    t.match(r[5], /^[\d.]+ (KB|MB|GB)$/, 'memory');
  }
  t.not(table[0]![2], table[1]![2], 'two processes');

  const pm2 = await Pm2.connect(home);
  const gateways = await pm2.instances('gateway');
  await pm2.disconnect();
  t.same(
    gateways.map((g) => [g.status, g.cluster, g.instance]),
    [
      ['online', true, 0],
      ['online', true, 1],
    ],
    'PM2 runs them in cluster mode',
  );
  const logs = gateways.map((g) => g.outLog ?? '');
  t.not(logs[0], logs[1], 'a log file per instance');

  // Both answer on the one port: Node's cluster module hands each new connection to the next worker.
  await until(
    'a request answered by each instance (its own log has it)',
    async () => {
      const r = await request(port, { path: '/v1/models', headers: { authorization: `Bearer ${KEY_A}` } });
      if (r.status !== 200) throw new Error(`GET /v1/models → ${r.status}: ${r.text}`);
      return logs.every((file) => existsSync(file) && /"url":"\/v1\/models","status":200/.test(readFileSync(file, 'utf8')));
    },
    WAIT_MS,
    20,
  );

  screen = await screenAfter('d');
  t.match(screen, new RegExp(`Redis at 127\\.0\\.0\\.1:6379 \\(GATEWAY_REDIS_URL\\): PING in [\\d.]+ ms .*key prefix ${prefix}\n`));
  t.match(screen, /✔ gateway:0 online \(pm2 id \d+, pid \d+, 0 restarts, up \d+s, [\d.]+ (KB|MB)\)\n/);
  t.match(screen, /✔ gateway:1 online \(pm2 id \d+, pid \d+, 0 restarts, up \d+s, [\d.]+ (KB|MB)\)\n/);
  t.match(screen, /✔ gateway: all 2 instances online, sharing one port \(PM2 cluster mode\)\n/);
  t.match(screen, new RegExp(`✔ gateway answers on http://127\\.0\\.0\\.1:${port}/healthz\n`));
  t.match(screen, /✔ All \d+ checks passed\./);
  t.notMatch(screen, 'redis://', 'no Redis URL printed, only host:port');

  screen = await screenAfter('9');
  for (const g of gateways) t.match(screen, `── gateway:${g.instance}: last `, 'the log of each instance');

  screen = await screenAfter('k');
  t.match(screen, /Stopping gateway…\n■ gateway stopped\n/);
  t.same(
    rows(screen, 'gateway:').map((r) => r.slice(0, 2)),
    [
      ['gateway:0', 'stopped'],
      ['gateway:1', 'stopped'],
    ],
  );
  for (const file of logs) t.match(readFileSync(file, 'utf8'), /"msg":"stopped"/, 'each instance shut down gracefully (SIGINT, app.close)');

  await screenAfter('q').catch(() => '');
  t.equal(await done, 0);
});
