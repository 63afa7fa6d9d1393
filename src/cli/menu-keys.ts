// The menu's key input: raw single keys on a terminal, or every character of each line from a pipe
// (so tests and scripts drive the menu like a person would), queued until the menu asks for them.
import { createInterface } from 'node:readline';

export interface MenuInput extends NodeJS.ReadableStream {
  isTTY?: boolean;
  setRawMode?(mode: boolean): unknown;
}

/** Keys pressed, in order; next() resolves with null once the input has ended. */
export class KeyQueue {
  #keys: string[] = [];
  #waiter: ((key: string | null) => void) | undefined;
  #ended = false;

  push(key: string): void {
    if (this.#waiter !== undefined) {
      const wake = this.#waiter;
      this.#waiter = undefined;
      wake(key);
    } else this.#keys.push(key);
  }

  /** Ctrl-C: forget what was typed ahead and quit after the current action. */
  interrupt(): void {
    this.#keys = [];
    this.push('q');
  }

  end(): void {
    this.#ended = true;
    if (this.#waiter !== undefined) {
      const wake = this.#waiter;
      this.#waiter = undefined;
      wake(null);
    }
  }

  next(): Promise<string | null> {
    const key = this.#keys.shift();
    if (key !== undefined) return Promise.resolve(key);
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve) => (this.#waiter = resolve));
  }
}

/** Raw single keys on a terminal; otherwise every character of each line is a key (Enter alone: refresh). */
export function readKeys(input: MenuInput, raw: boolean): { keys: KeyQueue; close(): void } {
  const keys = new KeyQueue();
  if (raw) {
    input.setRawMode?.(true);
    input.setEncoding('utf8');
    const onData = (chunk: string | Buffer): void => {
      const text = chunk.toString();
      if (text.startsWith('\x1b')) return; // arrows, function keys
      for (const ch of text) {
        if (ch === '\u0003' || ch === '\u0004')
          keys.interrupt(); // Ctrl-C, Ctrl-D
        else keys.push(ch === '\r' ? '\n' : ch);
      }
    };
    const onEnd = (): void => keys.end();
    input.on('data', onData);
    input.on('end', onEnd);
    input.resume();
    return {
      keys,
      close() {
        input.removeListener('data', onData);
        input.removeListener('end', onEnd);
        input.setRawMode?.(false);
        input.pause();
      },
    };
  }
  const lines = createInterface({ input, terminal: false, crlfDelay: Infinity });
  lines.on('line', (line) => {
    const typed = line.trim();
    if (typed === '') keys.push('\n');
    for (const ch of typed) if (ch !== ' ') keys.push(ch);
  });
  lines.on('close', () => keys.end());
  return { keys, close: () => lines.close() };
}
