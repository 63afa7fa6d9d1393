// Relays an upstream SSE body to the client unchanged, chunk by chunk, with back-pressure (pipe).
// The one thing it adds: if the upstream stream breaks (llama-server crashed, idle timeout), the
// client gets a final error event in the stream's own dialect and a clean end, instead of a hang
// or a silently truncated answer. OpenAI and Anthropic SDKs raise that event as an API error.
import { PassThrough, type Readable } from 'node:stream';

export type SseDialect = 'openai' | 'anthropic';

export function sseErrorEvent(dialect: SseDialect, message: string, code: string): string {
  if (dialect === 'anthropic') {
    return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message } })}\n\n`;
  }
  return `data: ${JSON.stringify({ error: { message, type: 'upstream_error', param: null, code } })}\n\n`;
}

export interface BrokenStream {
  readonly message: string;
  readonly code: string;
}

export function relaySse(source: Readable, dialect: SseDialect, describe: (err: Error) => BrokenStream, onBroken: (err: Error) => void): PassThrough {
  const out = new PassThrough();
  source.on('error', (err: Error) => {
    if (out.destroyed) return; // the client left first; nothing to tell
    onBroken(err);
    const { message, code } = describe(err);
    source.unpipe(out);
    out.end(sseErrorEvent(dialect, message, code));
  });
  // The client went away (Fastify destroys the payload): stop reading upstream, which aborts it.
  out.on('close', () => {
    if (!source.destroyed) source.destroy();
  });
  source.pipe(out);
  return out;
}
