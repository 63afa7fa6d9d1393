// Media URLs that llama-server would download (issue #15). A chat message can carry an image or an
// audio file by URL; llama-server fetches it itself, from inside the operator's network, with no
// address check (an upstream guard was closed unmerged): any key could make it read the cloud's
// metadata service or a router's admin page. This module finds exactly those URLs in a body, so the
// key's remote_media rule can refuse them or let the gateway fetch them safely (media-fetch.ts).
//
// What llama-server fetches, read from its source (tools/server/server-common.cpp, build b10587 and
// later: handle_media, oaicompat_chat_params_parse, convert_responses_to_chatcmpl,
// convert_anthropic_to_oai): a string that starts with "http" (its test, case-sensitive; data:,
// file:// and raw base64 are not fetched) found at
//   - chat: messages[].content[] parts of type
//       image_url   → image_url.url
//       input_audio → input_audio.data when a string, else input_audio.url
//       input_video → input_video.data when a string, else input_video.url
//     in every message, whatever its role;
//   - responses: input[].content[] parts of type input_image → image_url (a string; llama-server
//     wraps it into a chat image_url), in items whose role is user, system or developer
//     (input_file is refused by llama-server itself);
//   - Anthropic messages: messages[].content[] blocks of type image whose source is
//     {type:"url", url} (turned into a chat image_url);
//   - token counting (count_tokens: /v1/messages/count_tokens, /v1/chat/completions/input_tokens,
//     /v1/responses/input_tokens): the same parsing runs, and the body does not say which API it
//     speaks, so all three shapes are looked at.
// One addition on purpose: a chat image_url given as a plain string (not {url}) is found too. This
// build ignores it, but other OpenAI-compatible builds read it, and a request llama-server would
// refuse anyway loses nothing by being refused earlier.
//
// Completions, embeddings and rerank take media only as base64 (multimodal_data); transcriptions
// are an upload: nothing there is fetched.
//
// Hot path: a body whose messages have string content (the usual chat) is walked without
// allocating; the common answer is one shared empty array.
import type { RouteKind } from '../usage/exchange.js';

/** What a media part holds: it decides the Content-Type accepted and how the file is written back. */
export type MediaKind = 'image' | 'audio' | 'video';

/**
 * How a fetched file replaces the URL:
 * - data-url: the URL string becomes a data: URL (image_url.url, input_image.image_url);
 * - base64: the part's `data` becomes the bare base64 and `url` goes (input_audio, input_video:
 *   llama-server reads their data as raw base64, not as a data: URL);
 * - anthropic: the source becomes Anthropic's own {type:"base64", media_type, data}.
 */
type MediaForm = 'data-url' | 'base64' | 'anthropic';

/** One URL llama-server would download. */
export interface RemoteMedia {
  /** where it is, as a client reads it: messages[0].content[1].image_url.url */
  readonly path: string;
  /** the same place as keys from the body's root (the URL string itself) */
  readonly at: readonly (string | number)[];
  readonly url: string;
  readonly media: MediaKind;
  readonly form: MediaForm;
}

const NONE: readonly RemoteMedia[] = Object.freeze([]);

