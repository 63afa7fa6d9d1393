// The Cloudflare Tunnel's config file (cloudflared-config.yml): where the tunnel process's --config
// points, the template `llm-gateway tunnel init` and the menu write (never overwriting), and a reader
// for the part of it the checks need.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { expandHome, isInside, optionValue, writeNew } from './paths.js';
import { PLACEHOLDER, type StackConfig } from './pm2-config.js';
import { isLocalHost, urlPort } from './settings.js';

/** The cloudflared config file the tunnel process uses (its --config), absolute; null if none is given. */
export function tunnelConfigPath(stack: StackConfig): string | null {
  const spec = stack.processes.tunnel;
  const p = optionValue(spec.args, '--config');
  return p === undefined ? null : resolve(spec.cwd, expandHome(p));
}

/** The tunnel name or id after `run` in the tunnel's args (null when not given or a placeholder). */
export function tunnelRunName(stack: StackConfig): string | null {
  const args = stack.processes.tunnel.args;
  const at = args.lastIndexOf('run');
  const name = at >= 0 ? args[at + 1] : undefined;
  return name === undefined || name.startsWith('-') || name.match(PLACEHOLDER) !== null ? null : name;
}

/** cloudflared-config.yml with placeholders, its ingress pointing at the gateway. */
export function tunnelTemplate(gatewayPort: number, home = homedir()): string {
  return `# Cloudflare Tunnel for LLM Gateway, written by llm-gateway (menu, or \`llm-gateway tunnel init\`).
# Fill in the three <…> values:
#   cloudflared tunnel login                        # once per machine
#   cloudflared tunnel create <tunnel-name>          # prints the tunnel id, writes the credentials file
#   cloudflared tunnel route dns <tunnel-name> <hostname>
# then put the same tunnel name after "run" in pm2-config.json (tunnel.args).
tunnel: <tunnel-name>
credentials-file: ${join(home, '.cloudflared')}/<tunnel-id>.json

ingress:
  # Only the gateway is published; llama-server stays private on 127.0.0.1.
  - hostname: <hostname>
    service: http://localhost:${gatewayPort}
  # Everything else: 404 (cloudflared needs a last rule without a hostname).
  - service: http_status:404
`;
}

/** What to tell the user after writing the template. */
export function tunnelTemplateHelp(path: string): string[] {
  return [
    `Wrote ${path}. Fill in:`,
    '  <tunnel-name>  the name from `cloudflared tunnel create <tunnel-name>`',
    '  <tunnel-id>    the id it printed (the credentials file ~/.cloudflared/<tunnel-id>.json)',
    '  <hostname>     your public name, e.g. api.example.com (`cloudflared tunnel route dns <tunnel-name> <hostname>`)',
    'and put the tunnel name after "run" in pm2-config.json (tunnel.args).',
  ];
}

export type TemplateOutcome =
  | { readonly status: 'written' | 'exists'; readonly path: string }
  | { readonly status: 'outside'; readonly path: string }
  | { readonly status: 'no-config' };

/**
 * Writes the cloudflared template when the tunnel's --config points inside the project and the file
 * is missing. Never overwrites an existing file; leaves paths outside the project alone.
 */
export function ensureTunnelTemplate(stack: StackConfig, gatewayPort: number): TemplateOutcome {
  const path = tunnelConfigPath(stack);
  if (path === null) return { status: 'no-config' };
  if (existsSync(path)) return { status: 'exists', path };
  if (!isInside(stack.root, path)) return { status: 'outside', path };
  return { status: writeNew(path, tunnelTemplate(gatewayPort)) ? 'written' : 'exists', path };
}

/** Writes the template at `path` if there is no file; false if one exists. */
export function writeTunnelTemplate(path: string, gatewayPort: number): boolean {
  return writeNew(path, tunnelTemplate(gatewayPort));
}

interface IngressRule {
  readonly hostname?: string;
  readonly path?: string;
  readonly service?: string;
}

export interface TunnelFile {
  readonly tunnel?: string;
  readonly credentialsFile?: string;
  readonly ingress: readonly IngressRule[];
}

function unquote(v: string): string {
  const t = v.trim();
  return (t.startsWith('"') && t.endsWith('"')) || (t.startsWith("'") && t.endsWith("'")) ? t.slice(1, -1) : t;
}

function stripComment(line: string): string {
  const m = /(^|\s)#/.exec(line);
  return m === null ? line : line.slice(0, m.index);
}

/**
 * Reads what the checks need from a cloudflared config: `tunnel`, `credentials-file` and each
 * ingress rule's hostname, path and service. (The subset of YAML cloudflared's docs use; nested
 * originRequest settings are skipped.)
 */
export function parseTunnelFile(text: string): TunnelFile {
  let tunnel: string | undefined;
  let credentialsFile: string | undefined;
  const ingress: Record<string, string>[] = [];
  let inIngress = false;
  let itemIndent = -1;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = stripComment(rawLine).replace(/\s+$/, '');
    if (line.trim() === '') continue;
    const indent = line.length - line.trimStart().length;
    const top = indent === 0 ? /^([A-Za-z0-9_-]+):\s*(.*)$/.exec(line) : null;
    if (top !== null) {
      inIngress = top[1] === 'ingress';
      if (top[1] === 'tunnel') tunnel = unquote(top[2] ?? '');
      if (top[1] === 'credentials-file') credentialsFile = unquote(top[2] ?? '');
      continue;
    }
    if (!inIngress) continue;
    const item = /^(\s*)-\s+([A-Za-z0-9_-]+):\s*(.*)$/.exec(line);
    if (item !== null) {
      itemIndent = (item[1] ?? '').length + 2;
      ingress.push({ [item[2] ?? '']: unquote(item[3] ?? '') });
      continue;
    }
    const field = /^(\s*)([A-Za-z0-9_-]+):\s*(.*)$/.exec(line);
    const current = ingress[ingress.length - 1];
    // Only keys at the rule's own indentation (not originRequest's children).
    if (field !== null && current !== undefined && (field[1] ?? '').length === itemIndent)
      current[field[2] ?? ''] = unquote(field[3] ?? '');
  }
  return {
    ...(tunnel === undefined ? {} : { tunnel }),
    ...(credentialsFile === undefined ? {} : { credentialsFile }),
    ingress: ingress.map((r) => ({
      ...(r.hostname === undefined ? {} : { hostname: r.hostname }),
      ...(r.path === undefined ? {} : { path: r.path }),
      ...(r.service === undefined ? {} : { service: r.service }),
    })),
  };
}

export function placeholdersIn(text: string): string[] {
  const found = new Set<string>();
  for (const line of text.split(/\r?\n/)) {
    for (const m of stripComment(line).matchAll(PLACEHOLDER)) found.add(m[0]);
  }
  return [...found];
}

/** The local port an ingress service points at (http://localhost:8787 → 8787); null otherwise. */
export function localServicePort(service: string): number | null {
  let url: URL;
  try {
    url = new URL(service);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  return isLocalHost(url.hostname) ? urlPort(url) : null;
}
