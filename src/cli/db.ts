// `llm-gateway db migrate-to postgres://…`: moves a gateway from its SQLite file to PostgreSQL
// (issue #17). The target's schema is created or brought up to date (storage/pg.ts mirrors the
// file's one for one), then every key and usage row is copied in one PostgreSQL transaction with
// multi-row inserts, read from one snapshot of the file. Usage ids are kept (the admin console pages
// by them), and the id sequence is moved past them. A target that already holds keys or usage is
// refused unless --force, which empties it first: two histories are never mixed. Values PostgreSQL
// refuses where SQLite took them (a NUL in a text, a number beyond BIGINT) are fitted (FIT).
import { existsSync } from 'node:fs';
import type { ParseArgsConfig } from 'node:util';
import type Database from 'better-sqlite3';
import type pg from 'pg';
import { ConfigError, SETTINGS, readSetting } from '../config.js';
import { KEY_CHANNEL } from '../keys/pg-key-store.js';
import { openDatabase } from '../storage/db.js';
import { PostgresUnusable, describePgError, migratePg, pgPool } from '../storage/pg.js';
import { Failure, UsageError, commandLine, dbPath, run } from './common.js';

const HELP = `Usage: llm-gateway db migrate-to URL [options]

Copy the key database file (GATEWAY_DB, default ./data/gateway.db; .env is read) to PostgreSQL,
for several gateways sharing keys and usage. URL: postgres://USER:PASSWORD@HOST:5432/DATABASE.
The schema is created (or brought up to date), then every key and every usage row is copied in
one transaction: all or nothing. Stop the gateways first: what they write during the copy stays
in the file. A target that already holds keys or usage is refused (nothing is copied), unless
--force.

Then set GATEWAY_DATABASE_URL=URL (in .env or the environment) for every gateway and for these
commands, and restart the gateways. The file is no longer used; keep it as a backup.

Options:
  --db PATH      the file to copy (default: GATEWAY_DB or ./data/gateway.db)
  --force        empty the target's keys and usage first (what they hold is lost)
  --json         machine-readable output
  -h, --help     show help
`;

