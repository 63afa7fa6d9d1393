// Completes the usage records of requests that ended without llama-server's usage: the client left
// (streamed or not), the upstream stream broke or ended in llama-server's own error event,
// llama-server failed a generation with a 5xx (it may have generated thousands of tokens first), or
// a request of several tasks (a /v1/completions prompt array, `n` > 1: non-streamed, llama-server
// reports one task's usage for all).
// Prompt tokens are counted exactly with llama-server's own counting route for that API; completion
// tokens are what was relayed (streams), the choices' text counted (prompt arrays), or a timed
// estimate (estimate.ts). The record is marked `estimated`, with `estimate` saying how.
//
// All of it runs after the response is over, off the request path: jobs wait in a queue, at most
// `concurrency` count at once (llama-server's HTTP threads are few), each bounded by `timeoutMs`
// (on timeout the job's calls are aborted and it makes no more) and by MAX_CALLS_PER_JOB calls:
// prompts beyond them (an embeddings request of thousands of inputs) are estimated from their bytes
// (marked partly_counted). A record whose count failed or timed out is billed the request body's
// bytes / 4 as its prompt (marked bytes): never nothing. The record is emitted once, with its final numbers, so metrics and limits that
// listen to the recorder see it once. drain() (shutdown) lets what is queued finish within a
// deadline and writes the rest with byte estimates, before the recorder's last flush.
import { maxOutputTokens, timedCompletion, type Speeds } from './estimate.js';
import { promptsOf, type Exchange, type RouteKind, type UsageEstimate, type UsageRecord } from './exchange.js';

/** A POST to llama-server that the gateway reads itself (Upstream.post). */
/** One token-counting call to the llama-server that answered `ex` (several servers: each has its own tokenizer). */
export type CountingCall = (
  path: string,
  body: string | Buffer,
  signal: AbortSignal,
  ex: Exchange,
) => Promise<{ statusCode: number; text: string }>;

const DEFAULT_COUNT_CONCURRENCY = 2;
const DEFAULT_COUNT_TIMEOUT_MS = 10_000;
/** jobs waiting beyond this are written at once without a count (llama-server is not keeping up) */
const DEFAULT_MAX_QUEUED = 10_000;
const DEFAULT_DRAIN_MS = 5_000;
/**
 * /tokenize calls one job may make (one per prompt: /tokenize joins an array into one prompt, so
 * prompts are counted one by one); the prompts beyond are estimated from their bytes
 */
const MAX_CALLS_PER_JOB = 32;
/** generation routes: a 5xx from llama-server may come after it generated (billed: counted, timed) */
const GENERATION_KINDS: ReadonlySet<RouteKind> = new Set<RouteKind>(['chat', 'completions', 'responses', 'messages']);
/** llama-server's "unavailable" (loading the model, …): nothing ran */
const UNAVAILABLE = 503;

/** Tokens of `bytes` of text, leaning high (about 4 bytes a token for English; fewer for code, CJK). */
function bytesEstimate(bytes: number): number {
  return Math.ceil(bytes / 4);
}

/** A prompt's tokens estimated without llama-server: token ids are one each, text bytes / 4. */
function promptEstimate(p: unknown): number {
  if (typeof p === 'string') return bytesEstimate(Buffer.byteLength(p));
  if (typeof p === 'number') return 1;
  if (Array.isArray(p)) return p.reduce((sum: number, q) => sum + promptEstimate(q), 0);
  return p === undefined || p === null ? 0 : bytesEstimate(Buffer.byteLength(JSON.stringify(p)));
}
/** llama-server's counting route for each API whose prompt can be counted. */
const COUNT_ROUTE: Partial<Record<RouteKind, string>> = {
  chat: '/v1/chat/completions/input_tokens',
  responses: '/v1/responses/input_tokens',
  messages: '/v1/messages/count_tokens',
  completions: '/tokenize',
  embeddings: '/tokenize',
};

type CompletionHow = NonNullable<UsageEstimate['completion']>;

