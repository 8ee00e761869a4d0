'use strict';
// The probe inside a real node process, without an agent (the socket path does not exist):
// blocking on each API's natural error path, self-disabling hooks, idempotent start.
// What reaches the agent is tested by the Python integration tests.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const os = require('os');
const childProcess = require('child_process');
const probeModule = require('../probe');

const KEY = Symbol.for('rampart.nodejs.probe');
const summary = probeModule.start({ socket: path.join(os.tmpdir(), 'rampart-no-agent.sock') });
const probe = globalThis[KEY];

test('start installs the hook families and says which hooks', () => {
  assert.strictEqual(summary.already_running, false);
  for (const h of ['child_process.spawn', 'child_process.spawnSync', 'fs.readFile',
    'fs.promises.readFile', 'net.Socket.connect', 'http.request', 'dns.lookup',
    'vm.runInNewContext', 'vm.Script', 'process.dlopen', 'http.Server.request']) {
    assert.ok(summary.hooks.includes(h), h);
  }
  assert.deepStrictEqual(summary.missing, []);
});

test('a second start is a no-op that says so', () => {
  const again = probeModule.start({});
  assert.strictEqual(again.already_running, true);
  assert.strictEqual(globalThis[KEY], probe);
});

test('without an agent, events are dropped and counted, calls work', async () => {
  while (probe.client.state !== 'away') await new Promise((r) => setTimeout(r, 5));
  const before = probe.counters.dropped;
  assert.ok(fs.readFileSync(__filename, 'utf8').includes('natural error path'));
  assert.ok(probe.counters.dropped > before);
  assert.ok(probe.counters.dropped_by.agent_away > 0);
});

test('block rules: each API family fails on its natural error path', async () => {
  probe.onMessage({ message_type: 7, data: { uuid: 'b1', blocks: [
    { policy_id: 'no-marker', match: { args: 'blocked-marker' } }] } });
  try {
    const sync = /Rampart blocked child_process.spawnSync by policy no-marker/;
    assert.throws(() => childProcess.execSync('echo blocked-marker'), sync);
    assert.throws(() => childProcess.exec('echo blocked-marker'),
      /Rampart blocked child_process.spawn by policy no-marker/);
    assert.throws(() => fs.readFileSync('/tmp/blocked-marker'), /fs.readFileSync/);
    await new Promise((resolve) => {
      let sameTick = true;
      fs.readFile('/tmp/blocked-marker', (err) => {
        assert.ok(!sameTick, 'callback errors arrive on a later tick');
        assert.strictEqual(err.code, 'ERR_RAMPART_BLOCKED');
        assert.strictEqual(err.policy_id, 'no-marker');
        resolve();
      });
      sameTick = false;
    });
    await assert.rejects(fs.promises.readFile('/tmp/blocked-marker'), /fs.promises.readFile/);
    await assert.rejects(fetch('http://127.0.0.1:1/blocked-marker'), /by policy no-marker/);
    const reqErr = await new Promise((resolve) => {
      require('http').get('http://127.0.0.1:1/blocked-marker').on('error', resolve);
    });
    assert.match(reqErr.message, /Rampart blocked http.get by policy no-marker/);
    const sockErr = await new Promise((resolve) => {
      require('net').connect({ host: 'blocked-marker.invalid', port: 1 }).on('error', resolve);
    });
    assert.match(sockErr.message, /Rampart blocked net.Socket.connect by policy no-marker/);
    const dnsErr = await new Promise((resolve) => {
      require('dns').lookup('blocked-marker.invalid', (err) => resolve(err));
    });
    assert.match(dnsErr.message, /Rampart blocked dns.lookup/);
    assert.throws(() => require('vm').runInNewContext('"blocked-marker"'), /vm.runInNewContext/);
    const vm = require('vm');
    assert.throws(() => new vm.Script('"blocked-marker"'), /vm.Script/);
    assert.ok(new vm.Script('1') instanceof Object.getPrototypeOf(vm.Script));
    // calls that match no rule go on
    assert.strictEqual(childProcess.execSync('echo fine').toString().trim(), 'fine');
    assert.ok(probe.counters.blocked >= 8);
    assert.deepStrictEqual(probe.uuids.block, 'b1');
  } finally {
    probe.onMessage({ message_type: 7, data: { uuid: '', blocks: [] } });
  }
});

