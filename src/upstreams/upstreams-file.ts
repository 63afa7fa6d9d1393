// The optional upstreams file (GATEWAY_UPSTREAMS_FILE): the llama-servers with what discovery
// cannot know. Without it, LLM_UPSTREAM's URLs are the servers and everything else is discovered.
//
//   { "upstreams": [ { "url": "http://127.0.0.1:5857", "name": "gpu-a", "api_key": "…", "weight": 2,
//                      "models": ["chat", "qwen3"], "slots": 4 } ] }
//
//   url      required: the server's base URL (a path prefix such as /llama is kept)
//   name     how /health, /metrics and the logs call it (default upstream-1, upstream-2 … by position)
//   api_key  its own --api-key (default LLM_UPSTREAM_API_KEY; "" sends none)
//   weight   balancing preference among servers of one model (default 1; 2 takes twice the share)
//   models   the model names it serves, each an id: pins the list (its /v1/models is not read)
//   slots    requests it runs at once: overrides its /props total_slots
//
// Read once at start; every field is checked and each problem is one line naming the file, the
// entry and the field (as pm2-config.json's checks do). An api_key is never echoed.
import { readFileSync } from 'node:fs';
import { ConfigError, SETTINGS, type Config } from '../config.js';

/** One llama-server as configured (LLM_UPSTREAM, or an entry of the upstreams file). */
export interface UpstreamSpec {
  readonly url: string;
  /** undefined: upstream-<position> */
  readonly name?: string | undefined;
  /** undefined: LLM_UPSTREAM_API_KEY; '' sends none */
  readonly apiKey?: string | undefined;
  /** default 1 */
  readonly weight?: number | undefined;
  /** pinned model ids (no discovery of models for this server) */
  readonly models?: readonly string[] | undefined;
  /** pinned slot count (its /props total_slots is not used) */
  readonly slots?: number | undefined;
}

const FIELDS = ['url', 'name', 'api_key', 'weight', 'models', 'slots'] as const;
/** Shown on the public /health and in metric labels: plain characters only. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
/** As a client's "model" (http/client-input.ts): longer names could never be asked for. */
const MAX_MODEL_NAME = 256;
const MAX_SLOTS = 4096;
const MAX_WEIGHT = 1000;

/** The upstreams file is missing, not JSON, or has wrong fields: `problems` has one line each. */
export class UpstreamsFileError extends ConfigError {
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
  ) {
    super(SETTINGS.upstreamsFile.env, problems.map((p) => `${file}: ${p}`).join('\n'));
    this.name = 'UpstreamsFileError';
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** "//" keys are comments, as in pm2-config.json. */
function isComment(key: string): boolean {
  return key.startsWith('//');
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v);
  if (typeof v === 'object') return 'an object';
  return typeof v === 'number' || typeof v === 'boolean' ? String(v) : typeof v;
}

/** A hint for a number written as a string ("2" → write 2 without quotes). */
function unquote(v: unknown): string {
  return typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v)) ? ` (write ${v.trim()} without quotes)` : '';
}

function parseEntry(raw: unknown, at: string, problems: string[]): UpstreamSpec | undefined {
  if (!isRecord(raw)) {
    problems.push(`${at} must be an object such as {"url": "http://127.0.0.1:5857"}, got ${describeValue(raw)}`);
    return undefined;
  }
  const before = problems.length;
  for (const key of Object.keys(raw)) {
    if (!isComment(key) && !(FIELDS as readonly string[]).includes(key))
      problems.push(`${at}: unknown field ${JSON.stringify(key)} (expected ${FIELDS.join(', ')})`);
  }

  let url = '';
  if (raw.url === undefined) problems.push(`${at}.url is missing: the llama-server's base URL, such as "http://127.0.0.1:5857"`);
  else if (typeof raw.url !== 'string')
    problems.push(`${at}.url must be a URL string such as "http://127.0.0.1:5857", got ${describeValue(raw.url)}`);
  else if (raw.url.includes(',')) problems.push(`${at}.url must be one URL (one entry per server), got ${describeValue(raw.url)}`);
  else {
    try {
      url = SETTINGS.upstreams.parse(raw.url, `${at}.url`)[0]!;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(err.message.replace('use LLM_UPSTREAM_API_KEY', 'use "api_key"'));
    }
  }

  const name = raw.name;
  if (name !== undefined && (typeof name !== 'string' || !NAME.test(name)))
    problems.push(
      `${at}.name must be 1 to 64 letters, digits, ".", "_", ":" or "-" (starting with a letter or digit), such as "gpu-a", got ${describeValue(name)}`,
    );

  // Never echoed: a key's value appears in no message.
  let apiKey: string | undefined;
  if (raw.api_key !== undefined) {
    if (typeof raw.api_key !== 'string')
      problems.push(`${at}.api_key must be a string (llama-server's --api-key), got ${typeof raw.api_key}`);
    else {
      try {
        apiKey = SETTINGS.upstreamApiKey.parse(raw.api_key, `${at}.api_key`);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        problems.push(err.message);
      }
    }
  }

  const weight = raw.weight;
  if (weight !== undefined && (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0 || weight > MAX_WEIGHT))
    problems.push(
      `${at}.weight must be a number above 0 and at most ${MAX_WEIGHT}, such as 2, got ${describeValue(weight)}${unquote(weight)}`,
    );

  const slots = raw.slots;
  if (slots !== undefined && (typeof slots !== 'number' || !Number.isInteger(slots) || slots < 1 || slots > MAX_SLOTS))
    problems.push(
      `${at}.slots must be a whole number from 1 to ${MAX_SLOTS} (llama-server's -np), got ${describeValue(slots)}${unquote(slots)}`,
    );

  let models: string[] | undefined;
  if (raw.models !== undefined) {
    if (!Array.isArray(raw.models) || raw.models.length === 0) {
      problems.push(`${at}.models must be a non-empty list of model names such as ["qwen3-8b"], got ${describeValue(raw.models)}`);
    } else {
      models = [];
      const seen = new Set<string>();
      raw.models.forEach((m: unknown, i) => {
        if (typeof m !== 'string' || m.trim() === '' || m !== m.trim() || m.length > MAX_MODEL_NAME)
          problems.push(
            `${at}.models[${i}] must be a model name (1 to ${MAX_MODEL_NAME} characters, no surrounding spaces), got ${describeValue(m)}`,
          );
        else if (seen.has(m)) problems.push(`${at}.models[${i}] repeats ${describeValue(m)}`);
        else {
          seen.add(m);
          models!.push(m);
        }
      });
    }
  }

  if (problems.length > before) return undefined;
  return {
    url,
    name: name as string | undefined,
    apiKey,
    weight: weight as number | undefined,
    models,
    slots: slots as number | undefined,
  };
}

