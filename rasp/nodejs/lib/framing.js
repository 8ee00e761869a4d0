'use strict';
// Framing and schema checks of the Rampart wire protocol (docs/protocol.md), in JS.
// The schema mirrors rasp/protocol/schema.py; test/framing.test.js runs every case of the
// shared vectors (rasp/protocol/vectors/frames.json) through it, so a drift shows up there.

const MAX_FRAME = 1 << 20;
const PROTOCOL_VERSION = 1;
const RUNTIMES = ['python', 'jvm', 'golang', 'nodejs', 'php'];
const KINDS = ['process', 'file', 'network', 'dns', 'sql', 'code', 'deserialization', 'naming',
  'classload', 'library'];

class ProtocolError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

/** One complete frame: 4-byte big-endian length + compact JSON. */
function encode(message) {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

// Trace events (message_type 2) are most of what a probe sends; their text is put together
// here rather than by one JSON.stringify of the whole message (~2.4 us an event on our VM):
// the envelope's constant part is made once per probe, and the `request` object, shared by
// every event of one request, once per request (WeakMap: the object is never mutated after
// it is built, lib/context.js); a held stack (lib/stack.js) gives its frames' JSON from its
// per-frame cache. The result is the same JSON (tests compare).
const requestTexts = new WeakMap();
let envCache = { pid: null, runtime: null, rv: null, pv: null, text: '' };

function requestText(r) {
  let t = requestTexts.get(r);
  if (t === undefined) {
    t = JSON.stringify(r);
    requestTexts.set(r, t);
  }
  return t;
}

function envelopeText(m) {
  const c = envCache;
  if (c.pid !== m.pid || c.runtime !== m.runtime || c.rv !== m.runtime_version || c.pv !== m.probe_version) {
    envCache = { pid: m.pid, runtime: m.runtime, rv: m.runtime_version, pv: m.probe_version,
      text: `{"message_type":2,"pid":${JSON.stringify(m.pid)},"runtime":${JSON.stringify(m.runtime)
      },"runtime_version":${JSON.stringify(m.runtime_version)},"probe_version":${
        JSON.stringify(m.probe_version)},"time":` };
  }
  return envCache.text;
}

/** One message's JSON text. */
function messageText(m) {
  const d = m.data;
  // the fast path takes exactly the envelope client.js builds; anything else: JSON.stringify
  if (m.message_type !== 2 || d === null || typeof d !== 'object' || Array.isArray(d) ||
      !Number.isInteger(m.time) || !Number.isInteger(m.pid) || typeof m.runtime !== 'string' ||
      typeof m.runtime_version !== 'string' || typeof m.probe_version !== 'string' ||
      Object.keys(m).length !== 7) return JSON.stringify(m);
  let s = `${envelopeText(m)}${m.time},"data":{`;
  let first = true;
  for (const k of Object.keys(d)) {
    const v = d[k];
    if (v === undefined) continue;
    let t;
    if (k === 'request' && v !== null && typeof v === 'object') t = requestText(v);
    else if (k === 'stack' && v !== null && typeof v.jsonText === 'function') t = v.jsonText(); // lib/stack.js
    else t = JSON.stringify(v);
    if (t === undefined) continue; // a function or symbol: JSON.stringify leaves it out too
    s += first ? `${JSON.stringify(k)}:${t}` : `,${JSON.stringify(k)}:${t}`;
    first = false;
  }
  return `${s}}}`;
}

/** Frames for many messages in one buffer: one allocation and no intermediate copies (the
 * JSON text is written in place), where encode() per message allocates and copies twice. */
function encodeMany(messages) {
  const n = messages.length;
  const texts = new Array(n);
  const sizes = new Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const t = messageText(messages[i]);
    texts[i] = t;
    sizes[i] = Buffer.byteLength(t, 'utf8');
    total += 4 + sizes[i];
  }
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  for (let i = 0; i < n; i++) {
    out.writeUInt32BE(sizes[i], off);
    out.write(texts[i], off + 4, sizes[i], 'utf8');
    off += 4 + sizes[i];
  }
  return out;
}

/** Splits a byte stream into payloads; a length prefix over the limit fails before the body. */
class FrameReader {
  constructor(maxFrame = MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.buf = Buffer.alloc(0);
  }

