// `llm-gateway doctor` with the services several gateways share (issue 17): the machine's Redis
// (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, db test, a schema of this test's own) each
// answer with a latency, the key prefix and the schema version; one that cannot be reached (a free
// port) is a failure with its fix in one line. Their URLs carry a password here: it must never be
// printed, only host:port.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { PG_MIGRATIONS, migratePg, pgPool } from '../../src/storage/pg.js';
import { pgSchema, redisPrefix } from '../cluster/harness.js';
import { startFakeLlama, type FakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, freePort, type Teardown } from '../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const SECRET = 'pw-never-shown-7f3a';

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p tsconfig.json; npm test does it)`);

function doctor(cwd: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [CLI, 'doctor'], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOME: cwd, PM2_HOME: join(cwd, 'pm2') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolveRun({ code, out });
    });
  });
}

async function folder(t: Teardown, settings: string): Promise<{ dir: string; fake: FakeLlama }> {
  const fake = await startFakeLlama();
  const dir = mkdtempSync(join(tmpdir(), 'gw-doctor-shared-'));
  t.teardown(async () => {
    await fake.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const port = await freePort();
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${port}\n${settings}`);
  return { dir, fake };
}

/** The lines of one section of the checklist, its title first. */
function section(out: string, title: string): string {
  const at = out.indexOf(`${title}\n`);
  return at < 0 ? '' : out.slice(at, out.indexOf('\n\n', at) + 1);
}

/** `url` with a user and password put in (the services here trust local connections and ignore it). */
function withPassword(url: string, user: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = SECRET;
  return u.toString();
}

t.test('Redis and PostgreSQL configured and up: latency, key prefix, schema version; no password shown', async (t) => {
  const prefix = redisPrefix();
  const pgUrl = withPassword(await pgSchema(t), 'postgres');
  const { dir } = await folder(
    t,
    `GATEWAY_REDIS_URL=redis://default:${SECRET}@127.0.0.1:6379\nGATEWAY_REDIS_PREFIX=${prefix}\nGATEWAY_DATABASE_URL=${pgUrl}\n`,
  );
  const fresh = await doctor(dir);
  t.equal(fresh.code, 0, fresh.out);
  t.match(
    section(fresh.out, 'Shared services (several gateways)'),
    new RegExp(
      [
        'Shared services \\(several gateways\\)',
        `  ✔ Redis at 127\\.0\\.0\\.1:6379 \\(GATEWAY_REDIS_URL\\): PING in [\\d.]+ ms \\(Redis [\\d.]+\\), key prefix ${prefix}`,
        '  ✔ PostgreSQL at 127\\.0\\.0\\.1:5432/test \\(GATEWAY_DATABASE_URL\\): SELECT 1 in [\\d.]+ ms, no gateway tables yet \\(the first gateway creates them\\)',
        '',
      ].join('\n'),
    ),
  );
  t.match(
    section(fresh.out, 'Keys'),
    '  ✔ 1 key in LLM_API_KEYS; the key database is PostgreSQL (GATEWAY_DATABASE_URL, see Shared services)\n',
  );
  t.notMatch(fresh.out, SECRET, 'no password printed');
  t.notMatch(fresh.out, /redis:\/\/|postgres:\/\//, 'no URL printed');

  const pool = pgPool(pgUrl);
  t.teardown(() => pool.end());
  await migratePg(pool);
  const migrated = await doctor(dir);
  t.equal(migrated.code, 0, migrated.out);
  t.match(migrated.out, new RegExp(`SELECT 1 in [\\d.]+ ms, schema version ${PG_MIGRATIONS.length} \\(current\\)\n`));

  await pool.query('UPDATE schema_version SET version = $1', [PG_MIGRATIONS.length - 1]);
  const older = await doctor(dir);
  t.equal(older.code, 0, 'an older schema is migrated by the next gateway: a warning');
  t.match(older.out, `, schema version ${PG_MIGRATIONS.length - 1}: a gateway starting migrates it to ${PG_MIGRATIONS.length}\n`);
  t.match(older.out, '  ⚠ PostgreSQL at ');
});

t.test('configured but unreachable: a failure each, with the fix in one line', async (t) => {
  const [redisPort, pgPort] = [await freePort(), await freePort()];
  const { dir } = await folder(
    t,
    `GATEWAY_REDIS_URL=redis://:${SECRET}@127.0.0.1:${redisPort}\nGATEWAY_DATABASE_URL=postgres://gw:${SECRET}@127.0.0.1:${pgPort}/gateway\n`,
  );
  const run = await doctor(dir);
  t.equal(run.code, 1, run.out);
  t.equal(
    section(run.out, 'Shared services (several gateways)'),
    `Shared services (several gateways)
  ✘ Redis at 127.0.0.1:${redisPort} (GATEWAY_REDIS_URL) cannot be reached (connection refused): start it or fix GATEWAY_REDIS_URL; meanwhile each gateway counts limits alone (GATEWAY_REDIS_DOWN=local)
  ✘ PostgreSQL at 127.0.0.1:${pgPort}/gateway (GATEWAY_DATABASE_URL) cannot be reached (connection refused (is PostgreSQL running and listening there?)): start it or fix GATEWAY_DATABASE_URL; meanwhile running gateways serve keys from memory and spool usage to ./data/usage-spool
`,
  );
  t.match(run.out, /✘ 2 of \d+ checks failed\./);
  t.notMatch(run.out, SECRET, 'no password printed');

  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=${KEY_A}\nGATEWAY_REDIS_URL=redis://127.0.0.1:${redisPort}\nGATEWAY_REDIS_DOWN=refuse\n`);
  const refusing = await doctor(dir);
  t.match(refusing.out, 'meanwhile each gateway answers 503 (GATEWAY_REDIS_DOWN=refuse)\n');
});

t.test('neither set: no Shared services section (one gateway on the SQLite file)', async (t) => {
  const { dir } = await folder(t, '');
  const run = await doctor(dir);
  t.notMatch(run.out, 'Shared services');
});
