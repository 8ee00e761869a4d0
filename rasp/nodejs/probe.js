'use strict';
// Rampart's Node.js probe. Started live by `rasp-attach` (through the inspector, mode
// "attached") or by the app itself (`node -r rasp/nodejs/register.js`, mode "sdk").
// No dependencies: node's own modules only. See docs/nodejs-probe.md.
//
//   require('/path/rasp/nodejs/probe.js').start({socket: '/run/rampart/probe.sock',
//                                                mode: 'attached'})

const fs = require('fs');
const Module = require('module');
const { Kit, capArgs, blockedError } = require('./lib/kit');
const { Client } = require('./lib/client');
const { compileTable, firstMatch, Quota } = require('./lib/policy');
const { DetectTable } = require('./lib/detect');
const context = require('./lib/context');
const loader = require('./lib/loader');
const { Native } = require('./lib/native');
const { holdStack, captureStack } = require('./lib/stack');

const PROBE_VERSION = '0.1.0';
const KEY = Symbol.for('rampart.nodejs.probe');
const DEFAULT_SOCKET = '/run/rampart/probe.sock';
const DEFAULT_STACK_DEPTH = 32;

// One module per API family (docs/nodejs-probe.md has the table).
const FAMILIES = [
  require('./lib/hooks/child_process'),
  require('./lib/hooks/fs'),
  require('./lib/hooks/net'),
  require('./lib/hooks/http'),
  require('./lib/hooks/dns'),
  require('./lib/hooks/vm'),
  require('./lib/hooks/native_addon'),
  context,
];

/**
 * ES modules see node's builtins through live bindings that only follow the CommonJS
 * exports object when asked: after this, `import {readFile} from 'fs/promises'` (even one
 * done before the attach) calls our wrapper; after stop(), the original again.
 */
function syncESM() {
  try {
    if (typeof Module.syncBuiltinESMExports === 'function') Module.syncBuiltinESMExports();
  } catch (e) { /* never fatal */ }
}

class Probe {
  constructor(opts) {
    this.socket = opts.socket || process.env.RAMPART_SOCKET || DEFAULT_SOCKET;
    this.mode = opts.mode === 'sdk' ? 'sdk' : 'attached';
    this.depth = 0; // > 0 while the probe itself runs: its own calls are not events
    this.stopped = false;
    this.stackDepth = DEFAULT_STACK_DEPTH;
    this.blockRules = [];
    this.detect = new DetectTable(); // detection rules in block mode (the block frame's detect)
    this.filterRules = [];
    this.quota = new Quota();
    this.disabled = new Set();
    this.uuids = {};
    this.counters = { sent: 0, dropped: 0, blocked: 0, dropped_by: {} };
    this.kit = new Kit(this);
    this.missing = [];
    this.client = null;
    // the native layer's records, when rasp-attach injected it (opts.native: its channel)
    this.native = null;
    this.nativeStatus = 'not attached';
    this.nativeOpts = opts.native;
    this.onExit = () => {
      if (this.client) this.client.sendExit('process exit');
    };
  }

  start() {
    loader.install(this.kit);
    for (const family of FAMILIES) {
      try {
        family.install(this.kit, this);
      } catch (e) {
        this.missing.push(family.family); // left out, never fatal (docs/probe-contract.md)
      }
    }
    syncESM();
    if (this.nativeOpts) this.adoptNative(this.nativeOpts);
    this.client = new Client({
      socket: this.socket,
      envelope: { runtime_version: process.versions.node, probe_version: PROBE_VERSION },
      counters: this.counters,
      hello: () => ({ mode: this.mode, hooks: this.hookNames(), protocol_version: 1 }),
      heartbeat: (queue) => ({
        sent: this.counters.sent, dropped: this.counters.dropped,
        blocked: this.counters.blocked, dropped_by: { ...this.counters.dropped_by },
        policies: { ...this.uuids }, queue,
      }),
      onMessage: (msg) => this.onMessage(msg),
      guard: (fn) => this.guard(fn),
    });
    this.client.start();
    process.on('exit', this.onExit);
  }

  hookNames() {
    const js = this.kit.hooks.filter((h) => h.active).map((h) => h.name);
    return this.native !== null && this.native.active ? js.concat(this.native.hooks) : js;
  }

  /** Take the native layer's channel; never fatal (the JS layer works alone). */
  adoptNative(opts) {
    try {
      if (this.native === null) this.native = new Native(this);
      this.nativeStatus = this.native.adopt(opts);
    } catch (e) {
      this.nativeStatus = `failed: ${e && e.message}`;
    }
    if (this.native !== null && !this.native.active) this.native = null;
  }

  /** A native call no JS hook saw: reported (quota and filter rules apply; not blockable,
   * the call has already happened). */
  reportBypass(ev) {
    if (this.stopped || this.disabled.has(ev.hook)) return;
    if (!this.quota.take(ev.hook)) {
      this.drop('quota');
      return;
    }
    if (this.filterRules.length && firstMatch(this.filterRules, ev)) {
      this.drop('filter');
      return;
    }
    this.client.enqueue(ev);
  }

  summary(already) {
    return { already_running: already, mode: this.mode, socket: this.socket,
      hooks: this.hookNames(), missing: this.missing, probe_version: PROBE_VERSION,
      native: this.nativeStatus };
  }

