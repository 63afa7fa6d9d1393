// Streaming load for run.mjs, in its own process (pinned to the load-side core). One JSON argument,
// one JSON result line on stdout (and {"event":...} progress lines before it).
//
//   {"mode":"streams","url","key","streams":100,"chunks":500,"interval_ms":2[,"warm_bursts":10]}
//      N concurrent chat streams; per chunk: lag = client receive time − upstream send time (both
//      CLOCK_MONOTONIC, µs), gap = time since the previous chunk of the same stream; per stream TTFB.
//   {"mode":"idle","url","key","streams":1000,"interval_ms":10000,"seconds":15}
//      N open streams, one chunk each per interval; prints {"event":"open"} once all have started.
//   {"mode":"slow","url","key","rate":1048576,"seconds":15}
//      One 100 MB stream read at `rate` bytes/s (pause/resume), given up after `seconds`.
import http from 'node:http';
import net from 'node:net';

const args = JSON.parse(process.argv[2]);
const nowUs = () => {
  const [s, ns] = process.hrtime();
  return s * 1e6 + ns / 1e3;
};
// idle and slow use node:http, a new connection per stream.
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

function pct(arr, p) {
  if (arr.length === 0) return null;
  const i = Math.min(arr.length - 1, Math.max(0, Math.ceil((p / 100) * arr.length) - 1));
  return arr[i];
}
function stats(values) {
  const a = Float64Array.from(values).sort();
  return { n: a.length, p50: pct(a, 50), p99: pct(a, 99), max: a.length ? a[a.length - 1] : null };
}

