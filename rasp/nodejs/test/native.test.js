'use strict';
// The native layer's matcher (lib/native.js), pure logic: which JS hook calls take a note,
// which native records consume one, and what becomes a bypass event.
const test = require('node:test');
const assert = require('node:assert');
const { Native, keyOf, recordKey, decodeRecord, sockaddr, WINDOW_MS } = require('../lib/native');

const hook = (name, kind) => ({ name, kind });

function matcher() {
  const reported = [];
  const probe = { reportBypass: (ev) => reported.push(ev), drop: () => {}, guard: (fn) => fn() };
  const n = new Native(probe);
  n.since = 0;
  return { n, reported };
}

const rec = (h, k, a, t = Date.now()) => ({ h, k, a, t });

test('JS calls note the argument the native hook also sees', () => {
  assert.strictEqual(keyOf(hook('fs.readFileSync', 'file'), ['/etc/passwd']), 'file:/etc/passwd');
  assert.strictEqual(keyOf(hook('fs.open', 'file'), [Buffer.from('/tmp/x')]), 'file:/tmp/x');
  assert.strictEqual(keyOf(hook('fs.readFile', 'file'), [new URL('file:///tmp/a%20b')]), 'file:/tmp/a b');
  assert.strictEqual(keyOf(hook('fs.readFile', 'file'), [3]), null); // an fd: no open
  assert.strictEqual(keyOf(hook('child_process.spawn', 'process'), [{ file: '/bin/sh' }]), 'process:/bin/sh');
  assert.strictEqual(keyOf(hook('net.Socket.connect', 'network'), [[{ host: 'a', port: 80 }]]), 'network:80');
  assert.strictEqual(keyOf(hook('net.Socket.connect', 'network'), [8080, 'localhost']), 'network:8080');
  assert.strictEqual(keyOf(hook('net.Socket.connect', 'network'), [{ path: '/run/x.sock' }]), null);
  // http.request ends in net.Socket.connect (or in no connect at all, keep-alive): no note
  assert.strictEqual(keyOf(hook('http.request', 'network'), [{ port: 80 }]), null);
  assert.strictEqual(keyOf(hook('dns.lookup', 'dns'), ['example.test']), 'dns:example.test');
  assert.strictEqual(keyOf(hook('dns.resolve4', 'dns'), ['example.test']), null); // c-ares
});

test('native records map to the same keys; module resolution reads are not the app', () => {
  assert.strictEqual(recordKey(rec('uv_fs_open', 'file', ['/etc/passwd', '0'])), 'file:/etc/passwd');
  assert.strictEqual(recordKey(rec('uv_fs_open', 'file', ['/app/node_modules/x/package.json', '0'])), null);
  assert.strictEqual(recordKey(rec('uv_spawn', 'process', ['/bin/sh', '-c', 'id'])), 'process:/bin/sh');
  assert.strictEqual(recordKey(rec('uv_tcp_connect', 'network', ['127.0.0.1', '80'])), 'network:80');
  assert.strictEqual(recordKey(rec('uv_getaddrinfo', 'dns', ['example.test'])), 'dns:example.test');
});

test('a native call the JS layer noted is matched once; the next one is a bypass', () => {
  const { n, reported } = matcher();
  n.saw(hook('fs.readFileSync', 'file'), ['/etc/passwd']);
  n.onRecord(rec('uv_fs_open', 'file', ['/etc/passwd', '0']));
  assert.deepStrictEqual(reported, []);
  n.onRecord(rec('uv_fs_open', 'file', ['/etc/passwd', '0']));
  assert.strictEqual(reported.length, 1);
  assert.deepStrictEqual(reported[0], {
    hook: 'uv_fs_open', kind: 'file', args: ['/etc/passwd', '0'], stack: [], bypass: true,
  });
  assert.strictEqual(n.matched, 1);
  assert.strictEqual(n.bypassed, 1);
});

test('a burst of JS calls is matched call for call, however many wait', () => {
  const { n, reported } = matcher();
  for (let i = 0; i < 5000; i++) n.saw(hook('fs.readFileSync', 'file'), ['/etc/hostname']);
  for (let i = 0; i < 5000; i++) n.onRecord(rec('uv_fs_open', 'file', ['/etc/hostname', '0']));
  assert.deepStrictEqual(reported, []);
  n.onRecord(rec('uv_fs_open', 'file', ['/etc/hostname', '0']));
  assert.strictEqual(reported.length, 1);
});