/** What a record still needs from llama-server. */
export interface Need {
  /** count the prompt tokens (replacing whatever was reported) */
  readonly prompt: boolean;
  /** how to find the completion tokens; null: keep what the record has */
  readonly completion: CompletionHow | 'none' | null;
}

/**
 * What the record of this exchange still needs, or null when llama-server's numbers are final.
 * Only answers llama-server worked on count: a 200, a client that left before any status (the
 * request was running upstream), or llama-server's own 5xx on a generation route (it fails some
 * after generating: its "peg-native format" 500 came after 4,000 tokens; not its 503, "unavailable",
 * when nothing ran). llama-server's 4xx refusals and the gateway's own errors cost nothing.
 */
export function needOf(ex: Exchange, clientClosed: boolean): Need | null {
  if (COUNT_ROUTE[ex.kind] === undefined) return null;
  if (ex.status >= 500 && ex.status !== UNAVAILABLE && GENERATION_KINDS.has(ex.kind)) {
    // No usage in an error; nothing of the answer reached the client: its length is timed.
    return { prompt: true, completion: 'timed' };
  }
  if (!(ex.status === 200 || (ex.status === 0 && clientClosed))) return null;
  if ((ex.kind === 'completions' || ex.kind === 'chat') && ex.prompts > 1) {
    // Several tasks. Streamed: one usage event per task, summed (final when all came).
    if (ex.streamed) return ex.usageEvents >= ex.prompts ? null : { prompt: true, completion: 'relayed' };
    // Non-streamed: llama-server's usage is one task's; its choices are every task's answer.
    return { prompt: true, completion: ex.body !== null ? 'retokenized' : 'timed' };
  }
  if (ex.promptTokens !== null) return null; // reported (a stream cut after its first usage: see buildRecord)
  if (ex.kind === 'embeddings') return { prompt: true, completion: 'none' };
  return { prompt: true, completion: ex.streamed ? 'relayed' : 'timed' };
}

interface Job {
  readonly record: UsageRecord;
  readonly ex: Exchange;
  readonly need: Need;
  readonly json: Record<string, unknown>;
  readonly raw: Buffer;
  done: boolean;
  /** aborted when the job times out: its calls end, and it makes no more */
  readonly abort: AbortController;
  /** upstream calls made */
  calls: number;
  /** some prompts were estimated from their bytes (beyond MAX_CALLS_PER_JOB) */
  partly: boolean;
}

export interface CompleterLog {
  warn(obj: object, msg: string): void;
}

export interface CompleterOptions {
  call: CountingCall;
  emit: (record: UsageRecord) => void;
  /** llama-server's recent speed (GenerationRates, on the Upstream) */
  rates: { speeds(ex?: Exchange): Speeds };
  log?: CompleterLog;
  concurrency?: number;
  timeoutMs?: number;
  maxQueued?: number;
  drainMs?: number;
}

class CountFailed extends Error {}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

export class UsageCompleter {
  readonly #call: CountingCall;
  readonly #emit: (record: UsageRecord) => void;
  readonly #rates: { speeds(ex?: Exchange): Speeds };
  readonly #log: CompleterLog | undefined;
  readonly #concurrency: number;
  readonly #timeoutMs: number;
  readonly #maxQueued: number;
  readonly #drainMs: number;
  readonly #queue: Job[] = [];
  readonly #running = new Set<Job>();
  #closing = false;
  #idle: (() => void) | null = null;

  constructor(opts: CompleterOptions) {
    this.#call = opts.call;
    this.#emit = opts.emit;
    this.#rates = opts.rates;
    this.#log = opts.log;
    this.#concurrency = opts.concurrency ?? DEFAULT_COUNT_CONCURRENCY;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_COUNT_TIMEOUT_MS;
    this.#maxQueued = opts.maxQueued ?? DEFAULT_MAX_QUEUED;
    this.#drainMs = opts.drainMs ?? DEFAULT_DRAIN_MS;
  }

  /** records waiting for or in a count */
  get pending(): number {
    return this.#queue.length + this.#running.size;
  }

