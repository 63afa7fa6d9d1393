// A minimal, fast fake llama-server for the benchmarks (node:http only). It answers with the
// same shapes and headers as a real llama-server (see test/fixtures/recordings) but does as
// little work per request as it can, so that it is never the bottleneck; run.mjs measures its
// CPU use in every phase to show that.
//
//   GET  /health, /v1/models, /props  small JSON, Content-Length (/props: total_slots = FAKE_SLOTS, 1024)
//   POST /v1/chat/completions         small chat.completion JSON; with "stream":true an SSE stream
//                                     shaped by the request's "bench" object:
//     {"mode":"chunks","chunks":500,"interval_ms":2}   n chunks, one every interval (one shared ticker)
//     {"mode":"idle","interval_ms":10000}              one chunk at once, then one per interval, forever
//     {"mode":"big","bytes":104857600}                 that many bytes as fast as the reader takes them
//
// Every streamed chunk starts with {"i":<index>,"t":<send time, µs of CLOCK_MONOTONIC>,...}: the
// clock is the same for every process on the machine, so a client can compute each chunk's lag.
//
// Usage: node bench/fake-upstream.mjs  → prints {"port":N} on stdout once listening on 127.0.0.1:0.
import http from 'node:http';
import { pathToFileURL } from 'node:url';

const nowUs = () => {
  const [s, ns] = process.hrtime();
  return s * 1e6 + ns / 1e3;
};

const MODELS = Buffer.from(
  '{"models":[{"name":"bench-model","model":"bench-model","modified_at":"","size":"","digest":"","type":"model","description":"","tags":[""],"capabilities":["completion"],"parameters":"","details":{"parent_model":"","format":"gguf","family":"","families":[""],"parameter_size":"","quantization_level":""}}],"object":"list","data":[{"id":"bench-model","aliases":["bench-model"],"tags":[],"object":"model","created":1795674702,"owned_by":"llamacpp","meta":{"vocab_type":true,"n_vocab":32000,"n_ctx":2048,"n_ctx_train":4096,"n_embd":64,"n_params":4178240,"size":16712960,"ftype":"all F32"}}]}',
);
const COMPLETION = Buffer.from(
  '{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":"Hello! I am fine."}}],"created":1795674703,"model":"bench-model","system_fingerprint":"b10587-3f545becc","object":"chat.completion","usage":{"completion_tokens":5,"prompt_tokens":29,"total_tokens":34,"prompt_tokens_details":{"cached_tokens":28}},"id":"chatcmpl-jS6NMulleoT7kAM6jF58Ln00oO4zDJwJ","timings":{"cache_n":28,"prompt_n":1,"prompt_ms":5.552,"prompt_per_token_ms":5.552,"prompt_per_second":180.11527377521614,"predicted_n":5,"predicted_ms":0.369,"predicted_per_token_ms":0.369,"predicted_per_second":2710.027100271003}}',
);
const HEALTH = Buffer.from('{"status":"ok"}');
// llama-server's /props (trimmed): the gateway reads total_slots to size its fair queue.
const SLOTS = Number(process.env.FAKE_SLOTS ?? 1024);
const PROPS = Buffer.from(
  JSON.stringify({
    default_generation_settings: { n_ctx: 2048 },
    total_slots: SLOTS,
    model_alias: 'bench-model',
    build_info: 'b10587-3f545becc',
  }),
);
const NOT_FOUND = Buffer.from('{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}');

// Raw header arrays: writeHead with a flat array is node:http's cheapest path.
const jsonHeaders = (body) => [
  'Server',
  'llama.cpp',
  'Access-Control-Allow-Origin',
  '',
  'Content-Type',
  'application/json; charset=utf-8',
  'Content-Length',
  String(body.length),
];
const H_MODELS = jsonHeaders(MODELS);
const H_COMPLETION = jsonHeaders(COMPLETION);
const H_HEALTH = jsonHeaders(HEALTH);
const H_PROPS = jsonHeaders(PROPS);
const H_NOT_FOUND = jsonHeaders(NOT_FOUND);
const H_SSE = ['Server', 'llama.cpp', 'Access-Control-Allow-Origin', '', 'X-Accel-Buffering', 'no', 'Content-Type', 'text/event-stream'];

const CHUNK_TAIL =
  ',"choices":[{"finish_reason":null,"index":0,"delta":{"content":" token"}}],"created":1795674702,"id":"chatcmpl-aps1wCkbm8hMIpGtP9CyMnJ5SY4MKSwq","model":"bench-model","system_fingerprint":"b10587-3f545becc","object":"chat.completion.chunk"}\n\n';
