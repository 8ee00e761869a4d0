// Runs rasp/php/php_agent_core.js under node for tests/unit/test_php_core.py: reads a JSON
// list of cases on stdin, prints one JSON result per case.
'use strict';
const core = require(process.argv[2]);

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}
function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function decodeStream(hex, maxFrame) {
  // the whole frame as a stream, then end-of-stream
  const s = new core.FrameSplitter(maxFrame);
  try {
    const payloads = s.feed(hexToBytes(hex));
    s.close();
    return { messages: payloads.map((p) => core.decodeFromAgent(p)) };
  } catch (e) {
    return { error: e.code || String(e) };
  }
}

function run(c) {
  switch (c.op) {
    case 'decode': return decodeStream(c.hex, c.max_frame);
    case 'split': {
      const s = new core.FrameSplitter(c.max_frame);
      try {
        const payloads = s.feed(hexToBytes(c.hex));
        s.close();
        return { payloads: payloads.map((p) => core.utf8Decode(p, true)) };
      } catch (e) { return { error: e.code }; }
    }
    case 'reencode': {
      // decode a probe frame's JSON and encode it again with our encoder
      const payload = new core.FrameSplitter(c.max_frame).feed(hexToBytes(c.hex))[0];
      return { hex: bytesToHex(core.frameBytes(JSON.parse(core.utf8Decode(payload, true)))) };
    }
    case 'match': {
      const rules = core.compileRules(c.rules);
      const hit = rules.find((r) => core.ruleMatches(r, c.event));
      return { policy_id: hit ? hit.policy_id : null, compiled: rules.length };
    }
    case 'quota': {
      const q = new core.Quotas(c.default);
      q.set(c.quotas, c.default);
      const out = [];
      for (const [hook, now] of c.calls) out.push(q.allow(hook, now));
      return { allowed: out };
    }
    case 'query': return { params: core.parseQuery(c.qs, {}) };
    case 'lenient': return { text: core.utf8Decode(hexToBytes(c.hex), false) };
    default: return { error: 'unknown op' };
  }
}

let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  for (const c of JSON.parse(input)) process.stdout.write(JSON.stringify(run(c)) + '\n');
});
