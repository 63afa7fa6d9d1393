// Which URLs in a body llama-server would download (src/policy/media.ts), per API, as its own
// parser reads them (tools/server/server-common.cpp, b10587): exactly those, and nothing that
// llama-server takes as inline data.
import t from 'tap';
import { findRemoteMedia } from '../../src/policy/media.js';

const URL_A = 'https://images.example.com/a.png';
const URL_B = 'http://10.0.0.1/b.wav';

t.test('chat: image_url, input_audio and input_video parts of every message', async (t) => {
  const body = {
    model: 'm',
    messages: [
      { role: 'system', content: [{ type: 'text', text: 'hi' }] },
      { role: 'user', content: [{ type: 'image_url', image_url: { url: URL_A, detail: 'low' } }] },
      { role: 'assistant', content: [{ type: 'image_url', image_url: URL_A }] },
      {
        role: 'user',
        content: [
          { type: 'text', text: URL_A },
          { type: 'input_audio', input_audio: { url: URL_B, format: 'wav' } },
        ],
      },
      { role: 'user', content: [{ type: 'input_video', input_video: { data: URL_A } }] },
    ],
  };
  t.same(findRemoteMedia('chat', body), [
    {
      path: 'messages[1].content[0].image_url.url',
      at: ['messages', 1, 'content', 0, 'image_url', 'url'],
      url: URL_A,
      media: 'image',
      form: 'data-url',
    },
    {
      path: 'messages[2].content[0].image_url',
      at: ['messages', 2, 'content', 0, 'image_url'],
      url: URL_A,
      media: 'image',
      form: 'data-url',
    },
    {
      path: 'messages[3].content[1].input_audio.url',
      at: ['messages', 3, 'content', 1, 'input_audio', 'url'],
      url: URL_B,
      media: 'audio',
      form: 'base64',
    },
    {
      path: 'messages[4].content[0].input_video.data',
      at: ['messages', 4, 'content', 0, 'input_video', 'data'],
      url: URL_A,
      media: 'video',
      form: 'base64',
    },
  ]);
});

t.test('llama-server\'s own test: a string that starts with "http"; data: and base64 pass', async (t) => {
  const part = (url: unknown): unknown => ({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }] }] });
  const found = (url: unknown): number => findRemoteMedia('chat', part(url) as Record<string, unknown>).length;
  t.equal(found('data:image/png;base64,iVBORw0KGgo='), 0, 'a data: URL');
  t.equal(found('iVBORw0KGgo='), 0, 'raw base64');
  t.equal(found('file://cat.png'), 0, 'file:// (only read with --media-path, the operator’s choice)');
  t.equal(found('HTTPS://example.com/a.png'), 0, 'upper case: llama-server does not download it (its test is case-sensitive)');
  t.equal(found(' https://example.com/a.png'), 0, 'a leading space: not downloaded either');
  t.equal(found('httpx://example.com/a.png'), 1, 'anything starting with "http" is handed to the downloader');
  t.equal(found(42), 0);
  // input_audio: `data` when it is a string wins over `url`, as json_value falls back.
  const audio = (input_audio: unknown): number =>
    findRemoteMedia('chat', { messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio }] }] }).length;
  t.equal(audio({ data: 'UklGRg==', url: URL_B }), 0, 'base64 data: the url is not read');
  t.equal(audio({ data: null, url: URL_B }), 1, 'data null: the url is read');
  t.equal(audio({ data: 7, url: URL_B }), 1, 'data not a string: the url is read');
  // Parts llama-server does not read as media.
  const others = {
    messages: [
      'not an object',
      {
        role: 'user',
        content: [null, 'text', { type: 'image', source: { type: 'url', url: URL_A } }, { type: 'input_image', image_url: URL_A }],
      },
      { role: 'user', content: { type: 'image_url', image_url: { url: URL_A } } },
    ],
  };
  t.equal(findRemoteMedia('chat', others).length, 0, 'Anthropic and Responses shapes are not chat parts');
});

t.test('Anthropic messages: image blocks with a url source', async (t) => {
  const body = {
    system: [{ type: 'text', text: URL_A }],
    messages: [
      { role: 'user', content: 'look' },
      {
        role: 'user',
        content: [
          { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } },
          { type: 'image', source: { type: 'url', url: URL_A } },
          { type: 'image_url', image_url: { url: URL_A } },
          { type: 'tool_result', content: [{ type: 'image', source: { type: 'url', url: URL_A } }] },
        ],
      },
    ],
  };
  t.same(findRemoteMedia('messages', body), [
    {
      path: 'messages[1].content[1].source.url',
      at: ['messages', 1, 'content', 1, 'source', 'url'],
      url: URL_A,
      media: 'image',
      form: 'anthropic',
    },
  ]);
});

t.test('Responses: input_image parts of user, system and developer items', async (t) => {
  const body = {
    instructions: URL_A,
    input: [
      {
        role: 'user',
        content: [
          { type: 'input_text', text: 'x' },
          { type: 'input_image', image_url: URL_A, detail: 'auto' },
        ],
      },
      { role: 'developer', type: 'message', content: [{ type: 'input_image', image_url: URL_B }] },
      { role: 'assistant', type: 'message', content: [{ type: 'input_image', image_url: URL_A }] },
      { role: 'user', content: [{ type: 'input_image', image_url: { url: URL_A } }] },
      { role: 'user', content: URL_A },
    ],
  };
  t.same(findRemoteMedia('responses', body), [
    { path: 'input[0].content[1].image_url', at: ['input', 0, 'content', 1, 'image_url'], url: URL_A, media: 'image', form: 'data-url' },
    { path: 'input[1].content[0].image_url', at: ['input', 1, 'content', 0, 'image_url'], url: URL_B, media: 'image', form: 'data-url' },
  ]);
  t.same(findRemoteMedia('responses', { input: URL_A }), []);
});

t.test('token counting runs the same parsers: every shape is looked at', async (t) => {
  const body = {
    messages: [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: URL_A } },
          { type: 'image', source: { type: 'url', url: URL_B } },
        ],
      },
    ],
    input: [{ role: 'user', content: [{ type: 'input_image', image_url: URL_A }] }],
  };
  t.same(
    findRemoteMedia('count_tokens', body).map((m) => m.path),
    ['messages[0].content[0].image_url.url', 'messages[0].content[1].source.url', 'input[0].content[0].image_url'],
  );
});

t.test('routes that take no media by URL, and the usual chat: one shared empty answer', async (t) => {
  const withUrls = {
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: URL_A } }] }],
    input: [{ role: 'user', content: [{ type: 'input_image', image_url: URL_A }] }],
    prompt: { prompt_string: 'x', multimodal_data: [URL_A] },
  };
  const none = findRemoteMedia('chat', { messages: [{ role: 'user', content: 'hello' }] });
  t.same(none, []);
  t.ok(Object.isFrozen(none));
  for (const kind of ['completions', 'embeddings', 'rerank', 'models', 'transcriptions'] as const)
    t.equal(findRemoteMedia(kind, withUrls), none, `${kind}: the same empty array`);
  t.equal(findRemoteMedia('chat', { messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }] }, { role: 'assistant' }] }), none);
  t.equal(findRemoteMedia('chat', { messages: 'nope' }), none);
  t.equal(findRemoteMedia('messages', {}), none);
});
