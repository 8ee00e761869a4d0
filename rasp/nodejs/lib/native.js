'use strict';
// The JS layer's end of the native layer (../native_agent.js, injected with Frida): it reads
// the native hooks' binary records from a socketpair (the "channel") in this process, in
// batches (whatever one read returns), matches each against the calls the JS hooks saw, and
// reports the unmatched ones as `bypass` events (docs/nodejs-probe.md).
//
// Why matching here is sound: a JS-originated sink call passes through our JS wrapper
// *before* libuv is asked (the wrapper runs first, on the same thread), and the native
// record only reaches us afterwards through the channel. So when a record arrives, the JS
// layer has already noted that call if it saw it at all. The note is (sink kind, argument):
// the file path, the spawned file, the connect port, the looked-up host. Per key we keep a
// count of notes not yet consumed and the time of the last one; a record consumes one if
// the last note is at most WINDOW_MS older than the record; with none left, it is a bypass. Notes are one per libuv call: only the JS hooks that end in exactly one such call
// take notes (net.Socket.connect, not http.request; dns.lookup, not the c-ares resolvers),
// and a call our policy refused takes none; a note nothing consumed expires.

const net = require('net');
const fs = require('fs');

const WINDOW_MS = 10000;
const SEEN_MAX = 4096; // keys kept (oldest go first)
// the record layout native_agent.js writes: u32 length | u8 hook | u8 argc | u16 | i32 number
// | u64 ms | argc x (u16 length, bytes)
const REC_HEAD = 20;
const REC_MAX = 4096;
const HOOK_IDS = [['uv_spawn', 'process'], ['uv_fs_open', 'file'], ['uv_tcp_connect', 'network'],
  ['uv_getaddrinfo', 'dns']];
const PROBE_DIR = require('path').dirname(__dirname) + '/';
const LOOKUPS = new Set(['dns.lookup', 'dns.promises.lookup']);
// native_agent.js ARG_CAP: the native hooks copy at most this many bytes of an argument, so a
// longer path (PATH_MAX is 4096) must be noted by its first ARG_CAP bytes too, or its record
// would not match its note and would come back as a false bypass
const ARG_CAP = 1024;

/** s cut to its first ARG_CAP UTF-8 bytes, decoded as the native record's bytes are. */
function capped(s) {
  if (s.length * 3 <= ARG_CAP) return s; // cannot exceed the cap: the common case, no copy
  const b = Buffer.from(s, 'utf8');
  return b.length <= ARG_CAP ? s : b.subarray(0, ARG_CAP).toString('utf8');
}

function pathKey(v) {
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (v && typeof v === 'object' && v.protocol === 'file:' && typeof v.pathname === 'string') {
    try { return decodeURIComponent(v.pathname); } catch (e) { return v.pathname; }
  }
  return null;
}

/** The note key for one JS hook call: kind + the argument the native hook also sees;
 * null when the call is not one that ends in one libuv call of ours. */
function keyOf(hook, args) {
  const a0 = args[0];
  switch (hook.kind) {
    case 'file': {
      const p = pathKey(a0);
      return p === null ? null : `file:${capped(p)}`;
    }
    case 'process':
      return a0 && typeof a0 === 'object' && typeof a0.file === 'string' ? `process:${capped(a0.file)}` : null;
    case 'dns':
      // net resolves host names through dns.lookup (the module's property): noted there
      return LOOKUPS.has(hook.name) && typeof a0 === 'string' ? `dns:${capped(a0)}` : null;
    case 'network': {
      // net.Socket.connect(options | [options, cb] | port, host): the port (the native side
      // sees the resolved address, not the host name); IPC paths are not TCP
      if (hook.name !== 'net.Socket.connect') return null;
      let o = Array.isArray(a0) ? a0[0] : a0;
      if (o && typeof o === 'object') {
        if (o.path) return null;
        o = o.port;
      }
      if (o === undefined || o === null || (typeof o !== 'number' && !/^\d+$/.test(o))) return null;
      return `network:${Number(o)}`;
    }
    default:
      return null;
  }
}

/** The note key of one native record, or null when the record is not about the app. */
function recordKey(r) {
  const a = r.a || [];
  switch (r.h) {
    case 'uv_fs_open':
      // node's module resolution reads package.json files natively (internalModuleReadJSON):
      // the runtime loading code, not the app touching a file
      if (a[0].startsWith(PROBE_DIR) || a[0].endsWith('/package.json') || a[0] === 'package.json') return null;
      return `file:${a[0]}`;
    case 'uv_spawn': return `process:${a[0]}`;
    case 'uv_tcp_connect': return `network:${Number(a[1])}`;
    case 'uv_getaddrinfo': return `dns:${a[0]}`;
    default: return undefined; // unknown hook: always a bypass
  }
}

/** A raw sockaddr_in / sockaddr_in6 -> [ip, port] */
function sockaddr(b) {
  if (b.length < 4) return ['', '0'];
  const family = b.readUInt16LE(0);
  const port = String(b.readUInt16BE(2));
  if (family === 2 && b.length >= 8) return [`${b[4]}.${b[5]}.${b[6]}.${b[7]}`, port];
  if (family === 10 && b.length >= 24) {
    const groups = [];
    for (let i = 8; i < 24; i += 2) groups.push(b.readUInt16BE(i).toString(16));
    return [groups.join(':'), port];
  }
  return [`family ${family}`, port];
}

