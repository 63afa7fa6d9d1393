// One llama-server asked directly, as doctor and the menu show it: GET /health (ready, loading or
// down), /v1/models (ids and aliases) and /props (slots and context per slot), with the key it
// wants. One after the other, as a person would ask; nothing more once /health got no answer.
import { getOrReason, jsonObject, type HttpAnswer } from './http-probe.js';
import type { UpstreamTarget } from './stack/settings.js';

export interface ModelInfo {
  readonly id: string;
  /** Other names it answers to (llama-server's data[].aliases, the id itself left out). */
  readonly aliases: readonly string[];
}

export interface UpstreamProbe {
  readonly target: UpstreamTarget;
  /** GET /health's answer, or why there was none. */
  readonly health: HttpAnswer | string;
  /** Not asked (undefined) when /health got no answer. */
  readonly models: HttpAnswer | string | undefined;
  readonly props: HttpAnswer | string | undefined;
}

/** ready (200), loading (503: loading its model), down (no answer), or another status. */
export function upstreamState(probe: UpstreamProbe): 'ready' | 'loading' | 'down' | number {
  const h = probe.health;
  if (typeof h === 'string') return 'down';
  return h.status === 200 ? 'ready' : h.status === 503 ? 'loading' : h.status;
}

/** Asks one llama-server its health, models and slots, each within `timeoutMs`. */
export async function probeUpstream(target: UpstreamTarget, timeoutMs: number): Promise<UpstreamProbe> {
  const auth = target.apiKey === '' ? undefined : `Bearer ${target.apiKey}`;
  const health = await getOrReason(`${target.url}/health`, timeoutMs);
  if (typeof health === 'string') return { target, health, models: undefined, props: undefined };
  const models = await getOrReason(`${target.url}/v1/models`, timeoutMs, auth);
  const props = await getOrReason(`${target.url}/props`, timeoutMs, auth);
  return { target, health, models, props };
}

/** The models of a /v1/models answer (OpenAI's data[] with llama-server's aliases); undefined if it has none. */
export function modelsOf(answer: HttpAnswer | string | undefined): ModelInfo[] | undefined {
  if (answer === undefined || typeof answer === 'string' || answer.status !== 200) return undefined;
  const data = jsonObject(answer.body)?.data;
  if (!Array.isArray(data)) return undefined;
  return data.map((m: unknown) => {
    const entry = (typeof m === 'object' && m !== null ? m : {}) as { id?: unknown; aliases?: unknown };
    const id = typeof entry.id === 'string' || typeof entry.id === 'number' ? String(entry.id) : '?';
    const aliases = Array.isArray(entry.aliases) ? entry.aliases.filter((a): a is string => typeof a === 'string' && a !== id) : [];
    return { id, aliases: [...new Set(aliases)] };
  });
}

/** tiny, embed (also nomic, e5) */
export function modelsText(models: readonly ModelInfo[]): string {
  return models.map((m) => (m.aliases.length === 0 ? m.id : `${m.id} (also ${m.aliases.join(', ')})`)).join(', ');
}

export interface PropsInfo {
  readonly slots: number | undefined;
  /** Context per slot: /props default_generation_settings.n_ctx. */
  readonly nCtx: number | undefined;
  readonly modelPath: string | undefined;
}

/** What /props says about slots and context; undefined when it did not answer 200. */
export function propsOf(answer: HttpAnswer | string | undefined): PropsInfo | undefined {
  if (answer === undefined || typeof answer === 'string' || answer.status !== 200) return undefined;
  const p = jsonObject(answer.body) ?? {};
  const settings = p.default_generation_settings;
  const nCtx = typeof settings === 'object' && settings !== null ? (settings as { n_ctx?: unknown }).n_ctx : undefined;
  return {
    slots: typeof p.total_slots === 'number' ? p.total_slots : undefined,
    nCtx: typeof nCtx === 'number' ? nCtx : undefined,
    modelPath: typeof p.model_path === 'string' ? p.model_path : undefined,
  };
}