const OPTIONS = {
  db: { type: 'string' },
  force: { type: 'boolean' },
  json: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

/** Rows per INSERT: 1000 usage rows are 22,000 parameters (PostgreSQL allows 65,535). */
const BATCH_ROWS = 1000;
// Both tables are copied column for column, as the file has them (the schemas are one for one).
type Table = 'keys' | 'usage';

interface MigrateResult {
  keys: number;
  usage: number;
}

/** Query parameters node-postgres (like libpq) takes a secret from. */
const SECRET_PARAMS = ['password', 'sslpassword'];

/** The URL's text with its password hidden (in its user part or a ?password= parameter), to say which database without showing a secret. */
export function shownUrl(url: string): string {
  const u = new URL(url);
  if (u.password !== '') u.password = '****';
  for (const name of SECRET_PARAMS) if (u.searchParams.has(name)) u.searchParams.set(name, '****');
  return u.toString();
}

/** Copies `file`'s keys and usage into the database `pool` reaches (migrated first). Throws Failure. */
async function migrateTo(file: Database.Database, pool: pg.Pool, force: boolean): Promise<MigrateResult> {
  try {
    await migratePg(pool);
  } catch (err) {
    if (err instanceof PostgresUnusable) throw new Failure(err.message.replace('GATEWAY_DATABASE_URL', 'the target database'));
    throw err;
  }
  const client = await pool.connect();
  file.exec('BEGIN'); // one snapshot of the file (WAL: the gateway may keep writing meanwhile)
  try {
    await client.query('BEGIN');
    // Gateways already pointed here cannot write between the check and the copy.
    await client.query('LOCK TABLE keys, usage IN SHARE ROW EXCLUSIVE MODE');
    const held = (
      await client.query<{ keys: number; usage: number }>(
        'SELECT (SELECT count(*) FROM keys)::int AS keys, (SELECT count(*) FROM usage)::int AS usage',
      )
    ).rows[0]!;
    if (held.keys + held.usage > 0) {
      if (!force)
        throw new Failure(
          `the target database already holds ${held.keys} keys and ${held.usage} usage rows; nothing was copied. ` +
            'Point at an empty database, or run again with --force to empty it first (what it holds is lost).',
        );
      await client.query('TRUNCATE usage, keys');
    }
    const copied = { keys: await copyTable(file, client, 'keys'), usage: await copyTable(file, client, 'usage') };
    // The ids were given; the next one PostgreSQL makes follows the largest.
    await client.query(`SELECT setval(pg_get_serial_sequence('usage', 'id'), coalesce((SELECT max(id) FROM usage), 0) + 1, false)`);
    // Gateways already on this database (--force) reload their keys at the commit, as for any change.
    await client.query('SELECT pg_notify($1, current_schema())', [KEY_CHANNEL]);
    await client.query('COMMIT');
    return copied;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    if (err instanceof Failure) throw err;
    throw new Failure(`copy failed, nothing was copied: ${describePgError(err)}`);
  } finally {
    file.exec('COMMIT');
    client.release();
  }
}

/**
 * Each value as PostgreSQL's column takes it, where SQLite took anything (what the gateway's
 * PostgreSQL usage store does for live records, usage/pg-usage-store.ts): one refused value would
 * fail the whole copy. A fraction in an INTEGER column (a usage row's ts is "now - duration", in
 * fractions of a millisecond) is rounded; a number beyond the column's range (an upstream's absurd
 * token count, kept by SQLite as REAL) is the largest it holds; NaN is null; a NUL in a text (a key
 * holder's body `model` is recorded as sent) is U+FFFD.
 */
function fitInteger(max: number): (v: unknown) => unknown {
  return (v) => {
    if (typeof v !== 'number' || (Number.isInteger(v) && v <= max && v >= -max)) return v;
    return Number.isNaN(v) ? null : Math.max(-max, Math.min(max, Math.round(v)));
  };
}
const asIs = (v: unknown): unknown => v;
const FIT: Record<string, (v: unknown) => unknown> = {
  bigint: fitInteger(Number.MAX_SAFE_INTEGER),
  integer: fitInteger(2_147_483_647),
  text: (v) => (typeof v === 'string' && v.includes('\u0000') ? v.replaceAll('\u0000', '\ufffd') : v),
};

/**
 * Copies one table in batches, in rowid order (a large usage table is never in memory at once);
 * returns its row count. Values PostgreSQL would refuse are fitted on the way (FIT).
 */
async function copyTable(file: Database.Database, client: pg.PoolClient, table: Table): Promise<number> {
  const columns = (file.pragma(`table_info(${table})`) as { name: string }[]).map((c) => c.name);
  const types = await client.query<{ column_name: string; data_type: string }>(
    'SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1',
    [table],
  );
  const typeOf = new Map(types.rows.map((r) => [r.column_name, r.data_type]));
  const fit = columns.map((c) => FIT[typeOf.get(c) ?? ''] ?? asIs);
  const page = file.prepare(`SELECT rowid, ${columns.join(', ')} FROM ${table} WHERE rowid > ? ORDER BY rowid LIMIT ${BATCH_ROWS}`).raw();
  let after = Number.MIN_SAFE_INTEGER;
  let total = 0;
  for (;;) {
    const rows = page.all(after) as unknown[][];
    if (rows.length === 0) return total;
    const values = rows.map((_, r) => `(${columns.map((_c, c) => `$${r * columns.length + c + 1}`).join(', ')})`);
    const params = rows.flatMap((row) => row.slice(1).map((v, c) => fit[c]!(v)));
    await client.query(`INSERT INTO ${table} (${columns.join(', ')}) VALUES ${values.join(', ')}`, params);
    total += rows.length;
    after = rows.at(-1)![0] as number;
  }
}

async function migrateCommand(positionals: string[], values: { db?: string; force?: boolean; json?: boolean }): Promise<void> {
  const [target, ...extra] = positionals;
  if (target === undefined)
    throw new UsageError('"db migrate-to" needs the PostgreSQL URL: llm-gateway db migrate-to postgres://USER:PASSWORD@HOST:5432/DATABASE');
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
  let url: string;
  try {
    url = readSetting(SETTINGS.databaseUrl, { [SETTINGS.databaseUrl.env]: target }, 'the URL');
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
  if (url === '') throw new UsageError('"db migrate-to" needs the PostgreSQL URL');
  const path = dbPath(values.db);
  if (!existsSync(path)) throw new Failure(`no database file at ${path} (GATEWAY_DB or --db): nothing to copy`);
  const file = openDatabase(path, 'command'); // brought to the newest schema, as the target will be
  const pool = pgPool(url, { max: 1, application: 'llm-gateway-migrate', statementTimeoutMs: 600_000 });
  try {
    const copied = await migrateTo(file, pool, values.force === true);
    if (values.json === true) {
      console.log(JSON.stringify({ source: path, target: shownUrl(url), keys: copied.keys, usage: copied.usage }, null, 2));
      return;
    }
    console.log(
      [
        `✅ Copied ${copied.keys.toLocaleString('en-US')} keys and ${copied.usage.toLocaleString('en-US')} usage rows from ${path} to PostgreSQL (${shownUrl(url)}).`,
        '',
        'Next: set this for every gateway (in .env or the environment) and for these commands, then restart the gateways:',
        '',
        `    GATEWAY_DATABASE_URL=${shownUrl(url)}${shownUrl(url) === url ? '' : '   (with your password in place of ****)'}`,
        '',
        `${path} is no longer used once they run on PostgreSQL; keep it as a backup.`,
      ].join('\n'),
    );
  } finally {
    file.close();
    await pool.end().catch(() => {});
  }
}

export function dbCommand(argv: string[]): Promise<number> {
  return run('llm-gateway db --help', async () => {
    const args = commandLine(argv, OPTIONS, HELP, true);
    if (args === null) return 0;
    const [action, ...rest] = args.positionals;
    if (action === undefined) throw new UsageError('name an action: migrate-to');
    if (action !== 'migrate-to') throw new UsageError(`unknown action "${action}"`);
    await migrateCommand(rest, args.values);
    return 0;
  });
}
