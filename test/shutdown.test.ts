// Graceful shutdown of the real process (dist/server.js): on SIGTERM it stops accepting, lets a
// stream in flight finish, and exits 0; past GATEWAY_SHUTDOWN_GRACE_MS it cuts what is left, which
// also cancels the upstream request.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { startFakeLlama, type FakeBehavior, type FakeLlama } from './fixtures/fake-llama.js';
import { AUTH_A, KEY_A, chatBody, freePort, until, within } from './helpers.js';

const SERVER = join(fileURLToPath(new URL('..', import.meta.url)), 'dist', 'server.js');

interface Running {
  child: ChildProcess;
  port: number;
  fake: FakeLlama;
  exit: Promise<number | null>;
  output: () => string;
}

async function startProcess(
  t: { teardown(fn: () => unknown): void },
  env: Record<string, string>,
  behavior: Partial<FakeBehavior>,
): Promise<Running> {
  const fake = await startFakeLlama(behavior);
  const port = await freePort();
  const child = spawn(process.execPath, [SERVER], {
    cwd: fileURLToPath(new URL('.', import.meta.url)),
    env: {
      PATH: process.env.PATH ?? '',
      LLM_API_KEYS: KEY_A,
      GATEWAY_PORT: String(port),
      ...env,
      // SECOND_UPSTREAM (tests only): a second llama-server after this one, for the same model
      LLM_UPSTREAM: env.SECOND_UPSTREAM === undefined ? fake.url : `${fake.url},${env.SECOND_UPSTREAM}`,
    },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await fake.close();
  });
  // pm2-style readiness: the process says 'ready' over IPC once it listens.
  await within(
    once(child, 'message').then(([m]) => m === 'ready' || Promise.reject(new Error(String(m)))),
    10_000,
    'ready message',
  );
  return { child, port, fake, exit, output: () => out };
}

function openStream(port: number): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A }, resolve);
    req.on('error', reject);
    req.end(chatBody({ stream: true }));
  });
}

function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });
}

t.test('SIGTERM: new connections refused, the stream in flight finishes, exit 0', async (t) => {
  const run = await startProcess(t, {}, { chunkDelayMs: 50, extraContentChunks: 30 });
  const res = await openStream(run.port);
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c: string) => (body += c));
  await once(res, 'data');
  run.child.kill('SIGTERM');
  await within(
    (async () => {
      while (!(await connectRefused(run.port))) await new Promise((r) => setTimeout(r, 20));
    })(),
    3000,
    'the listening socket closes',
  );
  await within(once(res, 'end'), 10_000, 'the stream ends');
  t.match(body, /data: \[DONE\]\n\n$/, 'the stream completed normally');
  t.equal(await within(run.exit, 5000, 'the process exits'), 0, 'exit code 0');
  t.match(run.output(), /"msg":"shutting down: no new connections, letting in-flight requests finish"/);
  t.equal(run.fake.requests.find((r) => r.url === '/v1/chat/completions')?.abortedByClient, false, 'upstream finished its work');
});

t.test('past the grace period the rest is cut, upstream cancelled, exit 0', async (t) => {
  const run = await startProcess(t, { GATEWAY_SHUTDOWN_GRACE_MS: '300' }, { chunkDelayMs: 200, extraContentChunks: 1000 });
  const res = await openStream(run.port);
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c: string) => (body += c));
  res.on('error', () => {});
  await once(res, 'data');
  const upstream = run.fake.requests.find((r) => r.url === '/v1/chat/completions');
  run.child.kill('SIGTERM');
  t.equal(await within(run.exit, 5000, 'the process exits soon after the grace period'), 0, 'exit code 0');
  await within(upstream!.closed, 2000, 'the upstream request is closed');
  t.ok(upstream!.abortedByClient, 'llama-server saw the request cancelled');
  t.notMatch(body, '[DONE]');
  t.match(
    body,
    /data: \{"error":\{"message":"The gateway is restarting; retry in a few seconds\.","type":"server_error","param":null,"code":"shutting_down"\}\}\n\n$/,
    'the stream ends with the shutdown error (type and code as its 503)',
  );
  t.match(run.output(), /shutdown grace period over/);
});

