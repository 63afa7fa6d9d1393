// The request policy's rules as functions: the token cap at its edges, the parameter table, a
// key's overrides, and body edits that keep the client's other bytes.
import { test } from 'tap';
import { configWith } from '../../src/config.js';
import { GatewayError } from '../../src/errors.js';
import type { KeyPolicy } from '../../src/keys/key-policy.js';
import { DEFAULT_PARAMS, parseParamList, paramChecks } from '../../src/policy/params.js';
import { RequestPolicies, applyRules, editMembers, mayExceed, promptCount, type EffectivePolicy } from '../../src/policy/request-policy.js';
import type { JsonBody } from '../../src/proxy/json-body.js';
import type { RouteKind } from '../../src/usage/exchange.js';
import { KEY_A } from '../helpers.js';

const body = (text: string): JsonBody => ({ raw: Buffer.from(text), json: JSON.parse(text) as Record<string, unknown> });

function policies(overrides: Record<string, unknown> = {}): RequestPolicies {
  return new RequestPolicies(configWith({ apiKeys: [KEY_A], ...overrides }));
}

/** The forwarded text after the rules (the same text when nothing changed), or the error's body. */
function run(p: EffectivePolicy, kind: RouteKind, text: string): string {
  const b = body(text);
  const out = applyRules(p, kind, b);
  if (out === undefined) return text;
  if (out instanceof GatewayError) return out.body;
  // raw and json must say the same
  const parsed = JSON.parse(out.raw.toString('utf8')) as unknown;
  if (JSON.stringify(parsed) !== JSON.stringify(out.json)) throw new Error('raw and json differ');
  return out.raw.toString('utf8');
}

test("the token cap: at, one over, absent, and llama-server's other readings", async (t) => {
  const p = policies({ maxTokens: 100 }).defaults;
  t.equal(run(p, 'chat', '{"max_tokens":100,"messages":[]}'), '{"max_tokens":100,"messages":[]}', 'exactly at the cap: forwarded as sent');
  t.equal(run(p, 'chat', '{"max_tokens":101,"messages":[]}'), '{"max_tokens":100,"messages":[]}', 'one over: clamped');
  t.equal(run(p, 'chat', '{"messages":[]}'), '{"messages":[],"max_tokens":100}', 'absent: the cap added');
  t.equal(run(p, 'chat', '{}'), '{"max_tokens":100}', 'an empty body gets it too');
  t.equal(run(p, 'chat', '{"max_tokens":0}'), '{"max_tokens":0}', '0 is within the cap');
  t.equal(run(p, 'chat', '{"max_tokens":-1}'), '{"max_tokens":100}', '-1 (unlimited in llama-server) is clamped');
  t.equal(run(p, 'chat', '{"max_tokens":null}'), '{"max_tokens":100}', 'null (absent to llama-server) is set');
  t.equal(run(p, 'chat', '{"max_tokens":"5"}'), '{"max_tokens":100}', 'a string (ignored by llama-server) is set');
  t.equal(run(p, 'chat', '{"max_tokens":1e30}'), '{"max_tokens":100}', 'a huge number is clamped');
  t.equal(
    run(p, 'chat', '{"max_tokens":10,"n_predict":-1}'),
    '{"max_tokens":10,"n_predict":100}',
    'n_predict -1 wins over max_tokens in llama-server: clamped',
  );
  t.equal(run(p, 'chat', '{"max_completion_tokens":500}'), '{"max_completion_tokens":100}', 'max_completion_tokens');
  t.equal(run(p, 'completions', '{"prompt":"a","n_predict":4096}'), '{"prompt":"a","n_predict":100}', '/v1/completions n_predict');
  t.equal(run(p, 'messages', '{"max_tokens":4096,"messages":[]}'), '{"max_tokens":100,"messages":[]}', 'Anthropic max_tokens');
  t.equal(run(p, 'responses', '{"input":"hi"}'), '{"input":"hi","max_output_tokens":100}', '/v1/responses gets max_output_tokens');
  t.equal(run(p, 'responses', '{"input":"hi","max_output_tokens":300}'), '{"input":"hi","max_output_tokens":100}', 'and it is clamped');
  for (const kind of ['embeddings', 'rerank', 'count_tokens'] as const)
    t.equal(run(p, kind, '{"input":"hi","max_tokens":5000}'), '{"input":"hi","max_tokens":5000}', `${kind}: generates nothing, untouched`);
  t.equal(run(policies().defaults, 'chat', '{"max_tokens":99999}'), '{"max_tokens":99999}', 'no cap set: forwarded as sent');
});

