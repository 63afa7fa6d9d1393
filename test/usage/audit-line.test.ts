// Accounting cost (issue #18) without giving anything up: the audit line written by hand is, byte
// for byte, what JSON.stringify({ time, ...record }) writes (odd strings, odd numbers, the optional
// fields, records built by hand), also end to end through the gateway; the batch insert stores
// every column of every record, whatever the batch size, or nothing of a batch that fails.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { auditLine, isoTime } from '../../src/usage/audit-line.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { UsageStore } from '../../src/usage/store.js';
import { AUTH_A, chatBody, request, startGateway, tempStore, usageRecord } from '../helpers.js';

const generic = (r: UsageRecord): string => JSON.stringify({ time: new Date(r.ts).toISOString(), ...r });

t.test('the audit line is what JSON.stringify writes', async (t) => {
  const base = usageRecord(1);
  const cases: [string, UsageRecord][] = [
    ['a plain record', base],
    [
      'every nullable field null',
      { ...base, keyId: null, keyName: null, model: null, promptTokens: null, completionTokens: null, clientIp: null },
    ],
    ['quotes, backslashes, control characters', { ...base, userAgent: 'a "b" \\c\n\t\u0001\u001f', endUser: 'x"y' }],
    ['non-ASCII and a surrogate pair', { ...base, endUser: 'Zoë 用户 🦙', model: 'модель' }],
    ['a lone surrogate (escaped by JSON.stringify)', { ...base, userAgent: 'bad \ud800 half', endUser: '\udfff' }],
    ['fractional numbers, a price', { ...base, ts: 1795674703123.789, durationMs: 0.1 + 0.2, ttftMs: 1e-7, cost: 0.00000123 }],
    ['big numbers', { ...base, bytesOut: 1e21, promptTokens: 2 ** 53 }],
    ['NaN and Infinity (JSON writes null)', { ...base, durationMs: Number.NaN, ttftMs: Number.POSITIVE_INFINITY, cost: -Infinity }],
    ['streamed, estimated', { ...base, streamed: true, estimated: true, outcome: 'client_closed' }],
    ['with an estimate', { ...base, estimated: true, estimate: { completion: 'relayed' } }],
    ['with bodies', { ...base, requestBody: '{"a":1}', responseText: 'hi "there"' }],
    [
      'an estimate added after the bodies (the completer)',
      Object.assign({ ...base, requestBody: 'q' }, { estimate: { prompt: 'counted' as const } }),
    ],
    ['a field missing (a record built by hand)', { ...base, endUser: undefined } as unknown as UsageRecord],
    ['a field of another type', { ...base, status: '200' } as unknown as UsageRecord],
    ['a boolean field missing', { ...base, streamed: undefined } as unknown as UsageRecord],
  ];
  for (const [what, r] of cases) t.equal(auditLine(r), generic(r), what);
});

t.test('isoTime is new Date(ts).toISOString(), also across seconds, backwards, and outside 1970–9999', async (t) => {
  const start = Date.UTC(2026, 10, 29, 23, 59, 58, 990);
  const times: number[] = [];
  for (let ms = 0; ms < 2100; ms += 7) times.push(start + ms);
  times.push(start + 0.999, start + 1000.5, start - 1, start, start + 86_400_000, 0, 999, 1000, -1, -1500.5, 8.64e15, 253402300800000);
  const bad = times.filter((ts) => isoTime(ts) !== new Date(ts).toISOString());
  t.same(bad, [], 'every time formats as the Date does');
});