/** The default name of the server at `index`: safe to show on the public /health (no URL). */
export function defaultName(index: number): string {
  return `upstream-${index + 1}`;
}

/** Checks a parsed upstreams file; throws UpstreamsFileError listing every problem. */
export function parseUpstreamsFile(raw: unknown, file: string): UpstreamSpec[] {
  if (!isRecord(raw))
    throw new UpstreamsFileError(file, [
      `must be a JSON object such as {"upstreams": [{"url": "http://127.0.0.1:5857"}]}, got ${describeValue(raw)}`,
    ]);
  const problems: string[] = [];
  for (const key of Object.keys(raw)) {
    if (!isComment(key) && key !== 'upstreams') problems.push(`unknown field ${JSON.stringify(key)} (expected "upstreams")`);
  }
  const list = raw.upstreams;
  if (list === undefined) problems.push('"upstreams" is missing: a list of servers such as [{"url": "http://127.0.0.1:5857"}]');
  else if (!Array.isArray(list) || list.length === 0)
    problems.push(`upstreams must be a non-empty list of servers such as [{"url": "http://127.0.0.1:5857"}], got ${describeValue(list)}`);
  const specs: (UpstreamSpec | undefined)[] = Array.isArray(list)
    ? list.map((entry, i) => parseEntry(entry, `upstreams[${i}]`, problems))
    : [];

  // The same server twice, or two servers called alike: each is one line too.
  const urls = new Map<string, number>();
  const names = new Map<string, number>();
  specs.forEach((spec, i) => {
    if (spec === undefined) return;
    const url = urls.get(spec.url);
    if (url !== undefined) problems.push(`upstreams[${i}].url repeats upstreams[${url}].url (${spec.url})`);
    else urls.set(spec.url, i);
    const name = spec.name ?? defaultName(i);
    const other = names.get(name);
    if (other !== undefined)
      problems.push(
        `upstreams[${i}]${spec.name === undefined ? ' (no name)' : '.name'} is called ${JSON.stringify(name)} like upstreams[${other}]`,
      );
    else names.set(name, i);
  });
  if (problems.length > 0) throw new UpstreamsFileError(file, problems);
  return specs as UpstreamSpec[];
}

/** Reads and checks the upstreams file; throws UpstreamsFileError. */
export function readUpstreamsFile(file: string): UpstreamSpec[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UpstreamsFileError(file, [code === 'ENOENT' ? 'not found' : `cannot be read: ${(err as Error).message}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new UpstreamsFileError(file, [`is not valid JSON: ${(err as Error).message}`]);
  }
  return parseUpstreamsFile(raw, file);
}

/**
 * The servers the gateway fronts: the upstreams file's list when GATEWAY_UPSTREAMS_FILE is set (it
 * replaces LLM_UPSTREAM; `replaced` is called with LLM_UPSTREAM's list when it differs), else
 * LLM_UPSTREAM's URLs with nothing pinned.
 */
export function upstreamSpecs(config: Config, replaced?: (urls: readonly string[]) => void): UpstreamSpec[] {
  if (config.upstreamsFile === '') return config.upstreams.map((url) => ({ url }));
  const specs = readUpstreamsFile(config.upstreamsFile);
  const same = specs.length === config.upstreams.length && specs.every((s, i) => s.url === config.upstreams[i]);
  if (!same) replaced?.(config.upstreams);
  return specs;
}
