// A key's policy document: validation naming the field, merging a change, the CLI's options
// (`keys create/set`, `keys show`), and the admin API (POST/PATCH /admin/keys), whose change a
// running gateway applies to the next request.
import { join } from 'node:path';
import { test } from 'tap';
import { keysCommand } from '../../src/cli/keys.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStoreError } from '../../src/keys/key-record.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { describePolicy, mergePolicy, policyFromFlags, validPolicy } from '../../src/keys/key-policy.js';
import { KEY_A, bearer, request, startGateway, tempDir, tempStore } from '../helpers.js';

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';

function refusal(fn: () => unknown): { message: string; param: string | null } {
  try {
    fn();
  } catch (err) {
    if (err instanceof KeyStoreError && err.code === 'invalid_key_field') return { message: err.message, param: err.param };
    throw err;
  }
  throw new Error('not refused');
}

test('validPolicy names the field at fault', async (t) => {
  t.same(validPolicy({ max_tokens: 100, params: { id_slot: 'allow' }, remote_media: 'fetch', max_prompt_bytes: 1, max_prompt_tokens: 2 }), {
    max_tokens: 100,
    params: { id_slot: 'allow' },
    remote_media: 'fetch',
    max_prompt_bytes: 1,
    max_prompt_tokens: 2,
  });
  t.equal(validPolicy({}), null, 'empty: none');
  t.equal(validPolicy(null), null);
  t.same(validPolicy({ max_tokens: null, remote_media: 'allow' }), { remote_media: 'allow' }, 'null fields dropped');
  t.same(
    refusal(() => validPolicy([])),
    { message: 'policy must be an object', param: 'policy' },
  );
  t.same(
    refusal(() => validPolicy({ max_tokens: 0 })),
    {
      message: 'policy.max_tokens must be a whole number ≥ 1 (or null for the default)',
      param: 'policy.max_tokens',
    },
  );
  t.same(refusal(() => validPolicy({ max_prompt_tokens: 1.5 })).param, 'policy.max_prompt_tokens');
  t.same(refusal(() => validPolicy({ max_prompt_bytes: '10' })).param, 'policy.max_prompt_bytes');
  t.same(
    refusal(() => validPolicy({ remote_media: 'yes' })),
    {
      message: 'policy.remote_media must be "refuse", "fetch" or "allow" (or null for the default)',
      param: 'policy.remote_media',
    },
  );
  t.same(
    refusal(() => validPolicy({ params: { id_slot: 'maybe' } })),
    {
      message: 'policy.params.id_slot must be "allow", "remove" or "refuse"',
      param: 'policy.params.id_slot',
    },
  );
  t.same(refusal(() => validPolicy({ params: { 'a b': 'allow' } })).param, 'policy.params');
  t.same(refusal(() => validPolicy({ params: ['id_slot'] })).param, 'policy.params');
  t.same(
    refusal(() => validPolicy({ budget: 1 })),
    {
      message: 'policy.budget is not a policy field (max_tokens, max_prompt_bytes, max_prompt_tokens, params, remote_media)',
      param: 'policy.budget',
    },
  );
});

test('mergePolicy: null removes a field; params merge entry by entry', async (t) => {
  const current = { max_tokens: 10, params: { id_slot: 'allow' as const }, remote_media: 'fetch' as const };
  t.same(mergePolicy(current, { params: { lora: 'allow' } }), {
    max_tokens: 10,
    params: { id_slot: 'allow', lora: 'allow' },
    remote_media: 'fetch',
  });
  t.same(mergePolicy(current, { max_tokens: null, params: { id_slot: null } } as never), { remote_media: 'fetch' });
  t.same(mergePolicy(current, { max_tokens: 20 }), { ...current, max_tokens: 20 });
  t.equal(mergePolicy(current, null), null, 'null clears it all');
  t.equal(mergePolicy({ max_tokens: 1 }, { max_tokens: null }), null, 'nothing left: none');
  t.throws(() => mergePolicy(current, { max_tokens: -5 }), KeyStoreError);
});

