'use strict';
// The shared in-probe detection corpus (rasp/protocol/vectors/detect.json): this probe's
// block-mode checks (lib/detect.js) must give every case's verdict.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const { DetectTable, internal } = require('../lib/detect');

const CORPUS = JSON.parse(fs.readFileSync(
  path.join(__dirname, '..', '..', 'protocol', 'vectors', 'detect.json'), 'utf8'));

for (const c of CORPUS.cases) {
  test(`corpus ${c.name} -> ${c.expect}`, () => {
    const table = new DetectTable(c.detect || CORPUS.default_detect);
    assert.strictEqual(table.check(c.kind, c.hook, c.args, c.request), c.expect);
  });
}

test('the corpus is not empty and covers every rule', () => {
  const rules = new Set(CORPUS.cases.map((c) => c.expect));
  for (const r of ['sqli.input', 'sqli.stacked', 'cmdi.input', 'path.traversal', 'ssrf.internal']) {
    assert.ok(rules.has(r), r);
  }
});

test('a table without rules for a kind does not cover it', () => {
  const t = new DetectTable([{ rule: 'cmdi.input' }, { rule: 'no.such-rule' }]);
  assert.ok(t.covers('process'));
  assert.ok(!t.covers('sql'));
});

test('internal hosts: disguises and public addresses', () => {
  for (const h of ['127.0.0.1', '0x7f000001', '2130706433', '0177.0.0.1', '10.1.2.3',
    '172.16.0.1', '192.168.1.1', '169.254.169.254', '::1', 'fe80::1', 'fd00::1', 'localhost',
    '::ffff:127.0.0.1', '[::1]', '::']) {
    assert.ok(internal(h), h);
  }
  for (const h of ['93.184.216.34', 'example.org', '8.8.8.8', '2606:4700::1111', '172.32.0.1']) {
    assert.ok(!internal(h), h);
  }
});
