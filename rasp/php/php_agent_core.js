'use strict';
/*
 * Rampart PHP probe, the part that does not touch the process: UTF-8, framing, decoding of
 * agent frames, policy rules, quotas, query strings. Plain JavaScript, no Frida API, so the
 * unit tests run it under node against the shared protocol vectors
 * (tests/unit/test_php_core.py). php_agent.py loads it in front of php_agent.js.
 */

const CORE_MAX_FRAME = 1 << 20;
const CORE_ARG_CAP = 4096;
const FROM_AGENT_TYPES = [0, 3, 6, 7, 8, 99, 201];

class DecodeError extends Error {
  constructor(code, reason) {
    super(code + ': ' + reason);
    this.code = code;
  }
}

// ------------------------------------------------------------------------- UTF-8
/* Bytes -> string. PHP strings are bytes: leniently, invalid sequences become U+FFFD;
 * strictly (agent frames), they raise DecodeError('bad_json'). */
function utf8Decode(bytes, strict) {
  let out = '';
  const n = bytes.length;
  let i = 0;
  const bad = () => {
    if (strict) throw new DecodeError('bad_json', 'invalid UTF-8 at byte ' + i);
    out += '\ufffd';
    i++;
  };
  while (i < n) {
    const b = bytes[i];
    if (b < 0x80) { out += String.fromCharCode(b); i++; continue; }
    let need = 0, cp = 0;
    if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; }
    else if (b >= 0xe0 && b <= 0xef) { need = 2; cp = b & 0x0f; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 3; cp = b & 0x07; }
    else { bad(); continue; }
    let ok = true;
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) { ok = false; break; }
      cp = (cp << 6) | (c & 0x3f);
    }
    if (!ok || (need === 2 && cp < 0x800) || (need === 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      bad();
      continue;
    }
    out += String.fromCodePoint(cp);
    i += need + 1;
  }
  return out;
}

/* String -> array of bytes; a lone surrogate becomes U+FFFD (JSON from the agent stays valid). */
function utf8Encode(str) {
  const out = [];
  for (let i = 0; i < str.length; i++) {
    let c = str.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length) {
      const d = str.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
      else c = 0xfffd;
    } else if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    else {
      out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f),
        0x80 | (c & 0x3f));
    }
  }
  return out;
}

// ------------------------------------------------------------------------- framing
/* One frame: 4-byte big-endian length, then the UTF-8 JSON. */
function frameBytes(msg) {
  const body = utf8Encode(JSON.stringify(msg));
  const n = body.length;
  const out = new Uint8Array(4 + n);
  out[0] = (n >>> 24) & 0xff; out[1] = (n >>> 16) & 0xff; out[2] = (n >>> 8) & 0xff; out[3] = n & 0xff;
  out.set(body, 4);
  return out;
}

/* Splits a byte stream into payloads; the length prefix is checked before the body is read. */
class FrameSplitter {
  constructor(maxFrame) {
    this.max = maxFrame || CORE_MAX_FRAME;
    this.buf = new Uint8Array(0);
  }

  feed(chunk) {
    const merged = new Uint8Array(this.buf.length + chunk.length);
    merged.set(this.buf, 0);
    merged.set(chunk, this.buf.length);
    this.buf = merged;
    const out = [];
    while (this.buf.length >= 4) {
      const n = (this.buf[0] * 0x1000000) + (this.buf[1] << 16) + (this.buf[2] << 8) + this.buf[3];
      if (n > this.max) throw new DecodeError('too_large', 'frame of ' + n + ' bytes');
      if (this.buf.length < 4 + n) break;
      out.push(this.buf.slice(4, 4 + n));
      this.buf = this.buf.slice(4 + n);
    }
    return out;
  }

  close() {
    if (this.buf.length) throw new DecodeError('truncated', this.buf.length + ' bytes left');
  }
}

function isObject(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }
function isCount(v) { return Number.isInteger(v) && v >= 0; }
function isStr(v, max) { return typeof v === 'string' && (max === undefined || v.length <= max); }

function checkRules(rules) {
  if (!Array.isArray(rules)) return false;
  return rules.every((r) => isObject(r) && isStr(r.policy_id) && r.policy_id.length >= 1 &&
    (r.match === undefined || isObject(r.match)));
}