test('a note older than the window does not hide a bypass', () => {
  const { n, reported } = matcher();
  n.saw(hook('child_process.spawn', 'process'), [{ file: '/bin/sh' }]);
  n.onRecord(rec('uv_spawn', 'process', ['/bin/sh', '-c', 'id'], Date.now() + WINDOW_MS + 1000));
  assert.strictEqual(reported.length, 1);
});

test('records from before the JS layer started are its own loading, not events', () => {
  const { n, reported } = matcher();
  n.since = Date.now();
  n.onRecord(rec('uv_fs_open', 'file', ['/app/probe.js', '0'], n.since - 5));
  assert.deepStrictEqual(reported, []);
});

/** A record as native_agent.js's C hooks write it (the layout in lib/native.js). */
function binRecord(id, args, num = 0, t = Date.now()) {
  const parts = args.map((a) => {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(a);
    const len = Buffer.alloc(2);
    len.writeUInt16LE(b.length);
    return Buffer.concat([len, b]);
  });
  const head = Buffer.alloc(20);
  const body = Buffer.concat(parts);
  head.writeUInt32LE(20 + body.length, 0);
  head[4] = id;
  head[5] = args.length;
  head.writeInt32LE(num, 8);
  head.writeBigUInt64LE(BigInt(t), 12);
  return Buffer.concat([head, body]);
}

test('binary records decode to what the matcher reads', () => {
  const t = Date.now();
  const spawn = binRecord(0, ['/bin/sh', '-c', 'id'], 0, t);
  assert.deepStrictEqual(decodeRecord(spawn, 0, spawn.length),
    { h: 'uv_spawn', k: 'process', a: ['/bin/sh', '-c', 'id'], t });
  const open = binRecord(1, ['/etc/passwd'], 0o102, t);
  assert.deepStrictEqual(decodeRecord(open, 0, open.length),
    { h: 'uv_fs_open', k: 'file', a: ['/etc/passwd', '66'], t });
  const sin = Buffer.from([2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
  const conn = binRecord(2, [sin], 0, t);
  assert.deepStrictEqual(decodeRecord(conn, 0, conn.length).a, ['127.0.0.1', '8080']);
  const sin6 = Buffer.alloc(28);
  sin6.writeUInt16LE(10, 0);
  sin6.writeUInt16BE(443, 2);
  sin6[23] = 1; // ::1
  assert.deepStrictEqual(sockaddr(sin6), ['0:0:0:0:0:0:0:1', '443']);
  const dns = binRecord(3, ['example.test'], 0, t);
  assert.deepStrictEqual(decodeRecord(dns, 0, dns.length).a, ['example.test']);
  // an argument running past its record: malformed, not read beyond
  const bad = binRecord(3, ['example.test']);
  bad.writeUInt16LE(500, 20);
  assert.strictEqual(decodeRecord(bad, 0, bad.length), null);
});

test('records arrive in batches, split anywhere', () => {
  const { n, reported } = matcher();
  const one = binRecord(0, ['/bin/sh', '-c', 'x']);
  n.feed(one.subarray(0, 3));
  n.feed(one.subarray(3, 10));
  assert.strictEqual(reported.length, 0);
  n.feed(Buffer.concat([one.subarray(10), one, one.subarray(0, 25)]));
  assert.strictEqual(reported.length, 2);
  assert.deepStrictEqual(reported[0].args, ['/bin/sh', '-c', 'x']);
  n.feed(one.subarray(25));
  assert.strictEqual(reported.length, 3);
});

test('a stream that is not records is dropped and counted, never thrown into the app', () => {
  const drops = [];
  const probe = { reportBypass: () => assert.fail('no event'), drop: (r) => drops.push(r), guard: (fn) => fn() };
  const n = new Native(probe);
  n.since = 0;
  n.feed(Buffer.from('{"h":"uv_spawn"}\n'));
  assert.deepStrictEqual(drops, ['error']);
  assert.strictEqual(n.buf, null);
});

test('adopt refuses an fd that is not the channel it was told about', () => {
  const { n } = matcher();
  assert.match(n.adopt({ fd: 0, ino: 1, hooks: [] }), /not the native layer's channel|fd 0/);
  assert.strictEqual(n.active, false);
  assert.strictEqual(n.adopt({}), 'no native layer');
});