  feed(chunk) {
    let buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out = [];
    let off = 0;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len > this.maxFrame) {
        this.buf = Buffer.alloc(0);
        throw new ProtocolError('too_large',
          `frame of ${len} bytes exceeds the ${this.maxFrame}-byte limit`);
      }
      if (buf.length - off - 4 < len) break;
      out.push(buf.subarray(off + 4, off + 4 + len));
      off += 4 + len;
    }
    buf = buf.subarray(off);
    this.buf = Buffer.from(buf); // copy: do not pin the caller's chunk
    return out;
  }

  close() {
    if (this.buf.length) {
      const n = this.buf.length;
      this.buf = Buffer.alloc(0);
      throw new ProtocolError('truncated', `stream ended inside a frame (${n} bytes pending)`);
    }
  }
}

// ------------------------------------------------------------------------------ schema
// A tiny schema language: each checker returns the normalised value or throws 'schema'.

const utf8 = new TextDecoder('utf-8', { fatal: true });

function fail(path, what) {
  throw new ProtocolError('schema', `${what} at \`$${path}\``);
}
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

const int = (min, max) => (v, p) => {
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(p, 'Expected `int`');
  if (min !== undefined && v < min) fail(p, `Expected \`int\` >= ${min}`);
  if (max !== undefined && v > max) fail(p, `Expected \`int\` <= ${max}`);
  return v;
};
const str = (min, max) => (v, p) => {
  if (typeof v !== 'string') fail(p, 'Expected `str`');
  if (min !== undefined && v.length < min) fail(p, `Expected \`str\` of length >= ${min}`);
  if (max !== undefined && v.length > max) fail(p, `Expected \`str\` of length <= ${max}`);
  return v;
};
const bool = (v, p) => (typeof v === 'boolean' ? v : fail(p, 'Expected `bool`'));
const oneOf = (values) => (v, p) => (values.includes(v) ? v : fail(p, 'Invalid enum value'));
const nullable = (check) => (v, p) => (v === null ? null : check(v, p));
const any = (v) => v;
const list = (item) => (v, p) => {
  if (!Array.isArray(v)) fail(p, 'Expected `array`');
  return v.map((x, i) => item(x, `${p}[${i}]`));
};
const dict = (value) => (v, p) => {
  if (!isObj(v)) fail(p, 'Expected `object`');
  const out = {};
  for (const k of Object.keys(v)) out[k] = value(v[k], `${p}.${k}`);
  return out;
};
// fields: {name: [checker, required, default]}; unknown fields are dropped (ignored)
const struct = (fields) => (v, p) => {
  if (!isObj(v)) fail(p, 'Expected `object`');
  const out = {};
  for (const [name, [check, required, dflt]] of Object.entries(fields)) {
    if (Object.prototype.hasOwnProperty.call(v, name)) out[name] = check(v[name], `${p}.${name}`);
    else if (required) fail(p, `Object missing required field \`${name}\``);
    else if (dflt !== undefined) out[name] = typeof dflt === 'function' ? dflt() : dflt;
  }
  return out;
};
const opt = (check, dflt) => [check, false, dflt];
const req = (check) => [check, true];

const Count = int(0);
const Pid = int(1, 2 ** 31 - 1);
const ShortStr = str(undefined, 256);
const Uuid = str(undefined, 64);
const Regex = str(undefined, 4096);

