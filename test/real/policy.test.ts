// The cap on generated tokens against a real llama-server (issue #15): whichever way a client asks
// for more — a larger max_tokens, max_completion_tokens, llama-server's own n_predict (which wins
// over max_tokens there), n_predict -1 (unlimited), or nothing at all — llama-server really stops
// at the cap: its own usage.completion_tokens is at most the cap. A key's own cap wins over the
// gateway's. And a parameter the default table refuses never reaches llama-server.
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { AUTH_A, KEY_A, bearer, tempStore } from '../helpers.js';
import { skipTier, startRealGateway, type RealGateway } from './llama.js';

const CAP = 5;
const JSON_CT = { 'content-type': 'application/json' };

interface Answer {
  status: number;
  text: string;
}

async function post(gw: RealGateway, path: string, body: unknown, auth: Record<string, string> = AUTH_A): Promise<Answer> {
  const res = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { ...auth, ...JSON_CT }, body: JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
}

/** llama-server's completion_tokens: the body's usage, or a stream's last usage event. */
function completionTokens(a: Answer): number {
  if (!a.text.startsWith('data:')) return (JSON.parse(a.text) as { usage: { completion_tokens: number } }).usage.completion_tokens;
  const usages = a.text
    .split('\n\n')
    .map((e) => /^data: (\{.*\})$/m.exec(e)?.[1])
    .filter((d): d is string => d !== undefined)
    .map((d) => (JSON.parse(d) as { usage?: { completion_tokens: number } | null }).usage)
    .filter((u): u is { completion_tokens: number } => u !== undefined && u !== null);
  return usages.at(-1)!.completion_tokens;
}

if (!skipTier(t)) {
  t.test('GATEWAY_MAX_TOKENS: llama-server stops at the cap however more is asked for', async (t) => {
    const store = tempStore(t);
    const registry = new KeyRegistry([KEY_A], store);
    const { key: tight } = store.create({ name: 'tight', policy: { max_tokens: 2 } });
    registry.reload();
    const gw = await startRealGateway(t, { maxTokens: CAP }, { registry });
    // temperature 0: the tiny model's random weights sometimes sample text llama-server's output
    // parser answers with a 500; greedy sampling of prompt "x" runs to any length.
    const base = { model: 'gpt-oss-20b', prompt: 'x', temperature: 0 };
    const cases: [string, string, Record<string, unknown>][] = [
      ['max_tokens 200', '/v1/completions', { ...base, max_tokens: 200 }],
      ['n_predict 200 (wins over max_tokens in llama-server)', '/v1/completions', { ...base, max_tokens: 2, n_predict: 200 }],
      ['n_predict -1 (unlimited)', '/v1/completions', { ...base, n_predict: -1 }],
      ['nothing asked (llama-server: until the context is full)', '/v1/completions', base],
      ['a stream with max_tokens 200', '/v1/completions', { ...base, max_tokens: 200, stream: true }],
      [
        'chat with max_completion_tokens 200',
        '/v1/chat/completions',
        { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_completion_tokens: 200, temperature: 0 },
      ],
    ];
    for (const [name, path, body] of cases) {
      const a = await post(gw, path, body);
      t.equal(a.status, 200, `${name}: answered`);
      const n = completionTokens(a);
      t.ok(n >= 1 && n <= CAP, `${name}: llama-server generated ${n} tokens (cap ${CAP})`);
    }
    // Under the cap, a request is forwarded as sent and gets what it asked for.
    const small = await post(gw, '/v1/completions', { ...base, max_tokens: 3 });
    t.equal(completionTokens(small), 3, 'max_tokens 3 under a cap of 5: exactly 3');
    // A key's own cap wins over the gateway's.
    const own = await post(gw, '/v1/completions', { ...base, max_tokens: 200 }, bearer(tight));
    t.equal(own.status, 200);
    t.ok(completionTokens(own) <= 2, `the key's own cap of 2: ${completionTokens(own)} tokens`);
  });

  t.test('a refused llama-server parameter never reaches it', async (t) => {
    const gw = await startRealGateway(t, {});
    const before = await gw.llama.mark();
    const a = await post(gw, '/v1/completions', { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 2, temperature: 0, id_slot: 0 });
    t.equal(a.status, 403, 'id_slot is refused by default (a key permission, like a model not allowed)');
    t.match(JSON.parse(a.text), { error: { param: 'id_slot' } });
    t.notMatch(gw.llama.log().slice(before), /processing task/, 'llama-server ran nothing');
  });
}