test('the CLI options', async (t) => {
  t.same(
    policyFromFlags({
      'max-tokens': '512',
      param: ['id_slot=allow,n_probs=remove', 'lora=default'],
      'remote-media': 'Fetch',
      'max-prompt-bytes': '64kb',
      'max-prompt-tokens': 'none',
    }),
    {
      max_tokens: 512,
      max_prompt_bytes: 65536,
      max_prompt_tokens: null,
      remote_media: 'fetch',
      params: { id_slot: 'allow', n_probs: 'remove', lora: null },
    },
  );
  t.equal(policyFromFlags({}), undefined);
  t.same(policyFromFlags({ 'remote-media': 'default' }), { remote_media: null });
  t.throws(() => policyFromFlags({ 'max-tokens': '10kb' }), /--max-tokens must be a whole number ≥ 1, or "none", got "10kb"/);
  t.throws(() => policyFromFlags({ 'max-tokens': '0' }), /--max-tokens/);
  t.throws(() => policyFromFlags({ param: ['id_slot'] }), /--param takes NAME=allow\|remove\|refuse\|default/);
  t.throws(() => policyFromFlags({ 'remote-media': 'sometimes' }), /--remote-media must be refuse, fetch, allow or default/);
  t.equal(describePolicy(null), 'defaults');
  t.equal(
    describePolicy({ max_tokens: 5, remote_media: 'allow', params: { id_slot: 'allow', lora: 'refuse' } }),
    'max_tokens=5 remote_media=allow params: id_slot=allow,lora=refuse (the rest: defaults)',
  );
});

test('keys create/set/show with policy options', async (t) => {
  const db = join(tempDir(t), 'gateway.db');
  const out: string[] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => void out.push(args.join(' '));
  t.teardown(() => {
    console.log = log;
  });
  t.equal(await keysCommand(['create', '--name', 'alice', '--max-tokens', '256', '--param', 'id_slot=allow', '--db', db, '--json']), 0);
  t.equal(await keysCommand(['set', 'alice', '--param', 'lora=allow', '--remote-media', 'fetch', '--db', db]), 0);
  out.length = 0;
  t.equal(await keysCommand(['show', 'alice', '--db', db]), 0);
  t.match(out.join('\n'), /\npolicy: {5}max_tokens=256 remote_media=fetch params: id_slot=allow,lora=allow \(the rest: defaults\)\n/);
  t.equal(
    await keysCommand([
      'set',
      'alice',
      '--max-tokens',
      'none',
      '--param',
      'id_slot=default,lora=default',
      '--remote-media',
      'default',
      '--db',
      db,
    ]),
    0,
  );
  const store = KeyStore.open(db);
  t.equal(store.get('alice').policy, null, 'every field back to the defaults');
  store.close();
  t.equal(await keysCommand(['set', 'alice', '--max-tokens', 'lots', '--db', db]), 2, 'a bad value is a usage error');
});

test('admin API: policy on POST and PATCH, refused with the field named, applied to the next request', async (t) => {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(t, { adminKey: ADMIN }, {}, { registry });
  const admin = (method: string, path: string, body: unknown) =>
    request(gw.port, { method, path, headers: { ...bearer(ADMIN), 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const created = await admin('POST', '/admin/keys', { name: 'bob', policy: { max_tokens: 7, params: { id_slot: 'allow' } } });
  t.equal(created.status, 201);
  const bob = JSON.parse(created.text) as { id: string; key: string; policy: unknown };
  t.same(bob.policy, { max_tokens: 7, params: { id_slot: 'allow' } });

  const chat = '{"messages":[{"role":"user","content":"Hi"}],"id_slot":0}';
  const send = () =>
    request(gw.port, { path: '/v1/chat/completions', headers: { ...bearer(bob.key), 'content-type': 'application/json' }, body: chat });
  t.equal((await send()).status, 200);
  t.equal(gw.fake.requests.at(-1)!.body.toString(), '{"messages":[{"role":"user","content":"Hi"}],"id_slot":0,"max_tokens":7}');

  const patched = await admin('PATCH', `/admin/keys/${bob.id}`, { policy: { params: { id_slot: null }, remote_media: 'allow' } });
  t.equal(patched.status, 200);
  t.same((JSON.parse(patched.text) as { policy: unknown }).policy, { max_tokens: 7, remote_media: 'allow' });
  t.equal((await send()).status, 403, 'id_slot refused again at once (the registry reloaded)');

  const bad = await admin('PATCH', `/admin/keys/${bob.id}`, { policy: { max_tokens: 0 } });
  t.equal(bad.status, 400);
  t.same(JSON.parse(bad.text), {
    error: { message: 'body/policy/max_tokens must be >= 1', type: 'invalid_request_error', param: null, code: 'invalid_body' },
  });
  const unknown = await admin('PATCH', `/admin/keys/${bob.id}`, { policy: { max_token: 5 } });
  t.same(JSON.parse(unknown.text), {
    error: { message: 'body/policy must NOT have additional properties', type: 'invalid_request_error', param: null, code: 'invalid_body' },
  });
  const cleared = await admin('PATCH', `/admin/keys/${bob.id}`, { policy: null });
  t.equal((JSON.parse(cleared.text) as { policy: unknown }).policy, null);
});
