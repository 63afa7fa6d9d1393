// Prompt-cache affinity: which requests share a key, the bounded map, and the wait worth a cache hit.
import t from 'tap';
import {
  AFFINITY_MAX_ENTRIES,
  AFFINITY_MAX_WAIT_MS,
  AFFINITY_MIN_OPENING_CHARS,
  AffinityMap,
  affinityKey,
  preferMs,
} from '../../src/upstreams/affinity.js';

const system = { role: 'system', content: 'You are a careful assistant who answers in short sentences.' }; // 59
const first = { role: 'user', content: 'What does the prompt cache of llama-server keep?' };
const answer = { role: 'assistant', content: 'The KV cache of the last prompt of each slot.' };
const next = { role: 'user', content: 'And when is it reused?' };
const chat = (messages: unknown[], model = 'gpt-oss-20b') => ({ model, messages, stream: true });

t.test('the next turn of a conversation has the same key', async (t) => {
  const turn1 = affinityKey('chat', chat([system, first]), 'key-1');
  t.type(turn1, 'string');
  t.match(turn1, /^[\w-]{16}$/);
  t.equal(affinityKey('chat', chat([system, first, answer, next]), 'key-1'), turn1, 'turn 2');
  t.equal(affinityKey('chat', chat([system, first, answer, next, answer, next]), 'key-1'), turn1, 'turn 3');
  // Without a system message, the first user message opens it.
  const bare = affinityKey('chat', chat([{ role: 'user', content: 'x'.repeat(80) }]), 'key-1');
  t.type(bare, 'string');
  t.equal(affinityKey('chat', chat([{ role: 'user', content: 'x'.repeat(80) }, answer, next]), 'key-1'), bare);
  // Content as parts or as a string: the same text.
  t.equal(affinityKey('chat', chat([system, { role: 'user', content: [{ type: 'text', text: first.content }] }]), 'key-1'), turn1);
  // Other fields do not matter.
  t.equal(affinityKey('chat', { ...chat([system, first, answer, next]), stream: false, max_tokens: 9, temperature: 0 }, 'key-1'), turn1);
});

t.test('what tells conversations apart', async (t) => {
  const base = affinityKey('chat', chat([system, first]), 'key-1');
  const others = [
    affinityKey('chat', chat([system, first]), 'key-2'), // another key
    affinityKey('chat', chat([system, first], 'other-model'), 'key-1'), // another model
    affinityKey('chat', chat([system, next]), 'key-1'), // another first question
    affinityKey('chat', chat([{ ...system, content: system.content + '!' }, first]), 'key-1'), // another system prompt
    affinityKey('chat', chat([{ ...system, role: 'user' }, first]), 'key-1'), // a user message alone opens it
    affinityKey('messages', chat([system, first]), 'key-1'), // another API
  ];
  t.equal(new Set([base, ...others]).size, others.length + 1, 'all different');
  // A long system prompt: only its first 1 KiB and its length are read, the user message still counts.
  const long = { role: 'system', content: 'S'.repeat(50_000) };
  t.not(affinityKey('chat', chat([long, first]), 'k'), affinityKey('chat', chat([long, next]), 'k'));
});

