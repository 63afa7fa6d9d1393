// GATEWAY_WEBHOOK_URL / GATEWAY_WEBHOOK_SECRET at boot: off by default, the secret required with a
// URL and long enough, bad URLs refused without echoing them (a webhook URL often holds a token),
// and the secret never in an error.
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';

const KEYS = { LLM_API_KEYS: 'sk-test-alice-0123456789abcdef' };
const SECRET = 'whsec-0123456789abcdef0123456789abcdef';

function refusal(env: Record<string, string>): string {
  try {
    loadConfig({ ...KEYS, ...env });
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  return 'accepted';
}

t.test('off by default', async (t) => {
  const config = loadConfig(KEYS);
  t.equal(config.webhookUrl, '');
  t.equal(config.webhookSecret, '');
});

t.test('a URL and a secret', async (t) => {
  const config = loadConfig({ ...KEYS, GATEWAY_WEBHOOK_URL: ' https://hooks.example.com/gw?token=abc ', GATEWAY_WEBHOOK_SECRET: SECRET });
  t.equal(config.webhookUrl, 'https://hooks.example.com/gw?token=abc', 'the query is kept');
  t.equal(config.webhookSecret, SECRET);
  t.equal(loadConfig({ ...KEYS, GATEWAY_WEBHOOK_SECRET: SECRET }).webhookUrl, '', 'a secret without a URL is harmless (alerts stay off)');
});

t.test('refusals name the setting and the rule, never the value', async (t) => {
  const cases: [Record<string, string>, string][] = [
    [
      { GATEWAY_WEBHOOK_URL: 'https://hooks.example.com/gw' },
      'GATEWAY_WEBHOOK_SECRET is needed when GATEWAY_WEBHOOK_URL is set: every alert is signed with it',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'https://hooks.example.com/gw', GATEWAY_WEBHOOK_SECRET: 'short-secret-0123456789' },
      'GATEWAY_WEBHOOK_SECRET is 23 characters long; it needs at least 32 (e.g. openssl rand -hex 32)',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'https://hooks.example.com/gw', GATEWAY_WEBHOOK_SECRET: `${SECRET} more` },
      'GATEWAY_WEBHOOK_SECRET must be printable ASCII without whitespace',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'hooks.example.com/gw?token=topsecret', GATEWAY_WEBHOOK_SECRET: SECRET },
      'GATEWAY_WEBHOOK_URL must be an http(s) URL such as https://hooks.example.com/llm-gateway (or empty for off)',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'ftp://hooks.example.com/gw', GATEWAY_WEBHOOK_SECRET: SECRET },
      'GATEWAY_WEBHOOK_URL must be an http(s) URL, got protocol "ftp:"',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'https://user:topsecret@hooks.example.com/gw', GATEWAY_WEBHOOK_SECRET: SECRET },
      'GATEWAY_WEBHOOK_URL must not contain credentials: receivers check the signature instead',
    ],
    [
      { GATEWAY_WEBHOOK_URL: 'https://hooks.example.com/gw#frag', GATEWAY_WEBHOOK_SECRET: SECRET },
      'GATEWAY_WEBHOOK_URL must not contain a fragment',
    ],
  ];
  for (const [env, message] of cases) {
    const got = refusal(env);
    t.equal(got, message);
    t.notMatch(got, 'topsecret');
    t.notMatch(got, SECRET);
  }
});
