// How many tokens a request may cost, known before it runs: what a key with a token limit
// reserves when it is admitted (limits.ts), settled with llama-server's real numbers when the
// request's usage record arrives. An upper-bound guess on purpose: a hold that is too large is
// returned a moment later; one that is too small lets concurrent requests overshoot the limit.

import { countField, maxOutputTokens } from '../usage/estimate.js';
import { promptsOf } from '../usage/exchange.js';

/** Roughly 4 bytes of JSON per prompt token (OpenAI's rule of thumb; JSON syntax adds more). */
const BYTES_PER_TOKEN = 4;
/** No single request is held for more than this (a 50 MB base64 image is not 13M tokens). */
export const MAX_PROMPT_ESTIMATE = 131_072;
/** A request asking for more parallel answers than this is still held for this many. */
const MAX_CHOICES = 16;

/** How many generations one request runs: one per prompt of a /v1/completions prompt array, times `n`. */
function answers(json: Record<string, unknown>): number {
  // Prompts split as llama-server splits them (promptsOf: an array of token ids is one prompt).
  const prompts = Array.isArray(json.prompt) ? promptsOf(json.prompt).length : 1;
  const n = countField(json.n);
  return prompts * Math.min(MAX_CHOICES, n === undefined || n === 0 ? 1 : n);
}

/**
 * The tokens to hold for a request: its body's size as prompt tokens (an overestimate for JSON)
 * plus the completion it may generate. `generates` is false for routes that only read a prompt
 * (embeddings, rerank, token counting).
 */
export function reserveFor(raw: Buffer, json: Record<string, unknown>, generates: boolean, fallbackMaxTokens: number): number {
  const prompt = Math.min(MAX_PROMPT_ESTIMATE, Math.ceil(raw.length / BYTES_PER_TOKEN));
  if (!generates) return prompt;
  return prompt + answers(json) * maxOutputTokens(json, fallbackMaxTokens);
}
