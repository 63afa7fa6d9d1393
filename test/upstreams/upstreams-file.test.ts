// The upstreams file (GATEWAY_UPSTREAMS_FILE): every field checked, each problem one line naming
// the file, the entry and the field; unknown fields refused; an api_key never echoed; the file's
// list replacing LLM_UPSTREAM's.
import { writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ConfigError, SETTINGS, configWith, loadConfig } from '../../src/config.js';
import { UpstreamsFileError, parseUpstreamsFile, readUpstreamsFile, upstreamSpecs } from '../../src/upstreams/upstreams-file.js';

const FILE = './upstreams.json';
const SECRET = 'sk-llama-secret 0123456789';
const KEY = 'sk-test-alice-0123456789abcdef';

/** The problems parseUpstreamsFile finds in `raw` (none: []). */
function problems(raw: unknown): readonly string[] {
  try {
    parseUpstreamsFile(raw, FILE);
    return [];
  } catch (err) {
    if (!(err instanceof UpstreamsFileError)) throw err;
    return err.problems;
  }
}

const one = (entry: unknown) => problems({ upstreams: [entry] });

t.test('a good file: every field read, defaults left undefined', async (t) => {
  const specs = parseUpstreamsFile(
    {
      '//': 'comments are allowed, as in pm2-config.json',
      upstreams: [
        { url: 'http://127.0.0.1:5857/', name: 'gpu-a', api_key: 'llama-key-0123456789', weight: 2, models: ['chat', 'alias2'], slots: 4 },
        { url: 'https://llama.lan:8443/llama', '//': 'second box', weight: 0.5 },
      ],
    },
    FILE,
  );
  t.same(specs, [
    { url: 'http://127.0.0.1:5857', name: 'gpu-a', apiKey: 'llama-key-0123456789', weight: 2, models: ['chat', 'alias2'], slots: 4 },
    { url: 'https://llama.lan:8443/llama', name: undefined, apiKey: undefined, weight: 0.5, models: undefined, slots: undefined },
  ]);
});

t.test('each field wrong: one line each, naming the entry and the field', async (t) => {
  t.same(one({}), ['upstreams[0].url is missing: the llama-server\'s base URL, such as "http://127.0.0.1:5857"']);
  t.same(one({ url: 5857 }), ['upstreams[0].url must be a URL string such as "http://127.0.0.1:5857", got 5857']);
  t.same(one({ url: 'localhost:5857' }), ['upstreams[0].url must be an http(s) URL, got protocol "localhost:"']);
  t.same(one({ url: 'not a url' }), ['upstreams[0].url must be an http(s) URL such as http://127.0.0.1:5857, got "not a url"']);
  t.same(one({ url: 'http://u:p@h:1' }), ['upstreams[0].url must not contain credentials; use "api_key"']);
  t.same(one({ url: 'http://a:1,http://b:2' }), ['upstreams[0].url must be one URL (one entry per server), got "http://a:1,http://b:2"']);
  t.same(one({ url: 'http://h:1', name: 'gpu a' }), [
    'upstreams[0].name must be 1 to 64 letters, digits, ".", "_", ":" or "-" (starting with a letter or digit), such as "gpu-a", got "gpu a"',
  ]);
  t.same(one({ url: 'http://h:1', name: 7 }).length, 1);
  t.same(one({ url: 'http://h:1', weight: '2' }), [
    'upstreams[0].weight must be a number above 0 and at most 1000, such as 2, got "2" (write 2 without quotes)',
  ]);
  t.same(one({ url: 'http://h:1', weight: 0 }), ['upstreams[0].weight must be a number above 0 and at most 1000, such as 2, got 0']);
  t.same(one({ url: 'http://h:1', slots: 2.5 }), [
    "upstreams[0].slots must be a whole number from 1 to 4096 (llama-server's -np), got 2.5",
  ]);
  t.same(one({ url: 'http://h:1', slots: '4' }), [
    'upstreams[0].slots must be a whole number from 1 to 4096 (llama-server\'s -np), got "4" (write 4 without quotes)',
  ]);
  t.same(one({ url: 'http://h:1', models: 'chat' }), [
    'upstreams[0].models must be a non-empty list of model names such as ["qwen3-8b"], got "chat"',
  ]);
  t.same(one({ url: 'http://h:1', models: [] }), [
    'upstreams[0].models must be a non-empty list of model names such as ["qwen3-8b"], got a list',
  ]);
  t.same(one({ url: 'http://h:1', models: ['chat', ' x', 3, 'chat', 'y'.repeat(257)] }), [
    'upstreams[0].models[1] must be a model name (1 to 256 characters, no surrounding spaces), got " x"',
    'upstreams[0].models[2] must be a model name (1 to 256 characters, no surrounding spaces), got 3',
    'upstreams[0].models[3] repeats "chat"',
    `upstreams[0].models[4] must be a model name (1 to 256 characters, no surrounding spaces), got "${'y'.repeat(80)}…"`,
  ]);
  t.same(one({ url: 'http://h:1', modles: ['chat'], weigth: 2 }), [
    'upstreams[0]: unknown field "modles" (expected url, name, api_key, weight, models, slots)',
    'upstreams[0]: unknown field "weigth" (expected url, name, api_key, weight, models, slots)',
  ]);
  t.same(one('http://h:1'), ['upstreams[0] must be an object such as {"url": "http://127.0.0.1:5857"}, got "http://h:1"']);
});

