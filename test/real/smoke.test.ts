// The real-llama-server tier's first check: the gateway in front of a real llama-server answers a
// chat request with llama-server's own usage, and the usage record has the same numbers.
import t from 'tap';
import { AUTH_A } from '../helpers.js';
import { skipTier, startRealGateway } from './llama.js';

if (!skipTier(t)) {
  t.test('a chat request through the gateway to a real llama-server', async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 50 });
    const records: { promptTokens: number | null; completionTokens: number | null; outcome: string }[] = [];
    gw.app.usage?.onRecord((r) => records.push(r));
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...AUTH_A, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, temperature: 0 }),
    });
    t.equal(res.status, 200);
    const body = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    t.equal(body.usage.completion_tokens, 4);
    t.equal(records.length, 1);
    t.equal(records[0]!.promptTokens, body.usage.prompt_tokens);
    t.equal(records[0]!.completionTokens, 4);
    t.equal(records[0]!.outcome, 'ok');
  });
}
