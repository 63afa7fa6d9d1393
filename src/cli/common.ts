// What every `llm-gateway` command shares: its two kinds of error, .env and GATEWAY_DB, and the
// mapping of errors to exit codes (0 ok, 1 failure, 2 usage).
import { ConfigError, SETTINGS } from '../config.js';
import { KeyStoreError } from '../keys/key-store.js';

/** The command was called wrongly: exit 2, with a hint to --help. */
export class UsageError extends Error {}
/** The command could not do its work: exit 1. */
export class Failure extends Error {}

/** Reads .env in the working directory like the server does (values in the environment win). */
export function loadDotEnv(): void {
  try {
    process.loadEnvFile('.env');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Failure(`could not read .env: ${(err as Error).message}`);
  }
}

/** The key database path: --db, else GATEWAY_DB (.env read), else the default. */
export function dbPath(flag: string | undefined): string {
  loadDotEnv();
  const raw = flag ?? process.env[SETTINGS.db.env];
  try {
    return SETTINGS.db.parse(raw === undefined || raw.trim() === '' ? SETTINGS.db.fallback : raw, flag === undefined ? SETTINGS.db.env : '--db');
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
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
