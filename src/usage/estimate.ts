// What a non-streamed request generated before its client left, when llama-server never said:
// its generation time × llama-server's recent speed, capped by max_tokens. llama-server reports
// its speed in `timings` on the answers it finishes (non-streamed chat and completions bodies, the
// final event of a stream); the taps hand the latest few here, and the speed is taken over them
// (tokens over milliseconds, so a long answer weighs more than a 4-token one).
//
// The estimate leans low on purpose: it counts time until the gateway cut the upstream request,
// not the up-to-1 s llama-server takes to notice (it polls a closed socket about once a second for
// non-streamed requests), and it charges the whole prompt at prompt speed even when part of it came
// from llama-server's cache. Until a prompt of some length has been timed, no prompt time is
// taken off (the generation time is then the whole time, capped by max_tokens).

/** llama-server's `timings` object (the fields used here). */
interface Timings {
  prompt_n?: unknown;
  prompt_ms?: unknown;
  predicted_n?: unknown;
  predicted_ms?: unknown;
}

/** How many recent `timings` the speed is taken over. */
const KEEP = 16;
/**
 * Prompt speed is taken only from prompts at least this long: a few tokens measure the fixed cost
 * of a batch, not the speed (a cold 2-token prompt read as 9 tokens/s where 400 ran at thousands).
 */
const MIN_PROMPT_SAMPLE = 16;

export interface Speeds {
  /** prompt tokens per second, or null when not known yet */
  prompt: number | null;
  /** generated tokens per second, or null when not known yet */
  predicted: number | null;
}

const positive = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0);

export class GenerationRates {
  /** the latest timings: raw JSON bytes from the non-streamed tap (parsed only when needed), or parsed */
  readonly #ring: (Buffer | Timings)[] = [];
  #next = 0;

  add(timings: Buffer | object): void {
    if (this.#ring.length < KEEP) this.#ring.push(timings);
    else this.#ring[this.#next] = timings;
    this.#next = (this.#next + 1) % KEEP;
  }

  speeds(): Speeds {
    let promptN = 0;
    let promptMs = 0;
    let predictedN = 0;
    let predictedMs = 0;
    for (let i = 0; i < this.#ring.length; i++) {
      let t = this.#ring[i]!;
      if (Buffer.isBuffer(t)) {
        try {
          t = JSON.parse(t.toString('utf8')) as Timings;
        } catch {
          t = {};
        }
        this.#ring[i] = t;
      }
      if (t === null || typeof t !== 'object') continue;
      const pn = positive(t.prompt_n);
      const pms = positive(t.prompt_ms);
      if (pn >= MIN_PROMPT_SAMPLE && pms > 0) {
        promptN += pn;
        promptMs += pms;
      }
      const gn = positive(t.predicted_n);
      const gms = positive(t.predicted_ms);
      if (gn > 0 && gms > 0) {
        predictedN += gn;
        predictedMs += gms;
      }
    }
    return {
      prompt: promptMs > 0 ? (promptN / promptMs) * 1000 : null,
      predicted: predictedMs > 0 ? (predictedN / predictedMs) * 1000 : null,
    };
  }
}

/**
 * Completion tokens generated in `elapsedMs` (from sending the request upstream to cutting it) by
 * a request whose prompt has `promptTokens`: null when llama-server's speed is not known yet.
 * `maxTokens` caps it (per answer; `answers` for a prompt array).
 */
export function timedCompletion(
  elapsedMs: number,
  promptTokens: number | null,
  speeds: Speeds,
  maxTokens: number | undefined,
  answers = 1,
): number | null {
  if (speeds.predicted === null) return null;
  const promptMs = promptTokens !== null && speeds.prompt !== null ? (promptTokens / speeds.prompt) * 1000 : 0;
  let tokens = Math.floor((Math.max(0, elapsedMs - promptMs) / 1000) * speeds.predicted);
  if (maxTokens !== undefined) tokens = Math.min(tokens, maxTokens * answers);
  return tokens;
}

/** A whole, non-negative number from a request body (a token count, `n`), else undefined. */
export function countField(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
}

/**
 * The completion tokens a request may generate, per answer: llama-server's own `n_predict` wins
 * (it overrides max_tokens there), then OpenAI's names; `fallback` when none is given (or
 * n_predict is -1, "until the context is full").
 */
export function maxOutputTokens(json: Record<string, unknown>, fallback: number): number {
  // llama-server obeys n_predict over max_tokens, also -1 ("no limit"): a request that sends
  // n_predict -1 with a small max_tokens is unbounded there (red team: 4,094 tokens held as 5).
  if (json.n_predict !== undefined && json.n_predict !== null && countField(json.n_predict) === undefined) return fallback;
  return (
    countField(json.n_predict) ??
    countField(json.max_completion_tokens) ??
    countField(json.max_tokens) ??
    countField(json.max_output_tokens) ??
    fallback
  );
}