t.test('the batch insert stores every column of every record, for any batch size', async (t) => {
  const keys = tempStore(t);
  const store = new UsageStore(keys.db);
  let n = 0;
  const record = (): UsageRecord => {
    n++;
    return {
      ...usageRecord(n),
      ts: 1795674703000 + n,
      keyId: n % 3 === 0 ? null : `k${n}`,
      keyName: n % 3 === 0 ? null : `key ${n}`,
      model: n % 4 === 0 ? null : `m${n}`,
      status: 200 + (n % 7),
      streamed: n % 2 === 0,
      promptTokens: n % 5 === 0 ? null : n,
      cachedTokens: n % 6 === 0 ? null : n * 2,
      completionTokens: n * 3,
      estimated: n % 5 === 0,
      ttftMs: n % 2 === 0 ? n / 7 : null,
      durationMs: n / 3,
      bytesIn: n * 10,
      bytesOut: n * 20,
      clientIp: n % 8 === 0 ? null : `10.0.0.${n % 250}`,
      userAgent: n % 9 === 0 ? null : `ua "${n}"`,
      outcome: n % 2 === 0 ? 'ok' : 'upstream_error',
      endUser: n % 3 === 1 ? `user-${n}` : null,
      cost: n % 4 === 1 ? n / 1e6 : null,
    };
  };
  const written: UsageRecord[] = [];
  for (const size of [1, 49, 50, 51, 100, 123, 250]) {
    const batch = Array.from({ length: size }, record);
    store.insert(batch);
    written.push(...batch);
  }
  store.insert([]);
  const rows = keys.db.prepare('SELECT * FROM usage ORDER BY id').all() as Record<string, unknown>[];
  t.equal(rows.length, written.length, 'one row per record');
  const expected = written.map((r, i) => ({
    id: rows[i]?.id,
    ts: r.ts,
    request_id: r.requestId,
    key_id: r.keyId,
    key_name: r.keyName,
    route: r.route,
    model: r.model,
    status: r.status,
    streamed: r.streamed ? 1 : 0,
    prompt_tokens: r.promptTokens,
    cached_tokens: r.cachedTokens,
    completion_tokens: r.completionTokens,
    estimated: r.estimated ? 1 : 0,
    ttft_ms: r.ttftMs,
    duration_ms: r.durationMs,
    bytes_in: r.bytesIn,
    bytes_out: r.bytesOut,
    client_ip: r.clientIp,
    user_agent: r.userAgent,
    outcome: r.outcome,
    end_user: r.endUser,
    cost: r.cost,
  }));
  t.same(rows, expected, 'every column as recorded, in order');
});

t.test('a batch that fails is not half written', async (t) => {
  const keys = tempStore(t);
  const store = new UsageStore(keys.db);
  const batch = Array.from({ length: 120 }, (_, i) => usageRecord(i));
  // route is NOT NULL: the 75th record breaks the batch.
  (batch[74] as unknown as { route: null }).route = null;
  t.throws(() => store.insert(batch));
  t.equal((keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n, 0, 'the whole batch rolled back');
});

t.test('through the gateway: each audit line is JSON.stringify of the record the listeners saw', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-audit-line-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const gw = await startGateway(t, { auditLog: join(dir, 'audit.jsonl') }, {}, { usageFlushMs: 20 });
  const seen: UsageRecord[] = [];
  gw.app.usage!.onRecord((r) => seen.push(r));
  // Header values are Latin-1 on the wire (other characters: the unit test above).
  const agents = ['plain/1.0', 'quote " and \\ backslash', 'Zoë \u00ff', undefined];
  for (const ua of agents) {
    const headers: Record<string, string> = { ...AUTH_A, 'content-type': 'application/json', 'x-openwebui-user-id': 'user "1"' };
    if (ua !== undefined) headers['user-agent'] = ua;
    t.equal((await request(gw.port, { path: '/v1/chat/completions', headers, body: chatBody() })).status, 200);
    t.equal((await request(gw.port, { path: '/v1/chat/completions', headers, body: chatBody({ stream: true }) })).status, 200);
  }
  t.equal((await request(gw.port, { path: '/v1/models', headers: AUTH_A })).status, 200);
  await gw.app.close();
  const file = readdirSync(dir).find((f) => f.startsWith('audit-'))!;
  const lines = readFileSync(join(dir, file), 'utf8').trimEnd().split('\n');
  t.equal(seen.length, 9, 'nine records');
  t.same(lines, seen.map(generic), 'byte for byte');
});
