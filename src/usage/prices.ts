// What a request cost, when the operator sets prices (GATEWAY_PRICES): a price per 1M prompt and
// per 1M completion tokens for each model, `*` for any other, and optionally a third price for the
// prompt tokens llama-server took from its cache (`cached_tokens`; without it they cost the prompt
// price, as OpenAI-style bills do when no discount is given). The cost is computed once, when a
// record is final (the recorder, usage/recorder.ts), and stored with it: a later price change never
// rewrites history, and reports only add stored costs up. A record of a model without a price (and
// no `*`) has no cost (null); a priced request that generated nothing (a refusal) costs 0.
//
// The currency (GATEWAY_PRICE_CURRENCY) is a label for reports only; nothing is converted.
import type { UsageRecord } from './exchange.js';

/** Prices of one model, per 1M tokens. */
interface ModelPrice {
  readonly prompt: number;
  readonly completion: number;
  /** prompt tokens read from llama-server's cache (the prompt price when not given) */
  readonly cached: number;
}

const PER = 1_000_000;
const NUMBER = /^\d+(?:\.\d+)?$|^\.\d+$/;

/** The parsed GATEWAY_PRICES: per model, and `*` for any other model. */
export interface PriceList {
  readonly models: ReadonlyMap<string, ModelPrice>;
  readonly other: ModelPrice | null;
}

export const NO_PRICES: PriceList = { models: new Map(), other: null };

/**
 * GATEWAY_PRICES: `model=prompt/completion[/cached],…` per 1M tokens, `*` for any other model, empty
 * for none. A model id may hold `=`, `:` or `/` (the last `=` splits). Throws Error naming the part.
 */
export function parsePrices(text: string): PriceList {
  const models = new Map<string, ModelPrice>();
  let other: ModelPrice | null = null;
  for (const part of text.split(',')) {
    const item = part.trim();
    if (item === '') continue;
    const eq = item.lastIndexOf('=');
    const model = eq < 0 ? '' : item.slice(0, eq).trim();
    const numbers =
      eq < 0
        ? []
        : item
            .slice(eq + 1)
            .split('/')
            .map((n) => n.trim());
    if (model === '' || numbers.length < 2 || numbers.length > 3 || !numbers.every((n) => NUMBER.test(n)))
      throw new Error(
        `must be a comma list of MODEL=PROMPT/COMPLETION[/CACHED] prices per 1M tokens (such as gpt-oss-20b=0.10/0.40,*=0.05/0.20), got "${item}"`,
      );
    const [prompt, completion, cached] = numbers.map(Number) as [number, number, number | undefined];
    const price: ModelPrice = { prompt, completion, cached: cached ?? prompt };
    if (model === '*') {
      if (other !== null) throw new Error('names * twice');
      other = price;
    } else {
      if (models.has(model)) throw new Error(`names ${model} twice`);
      models.set(model, price);
    }
  }
  return models.size === 0 && other === null ? NO_PRICES : { models, other };
}

/** The cost of one record: a lookup, three multiplies, a division. Null when no price applies. */
export function costOf(
  list: PriceList,
  r: Pick<UsageRecord, 'model' | 'promptTokens' | 'cachedTokens' | 'completionTokens'>,
): number | null {
  // A request naming no model ran on llama-server's default one: the `*` price.
  const p = (r.model === null ? undefined : list.models.get(r.model)) ?? list.other;
  if (p === null) return null;
  const prompt = r.promptTokens ?? 0;
  const cached = Math.min(r.cachedTokens ?? 0, prompt);
  return ((prompt - cached) * p.prompt + cached * p.cached + (r.completionTokens ?? 0) * p.completion) / PER;
}

/** Whether any price is set (the recorder computes nothing without). */
export function hasPrices(list: PriceList): boolean {
  return list.models.size > 0 || list.other !== null;
}

/** A stored cost (or a sum of them) as reports show it: 6 decimals, float noise dropped. */
export function roundCost(cost: number | null): number | null {
  return cost === null ? null : Math.round(cost * PER) / PER;
}
