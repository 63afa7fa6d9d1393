// A GET with a deadline, for the commands that ask llama-server and the gateway whether they answer
// (doctor, the menu's health lines), and the local address to ask a server on.

export interface HttpAnswer {
  readonly status: number;
  readonly body: string;
}

/** Why a GET got no answer: the deadline passed, or the error (its cause names the socket's code). */
export interface HttpFailure {
  readonly timedOut: boolean;
  readonly error: Error & { cause?: { code?: string; message?: string } };
}

/** GET `url` within `timeoutMs`; never throws. */
export async function httpGet(url: string, timeoutMs: number, authorization?: string): Promise<HttpAnswer | HttpFailure> {
  try {
    const headers = authorization === undefined ? {} : { headers: { authorization } };
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), ...headers });
    return { status: res.status, body: await res.text() };
  } catch (err) {
    return { timedOut: (err as Error).name === 'TimeoutError', error: err as HttpFailure['error'] };
  }
}

/** The URL to reach a server listening on `host`: a wildcard address is asked on loopback. */
export function localUrl(host: string, port: number): string {
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  return `http://${h}:${port}`;
}

/** GET url; a string is the reason it could not be reached (the socket's code, or the deadline). */
export async function getOrReason(url: string, timeoutMs: number, authorization?: string): Promise<HttpAnswer | string> {
  const answer = await httpGet(url, timeoutMs, authorization);
  if ('status' in answer) return answer;
  if (answer.timedOut) return `no answer within ${timeoutMs} ms`;
  const cause = answer.error.cause;
  return cause?.code ?? cause?.message ?? answer.error.message;
}

/** A JSON object's fields, or undefined for anything else. */
export function jsonObject(body: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(body);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
