'use strict';
/*
 * Rampart's Node.js native layer: a Frida agent script (Frida 17) for /usr/bin/node-style
 * binaries that link libuv statically and export its symbols (node 20 on our machines).
 *
 * Loaded by rasp/nodejs/native_agent.py, which eternalizes it: it keeps running after
 * rasp-attach exits. It hooks libuv's entry points for the sinks, in the node process only
 * (never execve/vfork: the vfork child shares our memory and crashes, platform notes):
 *
 *   uv_spawn        every child process node starts (child_process, process_wrap, addons using libuv)
 *   uv_fs_open      every file open through libuv (fs, fs/promises, process.binding('fs'))
 *   uv_tcp_connect  every outgoing TCP connection (net, http, fetch/undici)
 *   uv_getaddrinfo  every getaddrinfo lookup (dns.lookup, what net uses for host names)
 *
 * These run on node's main thread, at the moment the JS (or native) code asks libuv; the
 * threadpool's later open()/getaddrinfo() are not hooked, so each call is seen once.
 *
 * Where it reports: not to the agent. Each call becomes one line of JSON written to a
 * socketpair (the "channel") this script creates in the process; the JS layer (lib/native.js) reads the other end,
 * matches each native call against the calls its own hooks saw, and reports the unmatched
 * ones as `bypass` events on its own agent connection (docs/nodejs-probe.md says why).
 * Hooks only enqueue (bounded, drop-and-count); a timer on Frida's thread writes, never
 * blocking: the channel is non-blocking and a full channel drops.
 */

const QUEUE_MAX = 4096;
const ARG_CAP = 1024; // per argument; keeps a record far below the socket buffer
const ARGS_MAX = 32;
const FLUSH_MS = 20;
const READER_CHECK_MS = 500;
// a channel nobody took (the JS layer's attach failed after ours): unhook after this long
const ADOPT_WAIT_MS = 30000;

const state = {
  pid: Process.id,
  installed: [],
  missing: [],
  listeners: [],
  queue: [],
  pending: null, // bytes a partial write left over
  dropped: 0,
  stopped: false,
  readFd: -1,
  taken: false,
  startedAt: 0,
  writeFd: -1,
  listener: null,
  timers: [],
};

const libcFn = (name, ret, args) => new NativeFunction(Module.getGlobalExportByName(name), ret, args);
const libc = {
  socketpair: libcFn('socketpair', 'int', ['int', 'int', 'int', 'pointer']),
  send: libcFn('send', 'ssize_t', ['int', 'pointer', 'size_t', 'int']),
  recv: libcFn('recv', 'ssize_t', ['int', 'pointer', 'size_t', 'int']),
  close: libcFn('close', 'int', ['int']),
  strlen: libcFn('strlen', 'size_t', ['pointer']),
};
const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_NONBLOCK = 0x800, SOCK_CLOEXEC = 0x80000;
const MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000;

function sym(name) {
  return Process.mainModule.findExportByName(name) || Module.findGlobalExportByName(name);
}

function cstr(p) {
  if (p.isNull()) return '';
  const s = p.readUtf8String();
  return s === null ? '' : (s.length > ARG_CAP ? s.slice(0, ARG_CAP) : s);
}

function strv(p) {
  // a NULL-terminated char** (uv_process_options_t.args)
  const out = [];
  if (p.isNull()) return out;
  for (let i = 0; i < ARGS_MAX; i++) {
    const s = p.add(i * Process.pointerSize).readPointer();
    if (s.isNull()) break;
    out.push(cstr(s));
  }
  return out;
}

function sockaddr(p) {
  // sockaddr_in / sockaddr_in6 -> [ip, port]
  const family = p.readU16();
  const port = (p.add(2).readU8() << 8) | p.add(3).readU8();
  if (family === 2) {
    const b = new Uint8Array(p.add(4).readByteArray(4));
    return [Array.from(b).join('.'), String(port)];
  }
  if (family === 10) {
    const b = new Uint8Array(p.add(8).readByteArray(16));
    const groups = [];
    for (let i = 0; i < 16; i += 2) groups.push(((b[i] << 8) | b[i + 1]).toString(16));
    return [groups.join(':'), String(port)];
  }
  return ['family ' + family, String(port)];
}

function record(hook, kind, args) {
  if (state.stopped) return;
  if (state.queue.length >= QUEUE_MAX) { state.dropped++; return; }
  state.queue.push({ h: hook, k: kind, a: args, t: Date.now() });
  scheduleFlush();
}

// A flush is scheduled by the first record that finds none pending, not by a periodic timer:
// an idle app costs the native layer no wake-ups (bar the 0.5 s reader check).
let flushPending = false;
function scheduleFlush() {
  if (flushPending || state.stopped) return;
  flushPending = true;
  setTimeout(() => {
    flushPending = false;
    flush();
    if (state.queue.length || state.pending !== null) scheduleFlush();
  }, FLUSH_MS);
}

// [export, kind, args from the call's arguments]. Layouts are libuv's public API (uv.h),
// stable across libuv 1.x: uv_process_options_t is {exit_cb, file, args, env, cwd, ...}.
const HOOKS = [
  ['uv_spawn', 'process', (a) => {
    const opts = a[2];
    const argv = strv(opts.add(16).readPointer());
    return [cstr(opts.add(8).readPointer())].concat(argv.slice(1));
  }],
  ['uv_fs_open', 'file', (a) => [cstr(a[2]), String(a[3].toInt32())]],
  ['uv_tcp_connect', 'network', (a) => sockaddr(a[2])],
  ['uv_getaddrinfo', 'dns', (a) => [cstr(a[3])]],
];

