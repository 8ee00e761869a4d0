'use strict';
// Filter, block and quota tables pushed by the agent (docs/protocol.md), evaluated in the probe
// on the app's thread. Pure logic, unit-tested in test/policy.test.js.

const DEFAULT_QUOTA = 12000; // per hook and minute, Elkeid's default (design §4)

function compileRule(rule) {
  const m = rule.match || {};
  return {
    policyId: rule.policy_id,
    runtimes: rule.runtime || null,
    kind: rule.kind || null,
    hook: rule.hook || null,
    // rules use the regex subset common to Python, JS, Java and RE2 (docs/policy.md)
    args: m.args ? new RegExp(m.args) : null,
    stack: m.stack ? new RegExp(m.stack) : null,
  };
}

/** Compile a table; a rule whose regex JS cannot compile is left out and counted. */
function compileTable(rules) {
  const out = [];
  let bad = 0;
  for (const r of rules || []) {
    try {
      out.push(compileRule(r));
    } catch (e) {
      bad++;
    }
  }
  return { rules: out, bad };
}

/** The first rule matching the event ({hook, kind, args, stack}), or null. */
function firstMatch(rules, ev, runtime = 'nodejs') {
  let joined = null;
  for (const r of rules) {
    if (r.runtimes && !r.runtimes.includes(runtime)) continue;
    if (r.kind && r.kind !== ev.kind) continue;
    if (r.hook && r.hook !== ev.hook) continue;
    if (r.args) {
      if (joined === null) joined = ev.args.join(' ');
      if (!r.args.test(joined)) continue;
    }
    // ev.stack: frame texts, or a held stack (lib/stack.js) formatted only when a rule needs it
    if (r.stack && !(Array.isArray(ev.stack) ? ev.stack : ev.stack.get()).some((f) => r.stack.test(f))) continue;
    return r;
  }
  return null;
}

/** Events per hook per minute (fixed one-minute windows); "*" is the default line. */
class Quota {
  constructor() {
    this.limits = new Map();
    this.fallback = DEFAULT_QUOTA;
    this.window = 0;
    this.used = new Map();
  }

  setTable(quotas) {
    this.limits = new Map();
    this.fallback = DEFAULT_QUOTA;
    for (const q of quotas || []) {
      if (q.hook === '*') this.fallback = q.per_minute;
      else this.limits.set(q.hook, q.per_minute);
    }
  }

  /** true if one more event of `hook` fits in this minute (and counts it). */
  take(hook, nowMs = Date.now()) {
    const w = Math.floor(nowMs / 60000);
    if (w !== this.window) {
      this.window = w;
      this.used.clear();
    }
    const limit = this.limits.has(hook) ? this.limits.get(hook) : this.fallback;
    const n = this.used.get(hook) || 0;
    if (n >= limit) return false;
    this.used.set(hook, n + 1);
    return true;
  }
}

module.exports = { DEFAULT_QUOTA, compileTable, firstMatch, Quota };