/** llama-server's own test (string_starts_with(url, "http")). */
function fetched(v: unknown): v is string {
  return typeof v === 'string' && v.startsWith('http');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function pathOf(at: readonly (string | number)[]): string {
  let out = '';
  for (const k of at) out += typeof k === 'number' ? `[${k}]` : out === '' ? k : `.${k}`;
  return out;
}

type Found = RemoteMedia[] | null;

function add(found: Found, at: (string | number)[], url: string, media: MediaKind, form: MediaForm): RemoteMedia[] {
  const list = found ?? [];
  list.push({ path: pathOf(at), at, url, media, form });
  return list;
}

/** input_audio / input_video: `data` when it is a string, else `url` (json_value's fallback). */
function dataOrUrl(holder: unknown): ['data' | 'url', string] | null {
  if (!isObject(holder)) return null;
  const data = holder.data;
  if (typeof data === 'string') return fetched(data) ? ['data', data] : null;
  return fetched(holder.url) ? ['url', holder.url] : null;
}

/** A chat content part (image_url, input_audio, input_video). */
function chatPart(found: Found, part: Record<string, unknown>, base: (string | number)[]): Found {
  const type = part.type;
  if (type === 'image_url') {
    const image = part.image_url;
    if (fetched(image)) return add(found, [...base, 'image_url'], image, 'image', 'data-url');
    if (isObject(image) && fetched(image.url)) return add(found, [...base, 'image_url', 'url'], image.url, 'image', 'data-url');
  } else if (type === 'input_audio' || type === 'input_video') {
    const src = dataOrUrl(part[type]);
    if (src !== null) return add(found, [...base, type, src[0]], src[1], type === 'input_audio' ? 'audio' : 'video', 'base64');
  }
  return found;
}

/** An Anthropic content block: {type:"image", source:{type:"url", url}}. */
function anthropicPart(found: Found, part: Record<string, unknown>, base: (string | number)[]): Found {
  if (part.type !== 'image') return found;
  const source = part.source;
  if (isObject(source) && source.type === 'url' && fetched(source.url))
    return add(found, [...base, 'source', 'url'], source.url, 'image', 'anthropic');
  return found;
}

function inMessages(found: Found, messages: unknown, chat: boolean, anthropic: boolean): Found {
  if (!Array.isArray(messages)) return found;
  for (let i = 0; i < messages.length; i++) {
    const content = (messages[i] as { content?: unknown } | null)?.content;
    if (!Array.isArray(content)) continue; // a string: the usual chat, nothing allocated
    for (let j = 0; j < content.length; j++) {
      const part: unknown = content[j];
      if (!isObject(part)) continue;
      if (chat) found = chatPart(found, part, ['messages', i, 'content', j]);
      if (anthropic) found = anthropicPart(found, part, ['messages', i, 'content', j]);
    }
  }
  return found;
}

const RESPONSES_ROLES: ReadonlySet<unknown> = new Set(['user', 'system', 'developer']);

function inResponsesInput(found: Found, input: unknown): Found {
  if (!Array.isArray(input)) return found;
  for (let i = 0; i < input.length; i++) {
    const item: unknown = input[i];
    if (!isObject(item) || !Array.isArray(item.content) || !RESPONSES_ROLES.has(item.role)) continue;
    const content = item.content as unknown[];
    for (let j = 0; j < content.length; j++) {
      const part: unknown = content[j];
      if (isObject(part) && part.type === 'input_image' && fetched(part.image_url))
        found = add(found, ['input', i, 'content', j, 'image_url'], part.image_url, 'image', 'data-url');
    }
  }
  return found;
}

/** Every URL in the body that llama-server would download for this route, in body order. */
export function findRemoteMedia(kind: RouteKind, json: Record<string, unknown>): readonly RemoteMedia[] {
  let found: Found = null;
  switch (kind) {
    case 'chat':
      found = inMessages(null, json.messages, true, false);
      break;
    case 'messages':
      found = inMessages(null, json.messages, false, true);
      break;
    case 'responses':
      found = inResponsesInput(null, json.input);
      break;
    case 'count_tokens':
      found = inResponsesInput(inMessages(null, json.messages, true, true), json.input);
      break;
    default:
      return NONE;
  }
  return found ?? NONE;
}

// ── Media of any kind (for the prompt-token limit) ───────────────────────────────────────────────

/** Content part types that carry a file, not text, in the chat, Responses and Anthropic shapes. */
const MEDIA_PARTS: ReadonlySet<unknown> = new Set([
  'image_url',
  'input_audio',
  'input_video',
  'input_image',
  'input_file',
  'file',
  'image',
  'document',
]);

function partsHaveMedia(items: unknown): boolean {
  if (!Array.isArray(items)) return false;
  for (const item of items) {
    const content = (item as { content?: unknown } | null)?.content;
    if (!Array.isArray(content)) continue; // a string: the usual chat
    for (const part of content) if (isObject(part) && MEDIA_PARTS.has(part.type)) return true;
  }
  return false;
}

/**
 * True when a chat-like body carries a file (an image, audio, video, a document), inline or by
 * URL: its tokens are not bounded by its bytes (a small PNG may be a thousand image tokens), so
 * the prompt-token limit has it counted whatever its size. No allocation.
 */
export function hasMediaParts(kind: RouteKind, json: Record<string, unknown>): boolean {
  switch (kind) {
    case 'chat':
    case 'messages':
      return partsHaveMedia(json.messages);
    case 'responses':
      return partsHaveMedia(json.input);
    default:
      return false;
  }
}
