// Token limits against a real llama-server (issue 12): 20 streams sent at once by a key with
// tpm 2000 produced 20,200 tokens in a minute when tokens were only counted after the fact. With
// holds, the key overshoots its limit by at most one request's worth.
import t from 'tap';
import { AUTH_A } from '../helpers.js';
import { reserveFor } from '../../src/admission/token-estimate.js';
import { skipTier, startRealGateway } from './llama.js';

if (!skipTier(t)) {
  t.test('20 concurrent streams from a key with tpm 2000 stay within the limit plus one request', async (t) => {
    const gw = await startRealGateway(t, { defaultTpm: 2000 }, { usageFlushMs: 50 });
    const records: { promptTokens: number | null; completionTokens: number | null; status: number }[] = [];
    gw.app.usage?.onRecord((r) => records.push(r));
    const body = JSON.stringify({ model: 'gpt-oss-20b', prompt: 'x', max_tokens: 400, temperature: 0, stream: true });
    const hold = reserveFor(Buffer.from(body), JSON.parse(body) as Record<string, unknown>, true, 1024);
    const statuses = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const res = await fetch(`${gw.url}/v1/completions`, {
          method: 'POST',
          headers: { ...AUTH_A, 'content-type': 'application/json' },
          body,
        });
        await res.text();
        return res.status;
      }),
    );
    const admitted = statuses.filter((s) => s === 200).length;
    t.equal(admitted + statuses.filter((s) => s === 429).length, 20, 'each answered 200 or 429');
    t.ok(admitted >= 1 && admitted <= Math.ceil(2000 / hold), `${admitted} admitted, each holding ${hold} tokens`);
    const used = records.reduce((sum, r) => sum + (r.promptTokens ?? 0) + (r.completionTokens ?? 0), 0);
    t.comment(`statuses: ${statuses.join(' ')}`);
    t.comment(`tokens used by the admitted streams: ${used} (limit 2000, one request's hold ${hold})`);
    t.ok(used <= 2000 + hold, `${used} tokens: the limit overshot by at most one request's hold`);
  });
}
