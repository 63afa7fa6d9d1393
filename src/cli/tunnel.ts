// `llm-gateway tunnel init`: writes cloudflared-config.yml from a template whose ingress points at
// the gateway (GATEWAY_PORT), with placeholders for what `cloudflared tunnel create` gives you.
// It never overwrites a file.
import { existsSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { Failure, UsageError, commandLine, run } from './common.js';
import { isInside } from './stack/paths.js';
import { DEFAULT_STACK_FILE, DEFAULT_TUNNEL_FILE, StackConfigError, loadStackConfig, type StackConfig } from './stack/pm2-config.js';
import { gatewayEnvironment, gatewaySettings } from './stack/settings.js';
import { tunnelConfigPath, tunnelTemplateHelp, writeTunnelTemplate } from './stack/tunnel-file.js';

const TUNNEL_HELP = `Usage: llm-gateway tunnel init [--file PATH] [--config FILE]

Writes a cloudflared config for the gateway: tunnel name, credentials file and hostname as
placeholders, ingress to http://localhost:<GATEWAY_PORT>, and the final http_status:404 rule.
An existing file is never overwritten.

The file is the tunnel's --config in pm2-config.json (default ${DEFAULT_TUNNEL_FILE}), or --file.
Then: cloudflared tunnel login; cloudflared tunnel create <name>; cloudflared tunnel route dns
<name> <hostname>; fill in the placeholders; start the tunnel (llm-gateway menu, key 3).

Options:
  --file PATH     where to write (default: from pm2-config.json, else ${DEFAULT_TUNNEL_FILE})
  --config FILE   the PM2 stack's config (default ./${DEFAULT_STACK_FILE})
  -h, --help      show help
`;

function stackIfAny(file: string): StackConfig | null {
  if (!existsSync(file)) return null;
  try {
    return loadStackConfig(file);
  } catch (err) {
    if (err instanceof StackConfigError) throw new Failure(`${err.file}: ${err.problems.join('; ')}`);
    throw err;
  }
}

function init(values: { file?: string; config?: string }): number {
  const stack = stackIfAny(resolve(values.config ?? DEFAULT_STACK_FILE));
  let path: string;
  if (values.file !== undefined) path = resolve(values.file);
  else if (stack === null) path = resolve(DEFAULT_TUNNEL_FILE);
  else {
    const configured = tunnelConfigPath(stack);
    if (configured === null)
      throw new Failure(
        `the tunnel in ${stack.file} has no --config; add "--config", "${DEFAULT_TUNNEL_FILE}" to tunnel.args, or pass --file`,
      );
    if (!isInside(stack.root, configured) && !existsSync(configured)) {
      throw new Failure(
        `the tunnel's --config ${configured} is outside the project (${stack.root}); write it yourself, or pass --file ${configured}`,
      );
    }
    path = configured;
  }
  const settings = gatewaySettings(gatewayEnvironment(stack, process.env));
  if (settings.config === undefined) throw new Failure(`cannot tell the gateway's port: ${settings.error}`);
  const shown = relative(process.cwd(), path).startsWith('..') ? path : `./${relative(process.cwd(), path)}`;
  if (!writeTunnelTemplate(path, settings.config.port)) {
    console.log(`${shown} already exists; left as it is. \`llm-gateway doctor\` checks it.`);
    return 0;
  }
  for (const line of tunnelTemplateHelp(shown)) console.log(line);
  return 0;
}

export function tunnelCommand(argv: string[]): Promise<number> {
  return run('llm-gateway tunnel --help', () => {
    const args = commandLine(argv, { file: { type: 'string' }, config: { type: 'string' } }, TUNNEL_HELP, true);
    if (args === null) return 0;
    const [action, ...rest] = args.positionals;
    if (action === undefined) {
      process.stdout.write(TUNNEL_HELP);
      throw new UsageError('name an action');
    }
    if (action !== 'init') throw new UsageError(`unknown action "${action}"`);
    if (rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
    return init(args.values);
  });
}