  /** Completes `record` off the request path and emits it (once) when done. */
  add(record: UsageRecord, ex: Exchange, need: Need, json: Record<string, unknown>, raw: Buffer): void {
    const job: Job = { record, ex, need, json, raw, done: false, abort: new AbortController(), calls: 0, partly: false };
    if (this.#closing || this.#queue.length >= this.#maxQueued) {
      this.#finish(job, null, null);
      return;
    }
    this.#queue.push(job);
    this.#next();
  }

  #next(): void {
    while (this.#running.size < this.#concurrency && this.#queue.length > 0) {
      const job = this.#queue.shift()!;
      this.#running.add(job);
      void this.#run(job);
    }
    if (this.#running.size === 0 && this.#queue.length === 0 && this.#idle !== null) this.#idle();
  }

  async #run(job: Job): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        job.abort.abort();
        reject(new CountFailed(`no count within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      timer.unref();
    });
    let prompt: number | null = null;
    let completion: number | null = null;
    try {
      [prompt, completion] = await Promise.race([this.#count(job), timeout]);
    } catch (err) {
      this.#log?.warn(
        { err: { message: (err as Error).message }, requestId: job.record.requestId, route: job.record.route },
        'usage record: token count from llama-server failed; written without it',
      );
    } finally {
      clearTimeout(timer);
      job.abort.abort(); // whatever still runs (it lost the race) stops
    }
    this.#running.delete(job);
    this.#finish(job, prompt, completion);
    this.#next();
  }

  /** [prompt tokens, completion tokens from the choices' text (retokenized) or null] */
  async #count(job: Job): Promise<[number | null, number | null]> {
    const { ex, need, json } = job;
    const prompt = need.prompt ? await this.#countPrompt(job) : null;
    if (need.completion !== 'retokenized' || ex.body === null) return [prompt, null];
    const max = maxOutputTokens(json, -1);
    const choices = choicesOf(ex.body, max < 0 ? undefined : max);
    if (choices === undefined) return [prompt, null];
    return [prompt, choices.atMax + (choices.texts.length === 0 ? 0 : await this.#tokens(job, choices.texts, false))];
  }

  /** The prompt of every task (a prompt counted once is charged once per task that ran it: `n`). */
  async #countPrompt(job: Job): Promise<number> {
    const { ex, json, raw } = job;
    const path = COUNT_ROUTE[ex.kind]!;
    const perPrompt = ex.prompts / promptsIn(ex.kind, json);
    if (path !== '/tokenize') {
      const answer = await this.#call(path, raw, this.#signalFor(job), ex);
      const n = (parseJson(answer.text) as { input_tokens?: unknown } | undefined)?.input_tokens;
      if (answer.statusCode !== 200 || typeof n !== 'number') throw new CountFailed(`${path} answered ${answer.statusCode}`);
      return n * perPrompt;
    }
    // One prompt (or embedding input) at a time: each gets its own special tokens (BOS), as when
    // llama-server runs it; /tokenize with an array would join them. Beyond MAX_CALLS_PER_JOB
    // prompts, the rest are estimated (an embeddings request may carry thousands of inputs).
    let sum = 0;
    for (const p of promptsOf(ex.kind === 'embeddings' ? (json.input ?? json.content) : json.prompt)) {
      if (job.calls < MAX_CALLS_PER_JOB) sum += await this.#tokens(job, p, true);
      else {
        sum += promptEstimate(p);
        job.partly = true;
      }
    }
    return sum * perPrompt;
  }

  #signalFor(job: Job): AbortSignal {
    const signal = job.abort.signal;
    if (signal.aborted) throw new CountFailed('timed out');
    job.calls++;
    return signal;
  }

  async #tokens(job: Job, content: unknown, addSpecial: boolean): Promise<number> {
    const answer = await this.#call('/tokenize', JSON.stringify({ content, add_special: addSpecial }), this.#signalFor(job), job.ex);
    const tokens = (parseJson(answer.text) as { tokens?: unknown } | undefined)?.tokens;
    if (answer.statusCode !== 200 || !Array.isArray(tokens)) throw new CountFailed(`/tokenize answered ${answer.statusCode}`);
    return tokens.length;
  }

  /** Fills in the record and emits it, once. */
  #finish(job: Job, prompt: number | null, retokenized: number | null): void {
    if (job.done) return;
    job.done = true;
    const { record: r, ex, need, json } = job;
    const estimate: UsageEstimate = {};
    if (need.prompt) {
      // A count that failed: the request body's bytes / 4 (never nothing: a count fails most when
      // llama-server is busiest, and a client could make it fail on purpose).
      r.promptTokens = prompt ?? bytesEstimate(job.raw.length);
      estimate.prompt = prompt === null ? 'bytes' : job.partly ? 'partly_counted' : 'counted';
    }
    switch (need.completion) {
      case 'relayed':
        r.completionTokens = ex.contentEvents;
        estimate.completion = 'relayed';
        break;
      case 'retokenized':
        if (retokenized !== null) {
          r.completionTokens = retokenized;
          estimate.completion = 'retokenized';
        } else estimate.completion = 'unknown'; // keeps the one prompt's reported number, if any
        break;
      case 'timed': {
        const max = maxOutputTokens(json, -1);
        const tokens = timedCompletion(r.durationMs, r.promptTokens, this.#rates.speeds(ex), max < 0 ? undefined : max, ex.prompts);
        r.completionTokens = tokens;
        estimate.completion = tokens === null ? 'unknown' : 'timed';
        break;
      }
      default:
        break;
    }
    r.estimated = true;
    r.estimate = estimate;
    this.#emit(r);
  }

  /**
   * Shutdown: counts queued now may still finish within the drain deadline; after it, every record
   * not yet written is written without its count. Resolves when all are emitted.
   */
  async drain(): Promise<void> {
    this.#closing = true;
    if (this.pending === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => {
        this.#idle = resolve;
      }),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.#drainMs);
      }),
    ]);
    clearTimeout(timer);
    this.#idle = null;
    for (const job of [...this.#running, ...this.#queue.splice(0)]) {
      job.abort.abort();
      this.#finish(job, null, null);
    }
    this.#running.clear();
  }
}

/** How many prompts a request's tasks run (tasksOf without `n`). */
function promptsIn(kind: RouteKind, json: Record<string, unknown>): number {
  return kind === 'completions' && Array.isArray(json.prompt) ? promptsOf(json.prompt).length : 1;
}

/**
 * The choices of a non-streamed /v1/completions or chat body: a choice that stopped at max_tokens
 * (finish_reason "length" with max_tokens set) generated exactly that many; the others' text (a
 * chat message's content, reasoning and tool-call arguments) is to be counted (re-tokenizing
 * generated text can give a few more tokens than were generated: measured 19 for 15 with the tiny
 * model's random output, so it is used only where no exact number exists).
 */
function choicesOf(body: Buffer, maxTokens: number | undefined): { atMax: number; texts: string[] } | undefined {
  const choices = (parseJson(body.toString('utf8')) as { choices?: unknown } | undefined)?.choices;
  if (!Array.isArray(choices)) return undefined;
  let atMax = 0;
  const texts: string[] = [];
  const add = (v: unknown): void => {
    if (typeof v === 'string' && v !== '') texts.push(v);
  };
  for (const c of choices) {
    const choice = c as { text?: unknown; finish_reason?: unknown; message?: Record<string, unknown> | null } | null;
    if (maxTokens !== undefined && choice?.finish_reason === 'length') atMax += maxTokens;
    else if (typeof choice?.message === 'object' && choice.message !== null) {
      const m = choice.message;
      add(m.reasoning_content);
      add(m.content);
      if (Array.isArray(m.tool_calls))
        for (const call of m.tool_calls as { function?: { name?: unknown; arguments?: unknown } | null }[]) {
          add(call?.function?.name);
          add(call?.function?.arguments);
        }
    } else add(choice?.text);
  }
  return { atMax, texts };
}
