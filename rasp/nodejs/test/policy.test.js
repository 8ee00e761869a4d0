'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { compileTable, firstMatch, Quota, DEFAULT_QUOTA } = require('../lib/policy');

const ev = (over = {}) => ({
  hook: 'child_process.spawn', kind: 'process', args: ['/bin/sh', '-c', 'id'],
  stack: ['handler (/app/server.js:10:3)'], ...over,
});

test('a rule matches when every field it gives matches', () => {
  const { rules } = compileTable([
    { policy_id: 'py-only', runtime: ['python'] },
    { policy_id: 'files', kind: 'file' },
    { policy_id: 'other-hook', hook: 'child_process.spawnSync' },
    { policy_id: 'shell', kind: 'process', match: { args: '(^|/)(sh|bash)\\b' } },
  ]);
  assert.strictEqual(firstMatch(rules, ev()).policyId, 'shell');
  assert.strictEqual(firstMatch(rules, ev({ args: ['/usr/bin/ls'] })), null);
  assert.strictEqual(firstMatch(rules, ev({ kind: 'file', hook: 'fs.open' })).policyId, 'files');
});

test('args are joined by one space and searched, not anchored', () => {
  const { rules } = compileTable([{ policy_id: 'p', match: { args: 'sh -c id$' } }]);
  assert.ok(firstMatch(rules, ev()));
});

test('stack regexes are searched in each frame', () => {
  const { rules } = compileTable([{ policy_id: 'p', match: { stack: 'server\\.js' } }]);
  assert.ok(firstMatch(rules, ev()));
  assert.strictEqual(firstMatch(rules, ev({ stack: ['x (/lib/y.js:1:1)'] })), null);
});

test('a rule whose regex does not compile is left out and counted', () => {
  const t = compileTable([{ policy_id: 'bad', match: { args: '(' } }, { policy_id: 'ok' }]);
  assert.strictEqual(t.bad, 1);
  assert.strictEqual(t.rules.length, 1);
});

test('quota: per hook, "*" default, new window resets', () => {
  const q = new Quota();
  q.setTable([{ hook: '*', per_minute: 2 }, { hook: 'fs.open', per_minute: 1 }]);
  const t = 60000 * 100;
  assert.ok(q.take('dns.lookup', t) && q.take('dns.lookup', t));
  assert.ok(!q.take('dns.lookup', t));
  assert.ok(q.take('fs.open', t) && !q.take('fs.open', t));
  assert.ok(q.take('dns.lookup', t + 60000));
  q.setTable([]);
  assert.strictEqual(q.fallback, DEFAULT_QUOTA);
});

test('a held stack (lib/stack.js) is formatted for a stack rule, and only then', () => {
  const { holdStack } = require('../lib/stack');
  function handler() { return holdStack(handler, 8); }
  const { rules } = compileTable([{ policy_id: 'p', match: { stack: 'policy\\.test\\.js' } }]);
  const held = handler();
  assert.strictEqual(firstMatch(compileTable([{ policy_id: 'q', kind: 'process' }]).rules, ev({ stack: held })).policyId, 'q');
  assert.strictEqual(held.frames, null); // no stack rule: never formatted
  assert.ok(firstMatch(rules, ev({ stack: held })));
  assert.ok(Array.isArray(held.frames));
  assert.strictEqual(firstMatch(compileTable([{ policy_id: 'p', match: { stack: 'nowhere' } }]).rules, ev({ stack: held })), null);
});
