// `llm-gateway keys …`: manage the key database (GATEWAY_DB, or PostgreSQL with
// GATEWAY_DATABASE_URL) directly. A running gateway picks up every change within a second (it polls
// SQLite's data_version; on PostgreSQL every change is told to every gateway by NOTIFY).
import type { ParseArgsConfig } from 'node:util';
import { wholeNumber } from '../config.js';
import { parseExpiry } from '../keys/expiry.js';
import { POLICY_FLAGS, POLICY_FLAG_NAMES, describePolicy, policyFromFlags } from '../keys/key-policy.js';
import { LIMIT_NAMES, keyJson, type KeyChanges, type KeyLimits, type KeyRecord } from '../keys/key-store.js';
import { BUDGET_FLAGS, BUDGET_FLAG_NAMES, budgetsFromFlags } from '../keys/key-budgets.js';
import { budgetColumn, budgetJson, budgetLines, readBudgetStates } from './key-budgets-view.js';
import { UsageError, commandLine, openKeyDatabase, run } from './common.js';
import { table } from './format.js';

const KEYS_HELP = `Usage: llm-gateway keys <action> [options]

Manage API keys in the key database: PostgreSQL when GATEWAY_DATABASE_URL is set, else the
file GATEWAY_DB (default ./data/gateway.db); .env is read. Running gateways apply every change
within a second, without a restart.

Actions:
  create --name NAME [options]   create a key; the key is printed once, never again
  list [--json]                  all keys: name, prefix, enabled, expires, last used, note
  show NAME [--json]             one key in full
  disable NAME                   stop a key working (reversible)
  enable NAME                    let a disabled key work again
  rotate NAME                    new secret for the same key; the old one stops working
  set NAME [options]             change any field
  revoke NAME                    delete a key for good

NAME is a key's name or id. Options for create and set:
  --name NAME            unique name (set: rename)
  --note TEXT            free text, e.g. who has it
  --expires WHEN         YYYY-MM-DD (valid through that day, UTC), ISO time, or 30d/12h/90m;
                         set: "never" removes the expiry
  --models a,b           models this key may use (the request's "model"); set: "all" lifts it
  --origins o1,o2        browser origins this key may be used from; set: "all" lifts it
  --rpm N                requests per minute      (limits are stored for the admission
  --tpm N                tokens per minute         feature; set: "none" removes one)
  --tpd N                tokens per day
  --concurrency N        requests at the same time
  --max-tokens N         cap on generated tokens (max_tokens, n_predict, …); set: "none" = the
                         gateway's default (GATEWAY_MAX_TOKENS)
  --param NAME=RULE      a llama-server parameter: allow, remove or refuse (several, or a comma
                         list: --param id_slot=allow,n_probs=remove); set: NAME=default
  --remote-media RULE    http(s) media URLs in messages: refuse, fetch (the gateway fetches them)
                         or allow; set: "default" = GATEWAY_REMOTE_MEDIA
  --max-prompt-bytes N   request size limit for this key (64kb, 1mb…); set: "none" = default
  --max-prompt-tokens N  prompt limit in tokens (llama-server counts them); set: "none" = default
  --budget-day N         token budget per calendar day / week / month, in GATEWAY_BUDGET_TZ
  --budget-week N          (prompt + completion tokens; set: "none" removes one)
  --budget-month N
  --budget-mode MODE     hard (refused once spent; the default) or soft (only alerts)
  --user-budget-day N    the same budgets for each end user under the key
  --user-budget-week N
  --user-budget-month N
  --db PATH              key database file (default: GATEWAY_DB or ./data/gateway.db; given,
                         it is used even when GATEWAY_DATABASE_URL is set)
  --json                 machine-readable output
  -h, --help             show help

`;

const OPTIONS = {
  json: { type: 'boolean' },
  db: { type: 'string' },
  name: { type: 'string' },
  note: { type: 'string' },
  expires: { type: 'string' },
  models: { type: 'string' },
  origins: { type: 'string' },
  rpm: { type: 'string' },
  tpm: { type: 'string' },
  tpd: { type: 'string' },
  concurrency: { type: 'string' },
  ...BUDGET_FLAGS,
  ...POLICY_FLAGS,
} as const satisfies ParseArgsConfig['options'];

