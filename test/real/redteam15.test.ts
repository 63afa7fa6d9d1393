// Red-team pass over issue 15 against a real llama-server: what the fake cannot show, because it is
// llama-server's own reading of a body that decides it.
import t from 'tap';
import { AUTH_A } from '../helpers.js';
import { skipTier, startRealGateway } from './llama.js';

const JSON_CT = { 'content-type': 'application/json' };

if (!skipTier(t)) {
  t.test("logprobs as a number (llama-server's n_probs when n_probs is absent) is held to the n_probs bound", async (t) => {
    const gw = await startRealGateway(t, {});
    // Straight to llama-server: a numeric logprobs really is n_probs there (30 > the bound of 20).
    const direct = await fetch(`${gw.llama.url}/v1/completions`, {
      method: 'POST',
      headers: JSON_CT,
      body: JSON.stringify({ prompt: 'x', max_tokens: 1, temperature: 0, logprobs: 30 }),
    });
    const answer = (await direct.json()) as { choices: { logprobs: { content: { top_logprobs: unknown[] }[] } }[] };
    t.equal(answer.choices[0]!.logprobs.content[0]!.top_logprobs.length, 30, 'llama-server returns 30 probabilities per token');
    // Through the gateway: refused, on both routes, and llama-server ran nothing. (llama-server logs
    // the direct task after its answer: wait for its last line, or it lands in the part checked below.)
    await gw.llama.waitForLog(/task 0 \| stop processing/);
    const before = await gw.llama.mark();
    for (const [path, body] of [
      ['/v1/completions', { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 1, logprobs: 30 }],
      ['/v1/chat/completions', { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'x' }], max_tokens: 1, logprobs: 30 }],
    ] as const) {
      const res = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { ...AUTH_A, ...JSON_CT }, body: JSON.stringify(body) });
      t.equal(res.status, 403, `${path}: refused`);
      t.match(await res.json(), { error: { code: 'param_not_allowed', param: 'logprobs' } });
    }
    t.notMatch(gw.llama.log().slice(before), /processing task/, 'llama-server ran nothing');
  });
}