t.test('past the grace period the streams on every llama-server are cut the same way', async (t) => {
  const second = await startFakeLlama({ chunkDelayMs: 200, extraContentChunks: 1000 });
  t.teardown(() => second.close());
  const run = await startProcess(
    t,
    { GATEWAY_SHUTDOWN_GRACE_MS: '300', LLM_UPSTREAM: '', SECOND_UPSTREAM: second.url },
    { chunkDelayMs: 200, extraContentChunks: 1000 },
  );
  await until('both servers ready in the gateway', async () => {
    const res = await fetch(`http://127.0.0.1:${run.port}/health`);
    return ((await res.json()) as { status?: string }).status === 'ok';
  });
  const bodies = ['', ''];
  for (const i of [0, 1]) {
    const res = await openStream(run.port);
    res.setEncoding('utf8');
    res.on('data', (c: string) => (bodies[i] += c));
    res.on('error', () => {});
    await once(res, 'data');
  }
  t.equal(
    [run.fake, second].map((f) => f.requests.filter((r) => r.url === '/v1/chat/completions').length).join(' '),
    '1 1',
    'one stream on each server',
  );
  run.child.kill('SIGTERM');
  t.equal(await within(run.exit, 5000, 'the process exits soon after the grace period'), 0, 'exit code 0');
  for (const body of bodies)
    t.match(body, /"code":"shutting_down"\}\}\n\n$/, 'each stream ends with the shutdown error, whichever server it was on');
});

t.test('an idle keep-alive client does not hold shutdown open', async (t) => {
  const run = await startProcess(t, {}, {});
  const agent = new http.Agent({ keepAlive: true });
  t.teardown(() => agent.destroy());
  await new Promise<void>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: run.port, path: '/healthz', agent }, (res) => {
        res.resume();
        res.on('end', resolve);
      })
      .on('error', reject);
  });
  run.child.kill('SIGTERM');
  t.equal(await within(run.exit, 3000, 'exit without waiting for the keep-alive timeout'), 0);
});

t.test('a request still waiting for llama-server when the grace period ends gets a 503', async (t) => {
  const run = await startProcess(t, { GATEWAY_SHUTDOWN_GRACE_MS: '300' }, { headersDelayMs: Infinity });
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: run.port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end(chatBody());
  });
  // Start-up also sends /health and /props; wait for ours.
  await within(
    (async () => {
      while (!run.fake.requests.some((r) => r.url === '/v1/chat/completions')) await new Promise((r) => setTimeout(r, 10));
    })(),
    5000,
    'our request reaches llama-server',
  );
  run.child.kill('SIGTERM');
  const { status, body } = await within(answer, 5000, 'an answer');
  t.equal(status, 503);
  t.same(JSON.parse(body), {
    error: { message: 'The gateway is restarting; retry in a few seconds.', type: 'server_error', param: null, code: 'shutting_down' },
  });
  t.equal(await within(run.exit, 5000, 'exit'), 0);
});

t.test('log lines reach stdout as JSON, one per request, and none is lost at exit', async (t) => {
  const run = await startProcess(t, {}, {});
  for (let i = 0; i < 3; i++) {
    await new Promise<void>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: run.port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A },
        (res) => {
          res.resume();
          res.on('end', resolve);
        },
      );
      req.on('error', reject);
      req.end(chatBody());
    });
  }
  run.child.kill('SIGTERM');
  t.equal(await within(run.exit, 5000, 'the process exits'), 0);
  const lines = run
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; status?: number; key?: string });
  t.same(
    lines.filter((l) => l.msg === 'request').map((l) => [l.status, l.key]),
    [
      [200, 'env-1'],
      [200, 'env-1'],
      [200, 'env-1'],
    ],
  );
  t.equal(lines.at(-1)?.msg, 'stopped', 'the line written just before process.exit() is there');
  t.notMatch(run.output(), KEY_A, 'no key in the log');
});