function post(body, onResponse, onError) {
  const url = new URL('/v1/chat/completions', args.url);
  const data = JSON.stringify(body);
  const req = http.request(url, {
    method: 'POST',
    agent,
    headers: { authorization: `Bearer ${args.key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
  });
  req.on('response', onResponse);
  req.on('error', onError);
  req.end(data);
  return req;
}

const chatBody = (bench) => ({ model: 'bench-model', stream: true, messages: [{ role: 'user', content: 'Tell me a story.' }], bench });

// ---------------------------------------------------------------------------------------------
// "streams" runs on raw keep-alive sockets with a minimal HTTP/1.1 response parser. The client shares
// its core with the fake upstream; with node:http each request cost the client ~90 µs, so writing 100
// requests took 7–17 ms, during which no first chunk could be read: TTFB measured the client. Here the
// request bytes are built once and written with one write() per socket (the burst takes ~1 ms), and
// chunked bodies are decoded by hand.

/** One keep-alive connection; request() sends a request and reports body text per socket read. */
class Conn {
  constructor(url) {
    this.url = new URL(url);
    this.sock = null;
    this.res = null; // the response being read: { onHead, onBody, onEnd, onError }
    this.buf = '';
    this.state = 'idle';
  }

  open() {
    return new Promise((resolve, reject) => {
      this.sock = net.connect({ host: this.url.hostname, port: Number(this.url.port) }, resolve);
      this.sock.setNoDelay(true);
      this.sock.once('error', reject);
      this.sock.on('error', (err) => this.#fail(err.message));
      this.sock.on('close', () => this.#fail('connection closed'));
      this.sock.on('data', (d) => this.#data(d.toString('latin1')));
    });
  }

  request(bytes, res) {
    this.res = res;
    this.buf = '';
    this.state = 'head';
    this.sock.write(bytes);
  }

  close() {
    this.sock.destroy();
  }

  #fail(message) {
    const res = this.res;
    if (res === null) return;
    this.res = null;
    this.state = 'idle';
    res.onError(message);
  }

  #finish() {
    const res = this.res;
    this.res = null;
    this.state = 'idle';
    res.onEnd();
  }

  #data(text) {
    if (this.res === null) return;
    const recv = nowUs();
    let s = this.buf + text;
    let pos = 0;
    let body = '';
    if (this.state === 'head') {
      const end = s.indexOf('\r\n\r\n');
      if (end < 0) {
        this.buf = s;
        return;
      }
      const head = s.slice(0, end).toLowerCase();
      this.status = Number(head.slice(9, 12));
      const cl = /\r\ncontent-length: *(\d+)/.exec(head);
      if (/\r\ntransfer-encoding: *chunked/.test(head)) {
        this.state = 'size';
      } else if (cl) {
        this.state = 'fixed';
        this.left = Number(cl[1]);
      } else {
        return this.#fail('response without a length');
      }
      this.res.onHead(this.status);
      pos = end + 4;
    }
    while (pos < s.length && this.res !== null) {
      if (this.state === 'fixed') {
        const take = Math.min(this.left, s.length - pos);
        body += s.slice(pos, pos + take);
        pos += take;
        this.left -= take;
        if (this.left === 0) {
          if (body) this.res.onBody(body, recv);
          body = '';
          this.#finish();
        }
      } else if (this.state === 'size') {
        const eol = s.indexOf('\r\n', pos);
        if (eol < 0) break;
        this.left = parseInt(s.slice(pos, eol), 16);
        pos = eol + 2;
        this.state = this.left === 0 ? 'last' : 'chunk';
      } else if (this.state === 'chunk') {
        const take = Math.min(this.left, s.length - pos);
        body += s.slice(pos, pos + take);
        pos += take;
        this.left -= take;
        if (this.left === 0) this.state = 'crlf';
      } else if (this.state === 'crlf') {
        if (s.length - pos < 2) break;
        pos += 2;
        this.state = 'size';
      } else if (this.state === 'last') {
        if (s.length - pos < 2) break;
        pos += 2; // no trailers
        if (body) this.res.onBody(body, recv);
        body = '';
        this.#finish();
      }
    }
    this.buf = this.res === null ? '' : s.slice(pos);
    if (body && this.res !== null) this.res.onBody(body, recv);
  }
}

function requestBytes(body) {
  const url = new URL('/v1/chat/completions', args.url);
  const data = JSON.stringify(body);
  return Buffer.from(
    `POST ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${args.key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(data)}\r\n\r\n${data}`,
  );
}

/** Sends one request on conn and resolves when its response has been read (or failed). */
function drain(conn, bytes) {
  return new Promise((resolve) => {
    conn.request(bytes, { onHead() {}, onBody() {}, onEnd: resolve, onError: resolve });
  });
}

async function streams() {
  const { streams: n, chunks, interval_ms: intervalMs } = args;
  // Every connection is opened and carries short streams first, unrecorded: TTFB then measures the
  // proxy, not TCP handshakes or first-request costs. warm_bursts: that many bursts of N short
  // streams at once (default 1). A proxy that has served a few hundred such bursts answers the next
  // faster than one that has not, even after minutes of other load; with 10 the per-round TTFBs no
  // longer drift down over the rounds.
  const conns = Array.from({ length: n }, () => new Conn(args.url));
  await Promise.all(conns.map((c) => c.open()));
  const warm = requestBytes(chatBody({ mode: 'chunks', chunks: 2, interval_ms: 1 }));
  for (let i = 0; i < (args.warm_bursts ?? 1); i++) await Promise.all(conns.map((c) => drain(c, warm)));
  // Let the proxy finish with the warm-up (log lines, usage records, end-of-request hooks) first.
  await new Promise((r) => setTimeout(r, 300));
  const bytes = requestBytes(chatBody({ mode: 'chunks', chunks, interval_ms: intervalMs }));
  const lags = [];
  const gaps = [];
  const ttfbs = [];
  let received = 0;
  let doneCount = 0;
  let outOfOrder = 0;
  let heldBack = 0; // chunk i reached the client only after upstream had already sent chunk i+1
  let heldBackInGateway = 0; // ... and arrived in the same read as chunk i+1
  const errors = [];
  const cpu0 = process.cpuUsage();
  const started = nowUs();
  await Promise.all(
    conns.map(
      (conn) =>
        new Promise((resolve) => {
          let t0 = 0;
          let carry = '';
          let expect = 0;
          let prevRecv = -1;
          let prevRead = -1;
          let read = 0; // reads that carried body text: chunks that share one arrived together
          let first = true;
          let ok = true;
          conn.request(bytes, {
            onHead(status) {
              if (status !== 200) {
                ok = false;
                errors.push(`HTTP ${status}`);
              }
            },
            onBody(text, recv) {
              if (!ok) return;
              read++;
              if (first) {
                first = false;
                ttfbs.push((recv - t0) / 1000);
              }
              const all = carry + text;
              const end = all.lastIndexOf('\n\n');
              if (end < 0) {
                carry = all;
                return;
              }
              carry = all.slice(end + 2);
              let pos = 0;
              while (pos <= end) {
                const next = all.indexOf('\n\n', pos);
                if (all.startsWith('data: {"i":', pos)) {
                  const comma = all.indexOf(',', pos + 11);
                  const i = Number(all.slice(pos + 11, comma));
                  const tEnd = all.indexOf(',', comma + 5);
                  const t = Number(all.slice(comma + 5, tEnd));
                  if (i !== expect) outOfOrder++;
                  expect = i + 1;
                  received++;
                  lags.push((recv - t) / 1000);
                  if (prevRecv >= 0) {
                    gaps.push((recv - prevRecv) / 1000);
                    if (prevRecv >= t) {
                      heldBack++;
                      if (prevRead === read) heldBackInGateway++;
                    }
                  }
                  prevRecv = recv;
                  prevRead = read;
                } else if (all.startsWith('data: [DONE]', pos)) {
                  doneCount++;
                }
                pos = next + 2;
              }
            },
            onEnd: resolve,
            onError(message) {
              errors.push(message);
              resolve();
            },
          });
          t0 = nowUs();
        }),
    ),
  );
  const wall = (nowUs() - started) / 1e6;
  const cpu = process.cpuUsage(cpu0);
  for (const c of conns) c.close();
  emit({
    mode: 'streams',
    streams: n,
    expectedChunks: n * chunks,
    received,
    done: doneCount,
    outOfOrder,
    heldBack,
    heldBackInGateway,
    errors: errors.slice(0, 5),
    errorCount: errors.length,
    ttfbMs: stats(ttfbs),
    lagMs: stats(lags),
    gapMs: stats(gaps),
    wall,
    clientCpu: (cpu.user + cpu.system) / 1e6,
  });
}

// ---------------------------------------------------------------------------------------------
async function idle() {
  const { streams: n, interval_ms: intervalMs, seconds, batch = 100 } = args;
  const started = Date.now();
  const open = [];
  let failed = 0;
  const errors = [];
  for (let b = 0; b < n; b += batch) {
    await Promise.all(
      Array.from(
        { length: Math.min(batch, n - b) },
        () =>
          new Promise((resolve) => {
            const s = { chunks: 0, req: null, res: null };
            s.req = post(
              chatBody({ mode: 'idle', interval_ms: intervalMs }),
              (res) => {
                s.res = res;
                if (res.statusCode !== 200) {
                  failed++;
                  errors.push(`HTTP ${res.statusCode}`);
                  res.resume();
                  return resolve();
                }
                res.on('data', (d) => {
                  s.chunks += d.toString('latin1').split('\n\n').length - 1;
                  if (s.chunks > 0 && !s.counted) {
                    s.counted = true;
                    open.push(s);
                    resolve();
                  }
                });
                res.on('error', () => {});
              },
              (err) => {
                failed++;
                errors.push(err.message);
                resolve();
              },
            );
          }),
      ),
    );
  }
  emit({ event: 'open', streams: open.length, openMs: Date.now() - started });
  const left = seconds * 1000 - (Date.now() - started);
  if (left > 0) await new Promise((r) => setTimeout(r, left));
  const counts = open.map((s) => s.chunks).sort((a, b) => a - b);
  emit({ event: 'measure' });
  // Give the runner a moment to read RSS while everything is still open.
  await new Promise((r) => setTimeout(r, 300));
  for (const s of open) s.req.destroy();
  emit({
    mode: 'idle',
    requested: n,
    open: open.length,
    failed,
    errors: errors.slice(0, 5),
    chunksMin: counts[0] ?? 0,
    chunksMax: counts[counts.length - 1] ?? 0,
    seconds: (Date.now() - started) / 1000,
  });
}

// ---------------------------------------------------------------------------------------------
async function slow() {
  const { rate, seconds, bytes = 100 * 1024 * 1024 } = args;
  let got = 0;
  let t0 = 0;
  let status = 0;
  let ended = false;
  await new Promise((resolve) => {
    const req = post(
      chatBody({ mode: 'big', bytes }),
      (res) => {
        status = res.statusCode;
        t0 = performance.now();
        emit({ event: 'started' });
        let timer = null;
        res.on('data', (d) => {
          got += d.length;
          const elapsed = (performance.now() - t0) / 1000;
          const ahead = got / rate - elapsed;
          if (ahead > 0 && timer === null) {
            res.pause();
            timer = setTimeout(() => {
              timer = null;
              res.resume();
            }, ahead * 1000);
          }
        });
        res.on('end', () => {
          ended = true;
          resolve();
        });
        res.on('error', resolve);
        setTimeout(() => {
          clearTimeout(timer);
          req.destroy();
          resolve();
        }, seconds * 1000);
      },
      (err) => {
        emit({ event: 'error', message: err.message });
        resolve();
      },
    );
  });
  const elapsed = (performance.now() - t0) / 1000;
  emit({ mode: 'slow', status, bytes: got, seconds: elapsed, rateMBps: got / elapsed / 1048576, ended });
}

const modes = { streams, idle, slow };
modes[args.mode]().then(
  () => process.exit(0),
  (err) => {
    emit({ error: err.message });
    process.exit(1);
  },
);