test("a rewritten body keeps the client's other bytes", async (t) => {
  const edits = new Map<string, unknown>([
    ['max_tokens', 8],
    ['id_slot', undefined],
  ]);
  t.equal(
    editMembers(Buffer.from('{ "temperature": 0.10, "id_slot" : 2 ,\n "max_tokens" : 9000, "x": "\\u00e9}\\"" }'), edits).toString(),
    '{ "temperature": 0.10,\n "max_tokens" : 8, "x": "\\u00e9}\\"" }',
    'numbers, escapes and spacing kept; one member replaced, one removed',
  );
  t.equal(
    editMembers(Buffer.from('{"a":{"max_tokens":1},"b":[1,"]"]}'), edits).toString(),
    '{"a":{"max_tokens":1},"b":[1,"]"],"max_tokens":8}',
    'nested keys are not top-level ones',
  );
  t.equal(editMembers(Buffer.from('{"id_slot":1}'), edits).toString(), '{"max_tokens":8}', 'the only member removed, one added');
  t.equal(
    editMembers(Buffer.from('{"max_tokens":1,"max_tokens":2000}'), edits).toString(),
    '{"max_tokens":8,"max_tokens":8}',
    'a key given twice: both edited',
  );
  t.equal(editMembers(Buffer.from('  {}\n'), edits).toString(), '  {"max_tokens":8}\n', 'an empty object');
});

test('the parameter table: refuse, remove, bounds, overrides', async (t) => {
  const p = policies().defaults;
  const refused = (name: string, above?: number): string =>
    JSON.stringify({
      error: {
        message:
          above === undefined
            ? `This API key may not use the parameter '${name}' (parameter policy: GATEWAY_PARAM_POLICY or the key's policy); remove it from the request.`
            : `This API key may not set '${name}' above ${above} (parameter policy: GATEWAY_PARAM_POLICY or the key's policy).`,
        type: 'invalid_request_error',
        param: name,
        code: 'param_not_allowed',
      },
    });
  for (const name of ['id_slot', 'lora', 'n_cmpl'])
    t.equal(run(p, 'chat', `{"messages":[],"${name}":1}`), refused(name), `${name} refused by default`);
  t.equal(run(p, 'completions', '{"prompt":"a","n_probs":20}'), '{"prompt":"a","n_probs":20}', 'n_probs at 20: allowed');
  t.equal(run(p, 'completions', '{"prompt":"a","n_probs":21}'), refused('n_probs', 20), 'n_probs 21: refused');
  t.equal(run(p, 'chat', '{"logprobs":true,"top_logprobs":50}'), refused('top_logprobs', 20), 'top_logprobs becomes n_probs: same bound');
  t.equal(
    run(p, 'chat', '{"ignore_eos":true,"cache_prompt":false,"samplers":["temperature"]}'),
    '{"ignore_eos":true,"cache_prompt":false,"samplers":["temperature"]}',
    'allowed ones pass',
  );

  const global = policies({ paramPolicy: parseParamList('id_slot=allow, n_probs=remove,temperature=remove') });
  t.equal(run(global.defaults, 'chat', '{"id_slot":0}'), '{"id_slot":0}', 'GATEWAY_PARAM_POLICY allows id_slot');
  t.equal(
    run(global.defaults, 'completions', '{"prompt":"a","n_probs":500,"temperature":0.7}'),
    '{"prompt":"a"}',
    'and removes n_probs above the bound, and a parameter not in the table',
  );
  t.equal(run(global.defaults, 'completions', '{"n_probs":3}'), '{"n_probs":3}', 'within the bound nothing is removed');

  const key: KeyPolicy = { params: { id_slot: 'refuse', lora: 'allow' } };
  const own = global.of(key);
  t.equal(run(own, 'chat', '{"id_slot":0}'), refused('id_slot'), "the key's own rule wins over the setting");
  t.equal(run(own, 'chat', '{"lora":[{"id":0,"scale":1}]}'), '{"lora":[{"id":0,"scale":1}]}', 'the key allows lora');
  t.equal(run(own, 'chat', '{"temperature":1}'), '{}', "the setting's rules it does not override still apply");
  t.equal(global.of(key), own, 'built once per policy document');
  t.equal(global.of(null), global.defaults, 'no policy: the defaults');

  t.throws(() => parseParamList('id_slot'), /NAME=allow/);
  t.throws(() => parseParamList('id slot=allow'), /parameter name/);
  t.same(parseParamList(''), {});
  t.ok(
    Object.values(DEFAULT_PARAMS).every((e) => e.why.length > 10),
    'every entry says why',
  );
  t.same(
    paramChecks().map((c) => c.name),
    ['id_slot', 'lora', 'n_cmpl', 'n_probs', 'top_logprobs', 'logprobs'],
    'what ordinary keys are checked for',
  );
});