t.test('api_key: checked like LLM_UPSTREAM_API_KEY, never echoed', async (t) => {
  const found = [
    ...one({ url: 'http://h:1', api_key: SECRET }),
    ...one({ url: 'http://h:1', api_key: 'sk-llama-é-0123456789' }),
    ...one({ url: 'http://h:1', api_key: 1234567890123 }),
  ];
  t.same(found, [
    'upstreams[0].api_key must not contain whitespace',
    'upstreams[0].api_key contains a character outside printable ASCII; it is sent in an HTTP header, which cannot carry it',
    "upstreams[0].api_key must be a string (llama-server's --api-key), got number",
  ]);
  for (const line of found) {
    t.notMatch(line, 'sk-llama', 'the key is not in the message');
    t.notMatch(line, '1234567890123');
  }
  t.same(one({ url: 'http://h:1', api_key: '' }), [], 'empty: send no key to this server');
});

t.test('the file as a whole: not an object, no list, unknown fields, the same server or name twice', async (t) => {
  t.same(problems([]), ['must be a JSON object such as {"upstreams": [{"url": "http://127.0.0.1:5857"}]}, got a list']);
  t.same(problems({}), ['"upstreams" is missing: a list of servers such as [{"url": "http://127.0.0.1:5857"}]']);
  t.same(problems({ upstreams: [] }), [
    'upstreams must be a non-empty list of servers such as [{"url": "http://127.0.0.1:5857"}], got a list',
  ]);
  t.same(problems({ upstreams: [{ url: 'http://h:1' }], servers: [] }), ['unknown field "servers" (expected "upstreams")']);
  t.same(
    problems({
      upstreams: [
        { url: 'http://h:1' },
        { url: 'http://h:1/' },
        { url: 'http://h:2', name: 'upstream-1' },
        { url: 'http://h:3', name: 'b' },
        { url: 'http://h:4', name: 'b' },
      ],
    }),
    [
      'upstreams[1].url repeats upstreams[0].url (http://h:1)',
      'upstreams[2].name is called "upstream-1" like upstreams[0]',
      'upstreams[4].name is called "b" like upstreams[3]',
    ],
  );
  // Several entries wrong: every problem, each on its line.
  t.same(problems({ upstreams: [{ url: 'http://h:1', slots: 0 }, { weight: -1 }] }), [
    "upstreams[0].slots must be a whole number from 1 to 4096 (llama-server's -np), got 0",
    'upstreams[1].url is missing: the llama-server\'s base URL, such as "http://127.0.0.1:5857"',
    'upstreams[1].weight must be a number above 0 and at most 1000, such as 2, got -1',
  ]);
});

t.test('the error: a ConfigError for GATEWAY_UPSTREAMS_FILE, one line per problem naming the file', async (t) => {
  const err = t.throws(() =>
    parseUpstreamsFile({ upstreams: [{ url: 'http://h:1', slots: 0, api_key: SECRET }] }, FILE),
  ) as UpstreamsFileError;
  t.ok(err instanceof ConfigError);
  t.equal(err.setting, 'GATEWAY_UPSTREAMS_FILE');
  t.equal(err.file, FILE);
  t.equal(
    err.message,
    [
      'GATEWAY_UPSTREAMS_FILE ./upstreams.json: upstreams[0].api_key must not contain whitespace',
      "./upstreams.json: upstreams[0].slots must be a whole number from 1 to 4096 (llama-server's -np), got 0",
    ].join('\n'),
  );
  t.notMatch(err.message, 'sk-llama');
});

t.test('reading the file: missing, not JSON, good', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-upstreams-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const missing = join(dir, 'nope.json');
  const gone = t.throws(() => readUpstreamsFile(missing)) as UpstreamsFileError;
  t.same([gone.file, gone.problems], [missing, ['not found']]);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{"upstreams": [');
  const err = t.throws(() => readUpstreamsFile(bad)) as UpstreamsFileError;
  t.match(err.problems[0], /^is not valid JSON: /);
  const good = join(dir, 'upstreams.json');
  writeFileSync(good, JSON.stringify({ upstreams: [{ url: 'http://127.0.0.1:5858', name: 'embed' }, { url: 'http://127.0.0.1:5859' }] }));

  // The file replaces LLM_UPSTREAM's list, and says so once.
  const said: (readonly string[])[] = [];
  const config = configWith({ apiKeys: [KEY], upstreamsFile: good });
  t.same(
    upstreamSpecs(config, (ignored) => said.push(ignored)).map((s) => [s.url, s.name]),
    [
      ['http://127.0.0.1:5858', 'embed'],
      ['http://127.0.0.1:5859', undefined],
    ],
  );
  t.same(said, [['http://127.0.0.1:5857']]);
  // Without the file: LLM_UPSTREAM's URLs, nothing pinned.
  t.same(upstreamSpecs(configWith({ apiKeys: [KEY], upstreams: ['http://a:1', 'http://b:2'] })), [
    { url: 'http://a:1' },
    { url: 'http://b:2' },
  ]);
});

t.test('GATEWAY_UPSTREAMS_FILE: empty by default, a path, never a folder', async (t) => {
  t.equal(loadConfig({ LLM_API_KEYS: KEY }).upstreamsFile, '');
  t.equal(loadConfig({ LLM_API_KEYS: KEY, GATEWAY_UPSTREAMS_FILE: ' ./upstreams.json ' }).upstreamsFile, './upstreams.json');
  t.throws(() => loadConfig({ LLM_API_KEYS: KEY, GATEWAY_UPSTREAMS_FILE: './conf/' }), {
    message: 'GATEWAY_UPSTREAMS_FILE must be a file path such as ./upstreams.json (or empty for none), got "./conf/"',
  });
  t.equal(SETTINGS.upstreamsFile.env, 'GATEWAY_UPSTREAMS_FILE');
});
