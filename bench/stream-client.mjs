// Streaming load for run.mjs, in its own process (pinned to the load-side core). One JSON argument,
// one JSON result line on stdout (and {"event":...} progress lines before it).
//
//   {"mode":"streams","url","key","streams":100,"chunks":500,"interval_ms":2[,"warmup":true][,"keep_alive":true]}
//      N concurrent chat streams; per chunk: lag = client receive time − upstream send time (both
//      CLOCK_MONOTONIC, µs), gap = time since the previous chunk of the same stream; per stream TTFB.
//   {"mode":"idle","url","key","streams":1000,"interval_ms":10000,"seconds":15}
//      N open streams, one chunk each per interval; prints {"event":"open"} once all have started.
//   {"mode":"slow","url","key","rate":1048576,"seconds":15}
//      One 100 MB stream read at `rate` bytes/s (pause/resume), given up after `seconds`.
import http from 'node:http';

const args = JSON.parse(process.argv[2]);
const nowUs = () => {
  const [s, ns] = process.hrtime();
  return s * 1e6 + ns / 1e3;
};
// keep_alive: connections are reused, as SDK clients and browsers do; with warmup, as many as there
// will be streams are opened first, so TTFB measures the proxy, not TCP handshakes on the client's core.
const agent = new http.Agent({ keepAlive: args.keep_alive === true, maxSockets: Infinity });
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
/** Short streams first, unrecorded: the client's own first-request costs stay out of TTFB. */
function warmUp(n = 1) {
  return Promise.all(Array.from({ length: n }, () => warmOne()));
}
function warmOne() {
  return new Promise((resolve) => {
    post(chatBody({ mode: 'chunks', chunks: 2, interval_ms: 1 }), (res) => {
      res.resume();
      res.on('end', resolve);
      res.on('error', resolve);
    }, resolve);
  });
}

async function streams() {
  const { streams: n, chunks, interval_ms: intervalMs } = args;
  if (args.warmup) await warmUp(args.keep_alive === true ? n : 1);
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
    Array.from({ length: n }, () => new Promise((resolve) => {
      let t0 = 0;
      let carry = '';
      let expect = 0;
      let prevRecv = -1;
      let prevRead = -1;
      let first = true;
      const req = post(
        chatBody({ mode: 'chunks', chunks, interval_ms: intervalMs }),
        (res) => {
          if (res.statusCode !== 200) {
            errors.push(`HTTP ${res.statusCode}`);
            res.resume();
            res.on('end', resolve);
            return;
          }
          res.setEncoding('utf8');
          // Socket reads, counted after the HTTP parser has handled each one: chunks that share a
          // read arrived together (they were coalesced somewhere upstream of the client).
          let read = 0;
          res.socket.on('data', () => read++);
          res.on('data', (text) => {
            const recv = nowUs();
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
          });
          res.on('end', resolve);
          res.on('error', (err) => {
            errors.push(err.message);
            resolve();
          });
        },
        (err) => {
          errors.push(err.message);
          resolve();
        },
      );
      t0 = nowUs();
      void req;
    })),
  );
  const wall = (nowUs() - started) / 1e6;
  const cpu = process.cpuUsage(cpu0);
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
      Array.from({ length: Math.min(batch, n - b) }, () => new Promise((resolve) => {
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
      })),
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
  emit({ mode: 'idle', requested: n, open: open.length, failed, errors: errors.slice(0, 5), chunksMin: counts[0] ?? 0, chunksMax: counts[counts.length - 1] ?? 0, seconds: (Date.now() - started) / 1000 });
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
