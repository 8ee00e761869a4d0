'use strict';
// What hook modules use to patch an API: wrap a function so that each call is checked (and
// maybe refused) by the probe before the original runs; undo every patch on uninstall.

const ORIGINAL = Symbol.for('rampart.nodejs.original');

const ARG_CAP = 4096;
const ARGS_MAX = 64;

/** A readable string for one argument value (paths, URLs, Buffers, numbers). */
function argString(v) {
  if (typeof v === 'string') return v;
  if (v === undefined || v === null) return String(v);
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (typeof v === 'object' && typeof v.href === 'string') return v.href; // URL
  if (typeof v === 'function') return `function ${v.name || '<anonymous>'}`;
  if (typeof v === 'object') return `object ${(v.constructor && v.constructor.name) || 'Object'}`;
  return String(v);
}

function capArgs(list) {
  const out = [];
  for (let i = 0; i < list.length && i < ARGS_MAX; i++) {
    const s = argString(list[i]);
    out.push(s.length > ARG_CAP ? s.slice(0, ARG_CAP) : s);
  }
  return out;
}

/** The error a blocked call gets: names the hook and the policy. */
function blockedError(hook, policyId) {
  const e = new Error(`Rampart blocked ${hook} by policy ${policyId}`);
  e.code = 'ERR_RAMPART_BLOCKED';
  e.policy_id = policyId;
  return e;
}

/** Copy what callers may rely on (name, length, util.promisify.custom, .native, ...). */
function copyProps(from, to) {
  for (const key of Reflect.ownKeys(from)) {
    if (key === 'prototype' || key === 'arguments' || key === 'caller') continue;
    const d = Object.getOwnPropertyDescriptor(from, key);
    try {
      Object.defineProperty(to, key, d);
    } catch (e) { /* non-configurable on the wrapper: keep the wrapper's own */ }
  }
}

class Hook {
  constructor(probe, name, kind) {
    this.probe = probe;
    this.name = name;
    this.kind = kind;
    this.active = true;
  }

  /** A hook that throws internally switches itself off; the app's call goes on. */
  fail(err) {
    if (!this.active) return;
    this.active = false;
    this.probe.hookFailed(this, err);
  }
}

class Kit {
  constructor(probe) {
    this.probe = probe;
    this.patches = [];
    this.hooks = [];
  }

  hook(name, kind) {
    const h = new Hook(this.probe, name, kind);
    this.hooks.push(h);
    return h;
  }

  /** Replace obj[prop] by make(original); false when there is nothing (or nothing patchable). */
  replace(obj, prop, make) {
    if (!obj) return false;
    const desc = Object.getOwnPropertyDescriptor(obj, prop);
    const orig = obj[prop];
    if (typeof orig !== 'function' || orig[ORIGINAL]) return false;
    if (desc && !desc.configurable && !desc.writable) return false;
    const wrapper = make(orig);
    copyProps(orig, wrapper);
    Object.defineProperty(wrapper, ORIGINAL, { value: orig });
    Object.defineProperty(obj, prop, {
      value: wrapper, writable: true, configurable: true,
      enumerable: desc ? desc.enumerable : false,
    });
    this.patches.push({ obj, prop, desc });
    return true;
  }

  /**
   * Wrap a function: argsOf(args) gives the event's args (null: not an event). When a block
   * rule refuses the call, `mode` says how the app learns it, on its natural error path:
   * 'sync' throws; 'callback' calls the last function argument with the error on the next
   * tick (throws if there is none); 'promise' returns a rejected promise; a function
   * (err, self, args) decides. `quiet`: hooked calls made by the original itself are not
   * events (fs.readFileSync calls fs.openSync: one event, not two).
   */
  wrap(obj, prop, name, kind, argsOf, mode, quiet = false) {
    const probe = this.probe;
    const hook = this.hook(name, kind);
    const ok = this.replace(obj, prop, (orig) => {
      const wrapper = function (...args) {
        const err = probe.check(hook, argsOf, this, args, wrapper);
        if (err) return refuse(mode, err, this, args);
        // tell the native layer's matcher this call came through JS (before libuv sees it)
        if (probe.native !== null) probe.native.saw(hook, args);
        if (!quiet) return Reflect.apply(orig, this, args);
        probe.depth++;
        try {
          return Reflect.apply(orig, this, args);
        } finally {
          probe.depth--;
        }
      };
      return wrapper;
    });
    if (!ok) this.hooks.pop();
    return ok;
  }

  uninstall() {
    for (const { obj, prop, desc } of this.patches.reverse()) {
      if (desc) Object.defineProperty(obj, prop, desc);
      else delete obj[prop];
    }
    this.patches = [];
    for (const h of this.hooks) h.active = false;
  }
}

function refuse(mode, err, self, args) {
  if (typeof mode === 'function') return mode(err, self, args);
  if (mode === 'promise') return Promise.reject(err);
  if (mode === 'callback') {
    const cb = args[args.length - 1];
    if (typeof cb === 'function') {
      process.nextTick(cb, err);
      return undefined;
    }
  }
  throw err;
}

module.exports = { Kit, Hook, ORIGINAL, capArgs, argString, blockedError, refuse };