  guard(fn) {
    this.depth++;
    try {
      return fn();
    } finally {
      this.depth--;
    }
  }

  /**
   * On the app's thread, before the hooked call runs: build the event, apply block and
   * filter rules and quota, enqueue. Returns the Error to refuse the call with, or null.
   */
  check(hook, argsOf, self, args, skip) {
    if (!hook.active || this.depth > 0 || this.stopped || this.disabled.has(hook.name)) return null;
    this.depth++;
    try {
      const raw = Reflect.apply(argsOf, self, args);
      if (raw === null) return null;
      const withinQuota = this.quota.take(hook.name);
      // detection checks run only for a kind a block-mode rule looks at (inside a request)
      const detecting = this.detect.covers(hook.kind);
      if (!withinQuota && !this.blockRules.length && !detecting) {
        this.drop('quota');
        return null;
      }
      // the stack is captured now and formatted when the event is encoded (lib/stack.js)
      const ev = { hook: hook.name, kind: hook.kind, args: capArgs(raw),
        stack: holdStack(skip, this.stackDepth) };
      const rule = this.blockRules.length ? firstMatch(this.blockRules, ev) : null;
      let policyId = rule ? rule.policyId : null;
      let request;
      if (!policyId && detecting) {
        request = context.current();
        if (request) policyId = this.detectCheck(ev, request);
      }
      if (policyId) {
        ev.blocked = true;
        ev.policy_id = policyId;
        this.counters.blocked++;
      }
      // quota cuts reporting, never blocking; a blocked call is always reported if it fits
      if (!withinQuota) this.drop('quota');
      else if (!policyId && this.filterRules.length && firstMatch(this.filterRules, ev)) this.drop('filter');
      else {
        if (request === undefined) request = context.current();
        if (request) ev.request = request;
        this.client.enqueue(ev);
      }
      return policyId ? blockedError(hook.name, policyId) : null;
    } catch (e) {
      hook.fail(e);
      return null;
    } finally {
      this.depth--;
    }
  }

  /** The detection rule that blocks the event, or null; a check that throws lets it through. */
  detectCheck(ev, request) {
    try {
      return this.detect.check(ev.kind, ev.hook, ev.args, request);
    } catch (e) {
      if (!this.detectFailed) {
        this.detectFailed = true;
        this.guard(() => {
          try {
            fs.writeSync(2, `rampart: detection check failed: ${e && e.message}\n`);
          } catch (e2) { /* stderr closed */ }
        });
      }
      return null;
    }
  }

  drop(reason) {
    this.counters.dropped++;
    this.counters.dropped_by[reason] = (this.counters.dropped_by[reason] || 0) + 1;
  }

  hookFailed(hook, err) {
    this.drop('error');
    // one line per failing hook, on stderr: node has no logger of its own
    this.guard(() => {
      try {
        fs.writeSync(2, `rampart: hook ${hook.name} disabled after an internal error: ${
          err && err.message}\n`);
      } catch (e) { /* stderr closed */ }
    });
  }

  onMessage(msg) {
    const d = msg.data;
    switch (msg.message_type) {
      case 6: {
        this.filterRules = compileTable(d.filters).rules;
        this.uuids.filter = d.uuid;
        break;
      }
      case 7: {
        this.blockRules = compileTable(d.blocks).rules;
        try {
          this.detect = new DetectTable(d.detect);
        } catch (e) {
          this.detect = new DetectTable(); // an exemption JS cannot compile: no block mode
        }
        this.uuids.block = d.uuid;
        break;
      }
      case 8:
        this.quota.setTable(d.quotas);
        this.uuids.quota = d.uuid;
        break;
      case 3:
        this.disabled = new Set(d.hooks_disabled);
        if (d.stack_depth !== null) this.stackDepth = d.stack_depth;
        this.uuids.config = d.uuid;
        break;
      case 0:
        this.stop(d.reason || 'agent asked the probe to stop');
        break;
      default: // 99 error: the agent closes the connection; we reconnect with backoff
    }
  }

  /** A second start: say hello again (already_running: true). */
  again(opts) {
    if (opts && opts.socket && opts.socket !== this.socket) {
      this.socket = opts.socket;
      this.client.socket = opts.socket;
    }
    if (opts && opts.native) this.adoptNative(opts.native);
    this.client.rehello();
  }

  stop(reason = 'detached') {
    if (this.stopped) return;
    this.stopped = true;
    this.kit.uninstall();
    syncESM();
    if (this.native !== null) this.native.close(); // the native layer then unhooks itself
    this.client.sendExit(reason);
    this.client.close();
    process.removeListener('exit', this.onExit);
    if (globalThis[KEY] === this) delete globalThis[KEY];
  }
}

/** Start the probe once per process; a second start makes it say hello again. */
function start(opts = {}) {
  const existing = globalThis[KEY];
  if (existing && !existing.stopped) {
    existing.again(opts);
    return existing.summary(true);
  }
  const probe = new Probe(opts);
  Object.defineProperty(globalThis, KEY, { value: probe, configurable: true, writable: true });
  probe.start();
  return probe.summary(false);
}

function stop() {
  const p = globalThis[KEY];
  if (p) p.stop();
}

module.exports = { start, stop, PROBE_VERSION, captureStack };