t.test('nothing to key on: null', async (t) => {
  t.equal(affinityKey('chat', {}, 'k'), null, 'no messages');
  t.equal(affinityKey('chat', { messages: 'hi' }, 'k'), null);
  t.equal(affinityKey('chat', { messages: [] }, 'k'), null);
  t.equal(affinityKey('chat', { messages: [null, 3] }, 'k'), null);
  t.equal(affinityKey('chat', chat([{ role: 'user', content: 'Hello, how are you?' }]), 'k'), null, 'too short');
  const edge = 'y'.repeat(AFFINITY_MIN_OPENING_CHARS);
  t.type(affinityKey('chat', chat([{ role: 'user', content: edge }]), 'k'), 'string', 'at the threshold');
  t.equal(affinityKey('chat', chat([{ role: 'user', content: edge.slice(1) }]), 'k'), null, 'one below');
  t.equal(
    affinityKey('chat', chat([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x'.repeat(999) } }] }]), 'k'),
    null,
    'images are not text',
  );
  t.equal(affinityKey('completions', { prompt: ['a'.repeat(100), 'b'.repeat(100)] }, 'k'), null, 'prompt array');
  t.equal(affinityKey('completions', { prompt: [1, 2, 3] }, 'k'), null, 'token ids');
  t.equal(affinityKey('completions', { prompt: 'short' }, 'k'), null);
  t.equal(affinityKey('embeddings', { input: 'x'.repeat(1000) }, 'k'), null);
  t.equal(affinityKey('rerank', { query: 'x'.repeat(1000), documents: [] }, 'k'), null);
  t.equal(affinityKey('count_tokens', chat([system, first]), 'k'), null);
  t.equal(affinityKey('models', {}, 'k'), null);
});

t.test('completions: the first 1 KiB of the prompt', async (t) => {
  const head = 'p'.repeat(1024);
  const key = affinityKey('completions', { prompt: head + 'one continuation' }, 'k');
  t.type(key, 'string');
  t.equal(affinityKey('completions', { prompt: head + 'a longer prompt, the next turn' + 'z'.repeat(5000) }, 'k'), key);
  t.not(affinityKey('completions', { prompt: 'q' + head.slice(1) }, 'k'), key);
  t.not(affinityKey('completions', { prompt: 'p'.repeat(200) }, 'k'), key, 'under 1 KiB: the whole prompt');
});

t.test('messages (Anthropic) and responses', async (t) => {
  const msgs = { model: 'm', system: system.content, messages: [first], max_tokens: 10 };
  const key = affinityKey('messages', msgs, 'k');
  t.type(key, 'string');
  t.equal(affinityKey('messages', { ...msgs, messages: [first, answer, next] }, 'k'), key);
  t.equal(affinityKey('messages', { ...msgs, system: [{ type: 'text', text: system.content }] }, 'k'), key, 'system as blocks');
  t.not(affinityKey('messages', { ...msgs, system: 'Another system prompt entirely.' }, 'k'), key);

  const resp = { model: 'm', instructions: system.content, input: first.content };
  const r1 = affinityKey('responses', resp, 'k');
  t.type(r1, 'string');
  t.equal(
    affinityKey(
      'responses',
      { ...resp, input: [{ role: 'user', content: first.content }, answer, { role: 'user', content: next.content }] },
      'k',
    ),
    r1,
    'a string input keys like the first user item of the next turn',
  );
  t.equal(
    affinityKey(
      'responses',
      { ...resp, input: [{ type: 'message', role: 'user', content: [{ type: 'input_text', text: first.content }] }] },
      'k',
    ),
    r1,
  );
  t.not(affinityKey('responses', { ...resp, instructions: undefined }, 'k'), r1);
  t.equal(affinityKey('responses', { input: 'tiny' }, 'k'), null);
});

t.test('a huge body: only a bounded prefix is read', async (t) => {
  // 40 MB of first message and a million messages after it: same work as a small one.
  const huge = 'h'.repeat(40 * 1024 * 1024);
  const messages: unknown[] = [system, { role: 'user', content: huge }];
  for (let i = 0; i < 1_000_000; i++) messages.push(answer);
  const key = affinityKey('chat', chat(messages), 'k');
  t.type(key, 'string');
  // Same first 1 KiB and length: same key (the rest is not read); another length: another key.
  t.equal(affinityKey('chat', chat([system, { role: 'user', content: 'h'.repeat(1024) + 'x'.repeat(huge.length - 1024) }]), 'k'), key);
  t.not(affinityKey('chat', chat([system, { role: 'user', content: huge.slice(1) }]), 'k'), key);
  // Parts: at most 16 read.
  const parts = Array.from({ length: 100_000 }, () => ({ type: 'text', text: 'part of a long message ' }));
  const partsKey = affinityKey('chat', chat([{ role: 'user', content: parts }]), 'k');
  t.equal(affinityKey('chat', chat([{ role: 'user', content: parts.slice(0, 16) }]), 'k'), partsKey);
  // A user message that never comes: at most 4 messages open it.
  const systems = Array.from({ length: 10_000 }, () => system);
  t.equal(affinityKey('chat', chat(systems), 'k'), affinityKey('chat', chat(systems.slice(0, 4)), 'k'));
});

t.test('AffinityMap: get, set, LRU at the bound, forget', async (t) => {
  const map = new AffinityMap(3);
  t.equal(map.get('a'), undefined);
  map.set('a', 0);
  map.set('b', 1);
  map.set('c', 0);
  t.equal(map.get('a'), 0);
  t.equal(map.size, 3);
  map.set('a', 1); // a placed again: now the most recent, on another server
  map.set('d', 1); // over the bound: b, the least recently placed, goes
  t.equal(map.size, 3);
  t.equal(map.get('b'), undefined);
  t.same([map.get('a'), map.get('c'), map.get('d')], [1, 0, 1]);
  map.get('c'); // reading does not refresh
  map.set('e', 2);
  t.equal(map.get('c'), undefined, 'c was the oldest');
  map.forget(1);
  t.same([map.get('a'), map.get('d'), map.get('e')], [undefined, undefined, 2]);
  t.equal(map.size, 1);
  map.clear();
  t.equal(map.size, 0);

  const big = new AffinityMap();
  t.equal(big.maxEntries, AFFINITY_MAX_ENTRIES);
  for (let i = 0; i < AFFINITY_MAX_ENTRIES + 500; i++) big.set(`k${i}`, i % 2);
  t.equal(big.size, AFFINITY_MAX_ENTRIES);
  t.equal(big.get('k499'), undefined);
  t.equal(big.get('k500'), 0);
});

t.test('preferMs: the prefill a cache hit saves, capped', async (t) => {
  // (chars / 4) tokens / speed × 1000 ms
  t.equal(preferMs(4000, 1000), 1000);
  t.equal(preferMs(400, 2000), 50);
  t.equal(preferMs(2000, null), 1000, 'unknown speed: 500 tokens/s');
  t.equal(preferMs(2000, 0), 1000);
  t.equal(preferMs(2000, Number.NaN), 1000);
  t.equal(preferMs(2000, -5), 1000);
  t.equal(preferMs(10_000_000, 5000), AFFINITY_MAX_WAIT_MS, 'capped');
  t.equal(preferMs(0, 1000), 0);
  t.equal(preferMs(-1, 1000), 0);
  t.equal(preferMs(Number.NaN, 1000), 0);
  t.equal(preferMs(3, 1000), 1, 'rounded');
});
