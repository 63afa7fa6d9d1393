// Prices and costs: GATEWAY_PRICES read at start (per model, `*`, an optional cached-prompt price),
// each record's cost computed once from its final numbers and stored, and the reports that add the
// stored costs up (COST column in the CLI's table, CSV and JSON; `cost` in the admin API).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { UsageRecorder } from '../../src/usage/recorder.js';
import { NO_PRICES, costOf, parsePrices, roundCost } from '../../src/usage/prices.js';
import { AUTH_A, KEY_A, KEY_B, chatBody, request, startGateway, until, usageRecord, type Gateway } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const ADMIN = 'admin-secret-0123456789abcdef0123456789';
const AUTH_ADMIN = { authorization: `Bearer ${ADMIN}` };

function runCli(
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface Row {
  model: string | null;
  status: number;
  prompt_tokens: number | null;
  cached_tokens: number | null;
  completion_tokens: number | null;
  cost: number | null;
}

async function setup(
  t: Parameters<typeof startGateway>[0],
  overrides: Parameters<typeof startGateway>[1] = {},
): Promise<{ gw: Gateway; dir: string; dbPath: string; rows(): Row[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-prices-'));
  const dbPath = join(dir, 'gateway.db');
  const store = KeyStore.open(dbPath);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(
    t,
    { auditLog: join(dir, 'audit.jsonl'), adminKey: ADMIN, ...overrides },
    {},
    { registry, usageFlushMs: 20 },
  );
  t.teardown(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const rows = (): Row[] =>
    store.db.prepare('SELECT model, status, prompt_tokens, cached_tokens, completion_tokens, cost FROM usage ORDER BY id').all() as Row[];
  return { gw, dir, dbPath, rows };
}

t.test('GATEWAY_PRICES and GATEWAY_PRICE_CURRENCY: read at start, a bad one named', async (t) => {
  const env = { LLM_API_KEYS: KEY_A };
  const c = loadConfig(env);
  t.equal(c.prices, NO_PRICES, 'empty: no prices');
  t.equal(c.priceCurrency, 'USD');
  const list = loadConfig({
    ...env,
    GATEWAY_PRICES: ' gpt-oss-20b=0.10/0.40 , org/qwen3:8b=1/2/0.5,*=.05/0.20,',
    GATEWAY_PRICE_CURRENCY: 'EUR',
  });
  t.same(
    [...list.prices.models],
    [
      ['gpt-oss-20b', { prompt: 0.1, completion: 0.4, cached: 0.1 }],
      ['org/qwen3:8b', { prompt: 1, completion: 2, cached: 0.5 }],
    ],
  );
  t.same(list.prices.other, { prompt: 0.05, completion: 0.2, cached: 0.05 }, 'no cached price: the prompt price');
  t.equal(list.priceCurrency, 'EUR');
  t.same([...parsePrices('a=b=1/2').models.keys()], ['a=b'], 'the last = splits');
  const bad: [Record<string, string>, RegExp][] = [
    [{ GATEWAY_PRICES: 'gpt=0.1' }, /^GATEWAY_PRICES must be a comma list of MODEL=PROMPT\/COMPLETION\[\/CACHED\] .*got "gpt=0.1"$/],
    [{ GATEWAY_PRICES: 'gpt=0.1/0.2/0.3/0.4' }, /got "gpt=0.1\/0.2\/0.3\/0.4"/],
    [{ GATEWAY_PRICES: 'gpt=-1/2' }, /got "gpt=-1\/2"/],
    [{ GATEWAY_PRICES: 'gpt=1e3/2' }, /got "gpt=1e3\/2"/],
    [{ GATEWAY_PRICES: '=1/2' }, /got "=1\/2"/],
    [{ GATEWAY_PRICES: 'gpt 1/2' }, /got "gpt 1\/2"/],
    [{ GATEWAY_PRICES: 'a=1/2,a=3/4' }, /^GATEWAY_PRICES names a twice$/],
    [{ GATEWAY_PRICES: '*=1/2,*=3/4' }, /^GATEWAY_PRICES names \* twice$/],
    [
      { GATEWAY_PRICE_CURRENCY: 'US$' },
      /^GATEWAY_PRICE_CURRENCY must be a currency label such as USD or EUR \(letters only\), got "US\$"$/,
    ],
  ];
  for (const [over, message] of bad) {
    t.throws(() => loadConfig({ ...env, ...over }), ConfigError);
    t.throws(() => loadConfig({ ...env, ...over }), { message }, JSON.stringify(over));
  }
});

t.test('a record costs its uncached prompt, cached prompt and completion tokens at their prices', async (t) => {
  const list = parsePrices('m=2/8/0.5,*=1/1');
  const r = { model: 'm', promptTokens: 1_000_000, cachedTokens: 400_000, completionTokens: 250_000 };
  t.equal(costOf(list, r), 0.6 * 2 + 0.4 * 0.5 + 0.25 * 8, 'prompt 600k × 2 + cached 400k × 0.5 + completion 250k × 8');
  t.equal(costOf(parsePrices('m=2/8'), r), 1 * 2 + 0.25 * 8, 'no cached price: cached tokens cost the prompt price');
  t.equal(costOf(list, { ...r, model: 'other' }), 1.25, 'another model: *');
  t.equal(costOf(list, { ...r, model: null }), 1.25, 'no model named (llama-server default): *');
  t.equal(costOf(parsePrices('m=2/8'), { ...r, model: 'other' }), null, 'no price and no *: no cost');
  t.equal(costOf(NO_PRICES, r), null);
  t.equal(costOf(list, { model: 'm', promptTokens: null, cachedTokens: null, completionTokens: null }), 0, 'a refusal costs nothing');
  t.equal(
    costOf(list, { model: 'm', promptTokens: 10, cachedTokens: 50, completionTokens: 0 }),
    (10 * 0.5) / 1e6,
    'cached never above prompt',
  );
  t.equal(
    costOf(parsePrices('m=0.10/0.40'), { model: 'm', promptTokens: 1234, cachedTokens: 0, completionTokens: 567 }),
    (1234 * 0.1 + 567 * 0.4) / 1e6,
  );
  t.equal(roundCost(0.1 + 0.2), 0.3, 'reports drop float noise');
  t.equal(roundCost(null), null);

  // The recorder prices each record once, before anyone sees it (listeners, the table, the audit log).
  const priced = new UsageRecorder({ prices: list });
  const seen: (number | null)[] = [];
  priced.onRecord((rec) => seen.push(rec.cost));
  priced.record({ ...usageRecord(1), model: 'm', promptTokens: 100, cachedTokens: null, completionTokens: 10 });
  const unpriced = new UsageRecorder({ prices: NO_PRICES });
  unpriced.onRecord((rec) => seen.push(rec.cost));
  unpriced.record({ ...usageRecord(2), model: 'm' });
  t.same(seen, [(100 * 2 + 10 * 8) / 1e6, null]);
});

t.test('each record stores its cost; the audit log carries it; no prices: null', async (t) => {
  const s = await setup(t, { prices: parsePrices('gpt-oss-20b=0.10/0.40/0.025,*=1/2') });
  const send = (body: string, path = '/v1/chat/completions'): Promise<number> =>
    request(s.gw.port, { path, headers: AUTH_A, body }).then((r) => r.status);
  t.equal(await send(chatBody()), 200);
  t.equal(await send(chatBody()), 200, 'the same prompt again: some of it cached');
  t.equal(await send(chatBody({ stream: true })), 200);
  t.equal(await send('{"model":"embed","input":["a","b"]}', '/v1/embeddings'), 200, 'another model: *');
  t.equal(await send('{"model":42}'), 400, 'refused: priced at nothing');
  await until('5 rows', () => s.rows().length === 5 || undefined);
  const rows = s.rows();
  const list = parsePrices('gpt-oss-20b=0.10/0.40/0.025,*=1/2');
  for (const r of rows) {
    const expected = costOf(list, {
      model: r.model,
      promptTokens: r.prompt_tokens,
      cachedTokens: r.cached_tokens,
      completionTokens: r.completion_tokens,
    });
    t.equal(r.cost, expected, `${r.model} ${r.status}: ${r.prompt_tokens}/${r.cached_tokens}/${r.completion_tokens}`);
  }
  t.ok(
    rows.slice(0, 4).every((r) => r.cost! > 0),
    'answered requests cost something',
  );
  t.ok((rows[1]!.cached_tokens ?? 0) > 0, 'the second chat had cached tokens');
  t.equal(rows[4]!.cost, 0);
  await s.gw.app.close();
  const file = readdirSync(s.dir).find((f) => f.startsWith('audit-'))!;
  const lines = readFileSync(join(s.dir, file), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { cost: number | null });
  t.same(
    lines.map((l) => l.cost),
    rows.map((r) => r.cost),
  );

  const none = await setup(t);
  await request(none.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await until('1 row', () => none.rows().length === 1 || undefined);
  t.equal(none.rows()[0]!.cost, null, 'no prices: no cost');
});

t.test('reports add stored costs up: admin API, and a COST column in the CLI', async (t) => {
  const s = await setup(t, { priceCurrency: 'EUR' });
  const since = Date.now() - 3_600_000;
  const rec = (i: number, keyName: string, model: string, cost: number | null): ReturnType<typeof usageRecord> => ({
    ...usageRecord(i),
    ts: since + i * 1000,
    keyId: `key_${keyName}`,
    keyName,
    model,
    endUser: i % 2 === 0 ? 'ann' : null,
    cost,
  });
  s.gw.app.usageStore!.insert([
    rec(1, 'alice', 'chat', 0.1),
    rec(2, 'alice', 'chat', 0.2),
    rec(3, 'alice', 'embed', 0.0000004),
    rec(4, 'bob', 'chat', 1.5),
    rec(5, 'bob', 'old', null), // before prices were set
  ]);
  const get = async (path: string): Promise<{ currency: string; data: Record<string, unknown>[]; total: Record<string, unknown> }> => {
    const r = await request(s.gw.port, { path, headers: AUTH_ADMIN });
    t.equal(r.status, 200, path);
    return JSON.parse(r.text) as { currency: string; data: Record<string, unknown>[]; total: Record<string, unknown> };
  };
  const byModel = await get('/admin/usage?by=model');
  t.equal(byModel.currency, 'EUR');
  t.same(
    byModel.data.map((r) => [r.model, r.cost]),
    [
      ['chat', 1.8],
      ['embed', 0],
      ['old', null],
    ],
    'summed, rounded to 6 decimals; a group without any cost: null',
  );
  t.equal(byModel.total.cost, 1.8);
  t.same(
    (await get('/admin/usage?by=user')).data.map((r) => [r.key, r.user, r.cost]),
    [
      ['alice', '(none)', 0.1],
      ['alice', 'ann', 0.2],
      ['bob', '(none)', null],
      ['bob', 'ann', 1.5],
    ],
  );
  const one = (await get('/admin/requests?key=alice&limit=1')) as unknown as { data: Record<string, unknown>[] };
  t.match(one.data, [{ request_id: 'req-3', cost: 0 }]);

  await s.gw.app.close();
  const table = await runCli(['usage', '--db', s.dbPath, '--by', 'key'], s.dir, { GATEWAY_PRICE_CURRENCY: 'EUR' });
  t.equal(table.code, 0, table.stderr);
  t.equal(
    table.stdout,
    [
      'KEY    REQUESTS  PROMPT  CACHED  COMPLETION  TOTAL  EST.  ERRORS  COST (EUR)',
      'alice         3       3       0           6      9     0       0        0.30',
      'bob           2       2       0           4      6     0       0        1.50',
      '-----  --------  ------  ------  ----------  -----  ----  ------  ----------',
      'TOTAL         5       5       0          10     15     0       0        1.80',
      '',
    ].join('\n'),
  );
  const csv = await runCli(['usage', '--db', s.dbPath, '--by', 'model', '--csv'], s.dir);
  t.equal(
    csv.stdout,
    'model,requests,prompt_tokens,cached_tokens,completion_tokens,total_tokens,estimated,errors,cost_usd\n' +
      'chat,3,3,0,6,9,0,0,1.8\nembed,1,1,0,2,3,0,0,0\nold,1,1,0,2,3,0,0,\n',
    'the currency label comes from GATEWAY_PRICE_CURRENCY (default USD); no cost: an empty cell',
  );
  const json = await runCli(['usage', '--db', s.dbPath, '--by', 'model', '--json'], s.dir, { GATEWAY_PRICE_CURRENCY: 'EUR' });
  const parsed = JSON.parse(json.stdout) as { currency: string; data: { model: string; cost: number | null }[]; total: { cost: number } };
  t.equal(parsed.currency, 'EUR');
  t.same(
    parsed.data.map((d) => [d.model, d.cost]),
    [
      ['chat', 1.8],
      ['embed', 0],
      ['old', null],
    ],
  );
  t.equal(parsed.total.cost, 1.8);
  const unpriced = await runCli(['usage', '--db', s.dbPath, '--key', 'bob', '--by', 'model', '--csv'], s.dir);
  t.match(unpriced.stdout, /,cost_usd\n/, 'a selection with some cost keeps the column');
  const noCost = await runCli(['usage', '--db', s.dbPath, '--by', 'model', '--csv', '--since', '2999-01-01'], s.dir);
  t.equal(
    noCost.stdout,
    'model,requests,prompt_tokens,cached_tokens,completion_tokens,total_tokens,estimated,errors\n',
    'no cost recorded: no column',
  );
});