/* One payload from the agent -> message object; DecodeError with the shared error codes. */
function decodeFromAgent(payload) {
  if (payload.length === 0) throw new DecodeError('bad_json', 'empty payload');
  const text = utf8Decode(payload, true);
  let msg;
  try { msg = JSON.parse(text); } catch (e) { throw new DecodeError('bad_json', e.message); }
  if (!isObject(msg)) throw new DecodeError('not_object', 'not an object');
  const t = msg.message_type;
  if (t === undefined || typeof t !== 'number' || !Number.isInteger(t)) {
    throw new DecodeError('schema', 'message_type');
  }
  if (FROM_AGENT_TYPES.indexOf(t) < 0) throw new DecodeError('unknown_type', 'type ' + t);
  const d = msg.data === undefined ? {} : msg.data;
  if (!isObject(d)) throw new DecodeError('schema', 'data');
  const uuid = () => { if (!isStr(d.uuid, 64)) throw new DecodeError('schema', 'uuid'); };
  if (t === 3) uuid();
  if (t === 6) { uuid(); if (d.filters !== undefined && !checkRules(d.filters)) throw new DecodeError('schema', 'filters'); }
  if (t === 7) { uuid(); if (d.blocks !== undefined && !checkRules(d.blocks)) throw new DecodeError('schema', 'blocks'); }
  if (t === 8) {
    uuid();
    if (d.quotas !== undefined && !(Array.isArray(d.quotas) && d.quotas.every((q) =>
      isObject(q) && isStr(q.hook) && q.hook.length >= 1 && isCount(q.per_minute)))) {
      throw new DecodeError('schema', 'quotas');
    }
  }
  if (t === 99 && !(isStr(d.code) && isStr(d.reason))) throw new DecodeError('schema', 'error');
  return msg;
}

// ------------------------------------------------------------------------- policy
/* Rules as pushed by the agent -> matchers; a rule whose regex does not compile is skipped. */
function compileRules(rules, onSkip) {
  const out = [];
  for (const r of rules || []) {
    try {
      out.push({
        policy_id: r.policy_id,
        runtime: r.runtime || null,
        kind: r.kind || null,
        hook: r.hook || null,
        args: r.match && r.match.args ? new RegExp(r.match.args) : null,
        stack: r.match && r.match.stack ? new RegExp(r.match.stack) : null,
      });
    } catch (e) {
      if (onSkip) onSkip(r, e);
    }
  }
  return out;
}

/* Every field the rule gives must match: args searched in the args joined by one space,
 * stack in each frame (docs/protocol.md). */
function ruleMatches(r, ev) {
  if (r.runtime !== null && r.runtime.indexOf('php') < 0) return false;
  if (r.kind !== null && r.kind !== ev.kind) return false;
  if (r.hook !== null && r.hook !== ev.hook) return false;
  if (r.args !== null && !r.args.test(ev.args.join(' '))) return false;
  if (r.stack !== null && !ev.stack.some((f) => r.stack.test(f))) return false;
  return true;
}

/* Per-hook quota per minute; "*" is the default for hooks without their own line. */
class Quotas {
  constructor(defaultPerMinute) {
    this.limits = { '*': defaultPerMinute };
    this.start = 0;
    this.used = {};
  }

  set(quotas, defaultPerMinute) {
    const q = { '*': defaultPerMinute };
    for (const x of quotas || []) q[x.hook] = x.per_minute;
    this.limits = q;
  }

  allow(hook, now) {
    if (now - this.start >= 60000) { this.start = now; this.used = {}; }
    const limit = hook in this.limits ? this.limits[hook] : this.limits['*'];
    const used = this.used[hook] || 0;
    if (used >= limit) return false;
    this.used[hook] = used + 1;
    return true;
  }
}

// ------------------------------------------------------------------------- requests
function urlDecode(s) {
  try { return decodeURIComponent(s.replace(/\+/g, ' ')); } catch (e) { return s; }
}

/* a=1&a=2&b -> {a: ['1', '2'], b: ['']} */
function parseQuery(qs, params) {
  if (!qs) return params;
  for (const part of qs.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const k = urlDecode(eq < 0 ? part : part.slice(0, eq));
    const v = urlDecode(eq < 0 ? '' : part.slice(eq + 1));
    (params[k] = params[k] || []).push(v.slice(0, CORE_ARG_CAP));
  }
  return params;
}

if (typeof module !== 'undefined') {
  module.exports = {
    DecodeError, utf8Decode, utf8Encode, frameBytes, FrameSplitter, decodeFromAgent,
    compileRules, ruleMatches, Quotas, parseQuery,
  };
}
