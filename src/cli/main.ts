#!/usr/bin/env node
// `llm-gateway`: the command line. Each command lives in its own module and parses its own
// arguments. Exit codes: 0 ok, 1 failure, 2 usage.
import { auditCommand } from './audit.js';
import { dbCommand } from './db.js';
import { doctorCommand } from './doctor.js';
import { keysCommand } from './keys.js';
import { menuCommand } from './menu.js';
import { tunnelCommand } from './tunnel.js';
import { usageCommand } from './usage.js';

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  keys: { summary: 'manage API keys in the key database', run: keysCommand },
  menu: { summary: 'start/stop llama-server, gateway and tunnel under PM2 with one key', run: menuCommand },
  doctor: { summary: 'check settings, keys, llama-server, tunnel and PM2 processes', run: doctorCommand },
  tunnel: { summary: 'write the Cloudflare Tunnel config template (tunnel init)', run: tunnelCommand },
  usage: { summary: 'token usage per day, key or model (table, CSV, JSON)', run: usageCommand },
  audit: { summary: 'upload finished audit files to object storage now (audit upload)', run: auditCommand },
  db: { summary: 'copy the key database file to PostgreSQL (db migrate-to postgres://…)', run: dbCommand },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary} (llm-gateway ${name} --help)`);
  return `Usage: llm-gateway <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nOptions:\n  -h, --help   show help\n`;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h') {
    process.stdout.write(help());
    return 0;
  }
  if (command === undefined) {
    process.stderr.write(`llm-gateway: name a command (${Object.keys(COMMANDS).join(', ')})\nTry: llm-gateway --help\n`);
    return 2;
  }
  const entry = COMMANDS[command];
  if (entry === undefined) {
    process.stderr.write(`llm-gateway: unknown command "${command}"\nTry: llm-gateway --help\n`);
    return 2;
  }
  return entry.run(rest);
}

process.exitCode = await main(process.argv.slice(2));
