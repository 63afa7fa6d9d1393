// One usage record as one audit log line: the bytes `JSON.stringify({ time, ...record })` writes,
// built as one template string. The generic way spreads every record into a new object and has
// JSON.stringify walk it, and formats a Date per record (new Date(ts).toISOString()); measured,
// that was the largest part of a record's cost after the database insert (issue #18). Here the
// keys are written in their fixed order, strings that need no escaping are written as they are,
// and the ISO time's first 20 characters are reused within one second.
//
// Exactness: every field of UsageRecord is named in Written (a field added to the type and not
// here fails to compile); a record that carries one of the optional fields (estimate, bodies:
// their order depends on who added them) takes the generic way, so the line is always what
// JSON.stringify would have written (test/usage/audit-line.test.ts compares them).
import type { UsageRecord } from './exchange.js';

type Optional = 'estimate' | 'requestBody' | 'responseText';
type Fixed = Exclude<keyof UsageRecord, Optional>;
/** The fixed fields, as auditLine writes them (in the order buildRecord in plugins/usage.ts creates them). */
type Written =
  | 'ts'
  | 'requestId'
  | 'keyId'
  | 'keyName'
  | 'route'
  | 'model'
  | 'status'
  | 'streamed'
  | 'promptTokens'
  | 'cachedTokens'
  | 'completionTokens'
  | 'estimated'
  | 'ttftMs'
  | 'durationMs'
  | 'bytesIn'
  | 'bytesOut'
  | 'clientIp'
  | 'userAgent'
  | 'outcome'
  | 'endUser'
  | 'cost';
// A field added to UsageRecord and not written by auditLine fails to compile here.
type Missing = Exclude<Fixed, Written>;
const complete: [Missing] extends [never] ? true : Missing = true;
void complete;

/** A string JSON.stringify writes as it is, between quotes: no quote, backslash, control character or surrogate. */
// eslint-disable-next-line no-control-regex -- control characters are exactly what JSON must escape
const PLAIN = /^[^"\\\u0000-\u001f\ud800-\udfff]*$/;

/** Set by the writers below when a value is not of its field's type (a record built by hand): the generic way then. */
let odd = false;

function str(v: string | null): string {
  if (typeof v === 'string') return PLAIN.test(v) ? `"${v}"` : JSON.stringify(v);
  if (v !== null) odd = true;
  return 'null';
}

function num(v: number | null): string {
  // JSON writes NaN and ±Infinity as null; finite numbers as String() does.
  if (typeof v === 'number') return Number.isFinite(v) ? `${v}` : 'null';
  if (v !== null) odd = true;
  return 'null';
}

function bool(v: boolean): string {
  if (typeof v !== 'boolean') odd = true;
  return v ? 'true' : 'false';
}

let second = Number.NaN;
/** new Date(second * 1000).toISOString()'s first 20 characters ("YYYY-MM-DDTHH:MM:SS.") */
let prefix = '';

/** new Date(ts).toISOString() (a Date drops the fraction of a millisecond, toward zero). */
export function isoTime(ts: number): string {
  const t = Math.trunc(ts);
  const s = Math.floor(t / 1000);
  if (s !== second) {
    const iso = new Date(t).toISOString();
    // Years beyond 9999 (or before 1970) have another shape: not cached.
    if (iso.length !== 24 || t < 0) return iso;
    second = s;
    prefix = iso.slice(0, 20);
  }
  const ms = t - s * 1000;
  return `${prefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z`;
}

/** The record's audit line (no newline). */
export function auditLine(r: UsageRecord): string {
  if (r.estimate === undefined && r.requestBody === undefined && r.responseText === undefined) {
    odd = false;
    const line = `{"time":"${isoTime(r.ts)}","ts":${num(r.ts)},"requestId":${str(r.requestId)},"keyId":${str(r.keyId)},"keyName":${str(
      r.keyName,
    )},"route":${str(r.route)},"model":${str(r.model)},"status":${num(r.status)},"streamed":${bool(r.streamed)},"promptTokens":${num(
      r.promptTokens,
    )},"cachedTokens":${num(r.cachedTokens)},"completionTokens":${num(r.completionTokens)},"estimated":${bool(
      r.estimated,
    )},"ttftMs":${num(r.ttftMs)},"durationMs":${num(r.durationMs)},"bytesIn":${num(r.bytesIn)},"bytesOut":${num(
      r.bytesOut,
    )},"clientIp":${str(r.clientIp)},"userAgent":${str(r.userAgent)},"outcome":${str(r.outcome)},"endUser":${str(
      r.endUser,
    )},"cost":${num(r.cost)}}`;
    if (!odd) return line;
  }
  return JSON.stringify({ time: new Date(r.ts).toISOString(), ...r });
}
