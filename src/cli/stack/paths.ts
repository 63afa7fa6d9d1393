// Paths, files and programs for the stack: `~` in paths, a program looked up the way a shell finds
// it, a Node.js command's script, an option's value in an argument list, and writing a file only
// when it is new (the menu and `tunnel init` never overwrite).
import { accessSync, constants, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, delimiter, isAbsolute, join, relative, resolve } from 'node:path';
import type { ProcessSpec } from './pm2-config.js';

export function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

export function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Writes a file only if it does not exist yet (never overwrites); true if written. */
export function writeNew(path: string, text: string): boolean {
  try {
    writeFileSync(path, text, { flag: 'wx' });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/** Where a command runs from: a path (relative to cwd) or the first match in PATH; null if not found. */
export function resolveCommand(command: string, cwd: string, pathVariable: string | undefined): string | null {
  const expanded = expandHome(command);
  if (expanded.includes('/')) {
    const p = resolve(cwd, expanded);
    return isExecutableFile(p) ? p : null;
  }
  for (const dir of (pathVariable ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, expanded);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

/** `node`, `nodejs` or this very Node binary: the program is a Node.js script, run with IPC. */
export function isNodeCommand(command: string): boolean {
  return /^node(js)?(\.exe)?$/.test(basename(command)) || command === process.execPath;
}

/** The script a Node.js command runs: its first argument that is not an option. */
export function nodeScript(spec: ProcessSpec): { nodeArgs: string[]; script: string | undefined; args: string[] } {
  const at = spec.args.findIndex((a) => !a.startsWith('-'));
  if (at < 0) return { nodeArgs: [...spec.args], script: undefined, args: [] };
  return { nodeArgs: spec.args.slice(0, at), script: spec.args[at], args: spec.args.slice(at + 1) };
}

/** The value of `--name V` or `--name=V` in a list of arguments (the last one wins, as in most CLIs). */
export function optionValue(args: readonly string[], ...names: string[]): string | undefined {
  let value: string | undefined;
  args.forEach((a, i) => {
    for (const n of names) {
      if (a === n && i + 1 < args.length) value = args[i + 1];
      else if (a.startsWith(`${n}=`)) value = a.slice(n.length + 1);
    }
  });
  return value;
}

export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}
