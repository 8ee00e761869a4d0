'use strict';
// The JS framing against the shared vectors (docs/protocol.md "The shared vectors").
const test = require('node:test');
const assert = require('node:assert');
const path = require('path');
const fs = require('fs');
const framing = require('../lib/framing');

const VECTORS = JSON.parse(fs.readFileSync(
  path.join(__dirname, '..', '..', 'protocol', 'vectors', 'frames.json'), 'utf8'));
const decoderOf = (direction) =>
  direction === 'to_agent' ? framing.decodeToAgent : framing.decodeFromAgent;

// decoded values carry every field at its default; compare only what the vector names,
// and check every other field holds a default (empty, false, null, 0)
function assertSubset(decoded, expected, where) {
  if (expected === null || typeof expected !== 'object') {
    assert.deepStrictEqual(decoded, expected, where);
    return;
  }
  if (Array.isArray(expected)) {
    assert.ok(Array.isArray(decoded), where);
    assert.strictEqual(decoded.length, expected.length, where);
    expected.forEach((v, i) => assertSubset(decoded[i], v, `${where}[${i}]`));
    return;
  }
  for (const [k, v] of Object.entries(expected)) {
    assert.ok(k in decoded, `${where}.${k} missing`);
    assertSubset(decoded[k], v, `${where}.${k}`);
  }
}

function decodeStream(bytes, direction) {
  const reader = new framing.FrameReader(VECTORS.max_frame);
  const out = reader.feed(bytes).map((p) => decoderOf(direction)(p));
  reader.close();
  return out;
}

test('the vectors use the same error codes', () => {
  assert.deepStrictEqual(VECTORS.error_codes,
    ['truncated', 'too_large', 'bad_json', 'not_object', 'unknown_type', 'schema']);
});

for (const v of VECTORS.valid) {
  test(`valid ${v.direction} ${v.name}`, () => {
    const bytes = Buffer.from(v.frame_hex, 'hex');
    const [msg] = decodeStream(bytes, v.direction);
    assertSubset(msg, v.message, '$');
    // re-encode with our encoder and decode again: same object
    const again = decodeStream(framing.encode(msg), v.direction);
    assert.deepStrictEqual(again, [msg]);
  });
}

for (const v of VECTORS.invalid) {
  test(`invalid ${v.direction} ${v.name} -> ${v.error}`, () => {
    const bytes = Buffer.from(v.frame_hex, 'hex');
    assert.throws(() => decodeStream(bytes, v.direction), (e) => {
      assert.ok(e instanceof framing.ProtocolError, `not a ProtocolError: ${e}`);
      assert.strictEqual(e.code, v.error, e.message);
      return true;
    });
  });
}

test('frames split at every byte boundary decode the same', () => {
  const all = Buffer.concat(VECTORS.valid.filter((v) => v.direction === 'to_agent')
    .map((v) => Buffer.from(v.frame_hex, 'hex')));
  for (const step of [1, 3, 7, 64]) {
    const reader = new framing.FrameReader();
    const got = [];
    for (let i = 0; i < all.length; i += step) got.push(...reader.feed(all.subarray(i, i + step)));
    reader.close();
    assert.strictEqual(got.length, VECTORS.valid.filter((v) => v.direction === 'to_agent').length);
  }
});

test('encode writes the length big-endian and compact UTF-8 JSON', () => {
  const f = framing.encode({ a: 'é' });
  assert.strictEqual(f.readUInt32BE(0), f.length - 4);
  assert.strictEqual(f.subarray(4).toString('utf8'), '{"a":"é"}');
});

test('encodeMany gives the same bytes as encode frame by frame', () => {
  const { encode, encodeMany } = require('../lib/framing');
  const msgs = [
    { message_type: 2, pid: 7, runtime: 'nodejs', data: { hook: 'fs.open', kind: 'file', args: ['/tmp/café ☃ 😀'] } },
    { message_type: 1, pid: 7, runtime: 'nodejs', data: { sent: 1 } },
  ];
  assert.deepStrictEqual(encodeMany(msgs), Buffer.concat(msgs.map(encode)));
  assert.strictEqual(encodeMany([]).length, 0);
});

test('messageText puts trace events together as JSON.stringify would', () => {
  const { messageText } = require('../lib/framing');
  const { holdStack } = require('../lib/stack');
  const request = { method: 'GET', url: 'http://h/x?a="1"', remote_addr: '', params: { a: ['"1"'] }, headers: {} };
  const env = { message_type: 2, pid: 7, runtime: 'nodejs', runtime_version: '20.0.0', probe_version: '0.1.0' };
  function site() { return holdStack(site, 8); }
  const msgs = [
    { ...env, time: 1, data: { hook: 'fs.open', kind: 'file', args: ['/tmp/café ☃ 😀\n"'], stack: [], request } },
    { ...env, time: 2, data: { hook: 'fs.open', kind: 'file', args: [], stack: site(), blocked: true, policy_id: 'p' } },
    { ...env, time: 3, data: { hook: 'x', kind: 'file', args: [], stack: [], request: undefined, bypass: true } },
    { ...env, time: 4, data: { hook: 'x', kind: 'file', args: [], stack: site(), request } }, // request text cached
    { ...env, message_type: 1, time: 5, data: { sent: 1 } },
    { ...env, time: 6, extra: 1, data: { hook: 'x', kind: 'file' } }, // not client.js's envelope
  ];
  for (const m of msgs) {
    const fast = messageText(m);
    assert.deepStrictEqual(JSON.parse(fast), JSON.parse(JSON.stringify(m)), fast);
  }
  assert.match(JSON.parse(messageText(msgs[1])).data.stack[0], /framing\.test\.js:/);
});
