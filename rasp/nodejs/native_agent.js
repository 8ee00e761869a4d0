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
 * Where it reports: not to the agent. Each call becomes one binary record (layout below)
 * written to a socketpair (the "channel") this script creates in the process; the JS layer
 * (lib/native.js) reads the other end, matches each native call against the calls its own
 * hooks saw, and reports the unmatched ones as `bypass` events on its own agent connection
 * (docs/nodejs-probe.md says why).
 *
 * The hooks are C (a Frida CModule, compiled by Frida's TinyCC at load): a JS `onEnter` in
 * Frida's QuickJS, reading the arguments through NativePointer calls and building a JSON
 * record, cost the app +7 to +19 us of CPU per hooked call (bench/README.md). The C
 * `onEnter` builds the record on its stack and appends it to a ring in memory (a spinlock,
 * an `xchg`, orders the app's threads; TinyCC has no atomics builtins); a timer on Frida's
 * thread moves what the ring holds to the channel, in one non-blocking send() per batch, so
 * the app's thread makes no syscall and runs no JS. A full ring (the JS layer not reading)
 * drops the record and counts it; nothing ever blocks but the ring's lock, held for a copy.
 */

const ARG_CAP = 1024; // per argument; keeps a record far below the socket buffer
const ARGS_MAX = 32;
const REC_MAX = 4096;
const RING = 1 << 20; // bytes; a power of two. ~25k records: 100 ms of a 250k calls/s burst
// the drain timer: every DRAIN_MIN_MS while records come, backing off to DRAIN_MAX_MS when
// idle (an idle app costs ~10 wake-ups a second: records reach the JS layer within 0.1 s)
const DRAIN_MIN_MS = 5;
const DRAIN_MAX_MS = 100;
const READER_CHECK_MS = 500;
// a channel nobody took (the JS layer's attach failed after ours): unhook after this long
const ADOPT_WAIT_MS = 30000;

const state = {
  pid: Process.id,
  installed: [],
  missing: [],
  listeners: [],
  stopped: false,
  readFd: -1,
  taken: false,
  startedAt: 0,
  writeFd: -1,
  listener: null,
  timers: [],
  cm: null,
  // shared with the C hooks (never freed: a hook may still run after stop() detached it):
  // [0] on (1) / off (0), [1] records dropped, [2] the ring's lock, [3] head, [4] tail
  // (bytes written and read so far)
  cfg: null,
  ring: null,
  drain: null, // C: ring -> channel
  drainDelay: DRAIN_MIN_MS,
  drainTimer: null,
};

const libcFn = (name, ret, args) => new NativeFunction(Module.getGlobalExportByName(name), ret, args);
const libc = {
  socketpair: libcFn('socketpair', 'int', ['int', 'int', 'int', 'pointer']),
  recv: libcFn('recv', 'ssize_t', ['int', 'pointer', 'size_t', 'int']),
  close: libcFn('close', 'int', ['int']),
};
const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_NONBLOCK = 0x800, SOCK_CLOEXEC = 0x80000;
const MSG_DONTWAIT = 0x40;

function sym(name) {
  return Process.mainModule.findExportByName(name) || Module.findGlobalExportByName(name);
}

/*
 * One record, little-endian (lib/native.js decodes it):
 *   u32 length of the whole record | u8 hook id | u8 argument count | u16 0 | i32 number
 *   | u64 wall-clock ms | per argument: u16 length, bytes
 * Hook ids: 0 uv_spawn (file, argv[1..]), 1 uv_fs_open (path; number: flags),
 * 2 uv_tcp_connect (the raw sockaddr_in/in6), 3 uv_getaddrinfo (node name).
 * Layouts are libuv's public API (uv.h), stable across libuv 1.x: uv_process_options_t is
 * {exit_cb, file, args, env, cwd, ...}. The pointers are the ones libuv itself is about to
 * use (a path libuv copies, a sockaddr it connects to): C reads them unguarded.
 */
const HOOKS_C = `
#include <gum/guminterceptor.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

struct timespec_ { i64 sec; i64 nsec; };
extern long send (int fd, const void * buf, u64 n, int flags);
extern int clock_gettime (int clk, struct timespec_ * ts);
extern volatile i64 rampart_cfg[5];
extern u8 rampart_ring[];

#define REC_MAX ${REC_MAX}
#define RING ${RING}ULL
#define ARG_CAP ${ARG_CAP}
#define ARGS_MAX ${ARGS_MAX}
#define MSG_DONTWAIT 0x40
#define MSG_NOSIGNAL 0x4000

typedef struct { u8 buf[REC_MAX]; u32 pos; u32 nargs; } Rec;

static void begin (Rec * r, u8 hook, int num)
{
  struct timespec_ ts;
  i64 ms;
  clock_gettime (0, &ts); /* CLOCK_REALTIME: compared with the JS layer's Date.now() */
  ms = ts.sec * 1000 + ts.nsec / 1000000;
  r->buf[4] = hook; r->buf[5] = 0; r->buf[6] = 0; r->buf[7] = 0;
  *(int *) (r->buf + 8) = num;
  *(i64 *) (r->buf + 12) = ms;
  r->pos = 20;
  r->nargs = 0;
}

/* n bytes (capped by ARG_CAP and the room left) as one argument */
static void arg (Rec * r, const u8 * p, u32 n)
{
  u32 room, i;
  if (r->nargs >= ARGS_MAX || r->pos + 2 > REC_MAX) return;
  room = REC_MAX - r->pos - 2;
  if (n > ARG_CAP) n = ARG_CAP;
  if (n > room) n = room;
  *(u16 *) (r->buf + r->pos) = (u16) n;
  for (i = 0; i < n; i++) r->buf[r->pos + 2 + i] = p[i];
  r->pos += 2 + n;
  r->nargs++;
}

static void cstr (Rec * r, const char * p)
{
  u32 n = 0;
  if (p == 0) { arg (r, (const u8 *) "", 0); return; }
  while (n < ARG_CAP && p[n] != 0) n++;
  arg (r, (const u8 *) p, n);
}

static int xchg (volatile int * p, int v)
{
  __asm__ __volatile__ ("xchgl %0, %1" : "=r" (v), "+m" (*p) : "0" (v) : "memory");
  return v;
}

/* append to the ring (bytes, wrapping); head is published after the bytes (x86-64 keeps
 * stores in order; the xchg of the unlock is a full barrier) */
static void finish (Rec * r)
{
  volatile int * lock = (volatile int *) &rampart_cfg[2];
  u64 head, i;
  u32 spins = 0;
  *(u32 *) r->buf = r->pos;
  r->buf[5] = (u8) r->nargs;
  /* the lock is held for a copy of <= 4 KiB; a holder that never lets go (a fork() child
   * of a thread that held it) costs a record, never a hang */
  while (xchg (lock, 1) != 0)
    while (*lock != 0)
      if (++spins > (1U << 24)) { rampart_cfg[1]++; return; }
  head = (u64) rampart_cfg[3];
  if (RING - (head - (u64) rampart_cfg[4]) < r->pos) rampart_cfg[1]++; /* full: dropped */
  else {
    for (i = 0; i < r->pos; i++) rampart_ring[(head + i) & (RING - 1)] = r->buf[i];
    rampart_cfg[3] = (i64) (head + r->pos);
  }
  xchg (lock, 0);
}

/* On Frida's thread only (the one reader): the ring's bytes to the channel, as much as it
 * takes now (a full channel keeps the rest in the ring). Returns the bytes moved. */
i64 rampart_drain (int fd)
{
  u64 tail = (u64) rampart_cfg[4], head = (u64) rampart_cfg[3], moved = 0;
  while (tail < head) {
    u64 at = tail & (RING - 1), n = head - tail;
    long w;
    if (n > RING - at) n = RING - at;
    w = send (fd, rampart_ring + at, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w <= 0) break;
    tail += (u64) w;
    moved += (u64) w;
  }
  rampart_cfg[4] = (i64) tail;
  return (i64) moved;
}

void on_spawn (GumInvocationContext * ic)
{
  Rec r;
  const u8 * opts = (const u8 *) gum_invocation_context_get_nth_argument (ic, 2);
  const char * const * argv;
  u32 i;
  if (rampart_cfg[0] == 0 || opts == 0) return;
  begin (&r, 0, 0);
  cstr (&r, *(const char * const *) (opts + 8));
  argv = *(const char * const * const *) (opts + 16);
  for (i = 1; argv != 0 && argv[0] != 0 && i < ARGS_MAX && argv[i] != 0; i++) cstr (&r, argv[i]);
  finish (&r);
}

void on_open (GumInvocationContext * ic)
{
  Rec r;
  if (rampart_cfg[0] == 0) return;
  begin (&r, 1, (int) (i64) gum_invocation_context_get_nth_argument (ic, 3));
  cstr (&r, (const char *) gum_invocation_context_get_nth_argument (ic, 2));
  finish (&r);
}

void on_connect (GumInvocationContext * ic)
{
  Rec r;
  const u8 * sa = (const u8 *) gum_invocation_context_get_nth_argument (ic, 2);
  if (rampart_cfg[0] == 0 || sa == 0) return;
  begin (&r, 2, 0);
  arg (&r, sa, *(const u16 *) sa == 10 ? 28 : 16); /* AF_INET6: sockaddr_in6 */
  finish (&r);
}

void on_getaddrinfo (GumInvocationContext * ic)
{
  Rec r;
  if (rampart_cfg[0] == 0) return;
  begin (&r, 3, 0);
  cstr (&r, (const char *) gum_invocation_context_get_nth_argument (ic, 3));
  finish (&r);
}
`;

// [export, the C hook]; the order of the ids above
const HOOKS = [
  ['uv_spawn', 'on_spawn'],
  ['uv_fs_open', 'on_open'],
  ['uv_tcp_connect', 'on_connect'],
  ['uv_getaddrinfo', 'on_getaddrinfo'],
];

function compile() {
  state.cfg = Memory.alloc(40); // zeroed: off, nothing dropped, unlocked, empty
  state.ring = Memory.alloc(RING);
  state.cm = new CModule(HOOKS_C, {
    send: Module.getGlobalExportByName('send'),
    clock_gettime: Module.getGlobalExportByName('clock_gettime'),
    rampart_cfg: state.cfg,
    rampart_ring: state.ring,
  });
  state.drain = new NativeFunction(state.cm.rampart_drain, 'int64', ['int']);
}

/* The ring to the channel, on Frida's thread: soon again while records come, less and less
 * often while none do. */
function drainLater() {
  state.drainTimer = setTimeout(() => {
    if (state.stopped) return;
    const moved = state.drain(state.writeFd).toNumber();
    state.drainDelay = moved > 0 ? DRAIN_MIN_MS : Math.min(state.drainDelay * 2, DRAIN_MAX_MS);
    drainLater();
  }, state.drainDelay);
}

function install() {
  for (const [name, fn] of HOOKS) {
    const addr = sym(name);
    if (addr === null) { state.missing.push(name); continue; }
    try {
      state.listeners.push(Interceptor.attach(addr, { onEnter: state.cm[fn] }));
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
  if (state.cfg !== null) state.cfg.writeS64(0); // the C hooks record nothing from now on
  uninstall();
  for (const t of state.timers) clearInterval(t);
  clearTimeout(state.drainTimer);
  if (state.listener) state.listener.close().catch(() => {});
  // only the drain (this thread) writes to the channel: closing it here races nothing
  if (state.writeFd >= 0) libc.close(state.writeFd);
  state.writeFd = -1;
  // the read end is the JS layer's (it may be reading it): closing it is the JS layer's job
}

function info() {
  return {
    pid: state.pid, fd: state.readFd, hooks: state.installed, missing: state.missing,
    dropped: state.cfg === null ? 0 : state.cfg.add(8).readS64().toNumber(),
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
  compile();
  openChannel();
  state.cfg.writeS64(1);
  install();
  drainLater();
  // the read end is open until the JS layer, having taken it, closes it
  state.timers.push(setInterval(checkReader, READER_CHECK_MS));
  listenForPokes();
  return info();
}

rpc.exports = {
  start() { return start(); },
  stop() { stop(); return true; },
};