/** One binary record (buf[off..off+len)) -> {h, k, a, t}; null when it is malformed.
 * On the app's thread for every native call: no BigInt, no copies but the strings. */
function decodeRecord(buf, off, len) {
  const id = buf[off + 4];
  const argc = buf[off + 5];
  const num = buf.readInt32LE(off + 8);
  const t = buf.readUInt32LE(off + 12) + buf.readUInt32LE(off + 16) * 4294967296;
  const end = off + len;
  const a = [];
  let p = off + REC_HEAD;
  for (let i = 0; i < argc; i++) {
    if (p + 2 > end) return null;
    const n = buf.readUInt16LE(p);
    if (p + 2 + n > end) return null;
    a.push(id === 2 ? sockaddr(buf.subarray(p + 2, p + 2 + n)) : buf.toString('utf8', p + 2, p + 2 + n));
    p += 2 + n;
  }
  const hk = HOOK_IDS[id];
  if (hk === undefined) return { h: `hook ${id}`, k: 'unknown', a: a.map(String), t };
  if (id === 2) return { h: hk[0], k: hk[1], a: a.length ? a[0] : ['', '0'], t };
  if (id === 1) return { h: hk[0], k: hk[1], a: [a.length ? a[0] : '', String(num)], t };
  return { h: hk[0], k: hk[1], a, t };
}

class Native {
  constructor(probe) {
    this.probe = probe;
    this.seen = new Map(); // key -> {n: notes not yet consumed, t: ms of the last one}
    this.sock = null;
    this.fd = -1;
    this.hooks = [];
    this.since = Date.now(); // records older than the JS layer are its own loading
    this.buf = null; // bytes of a record split across reads
    this.matched = 0;
    this.bypassed = 0;
  }

  get active() { return this.sock !== null; }

  /** Take the channel end the native layer told rasp-attach about: {fd, ino, hooks}; say
   * "ok" on it, so the native layer knows it is read (else it unhooks after 30 s). */
  adopt(opts) {
    if (!opts || !Number.isInteger(opts.fd) || opts.fd < 0) return 'no native layer';
    if (this.sock !== null && this.fd === opts.fd) return 'already';
    // fd numbers are reused: only take the fd if it is the very socket the native layer made
    let link = '';
    try { link = fs.readlinkSync(`/proc/self/fd/${opts.fd}`); } catch (e) { return `fd ${opts.fd}: ${e.code}`; }
    if (link !== `socket:[${opts.ino}]`) return `fd ${opts.fd} is ${link}, not the native layer's channel`;
    this.close();
    const sock = new net.Socket({ fd: opts.fd, readable: true, writable: true });
    sock.unref();
    sock.on('data', (chunk) => this.probe.guard(() => this.feed(chunk)));
    sock.on('error', () => {});
    sock.on('close', () => { if (this.sock === sock) { this.sock = null; this.fd = -1; } });
    sock.write('ok\n');
    this.sock = sock;
    this.fd = opts.fd;
    this.hooks = Array.isArray(opts.hooks) ? opts.hooks.filter((h) => typeof h === 'string') : [];
    return 'ok';
  }

  /** On the app's thread, from every JS hook wrapper the call went through: note it. */
  saw(hook, args) {
    const k = keyOf(hook, args);
    if (k === null) return;
    const seen = this.seen;
    const note = seen.get(k);
    if (note === undefined) {
      seen.set(k, { n: 1, t: Date.now() });
      if (seen.size > SEEN_MAX) seen.delete(seen.keys().next().value); // the oldest key
    } else {
      note.n++;
      note.t = Date.now();
    }
  }

  /** Consume a live note for `k`; false when there is none. */
  consume(k, t) {
    const note = this.seen.get(k);
    if (note === undefined) return false;
    if (note.t < t - WINDOW_MS) {
      this.seen.delete(k); // stale: calls that never reached libuv
      return false;
    }
    if (--note.n === 0) this.seen.delete(k);
    return true;
  }

  /** Bytes off the channel: every whole record in them, in order; a partial one waits. */
  feed(chunk) {
    const buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    let off = 0;
    while (off + 4 <= buf.length) {
      const len = buf.readUInt32LE(off);
      if (len < REC_HEAD || len > REC_MAX) {
        // not a record boundary: the stream cannot be resynchronised, drop what we hold
        this.probe.drop('error');
        this.buf = null;
        return;
      }
      if (off + len > buf.length) break;
      let r;
      try { r = decodeRecord(buf, off, len); } catch (e) { r = null; }
      if (r === null) this.probe.drop('error');
      else this.onRecord(r);
      off += len;
    }
    this.buf = off === buf.length ? null : Buffer.from(buf.subarray(off));
  }

  onRecord(r) {
    if (!r || typeof r.h !== 'string' || !Array.isArray(r.a) || !(r.t > this.since)) return;
    const key = recordKey(r);
    if (key === null) return;
    if (key !== undefined && this.consume(key, r.t)) {
      this.matched++;
      return;
    }
    this.bypassed++;
    this.probe.reportBypass({ hook: r.h, kind: r.k, args: r.a.map(String), stack: [], bypass: true }, r.t);
  }

  close() {
    if (this.sock !== null) {
      const s = this.sock;
      this.sock = null;
      this.fd = -1;
      s.destroy(); // closes our end: the native layer sees no reader and unhooks itself
    }
  }
}

module.exports = { Native, keyOf, recordKey, decodeRecord, sockaddr, WINDOW_MS };
