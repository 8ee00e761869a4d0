'use strict';
// The JS stack of a hooked call, at a fraction of the cost of formatting it on the spot.
//
// Where an event's time went (bench/README.md, ~1 us per frame on our VM): V8's capture
// ~0.3 us, making the CallSite objects ~0.25 us, and ~0.15 us per CallSite getter, four or
// five of them per frame. So, on the app's turn, only the capture (Error.captureStackTrace
// with a limit of the configured depth); the CallSites are made and formatted when the
// event is encoded, on the flush path (`toJSON`), or earlier if a rule matches on the stack.
// Formatted frames are cached by (file, position): a call site seen before costs two getters
// (getFileName, getPosition) instead of five. A frame's position in a script fixes its
// function, line and column; the one thing that can differ between two calls from the same
// position is getMethodName of an anonymous function, which the first call's text keeps.

const PROBE_DIR = `${__dirname}/`;
const CACHE_MAX = 8192;

// V8 hands the CallSites to this instead of formatting them (set only around our reads)
const RAW_FRAMES = (_, frames) => frames;

let cache = new Map();

function format(f, file) {
  const fn = f.getFunctionName() || f.getMethodName() || '<anonymous>';
  return `${fn} (${file || f.getEvalOrigin() || '<unknown>'}:${f.getLineNumber()}:${f.getColumnNumber()})`;
}

/** CallSites -> `fn (file:line:col)` texts, innermost first, the probe's own frames left
 * out; `json` (when given) gets each text as JSON, cached with it. */
function formatFrames(frames, json = null) {
  const out = [];
  if (!Array.isArray(frames)) return out;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    const file = f.getFileName();
    if (file === undefined || file === null) {
      const text = format(f, file); // eval code: no stable key
      out.push(text);
      if (json !== null) json.push(JSON.stringify(text));
      continue;
    }
    if (file.startsWith(PROBE_DIR)) continue;
    const key = `${f.getPosition()}:${file}`;
    let c = cache.get(key);
    if (c === undefined) {
      const text = format(f, file);
      c = { text, json: JSON.stringify(text) };
      if (cache.size >= CACHE_MAX) cache = new Map(); // a crude bound: code size is finite
      cache.set(key, c);
    }
    out.push(c.text);
    if (json !== null) json.push(c.json);
  }
  return out;
}

/** A captured stack, formatted when first needed: get() or JSON.stringify (toJSON). */
class HeldStack {
  constructor(holder) {
    this.holder = holder;
    this.frames = null;
    this.json = null; // the frames as one JSON text (framing.js asks for it: jsonText)
  }

  get() {
    if (this.frames === null) {
      const holder = this.holder;
      this.holder = null;
      const prepare = Error.prepareStackTrace;
      Error.prepareStackTrace = RAW_FRAMES;
      let callSites;
      try {
        callSites = holder === null ? [] : holder.stack;
      } finally {
        Error.prepareStackTrace = prepare;
      }
      const json = [];
      this.frames = formatFrames(callSites, json);
      this.json = `[${json.join(',')}]`;
    }
    return this.frames;
  }

  toJSON() {
    return this.get();
  }

  jsonText() {
    this.get();
    return this.json;
  }
}

const EMPTY = { get: () => [], toJSON: () => [], jsonText: () => '[]' };

/** Capture the JS stack above `skip` (at most `depth` frames), without touching the app's
 * stack settings; formatted later (HeldStack). */
function holdStack(skip, depth) {
  if (depth <= 0) return EMPTY;
  const holder = {};
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = depth;
  try {
    Error.captureStackTrace(holder, skip);
  } finally {
    Error.stackTraceLimit = limit;
  }
  return new HeldStack(holder);
}

/** The stack's frames as texts, now. */
function captureStack(skip, depth) {
  return holdStack(skip, depth).get();
}

module.exports = { holdStack, captureStack, formatFrames, HeldStack };