type Values = NonNullable<ReturnType<typeof commandLine<typeof OPTIONS>>>['values'];

const ACTION_OPTIONS: Record<string, readonly (keyof typeof OPTIONS)[]> = {
  create: [
    'name',
    'note',
    'expires',
    'models',
    'origins',
    'rpm',
    'tpm',
    'tpd',
    'concurrency',
    ...BUDGET_FLAG_NAMES,
    ...POLICY_FLAG_NAMES,
    'json',
  ],
  list: ['json'],
  show: ['json'],
  disable: ['json'],
  enable: ['json'],
  rotate: ['json'],
  revoke: ['json'],
  set: [
    'name',
    'note',
    'expires',
    'models',
    'origins',
    'rpm',
    'tpm',
    'tpd',
    'concurrency',
    ...BUDGET_FLAG_NAMES,
    ...POLICY_FLAG_NAMES,
    'json',
  ],
};

function list(text: string, option: string, allowAll: boolean): string[] | null {
  if (allowAll && text.trim().toLowerCase() === 'all') return null;
  const items = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (items.length === 0) throw new UsageError(`--${option} needs a comma-separated list${allowAll ? ' (or "all")' : ''}`);
  return items;
}

function limit(text: string, option: string, allowNone: boolean): number | null {
  if (allowNone && text.trim().toLowerCase() === 'none') return null;
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new UsageError(`--${option} must be a whole number ≥ 1${allowNone ? ' (or "none")' : ''}, got "${text}"`);
  return n;
}

