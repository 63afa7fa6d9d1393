// `llm-gateway menu`: one key to start or stop llama-server, the gateway and the Cloudflare Tunnel
// together under PM2, as pm2-config.json describes them. Plain text, no mouse: raw single keys in
// a terminal, one key per line from a pipe. runMenu() takes its streams, so tests drive it like a
// person would. The keys are read in menu-keys.ts, shown in
// menu-screen.ts and carried out in menu-actions.ts.
import { Failure, commandLine, run } from './common.js';
import { wantsColor } from './format.js';
import { Menu } from './menu-actions.js';
import { readKeys, type MenuInput } from './menu-keys.js';
import { KEY_HELP, Screen, type MenuOutput } from './menu-screen.js';
import { Pm2, defaultPm2Home } from './pm2.js';
import { DEFAULT_STACK_FILE } from './stack/pm2-config.js';
import type { Env } from './stack/settings.js';

export interface MenuOptions {
  readonly input: MenuInput;
  readonly output: MenuOutput;
  /** PM2's folder (daemon socket, logs); the pm2 command line uses the same one. */
  readonly pm2Home: string;
  /** pm2-config.json; written with the defaults when missing. */
  readonly configPath: string;
  /** Where settings and PATH are read (default process.env); .env is read as the gateway does. */
  readonly env?: Env;
  /** How long to watch freshly started processes before saying whether they stayed up. */
  readonly settleMs?: number;
  /** Lines shown by the log keys. */
  readonly logLines?: number;
  /** ANSI colours (default: when the output is a terminal and NO_COLOR is unset). */
  readonly color?: boolean;
}

const DEFAULT_SETTLE_MS = 1500;
const DEFAULT_LOG_LINES = 20;

/** Runs the menu until `q`, Ctrl-C or the end of input; PM2 keeps the processes running after. */
export async function runMenu(opts: MenuOptions): Promise<number> {
  const env = opts.env ?? process.env;
  const raw = opts.input.isTTY === true && typeof opts.input.setRawMode === 'function';
  const color = opts.color ?? wantsColor(opts.output, env);
  const screen = new Screen(opts.output, color, raw && opts.output.isTTY === true);
  screen.line(screen.paint('dim', `Connecting to PM2 (PM2_HOME ${opts.pm2Home})…`));
  let pm2: Pm2;
  try {
    pm2 = await Pm2.connect(opts.pm2Home);
  } catch (err) {
    throw new Failure(`could not reach or start the PM2 daemon in ${opts.pm2Home}: ${(err as Error).message}`);
  }
  const reader = readKeys(opts.input, raw);
  try {
    // Loaded here, not with the CLI: only the menu shows the gateway's JSON log lines.
    const { default: PinoPretty } = await import('pino-pretty');
    const actions = {
      configPath: opts.configPath,
      env,
      settleMs: opts.settleMs ?? DEFAULT_SETTLE_MS,
      logLines: opts.logLines ?? DEFAULT_LOG_LINES,
    };
    const menu = new Menu(pm2, screen, actions, PinoPretty.prettyFactory);
    menu.prepare();
    await menu.draw();
    for (;;) {
      const key = await reader.keys.next();
      if (key === null) break;
      screen.line(key === '\n' ? '' : key); // echo: raw keys and piped lines are not shown otherwise
      if (!(await menu.handle(key, reader.keys))) break;
      await menu.draw();
    }
  } finally {
    reader.close();
    await pm2.disconnect();
  }
  screen.line();
  screen.line(`Bye. What runs keeps running under PM2 (pm2 ls, or llm-gateway menu again; PM2_HOME ${opts.pm2Home}).`);
  return 0;
}

const MENU_HELP = `Usage: llm-gateway menu [--config FILE]

One key to start and stop llama-server, the gateway and the Cloudflare Tunnel together under PM2,
as pm2-config.json describes them (written with the defaults when missing; see
pm2-config.example.json). Works in any terminal, over SSH too. PM2 keeps the processes running
after you quit; \`pm2 ls\` and \`pm2 logs\` (same PM2_HOME, default ~/.pm2) see them.

Keys:
${KEY_HELP.map((k) => `  ${k}`).join('\n')}

From a pipe, each line is read as keys: printf 'a\\nq\\n' | llm-gateway menu

Options:
  --config FILE   the stack's config (default ./${DEFAULT_STACK_FILE})
  -h, --help      show help
`;

export function menuCommand(argv: string[]): Promise<number> {
  return run('llm-gateway menu --help', async () => {
    const args = commandLine(argv, { config: { type: 'string' } }, MENU_HELP);
    if (args === null) return 0;
    return runMenu({
      input: process.stdin,
      output: process.stdout,
      pm2Home: defaultPm2Home(),
      configPath: args.values.config ?? DEFAULT_STACK_FILE,
    });
  });
}