const chunk = (i) => `data: {"i":${i},"t":${nowUs().toFixed(1)}${CHUNK_TAIL}`;
const DONE = 'data: [DONE]\n\n';
// How llama-server ends a chat stream (../shared/llama-server-recordings/chat-stream*.http): a last
// chunk with the finish reason and its timings, then — when the request asked with
// stream_options.include_usage (the gateway always does) — the usage chunk, in the same write; then
// [DONE] on its own.
const TIMINGS =
  '"timings":{"cache_n":30,"prompt_n":1,"prompt_ms":5.332,"prompt_per_token_ms":5.332,"prompt_per_second":187.54688672168044,"predicted_n":6,"predicted_ms":5.664,"predicted_per_token_ms":1.1328,"predicted_per_second":882.768361581921}';
const STREAM_ID =
  '"created":1795674702,"id":"chatcmpl-aps1wCkbm8hMIpGtP9CyMnJ5SY4MKSwq","model":"bench-model","system_fingerprint":"b10587-3f545becc","object":"chat.completion.chunk"';
const LAST = `data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],${STREAM_ID},${TIMINGS}}\n\n`;
const lastWithUsage = (n) =>
  `data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],${STREAM_ID}}\n\ndata: {"choices":[],${STREAM_ID},"usage":{"completion_tokens":${n},"prompt_tokens":31,"total_tokens":${31 + n},"prompt_tokens_details":{"cached_tokens":30}},${TIMINGS}}\n\n`;
const ending = (s) => (s.usage ? lastWithUsage(s.total) : LAST);

// ---- "chunks" streams: one ticker for all of them, so 100 streams cost one timer.
const ticking = new Set();
let ticker = null;
let tickMs = 0;
function tick() {
  for (const s of ticking) {
    s.res.write(chunk(s.next++));
    if (s.next >= s.total) {
      ticking.delete(s);
      s.res.write(ending(s));
      s.res.end(DONE);
    }
  }
  if (ticking.size === 0) {
    clearInterval(ticker);
    ticker = null;
  }
}
function startChunks(res, total, intervalMs, usage) {
  res.writeHead(200, H_SSE);
  res.write(chunk(0)); // the first chunk goes with the headers: TTFB does not wait for a tick
  const s = { res, next: 1, total, usage };
  if (total <= 1) {
    res.write(ending(s));
    return void res.end(DONE);
  }
  ticking.add(s);
  res.once('close', () => ticking.delete(s));
  if (ticker === null || tickMs !== intervalMs) {
    if (ticker !== null) clearInterval(ticker);
    tickMs = intervalMs;
    ticker = setInterval(tick, intervalMs);
  }
}

function startIdle(res, intervalMs) {
  res.writeHead(200, H_SSE);
  let i = 0;
  res.write(chunk(i++));
  const timer = setInterval(() => res.write(chunk(i++)), intervalMs);
  res.once('close', () => clearInterval(timer));
}

function startBig(res, bytes) {
  // 64 KiB of SSE events (4 × 16 KiB), written as fast as the reader drains them.
  const event = `data: ${'x'.repeat(16384 - 8)}\n\n`;
  const block = Buffer.from(event.repeat(4));
  res.writeHead(200, H_SSE);
  let sent = 0;
  let closed = false;
  res.once('close', () => {
    closed = true;
  });
  const pump = () => {
    while (!closed && sent < bytes) {
      sent += block.length;
      if (!res.write(block)) return void res.once('drain', pump);
    }
    if (!closed) res.end(DONE);
  };
  pump();
}

function stream(res, body) {
  let bench = {};
  let usage = false;
  try {
    const json = JSON.parse(body);
    bench = json.bench ?? {};
    usage = json.stream_options?.include_usage === true;
  } catch {
    /* a plain stream */
  }
  if (bench.mode === 'idle') return startIdle(res, bench.interval_ms ?? 10_000);
  if (bench.mode === 'big') return startBig(res, bench.bytes ?? 100 * 1024 * 1024);
  return startChunks(res, bench.chunks ?? 20, bench.interval_ms ?? 2, usage);
}

export function createFakeUpstream() {
  const server = http.createServer((req, res) => {
    const url = req.url;
    if (req.method === 'GET') {
      if (url === '/v1/models') return void res.writeHead(200, H_MODELS).end(MODELS);
      if (url === '/health') return void res.writeHead(200, H_HEALTH).end(HEALTH);
      if (url === '/props') return void res.writeHead(200, H_PROPS).end(PROPS);
      return void res.writeHead(404, H_NOT_FOUND).end(NOT_FOUND);
    }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (url !== '/v1/chat/completions') return void res.writeHead(404, H_NOT_FOUND).end(NOT_FOUND);
      if (body.includes('"stream":true')) return stream(res, body);
      res.writeHead(200, H_COMPLETION).end(COMPLETION);
    });
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.requestTimeout = 0;
  server.maxRequestsPerSocket = 0;
  return server;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const server = createFakeUpstream();
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
  });
  const stop = () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