function changesFrom(values: Values, forSet: boolean): KeyChanges {
  const changes: KeyChanges = {};
  if (values.name !== undefined) changes.name = values.name;
  if (values.note !== undefined) changes.note = values.note;
  if (values.expires !== undefined) {
    if (forSet && values.expires.trim().toLowerCase() === 'never') changes.expiresAt = null;
    else {
      try {
        changes.expiresAt = parseExpiry(values.expires);
      } catch (err) {
        throw new UsageError(`--expires: ${(err as Error).message}`);
      }
    }
  }
  if (values.models !== undefined) changes.models = list(values.models, 'models', true);
  if (values.origins !== undefined) changes.origins = list(values.origins, 'origins', true);
  const limits: Partial<Record<keyof KeyLimits, number | null>> = {};
  for (const name of LIMIT_NAMES) {
    const v = values[name];
    if (v !== undefined) limits[name] = limit(v, name, forSet);
  }
  if (Object.keys(limits).length > 0) changes.limits = limits;
  try {
    const policy = policyFromFlags(values);
    if (policy !== undefined) changes.policy = policy;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  try {
    const budgets = budgetsFromFlags(values);
    if (budgets !== undefined) changes.budgets = budgets;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return changes;
}

function when(t: number | null, none: string): string {
  return t === null
    ? none
    : new Date(t)
        .toISOString()
        .replace('T', ' ')
        .replace(/\.\d{3}Z$/, 'Z');
}

function describe(k: KeyRecord): string {
  const limits = LIMIT_NAMES.map((n) => `${n}=${k.limits[n] ?? '-'}`).join(' ');
  return [
    `name:       ${k.name}`,
    `id:         ${k.id}`,
    `prefix:     ${k.prefix}…`,
    `enabled:    ${k.enabled ? 'yes' : 'no'}`,
    `created:    ${when(k.createdAt, '-')}`,
    `expires:    ${when(k.expiresAt, 'never')}`,
    `last used:  ${when(k.lastUsedAt, 'never')}`,
    `models:     ${k.models === null ? 'all' : k.models.join(', ')}`,
    `origins:    ${k.origins === null ? 'all' : k.origins.join(', ')}`,
    `limits:     ${limits}`,
    `policy:     ${describePolicy(k.policy)}`,
    `note:       ${k.note}`,
  ].join('\n');
}

function print(values: Values, json: unknown, text: string): void {
  console.log(values.json === true ? JSON.stringify(json, null, 2) : text);
}

function showSecret(values: Values, record: KeyRecord, key: string, verb: string): void {
  if (values.json === true) {
    console.log(JSON.stringify({ ...keyJson(record), key }, null, 2));
    return;
  }
  console.log(
    `✅ ${verb} key "${record.name}" (${record.id}). This is the only time it is shown:\n\n    ${key}\n\nThe running gateway accepts it within a second.`,
  );
}

async function keys(action: string | undefined, positionals: string[], values: Values): Promise<void> {
  if (action === undefined) throw new UsageError('name an action: create, list, show, disable, enable, rotate, set or revoke');
  const allowed = ACTION_OPTIONS[action];
  if (allowed === undefined) throw new UsageError(`unknown action "${action}"`);
  for (const option of Object.keys(values) as (keyof typeof OPTIONS)[]) {
    if (option !== 'db' && !allowed.includes(option)) throw new UsageError(`--${option} does not apply to "keys ${action}"`);
  }
  const needsName = action !== 'create' && action !== 'list';
  const target = positionals[0];
  if (needsName && target === undefined) throw new UsageError(`"keys ${action}" needs a key name or id`);
  if (positionals.length > (needsName ? 1 : 0)) throw new UsageError(`unexpected argument "${positionals[needsName ? 1 : 0]}"`);
  if (action === 'create' && values.name === undefined) throw new UsageError('"keys create" needs --name NAME');

  const changes = changesFrom(values, action === 'set');
  const db = await openKeyDatabase(values.db);
  const store = db.keys;
  try {
    switch (action) {
      case 'create': {
        const { record, key } = await store.create({ ...changes, name: values.name ?? '' });
        showSecret(values, record, key, 'Created');
        return;
      }
      case 'list': {
        const all = await store.list();
        // Tokens today (UTC), as llama-server reported them, from the usage table.
        const today = await db.usage.tokensByKey(Date.parse(`${new Date().toISOString().slice(0, 10)}T00:00:00Z`));
        const budgets = await readBudgetStates(db.usage, all);
        const rows = [['NAME', 'ID', 'PREFIX', 'ENABLED', 'EXPIRES', 'LAST USED', 'TOKENS TODAY', 'BUDGET', 'NOTE']];
        for (const k of all)
          rows.push([
            k.name,
            k.id,
            `${k.prefix}…`,
            k.enabled ? 'yes' : 'no',
            when(k.expiresAt, 'never'),
            when(k.lastUsedAt, 'never'),
            (today.get(k.id) ?? 0).toLocaleString('en-US'),
            budgetColumn(budgets.get(k.id)),
            k.note,
          ]);
        const text =
          all.length === 0 ? `No keys in ${store.path}. Create one: llm-gateway keys create --name alice` : table(rows).join('\n');
        print(
          values,
          {
            object: 'list',
            data: all.map((k) => ({ ...keyJson(k), tokens_today: today.get(k.id) ?? 0, ...budgetJson(budgets.get(k.id)) })),
          },
          text,
        );
        return;
      }
      case 'show': {
        const k = await store.get(target!);
        const budget = (await readBudgetStates(db.usage, [k])).get(k.id);
        print(values, { ...keyJson(k), ...budgetJson(budget) }, describe(k) + budgetLines(budget));
        return;
      }
      case 'disable':
      case 'enable': {
        const k = await store.update(target!, { enabled: action === 'enable' });
        print(values, keyJson(k), `✅ Key "${k.name}" ${action}d.`);
        return;
      }
      case 'rotate': {
        const { record, key } = await store.rotate(target!);
        showSecret(values, record, key, 'Rotated');
        return;
      }
      case 'revoke': {
        const k = await store.revoke(target!);
        print(values, { id: k.id, name: k.name, deleted: true }, `✅ Key "${k.name}" revoked (deleted).`);
        return;
      }
      case 'set': {
        if (Object.keys(changes).length === 0) throw new UsageError('"keys set" needs at least one field to change (see --help)');
        const k = await store.update(target!, changes);
        const budget = (await readBudgetStates(db.usage, [k])).get(k.id);
        print(values, keyJson(k), `✅ Key "${k.name}" updated.\n${describe(k)}${budgetLines(budget)}`);
        return;
      }
      default:
        throw new UsageError(`unknown action "${action}"`);
    }
  } finally {
    await db.close();
  }
}

export function keysCommand(argv: string[]): Promise<number> {
  return run('llm-gateway keys --help', async () => {
    const args = commandLine(argv, OPTIONS, KEYS_HELP, true);
    if (args === null) return 0;
    const [action, ...rest] = args.positionals;
    await keys(action, rest, args.values);
    return 0;
  });
}