test('filter rules drop and count; quota cuts reporting but never blocking', () => {
  const dropped = () => ({ ...probe.counters.dropped_by });
  probe.onMessage({ message_type: 6, data: { uuid: 'f1', filters: [
    { policy_id: 'quiet', hook: 'fs.readFileSync', match: { args: 'probe\\.test' } }] } });
  const before = dropped();
  fs.readFileSync(__filename);
  assert.strictEqual(probe.counters.dropped_by.filter, (before.filter || 0) + 1);
  probe.onMessage({ message_type: 6, data: { uuid: '', filters: [] } });

  probe.onMessage({ message_type: 8, data: { uuid: 'q1', quotas: [
    { hook: '*', per_minute: 12000 }, { hook: 'vm.runInNewContext', per_minute: 0 }] } });
  probe.onMessage({ message_type: 7, data: { uuid: 'b2', blocks: [
    { policy_id: 'no-vm-marker', hook: 'vm.runInNewContext', match: { args: 'marker' } }] } });
  try {
    const q = probe.counters.dropped_by.quota || 0;
    assert.strictEqual(require('vm').runInNewContext('1 + 1'), 2);
    assert.strictEqual(probe.counters.dropped_by.quota, q + 1);
    assert.throws(() => require('vm').runInNewContext('"marker"'), /no-vm-marker/);
    assert.deepStrictEqual(probe.uuids, { ...probe.uuids, filter: '', quota: 'q1', block: 'b2' });
  } finally {
    probe.onMessage({ message_type: 7, data: { uuid: '', blocks: [] } });
    probe.onMessage({ message_type: 8, data: { uuid: '', quotas: [] } });
  }
});

test('a hook that throws internally disables itself and the call proceeds', () => {
  const target = { f: (x) => x * 2 };
  probe.kit.wrap(target, 'f', 'test.f', 'code', () => { throw new Error('boom'); }, 'sync');
  const errors = probe.counters.dropped_by.error || 0;
  const write = fs.writeSync;
  assert.strictEqual(target.f(21), 42);
  assert.strictEqual(target.f(1), 2);
  assert.strictEqual(probe.counters.dropped_by.error, errors + 1, 'reported once');
  assert.ok(!probe.hookNames().includes('test.f'));
  assert.strictEqual(fs.writeSync, write);
});

test('stack frames are the app\'s, innermost first, capped', () => {
  function inner() { return probeModule.captureStack(inner, 3); }
  function outer() { return inner(); }
  const s = outer();
  assert.ok(s[0].startsWith('outer ('), s[0]);
  assert.strictEqual(s.length, 3);
  assert.strictEqual(Error.stackTraceLimit, 10);
});

test('stop uninstalls every hook', () => {
  const wrapped = fs.readFileSync;
  probeModule.stop();
  assert.notStrictEqual(fs.readFileSync, wrapped);
  assert.ok(!(Symbol.for('rampart.nodejs.original') in fs.readFileSync));
  assert.strictEqual(globalThis[KEY], undefined);
});

test('a held stack is formatted when encoded, as captureStack would, app settings untouched', () => {
  const { holdStack, captureStack } = require('../lib/stack');
  const mine = () => 'app';
  function inner(hold) { return hold ? holdStack(inner, 4) : captureStack(inner, 4); }
  function outer(hold) { return inner(hold); }
  const held = [outer(true), outer(true)];
  const now = outer(false);
  Error.prepareStackTrace = mine;
  try {
    // the same call site twice: the second one's frames come from the cache
    for (const h of held) {
      const frames = JSON.parse(JSON.stringify({ s: h })).s;
      assert.ok(frames[0].startsWith('outer ('), frames[0]);
      assert.strictEqual(frames.length, 4);
      assert.strictEqual(frames[0], now[0]);
      assert.deepStrictEqual(frames.slice(2), now.slice(2));
      assert.strictEqual(h.jsonText(), JSON.stringify(frames));
    }
    assert.strictEqual(Error.prepareStackTrace, mine);
  } finally {
    delete Error.prepareStackTrace;
  }
  assert.strictEqual(Error.stackTraceLimit, 10);
});
