// Text for a terminal, shared by the commands: ANSI colours (only when the output is a terminal and
// NO_COLOR is unset) and tables with aligned columns.

const COLORS = { green: 32, red: 31, yellow: 33, dim: 2, bold: 1, cyan: 36 } as const;
export type Color = keyof typeof COLORS;

/** Whether to colour what goes to `output`: a terminal, and NO_COLOR (no-color.org) unset. */
export function wantsColor(output: { isTTY?: boolean }, env: Readonly<Record<string, string | undefined>>): boolean {
  return output.isTTY === true && env.NO_COLOR === undefined;
}

/** `text` in a colour when `enabled`, else as it is. */
export function paint(enabled: boolean, color: Color, text: string): string {
  return enabled ? `\x1b[${COLORS[color]}m${text}\x1b[0m` : text;
}

/** The width of each column: its longest cell. */
export function columnWidths(rows: readonly (readonly string[])[]): number[] {
  return rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
}

export interface TableOptions {
  /** Put before every line. */
  readonly indent?: string;
  /** Columns aligned right (numbers); the others are aligned left. */
  readonly right?: (col: number) => boolean;
  /** Colours a cell after it is aligned. */
  readonly paint?: (row: number, col: number, cell: string) => string;
}

/** One line per row, columns two spaces apart, no trailing spaces (a last left-aligned cell is not padded). */
export function table(rows: readonly (readonly string[])[], opts: TableOptions = {}): string[] {
  const widths = columnWidths(rows);
  const cell = (r: number, c: number, text: string, last: boolean): string => {
    const aligned = opts.right?.(c) === true ? text.padStart(widths[c]!) : last ? text : text.padEnd(widths[c]!);
    return opts.paint === undefined ? aligned : opts.paint(r, c, aligned);
  };
  return rows.map((row, r) => `${opts.indent ?? ''}${row.map((text, c) => cell(r, c, text, c === row.length - 1)).join('  ')}`.trimEnd());
}