test("a key's fields win over the defaults, one by one", async (t) => {
  const all = policies({ maxTokens: 1000, maxPromptBytes: 5000, maxPromptTokens: 2000, remoteMedia: 'refuse' });
  const p = all.of({ max_tokens: 10, remote_media: 'allow' });
  t.same(p, { maxTokens: 10, checks: all.defaults.checks, remoteMedia: 'allow', maxPromptBytes: 5000, maxPromptTokens: 2000 });
  t.equal(run(p, 'chat', '{"max_tokens":11}'), '{"max_tokens":10}');
});

test('prompt size: bytes refused at once, tokens counted only when the bytes could exceed', async (t) => {
  const p = policies({ maxPromptBytes: 20, maxPromptTokens: 30 }).defaults;
  const at = '{"prompt":"12345678"}'; // 21 bytes
  t.equal(at.length, 21);
  t.equal(
    run(p, 'completions', at),
    JSON.stringify({
      error: {
        message:
          "The request is 21 bytes; this API key may send prompts of at most 20 bytes (max_prompt_bytes: the key's policy or GATEWAY_MAX_PROMPT_BYTES).",
        type: 'invalid_request_error',
        param: null,
        code: 'prompt_too_large',
      },
    }),
  );
  t.equal(run(p, 'completions', '{"prompt":"1234567"}'), '{"prompt":"1234567"}', '20 bytes: exactly at the limit');
  const q = policies({ maxPromptTokens: 30 }).defaults;
  t.equal(mayExceed(q, 'chat', body(`{"m":"${'x'.repeat(22)}"}`)), false, '30 bytes cannot hold 31 tokens');
  t.equal(mayExceed(q, 'chat', body(`{"m":"${'x'.repeat(23)}"}`)), true, '31 bytes might');
  t.equal(mayExceed(q, 'count_tokens', body(`{"m":"${'x'.repeat(99)}"}`)), false, 'a counting route is not counted twice');
  t.same(promptCount('chat', body('{"messages":[]}')), {
    path: '/v1/chat/completions/input_tokens',
    body: Buffer.from('{"messages":[]}'),
    known: 0,
  });
  t.same(promptCount('completions', body('{"prompt":[1,2,3]}')), { known: 3 }, 'token ids: known without a call');
  t.same(
    promptCount('completions', body('{"prompt":["a b",[1,2],"c"]}')),
    { path: '/tokenize', body: '{"content":["a b","c"]}', known: 2 },
    'texts counted in one /tokenize call, ids added',
  );
  t.same(promptCount('rerank', body('{"query":"q","documents":["d1","d2"]}')), {
    path: '/tokenize',
    body: '{"content":["q","d1","d2"]}',
    known: 0,
  });
  t.same(promptCount('embeddings', body('{"input":"hello"}')), { path: '/tokenize', body: '{"content":["hello"]}', known: 0 });
});
