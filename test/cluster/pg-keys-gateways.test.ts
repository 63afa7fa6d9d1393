// Several gateway processes sharing their keys through PostgreSQL (GATEWAY_DATABASE_URL): a key
// created through one gateway's admin API, or with the CLI, works on all; disabled through another,
// it is refused by all. How long the last gateway took is printed (a comment in the TAP output);
// the only bound asserted is a generous one (the machine is shared).
import t from 'tap';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, tempDir, until } from '../helpers.js';
import { pgSchema, startGateways, type GatewayProcess } from './harness.js';
import { ADMIN_KEY, admin, keyAnswer, runCli } from './pg-keys-helpers.js';

const BOUND_MS = 10_000;

/** Polls every gateway until each gives `want`; the ms it took for the last one. */
async function reachesAll(
  gws: readonly GatewayProcess[],
  key: string,
  want: (a: { status: number; code: string | null }) => boolean,
  what: string,
): Promise<number> {
  const start = Date.now();
  let last = 0;
  await Promise.all(
    gws.map(async (gw) => {
      await until(`${what} on gateway ${gw.index}`, async () => want(await keyAnswer(gw.url, key)), BOUND_MS, 10);
      last = Math.max(last, Date.now() - start);
    }),
  );
  return last;
}

t.test('a key created and disabled through one gateway (or the CLI) reaches every gateway', async (t) => {
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const url = await pgSchema(t);
  const gws = await startGateways(t, 3, {
    env: { LLM_UPSTREAM: fake.url, LLM_API_KEYS: KEY_A, GATEWAY_DATABASE_URL: url, GATEWAY_ADMIN_KEY: ADMIN_KEY },
    readyMs: 40_000, // three at once on a shared machine
  });
  for (const gw of gws) {
    t.match(
      gw.output(),
      / {2}- Keys and usage: PostgreSQL \(GATEWAY_DATABASE_URL\)\n/,
      `gateway ${gw.index}'s banner says where the keys are`,
    );
    t.notMatch(gw.output(), /postgres:\/\//, 'never the URL');
  }

  const created = await admin(gws[0]!.url, 'POST', '/keys', { name: 'alice' });
  t.equal(created.status, 201);
  const key = created.body.key as string;
  t.same(await keyAnswer(gws[0]!.url, key), { status: 200, code: null }, 'the gateway that created it accepts it at once');
  const createdMs = await reachesAll(gws, key, (a) => a.status === 200, 'the new key accepted');
  t.comment(`created through gateway 0: accepted by all 3 within ${createdMs} ms`);

  const disabled = await admin(gws[1]!.url, 'PATCH', `/keys/${created.body.id as string}`, { enabled: false });
  t.equal(disabled.status, 200);
  t.same(await keyAnswer(gws[1]!.url, key), { status: 401, code: 'key_disabled' }, 'the gateway that disabled it refuses it at once');
  const disabledMs = await reachesAll(gws, key, (a) => a.status === 401 && a.code === 'key_disabled', 'the disabled key refused');
  t.comment(`disabled through gateway 1: refused (401 key_disabled) by all 3 within ${disabledMs} ms`);

  // The admin API reads the same rows from every gateway.
  const listed = await admin(gws[2]!.url, 'GET', '/keys');
  t.match(listed.body, { object: 'list', data: [{ name: 'alice', enabled: false }] });

  // The CLI, with GATEWAY_DATABASE_URL from .env: same commands, the same database.
  const cwd = tempDir(t);
  const cliEnv = { GATEWAY_DATABASE_URL: url };
  const made = await runCli(cwd, ['keys', 'create', '--name', 'carol', '--json'], cliEnv);
  t.equal(made.code, 0, made.stderr);
  const carol = JSON.parse(made.stdout) as { key: string; name: string };
  const cliMs = await reachesAll(gws, carol.key, (a) => a.status === 200, 'the CLI key accepted');
  t.comment(`created with the CLI: accepted by all 3 within ${cliMs} ms`);
  const off = await runCli(cwd, ['keys', 'disable', 'carol'], cliEnv);
  t.same(off, { code: 0, stdout: '✅ Key "carol" disabled.\n', stderr: '' });
  const cliOffMs = await reachesAll(gws, carol.key, (a) => a.status === 401, 'the CLI-disabled key refused');
  t.comment(`disabled with the CLI: refused by all 3 within ${cliOffMs} ms`);

  const list = await runCli(cwd, ['keys', 'list'], cliEnv);
  t.equal(list.code, 0, list.stderr);
  t.match(list.stdout, /^NAME +ID +PREFIX +ENABLED +EXPIRES +LAST USED +TOKENS TODAY +BUDGET +NOTE\n/);
  t.match(list.stdout, /\nalice +key_[0-9a-f]{12} +sk-\S+… +no +never /);
  t.match(list.stdout, /\ncarol +key_[0-9a-f]{12} +sk-\S+… +no +never /);
  // The last-used time the gateways write in batches (about once a second).
  const shown = await until(
    'alice shown with a last-used time',
    async () => {
      const r = await runCli(cwd, ['keys', 'show', 'alice'], cliEnv);
      return /\nlast used: {2}\d{4}-\d\d-\d\d /.test(r.stdout) && r;
    },
    BOUND_MS,
    200,
  );
  t.match(shown.stdout, /^name: {7}alice\n/);
  t.notMatch(list.stdout + list.stderr + shown.stdout + made.stderr, /postgres:\/\//);

  // A graceful stop on PostgreSQL: the feed closed, the last last-used times written, the pool ended.
  gws[0]!.child.kill('SIGTERM');
  t.equal(await gws[0]!.exit, 0, 'SIGTERM: exit 0');
  t.match(gws[0]!.output(), /"msg":"stopped"/);
});
