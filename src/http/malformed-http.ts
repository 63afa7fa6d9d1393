// Requests too malformed to become a Fastify request still get an answer in OpenAI's shape:
// Node's HTTP parser errors (a bad request line, header or chunked body), headers over the size
// limit, a request that does not arrive within requestTimeout, and an HTTP/1.1 request without
// Host (RFC 9112 §3.2 wants a 400; Node's own bare 400 is turned off so that the gateway answers).
// Fastify's default answers these with {"error":"Bad Request","message":"Client Error",...}.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Socket } from 'node:net';
import { STATUS_CODES } from 'node:http';
import { HEADERS_TOO_LARGE, MALFORMED_REQUEST, REQUEST_RECEIVE_TIMEOUT, type GatewayError } from '../errors.js';

function rawResponse(err: GatewayError): string {
  return (
    `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? ''}\r\n` +
    'Content-Type: application/json; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(err.body)}\r\n` +
    'Connection: close\r\n\r\n' +
    err.body
  );
}

// Written as they are: computed once.
const ANSWERS = {
  malformed: rawResponse(MALFORMED_REQUEST),
  headersTooLarge: rawResponse(HEADERS_TOO_LARGE),
  timeout: rawResponse(REQUEST_RECEIVE_TIMEOUT),
};

/**
 * Fastify's `clientErrorHandler` (Node's 'clientError' event): answers on the raw socket, then
 * closes it. Logs the error's code only: the error object carries the raw request bytes
 * (`rawPacket`), Authorization header included, which Fastify's default would log at trace level.
 */
export function clientErrorHandler(this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
  // A reset connection has nobody to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const answer =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? ANSWERS.headersTooLarge
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? ANSWERS.timeout
        : ANSWERS.malformed;
  this.log.debug({ code: err.code }, 'malformed HTTP request: answered and closed');
  // Like Node's own handler: never write into a response that has already started on this socket
  // (a keep-alive connection whose next request is malformed while the previous one still answers).
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
  if (socket.writable && (inFlight === undefined || inFlight === null || inFlight.headersSent !== true)) socket.write(answer);
  socket.destroy();
}

/** An HTTP/1.1 request without a Host header (HTTP/1.0 needs none). */
export function lacksHost(request: FastifyRequest): boolean {
  return request.headers.host === undefined && request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor >= 1;
}
