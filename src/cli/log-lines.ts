// Log lines for the menu: the end of a PM2 log file without reading all of it, and the gateway's
// JSON lines made readable (pino-pretty, one line each; other lines as they are).
import { closeSync, openSync, readSync, statSync } from 'node:fs';

export type PrettyFactory = typeof import('pino-pretty').prettyFactory;

const TAIL_BYTES = 64 * 1024;

/** The last `count` lines of a file, reading at most its last 64 KB (PM2 logs grow without end). */
export function tailLines(path: string, count: number): string[] | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    const size = statSync(path).size;
    const length = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, size - length);
    const lines = buf.toString('utf8').split('\n');
    if (length < size) lines.shift(); // a partial first line
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return lines.slice(-count);
  } finally {
    closeSync(fd);
  }
}

/** Shows a pino JSON line the way pino-pretty would on one line; any other line as it is. */
export function logLinePrinter(prettyFactory: PrettyFactory, color: boolean): (line: string) => string {
  const pretty = prettyFactory({ colorize: color, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname', singleLine: true });
  return (line) => {
    if (!line.startsWith('{')) return line;
    try {
      return pretty(JSON.parse(line) as object).trimEnd();
    } catch {
      return line;
    }
  };
}
