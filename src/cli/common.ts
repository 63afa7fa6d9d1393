// What every `llm-gateway` command shares: its two kinds of error and their exit codes (0 ok,
// 1 failure, 2 usage), its argument parsing with -h/--help, and the key database: its path, or
// PostgreSQL when GATEWAY_DATABASE_URL is set.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, SETTINGS, readEnvFile, readSetting } from '../config.js';
import type { KeyRepository } from '../keys/key-repository.js';
import { KeyStore, KeyStoreError } from '../keys/key-store.js';
import { PgKeyStore } from '../keys/pg-key-store.js';
import { PgUsageStore } from '../usage/pg-usage-store.js';
import { UsageStore, type UsageTable } from '../usage/store.js';

/** The command was called wrongly: exit 2, with a hint to --help. */
export class UsageError extends Error {}
/** The command could not do its work: exit 1. */
export class Failure extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;
const HELP_OPTION = { help: { type: 'boolean', short: 'h' } } as const;
type ParseConfig<O extends Options> = { args: string[]; options: O & typeof HELP_OPTION; allowPositionals: true; strict: true };
type CommandLine<O extends Options> = ReturnType<typeof parseArgs<ParseConfig<O>>>;

/**
 * A command's arguments, parsed strictly (an unknown or malformed option is a usage error), or null
 * once -h/--help has printed `help`.
 */
export function commandLine<O extends Options>(argv: string[], options: O, help: string, allowPositionals = false): CommandLine<O> | null {
  let parsed: CommandLine<O>;
  try {
    // allowPositionals is only known at run time; the type says true (positionals: string[]).
    const all = { ...options, ...HELP_OPTION };
    parsed = parseArgs<ParseConfig<O>>({ args: argv, options: all, allowPositionals: allowPositionals as true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if ((parsed.values as { help?: boolean }).help === true) {
    process.stdout.write(help);
    return null;
  }
  return parsed;
}

/** Reads .env in the working directory like the server does (values in the environment win). */
function loadDotEnv(): void {
  let file: Record<string, string>;
  try {
    file = readEnvFile('.env');
  } catch (err) {
    throw new Failure((err as Error).message);
  }
  for (const [k, v] of Object.entries(file)) if (process.env[k] === undefined) process.env[k] = v;
}

/** The key database path: --db, else GATEWAY_DB (.env read), else the default. */
export function dbPath(flag: string | undefined): string {
  loadDotEnv();
  try {
    return flag === undefined ? readSetting(SETTINGS.db, process.env) : readSetting(SETTINGS.db, { [SETTINGS.db.env]: flag }, '--db');
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

/** GATEWAY_DATABASE_URL (.env read), or '' for the SQLite file; a malformed one is a usage error (its value never shown). */
export function databaseUrl(): string {
  loadDotEnv();
  try {
    return readSetting(SETTINGS.databaseUrl, process.env);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

/** The keys and the usage table a command works on, whichever database holds them. */
interface KeyDatabase {
  readonly keys: KeyRepository;
  readonly usage: UsageTable;
  close(): Promise<void>;
}

/**
 * The gateway's key database: PostgreSQL when GATEWAY_DATABASE_URL is set (and no --db names a
 * file), else the SQLite file (--db, GATEWAY_DB, the default). Migrated on open, as the gateway does.
 */
export async function openKeyDatabase(dbFlag: string | undefined): Promise<KeyDatabase> {
  const url = dbFlag === undefined ? databaseUrl() : '';
  if (url !== '') {
    const keys = await PgKeyStore.open(url);
    return { keys, usage: new PgUsageStore(keys.pool), close: () => keys.close() };
  }
  const keys = KeyStore.open(dbPath(dbFlag));
  return { keys, usage: new UsageStore(keys.db), close: async () => keys.close() };
}

/** Runs a command body and turns what it throws into a message on stderr and an exit code. */
export async function run(helpHint: string, body: () => Promise<number> | number): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`llm-gateway: ${err.message}\nTry: ${helpHint}\n`);
      return 2;
    }
    if (err instanceof KeyStoreError) {
      // A field the store refuses (bad name, origin, limit) is a usage error like any other.
      if (err.code === 'invalid_key_field') {
        process.stderr.write(`llm-gateway: ${err.message}\nTry: ${helpHint}\n`);
        return 2;
      }
      process.stderr.write(`llm-gateway: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`llm-gateway: ${(err as Error).message}\n`);
    return 1;
  }
}