const Request = struct({
  method: opt(str(), ''), url: opt(str(), ''), remote_addr: opt(str(), ''),
  params: opt(dict(list(str())), () => ({})), headers: opt(dict(str()), () => ({})),
});
const TraceData = struct({
  hook: req(str(1, 256)), kind: req(oneOf(KINDS)),
  args: opt(list(str()), () => []), stack: opt(list(str()), () => []),
  blocked: opt(bool, false), policy_id: opt(nullable(str()), null),
  request: opt(nullable(Request), null), ret: opt(nullable(str()), null),
  class_id: opt(nullable(int()), null), method_id: opt(nullable(int()), null),
  bypass: opt(bool, false),
});
const HelloData = struct({
  mode: req(oneOf(['attached', 'sdk'])), hooks: opt(list(ShortStr), () => []),
  nspid: opt(nullable(Pid), null), already_running: opt(bool, false),
  protocol_version: opt(int(), PROTOCOL_VERSION),
});
const HeartbeatData = struct({
  sent: opt(Count, 0), dropped: opt(Count, 0), blocked: opt(Count, 0),
  dropped_by: opt(dict(Count), () => ({})), policies: opt(dict(Uuid), () => ({})),
  queue: opt(Count, 0),
});
const ExitData = struct({ reason: opt(str(), '') });
const Rule = struct({
  policy_id: req(str(1, 256)), runtime: opt(nullable(list(oneOf(RUNTIMES))), null),
  kind: opt(nullable(oneOf(KINDS)), null), hook: opt(nullable(str()), null),
  match: opt(struct({ args: opt(nullable(Regex), null), stack: opt(nullable(Regex), null) }),
    () => ({ args: null, stack: null })),
});
const envelope = (data) => struct({
  message_type: req(int()), pid: req(Pid), runtime: req(oneOf(RUNTIMES)),
  runtime_version: opt(ShortStr, ''), probe_version: opt(ShortStr, ''), time: opt(Count, 0),
  data,
});
const control = (data) => struct({ message_type: req(int()), data });

const TO_AGENT = {
  100: envelope(req(HelloData)),
  1: envelope(opt(HeartbeatData, () => HeartbeatData({}, '.data'))),
  2: envelope(req(TraceData)),
  0: envelope(opt(ExitData, () => ({ reason: '' }))),
  200: control(req(struct({
    id: req(int()), command: req(str(1, 64)), args: opt(dict(any), () => ({})),
  }))),
};
const FROM_AGENT = {
  3: control(req(struct({
    uuid: req(Uuid), hooks_disabled: opt(list(str()), () => []),
    stack_depth: opt(nullable(int(0, 256)), null), settings: opt(dict(any), () => ({})),
  }))),
  6: control(req(struct({ uuid: req(Uuid), filters: opt(list(Rule), () => []) }))),
  7: control(req(struct({
    uuid: req(Uuid), blocks: opt(list(Rule), () => []),
    // detection rules in block mode (docs/detection.md); unknown rule ids are kept, and ignored
    detect: opt(list(struct({
      rule: req(str(1, 64)),
      exempt: opt(list(struct({
        request_path: opt(nullable(Regex), null), args: opt(nullable(Regex), null),
        path: opt(nullable(Regex), null),
      })), () => []),
    })), () => []),
  }))),
  8: control(req(struct({
    uuid: req(Uuid),
    quotas: opt(list(struct({ hook: req(str(1, 256)), per_minute: req(Count) })), () => []),
  }))),
  0: control(opt(ExitData, () => ({ reason: '' }))),
  99: control(req(struct({ code: req(str()), reason: req(str()) }))),
  201: control(req(struct({
    id: req(int()), ok: req(bool), result: opt(any, null), error: opt(nullable(str()), null),
  }))),
};

function parse(payload) {
  if (!payload.length) throw new ProtocolError('bad_json', 'empty payload');
  let text;
  try {
    text = utf8.decode(payload);
  } catch (e) {
    throw new ProtocolError('bad_json', `invalid UTF-8: ${e.message}`);
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError('bad_json', e.message);
  }
  if (!isObj(value)) throw new ProtocolError('not_object', `Expected \`object\`, got ${
    Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value}`);
  return value;
}

function decodeWith(table, payload) {
  const obj = parse(payload);
  if (!Object.prototype.hasOwnProperty.call(obj, 'message_type')) {
    fail('', 'Object missing required field `message_type`');
  }
  const mt = obj.message_type;
  if (typeof mt !== 'number' || !Number.isInteger(mt)) fail('.message_type', 'Expected `int`');
  const check = table[mt];
  if (!check) throw new ProtocolError('unknown_type', `Invalid value ${mt} at \`$.message_type\``);
  return check(obj, '');
}

/** Decode one payload sent by the agent (what the probe receives). */
const decodeFromAgent = (payload) => decodeWith(FROM_AGENT, payload);
/** Decode one payload sent to the agent (the probe's own frames; used by the tests). */
const decodeToAgent = (payload) => decodeWith(TO_AGENT, payload);

module.exports = {
  MAX_FRAME, PROTOCOL_VERSION, RUNTIMES, KINDS, ProtocolError, FrameReader, encode,
  encodeMany, messageText, decodeFromAgent, decodeToAgent,
};