function install() {
  for (const [name, kind, argsOf] of HOOKS) {
    const addr = sym(name);
    if (addr === null) { state.missing.push(name); continue; }
    let failed = false;
    try {
      state.listeners.push(Interceptor.attach(addr, {
        onEnter(args) {
          if (failed || state.stopped) return;
          try {
            record(name, kind, argsOf(args));
          } catch (e) {
            failed = true; // a hook that cannot read its arguments switches itself off
            state.dropped++;
          }
        },
      }));
      state.installed.push(name);
    } catch (e) {
      state.missing.push(name);
    }
  }
}

function uninstall() {
  for (const l of state.listeners) {
    try { l.detach(); } catch (e) { /* keep going */ }
  }
  state.listeners = [];
}

// ------------------------------------------------------------------------- the channel
/* A socketpair, not a pipe: the JS layer answers on it once it has taken its end ("ok"), and
 * its end closing (detach, stop) shows here as end-of-file. Both ends are non-blocking. */
function openChannel() {
  const fds = Memory.alloc(8);
  if (libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) !== 0) {
    throw new Error('socketpair() failed');
  }
  state.readFd = fds.readS32(); // the JS layer's end
  state.writeFd = fds.add(4).readS32();
  state.startedAt = Date.now();
}

function encode(lines) {
  const mem = Memory.allocUtf8String(lines);
  const n = libc.strlen(mem).toNumber(); // JSON escapes U+0000: strlen is the byte length
  return { mem, n, off: 0 };
}

function flush() {
  if (state.writeFd < 0) return;
  if (state.pending === null) {
    if (state.queue.length === 0) return;
    const batch = state.queue.splice(0, 256);
    state.pending = encode(batch.map((r) => JSON.stringify(r)).join('\n') + '\n');
  }
  const p = state.pending;
  while (p.off < p.n) {
    const w = libc.send(state.writeFd, p.mem.add(p.off), p.n - p.off, MSG_NOSIGNAL).toNumber();
    if (w <= 0) {
      // full channel (the JS layer is not reading): drop what waits rather than grow
      if (state.queue.length > QUEUE_MAX / 2) {
        state.dropped += state.queue.length;
        state.queue = [];
      }
      return;
    }
    p.off += w;
  }
  state.pending = null;
}

/* Every READER_CHECK_MS on Frida's thread: has the JS layer taken its end (it says "ok"), or
 * closed it (end-of-file: stop(), detach)? Either way nobody reads us again once it is
 * closed, or will if nobody took it in ADOPT_WAIT_MS: then unhook and go. */
const checkBuf = Memory.alloc(64);
function checkReader() {
  if (state.writeFd < 0) return;
  for (;;) {
    const n = libc.recv(state.writeFd, checkBuf, 64, MSG_DONTWAIT).toNumber();
    if (n > 0) { state.taken = true; continue; }
    if (n === 0) { stop(); return; } // the JS layer's end is closed
    break; // EAGAIN: nothing new
  }
  if (!state.taken && Date.now() - state.startedAt > ADOPT_WAIT_MS) {
    libc.close(state.readFd); // nobody took it: ours to close
    state.readFd = -1;
    stop();
  }
}

function stop() {
  if (state.stopped) return;
  state.stopped = true;
  uninstall();
  for (const t of state.timers) clearInterval(t);
  if (state.listener) state.listener.close().catch(() => {});
  if (state.writeFd >= 0) libc.close(state.writeFd);
  state.writeFd = -1;
  // the read end is the JS layer's (it may be reading it): closing it is the JS layer's job
}

function info() {
  return {
    pid: state.pid, fd: state.readFd, hooks: state.installed, missing: state.missing,
    dropped: state.dropped,
  };
}

/*
 * "Already running?" A second rasp-attach must not inject a second copy (double hooks, a
 * second channel). The script listens on the abstract Unix socket `rampart-node-native-<pid>`:
 * the glue finds it in /proc/<pid>/net/unix and connects instead of injecting; we answer with
 * one line of JSON (the channel's fd for the JS layer, and our hooks) and hang up.
 */
async function listenForPokes() {
  try {
    const l = await Socket.listen({
      family: 'unix', type: 'abstract', path: 'rampart-node-native-' + state.pid, backlog: 4,
    });
    state.listener = l;
    for (;;) {
      const c = await l.accept();
      if (state.stopped) { c.close().catch(() => {}); return; }
      const line = JSON.stringify(info()) + '\n';
      c.output.writeAll(Array.from(line, (ch) => ch.charCodeAt(0)))
        .catch(() => {}).then(() => c.close().catch(() => {}));
    }
  } catch (e) { /* no listener: a second attach injects again, the JS layer keeps one channel */ }
}

let started = false;
function start() {
  if (started) return info();
  started = true;
  openChannel();
  install();
  // the read end is open until the JS layer, having taken it, closes it
  state.timers.push(setInterval(checkReader, READER_CHECK_MS));
  listenForPokes();
  return info();
}

rpc.exports = {
  start() { return start(); },
  stop() { stop(); return true; },
};
