// Where the JSON log lines go (stdout, when no person watches a terminal): gathered during one turn
// of the event loop and written together. pino's default destination makes one write(2) per line,
// i.e. one system call per request for the request log; under load this makes one per turn, and a
// quiet gateway still writes each line at once (the next turn). Lines still waiting when the
// process exits are written synchronously on the way out.

export interface LineSink {
  write(text: string): unknown;
}

export class BatchedLog {
  readonly #sink: LineSink;
  #pending: string[] = [];
  #scheduled = false;

  constructor(sink: LineSink = process.stdout) {
    this.#sink = sink;
  }

  /** Called by pino with one serialized line. */
  write(line: string): boolean {
    this.#pending.push(line);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(flushLater, this);
    }
    return true;
  }

  /** Writes every waiting line now. */
  flush(): void {
    this.#scheduled = false;
    const lines = this.#pending;
    if (lines.length === 0) return;
    this.#pending = [];
    this.#sink.write(lines.length === 1 ? lines[0]! : lines.join(''));
  }
}

function flushLater(log: BatchedLog): void {
  log.flush();
}
