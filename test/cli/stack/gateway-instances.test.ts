// pm2-config.json's gateway "instances" (issue 17): checked like every other field (a message that
// names it), the PM2 app it gives (fork for 1, cluster mode for N ≥ 2), and several instances
// without GATEWAY_REDIS_URL refused before PM2 is asked (limits would be N times what was set).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { stackFindings, startBlockers } from '../../../src/cli/stack/findings.js';
import { ecosystemApps, pm2App } from '../../../src/cli/stack/pm2-apps.js';
import {
  MAX_GATEWAY_INSTANCES,
  StackConfigError,
  defaultStackConfig,
  loadStackConfig,
  parseStackConfig,
} from '../../../src/cli/stack/pm2-config.js';
import { tempDir, type Teardown } from '../../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
const SERVER = join(ROOT, 'dist', 'server.js');
const ENV = { PATH: process.env.PATH ?? '' };
const FILE = join(ROOT, 'pm2-config.json');

function withGateway(fields: Record<string, unknown>): Record<string, unknown> {
  const c = defaultStackConfig() as Record<string, Record<string, unknown>>;
  c.gateway = { ...c.gateway, ...fields };
  return c;
}

function problemsOf(raw: unknown): string[] {
  try {
    parseStackConfig(raw, FILE);
  } catch (err) {
    if (err instanceof StackConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

/** A project whose gateway runs dist/server.js `instances` times; llama-server and the tunnel off. */
function project(t: Teardown, instances: number, dotEnv = ''): string {
  const dir = tempDir(t);
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=sk-test-alice-0123456789abcdef\n${dotEnv}`);
  const c = defaultStackConfig() as Record<string, Record<string, unknown>>;
  c.llama!.enabled = false;
  c.tunnel!.enabled = false;
  c.gateway!.args = [SERVER];
  c.gateway!.instances = instances;
  mkdirSync(join(dir, 'data'));
  const file = join(dir, 'pm2-config.json');
  writeFileSync(file, JSON.stringify(c, null, 2));
  return file;
}

t.test('instances: a whole number of gateways, 1 by default', async (t) => {
  const { instances: _default, ...gateway } = defaultStackConfig().gateway as Record<string, unknown>;
  const without = { ...defaultStackConfig(), gateway };
  t.equal(parseStackConfig(without, FILE).processes.gateway.instances, 1, 'left out: one gateway');
  for (const n of [1, 2, 4, MAX_GATEWAY_INSTANCES])
    t.equal(parseStackConfig(withGateway({ instances: n }), FILE).processes.gateway.instances, n);
  const stack = parseStackConfig(withGateway({ instances: 4 }), FILE);
  t.same(
    [...stack.processes.llama, stack.processes.tunnel].map((s) => s.instances),
    [1, 1],
    'llama-server and the tunnel always run once',
  );
});

t.test('a wrong instances is named with what it wants', async (t) => {
  const wants = `gateway.instances must be a whole number of gateway processes from 1 to ${MAX_GATEWAY_INSTANCES}, such as 4`;
  t.same(problemsOf(withGateway({ instances: '4' })), [`${wants}, got "4" (write 4 without quotes)`]);
  t.same(problemsOf(withGateway({ instances: 0 })), [`${wants}, got 0`]);
  t.same(problemsOf(withGateway({ instances: -1 })), [`${wants}, got -1`]);
  t.same(problemsOf(withGateway({ instances: 2.5 })), [`${wants}, got 2.5`]);
  t.same(problemsOf(withGateway({ instances: MAX_GATEWAY_INSTANCES + 1 })), [`${wants}, got ${MAX_GATEWAY_INSTANCES + 1}`]);
  t.same(problemsOf(withGateway({ instances: 'max' })), [`${wants}, got "max"`], "PM2's 'max' is not taken: say how many");
  t.same(problemsOf(withGateway({ instances: true })), [`${wants}, got true`]);
  t.same(problemsOf(withGateway({ instances: null })), [`${wants}, got null`]);
  t.same(problemsOf(withGateway({ instances: 2, command: 'bun' })), [
    'gateway.instances 2 needs "command": "node": PM2 runs several instances in cluster mode, which starts Node.js scripts only (got "bun")',
  ]);
  t.same(problemsOf(withGateway({ instances: 1, command: 'bun' })), [], 'one instance runs any program');

  const c = defaultStackConfig() as Record<string, Record<string, unknown>>;
  c.llama!.instances = 2;
  c.tunnel!.instances = 2;
  t.same(problemsOf(c), [
    'llama: unknown field "instances" (expected name, enabled, command, args, cwd, env)',
    'tunnel: unknown field "instances" (expected enabled, command, args, cwd, env)',
  ]);
});

t.test('the PM2 app: fork mode for one gateway, cluster mode for four', async (t) => {
  const one = loadStackConfig(project(t, 1, 'GATEWAY_REDIS_URL=redis://127.0.0.1:6379\n'));
  const fork = pm2App(one, one.processes.gateway, ENV);
  t.match(fork, { name: 'gateway', script: SERVER, exec_mode: 'fork', wait_ready: true, listen_timeout: 15_000, kill_timeout: 35_000 });
  t.notOk('instances' in fork, 'one gateway: the definition of before, no instances');

  const four = loadStackConfig(project(t, 4, 'GATEWAY_REDIS_URL=redis://127.0.0.1:6379\nGATEWAY_SHUTDOWN_GRACE_MS=10000\n'));
  const cluster = pm2App(four, four.processes.gateway, ENV);
  t.same(cluster, {
    name: 'gateway',
    cwd: four.root,
    env: {},
    exec_mode: 'cluster',
    instances: 4,
    autorestart: true,
    script: SERVER,
    args: [],
    interpreter: fork.interpreter,
    node_args: [],
    wait_ready: true,
    listen_timeout: 15_000,
    kill_timeout: 15_000,
  });
  t.same(ecosystemApps(four.file, ENV), [cluster], 'ecosystem.config.cjs gives PM2 the same');
});

t.test('several instances without GATEWAY_REDIS_URL are refused before PM2 is asked', async (t) => {
  const stack = loadStackConfig(project(t, 4));
  const refusal =
    'gateway.instances 4 without GATEWAY_REDIS_URL: each of the 4 gateways would keep its own limits, budgets, failed-auth brake and llama-server slots (4× what you set); set GATEWAY_REDIS_URL (README, Running several gateways) or "instances": 1';
  t.same(startBlockers(stack, stack.processes.gateway, ENV), [refusal]);
  t.same(
    stackFindings(stack, ENV, { settings: false }).filter((f) => f.level !== 'ok'),
    [{ level: 'fail', topic: 'gateway', text: refusal }],
    'doctor and the menu say it as a problem',
  );
  t.throws(() => ecosystemApps(stack.file, ENV), { name: 'StackConfigError', message: new RegExp(`gateway: ${refusal.slice(0, 40)}`) });
  t.same(startBlockers(stack, stack.processes.gateway, { ...ENV, GATEWAY_REDIS_URL: 'redis://10.0.0.5:6379' }), [], 'from the environment');
  const alone = loadStackConfig(project(t, 1));
  t.same(startBlockers(alone, alone.processes.gateway, ENV), [], 'one gateway needs no Redis');
});
