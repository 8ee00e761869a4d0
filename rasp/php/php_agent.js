'use strict';
/*
 * Rampart PHP probe: a Frida agent script for the Zend engine (PHP 8.x, 64-bit, NTS).
 *
 * Loaded by rasp/php/php_agent.py, which prepends `const RAMPART = {...};` (socket path,
 * versions, role) and eternalizes the script, so it keeps running after the attacher exits.
 *
 * How sinks are found: by name in the engine's own tables, not by symbol. PHP binaries export
 * almost no `zif_*` handlers (12 in Debian's 8.2), but `compiler_globals` is exported and
 * CG(function_table) maps every internal function name to its zend_internal_function, whose
 * `handler` is the C implementation. Class methods come from CG(class_table) ->
 * zend_class_entry.function_table. Offsets that differ between builds (where those tables
 * sit in compiler_globals, the handler field, a class's method table) are discovered at start
 * by checking candidates against entries we know ("strlen", "stdclass", "exception").
 *
 * How sinks are hooked: the `handler` pointer of each zend_internal_function is swapped for a
 * NativeCallback that decides and then calls the original handler, behind a small C gate that
 * keeps a forked child out of Frida (see "fork guard"). No code is patched, an
 * alias (mysqli::query vs mysqli_query) is hooked under its own name, and uninstall writes
 * the old pointer back. `include`/`eval` go through the engine's function pointers
 * `zend_compile_file` / `zend_compile_string` (opcache wraps them too), swapped the same way.
 *
 * Delivery: the script opens its own Unix-socket connection to the agent from inside the
 * target, so the agent's SO_PEERCRED check sees the PHP process itself. Hooks run on PHP's
 * thread and only enqueue (bounded, drop-and-count); a timer on Frida's thread writes frames.
 */

const CFG = (typeof RAMPART !== 'undefined') ? RAMPART : {};
const SOCKET_PATH = CFG.socket || '/run/rampart/probe.sock';
const PROBE_VERSION = CFG.probe_version || '0.1.0';
let RUNTIME_VERSION = CFG.runtime_version || '';
const ROLE = CFG.role || 'worker'; // 'worker' hooks sinks; 'master' (php-fpm) only reports

const QUEUE_MAX = 1024;
const ARG_CAP = 4096;
const ARGS_MAX = 64;
const STACK_MAX = 32; // default depth; the agent's config frame may lower or raise it (<= 256)
const DEFAULT_QUOTA = 12000;
const HEARTBEAT_MS = 10000;
const MAX_FRAME = 1 << 20;

/* NativeFunction options for calls on the hot path. By default Frida wraps every native call
 * in its exception catcher (a sigsetjmp that saves the signal mask: a syscall), which cost
 * 6-9 us a call on our VM against < 0.5 us without (measured in a PHP target). 'propagate'
 * lets a crash in the callee be the process's crash, as it is without the probe. FAST also
 * keeps the JS lock across the call: only for our own C, which never calls back into JS. */
const HOT = { exceptions: 'propagate' };
const FAST = { exceptions: 'propagate', scheduling: 'exclusive' };
// The C collector reads PHP's structures at offsets this script derived: if one were wrong, a
// bad read must become a JS exception (the hook disables itself), not the app's crash. One
// guarded call an event instead of dozens of guarded reads.
const GUARDED = { scheduling: 'exclusive' };

// ------------------------------------------------------------------------- engine layout
// PHP 8.x, LP64. zval: value (8) + u1.type_info (4) + u2 (4).
const ZVAL = 16;
const IS_UNDEF = 0, IS_NULL = 1, IS_FALSE = 2, IS_TRUE = 3, IS_LONG = 4, IS_DOUBLE = 5,
  IS_STRING = 6, IS_ARRAY = 7, IS_OBJECT = 8, IS_REFERENCE = 10, IS_INDIRECT = 12, IS_PTR = 13;
// zend_string: gc (8), h (8), len (8), val[]
const ZSTR_LEN = 16, ZSTR_VAL = 24;
// zend_array: gc (8), flags (4), nTableMask (4), arData (8) @16, nNumUsed (4) @24,
// nNumOfElements @28, nTableSize @32. Bucket: zval (16), h (8), key (8). Packed: zvals.
const HT_DATA = 16, HT_USED = 24, HT_SIZE = 32, HT_FLAGS = 8, HASH_FLAG_PACKED = 4;
const BUCKET = 32;
// zend_execute_data: opline @0, call @8, return_value @16, func @24, This (zval) @32,
// prev_execute_data @48, ... sizeof 80 = 5 zvals (ZEND_CALL_FRAME_SLOT); num_args = This.u2.
const ED_OPLINE = 0, ED_FUNC = 24, ED_THIS = 32, ED_NUM_ARGS = 44, ED_PREV = 48, ED_ARGS = 80;
// zend_function common: type (1) @0, fn_flags @4, function_name @8, scope @16.
const FN_NAME = 8, FN_SCOPE = 16, ZEND_USER_FUNCTION = 2;
const CE_NAME = 8; // zend_class_entry: type (1), name @8
const OPLINE_LINENO = 24; // zend_op: handler, op1, op2, result, extended_value, lineno
// sapi_globals: server_context (8), request_info: request_method @8, query_string @16,
// cookie_data @24, content_length @32, path_translated @40, request_uri @48.
const SG_METHOD = 8, SG_QUERY = 16, SG_URI = 48;

// ------------------------------------------------------------------------- hook table
// [name, kind, class or null]. Names are PHP's own (lower case, as in the engine's tables).
const SINKS = [
  ['system', 'process'], ['exec', 'process'], ['passthru', 'process'],
  ['shell_exec', 'process'], ['popen', 'process'], ['proc_open', 'process'],
  ['pcntl_exec', 'process'],
  ['fopen', 'file'], ['file_get_contents', 'file'], ['file_put_contents', 'file'],
  ['readfile', 'file'], ['file', 'file'], ['unlink', 'file'], ['rename', 'file'],
  ['copy', 'file'], ['opendir', 'file'], ['scandir', 'file'], ['dir', 'file'],
  ['move_uploaded_file', 'file'],
  ['curl_exec', 'network'], ['fsockopen', 'network'], ['pfsockopen', 'network'],
  ['stream_socket_client', 'network'],
  ['gethostbyname', 'dns'], ['dns_get_record', 'dns'],
  ['mysqli_query', 'sql'], ['mysqli_real_query', 'sql'], ['mysqli_prepare', 'sql'],
  ['query', 'sql', 'mysqli'], ['real_query', 'sql', 'mysqli'], ['prepare', 'sql', 'mysqli'],
  ['query', 'sql', 'pdo'], ['exec', 'sql', 'pdo'], ['prepare', 'sql', 'pdo'],
  ['query', 'sql', 'sqlite3'], ['exec', 'sql', 'sqlite3'], ['prepare', 'sql', 'sqlite3'],
  ['unserialize', 'deserialization'],
  ['putenv', 'process'], ['assert', 'code'],
];
const CLASS_NAMES = { mysqli: 'mysqli', pdo: 'PDO', sqlite3: 'SQLite3' };

// ------------------------------------------------------------------------- state
const state = {
  pid: Process.id,
  installed: [], // hook names
  missing: [], // hook names not found in this build
  swaps: [], // {slot, orig} pointers to write back on uninstall
  listeners: [], // Interceptor listeners
  keep: [], // NativeCallbacks / NativeFunctions that must stay alive
  queue: [],
  conn: null,
  connecting: false,
  backoff: 500,
  stopped: false,
  alreadyRunning: false,
  listener: null,
  counters: { sent: 0, dropped: 0, blocked: 0 },
  droppedBy: {},
  policies: {},
  filters: [],
  blocks: [],
  // detection rules in block mode (the block frame's `detect`; RampartDetect is
  // rasp/nodejs/lib/detect.js, loaded in front of this file by php_agent.py)
  detect: new RampartDetect.DetectTable(),
  quotas: new Quotas(DEFAULT_QUOTA),
  disabled: {}, // hook -> true after an internal error or a config frame
  errorsReported: {},
  stackDepth: STACK_MAX,
};

function drop(reason) {
  state.counters.dropped++;
  state.droppedBy[reason] = (state.droppedBy[reason] || 0) + 1;
}

function log(msg) {
  // Visible to the attacher while it is connected; silent once the script is eternalized.
  try { console.log('rampart-php[' + state.pid + ']: ' + msg); } catch (e) { /* detached */ }
}

// ------------------------------------------------------------------------- symbols
const mainModule = Process.mainModule;
const exportsByName = {};
// Module.getExportByName misses symbols that enumerateExports lists (seen on Debian's
// php-fpm8.2: "unable to find export 'php_exec'"), so build the map once ourselves.
for (const e of mainModule.enumerateExports()) exportsByName[e.name] = e.address;

function sym(name) {
  const a = exportsByName[name];
  if (a) return a;
  const g = Module.findGlobalExportByName(name);
  return g;
}

try {
  // the "standard" extension's version is PHP_VERSION ("8.2.36")
  const v = new NativeFunction(sym('zend_get_module_version'), 'pointer', ['pointer'])(
    Memory.allocUtf8String('standard'));
  if (!v.isNull()) RUNTIME_VERSION = v.readCString();
} catch (e) { /* keep the attacher's guess */ }

// libc's socket calls: the probe connects with these rather than Frida's Socket.connect, whose
// GSocketClient prints "[GLib-GIO DEBUG] g_socket_client_connect_async ..." on the target's
// *stdout* (seen with Frida 17.25 in PHP CLI targets: it would corrupt the app's output).
const AF_UNIX = 1, SOCK_STREAM_CLOEXEC = 1 | 0x80000, SOL_SOCKET = 1, SO_SNDTIMEO = 21;
const F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800;
const libcFn = (name, ret, args) => new NativeFunction(Module.getGlobalExportByName(name), ret, args);
const net = {
  socket: libcFn('socket', 'int', ['int', 'int', 'int']),
  connect: libcFn('connect', 'int', ['int', 'pointer', 'uint32']),
  setsockopt: libcFn('setsockopt', 'int', ['int', 'int', 'int', 'pointer', 'uint32']),
  fcntl: libcFn('fcntl', 'int', ['int', 'int', 'int']),
  write: libcFn('write', 'ssize_t', ['int', 'pointer', 'size_t']),
  close: libcFn('close', 'int', ['int']),
};

function sockaddrUn(path) {
  const addr = Memory.alloc(110); // struct sockaddr_un: family, then the path (108 bytes)
  addr.writeU16(AF_UNIX);
  addr.add(2).writeUtf8String(path.slice(0, 107));
  return addr;
}

/* A connection to the agent: libc connect (a Unix socket connects at once or fails), then
 * Frida's Unix streams over the non-blocking fd, serviced by Frida's own thread. */
function openConnection() {
  const fd = net.socket(AF_UNIX, SOCK_STREAM_CLOEXEC, 0);
  if (fd < 0) throw new Error('socket() failed');
  if (net.connect(fd, sockaddrUn(SOCKET_PATH), 110) !== 0) {
    net.close(fd);
    throw new Error('connect() to ' + SOCKET_PATH + ' failed');
  }
  net.fcntl(fd, F_SETFL, net.fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
  const input = new UnixInputStream(fd, { autoClose: false });
  const output = new UnixOutputStream(fd, { autoClose: false });
  let closed = false;
  return {
    input,
    output,
    async close() {
      if (closed) return;
      closed = true;
      await input.close().catch(() => {});
      await output.close().catch(() => {});
      net.close(fd);
    },
  };
}

const libc = {
  getpid: new NativeFunction(Module.getGlobalExportByName('getpid'), 'int', []),
  strlen: new NativeFunction(Module.getGlobalExportByName('strlen'), 'size_t', ['pointer']),
};

// ------------------------------------------------------------------------- strings
function readBytes(p, len) {
  if (len <= 0) return '';
  try {
    return p.readUtf8String(len); // native, fast; throws on invalid UTF-8
  } catch (e) {
    return utf8Decode(new Uint8Array(p.readByteArray(len)), false); // bytes: lenient, in JS
  }
}

function zstr(p, cap) {
  // a zend_string* as a JS string, capped
  if (p.isNull()) return '';
  const len = p.add(ZSTR_LEN).readU64().toNumber();
  return readBytes(p.add(ZSTR_VAL), Math.min(len, cap || ARG_CAP));
}

function cstr(p, cap) {
  if (p.isNull()) return '';
  // readCString(n) reads n bytes whatever they hold: read up to the NUL, then cap
  const s = p.readCString();
  return s === null ? '' : s.slice(0, cap || ARG_CAP);
}

function zvalString(z, depth) {
  let type = z.add(8).readU8();
  if (type === IS_REFERENCE) { z = z.readPointer().add(8); type = z.add(8).readU8(); }
  if (type === IS_INDIRECT) { z = z.readPointer(); type = z.add(8).readU8(); }
  switch (type) {
    case IS_STRING: return zstr(z.readPointer());
    case IS_LONG: return z.readS64().toString();
    case IS_DOUBLE: return String(z.readDouble());
    case IS_TRUE: return 'true';
    case IS_FALSE: return 'false';
    case IS_NULL: case IS_UNDEF: return '';
    case IS_ARRAY: return (depth || 0) > 1 ? '[array]' : arrayString(z.readPointer(), (depth || 0) + 1);
    case IS_OBJECT: return '[object]';
    default: return '[type ' + type + ']';
  }
}

function arrayString(ht, depth) {
  // values joined by a space: proc_open(['sh', '-c', ...]) reads as a command line
  const parts = [];
  htForEach(ht, (key, z) => { if (parts.length < ARGS_MAX) parts.push(zvalString(z, depth)); });
  return parts.join(' ').slice(0, ARG_CAP);
}

function htForEach(ht, fn) {
  const used = ht.add(HT_USED).readU32();
  const data = ht.add(HT_DATA).readPointer();
  const packed = (ht.add(HT_FLAGS).readU32() & HASH_FLAG_PACKED) !== 0;
  for (let i = 0; i < used; i++) {
    const z = packed ? data.add(i * ZVAL) : data.add(i * BUCKET);
    const type = z.add(8).readU8();
    if (type === IS_UNDEF) continue;
    const key = packed ? null : z.add(24).readPointer();
    if (fn(key, z) === false) return;
  }
}

function htFind(ht, name) {
  // lookup by walking (used at start only, so no need for the engine's hash function)
  let found = null;
  htForEach(ht, (key, z) => {
    if (key !== null && !key.isNull() && key.add(ZSTR_LEN).readU64().toNumber() === name.length &&
        key.add(ZSTR_VAL).readUtf8String(name.length) === name) {
      found = z;
      return false;
    }
    return true;
  });
  return found;
}

// The engine's own lookup, for tables we already know are tables: one native call instead of
// walking hundreds of buckets from JS (3 us a read). htFind stays for probing candidates.
const zendHashStrFind = sym('zend_hash_str_find')
  ? new NativeFunction(sym('zend_hash_str_find'), 'pointer', ['pointer', 'pointer', 'size_t'], HOT) : null;
const KEY_CACHE = {};
function hashFind(ht, name) {
  if (zendHashStrFind === null) return htFind(ht, name);
  if (!KEY_CACHE[name]) KEY_CACHE[name] = Memory.allocUtf8String(name);
  const z = zendHashStrFind(ht, KEY_CACHE[name], name.length);
  return z.isNull() ? null : z;
}

function plausibleTable(p) {
  try {
    if (p.isNull()) return false;
    const used = p.add(HT_USED).readU32(), size = p.add(HT_SIZE).readU32();
    return size >= 8 && size <= (1 << 24) && (size & (size - 1)) === 0 && used <= size;
  } catch (e) { return false; }
}

// ------------------------------------------------------------------------- engine tables
function findTables() {
  const cg = sym('compiler_globals');
  if (cg === null) throw new Error('compiler_globals not exported (a ZTS build?)');
  let functions = null, classes = null;
  for (let off = 0; off < 512 && (functions === null || classes === null); off += 8) {
    const p = cg.add(off).readPointer();
    if (!plausibleTable(p)) continue;
    try {
      if (functions === null && htFind(p, 'strlen') !== null) functions = p;
      else if (classes === null && htFind(p, 'stdclass') !== null) classes = p;
    } catch (e) { /* not a table */ }
  }
  if (functions === null) throw new Error('CG(function_table) not found');
  return { functions, classes };
}

function isCode(p) {
  const r = Process.findRangeByAddress(p);
  return r !== null && r.protection.indexOf('x') >= 0;
}

function handlerOffset(functions) {
  // The handler is the first pointer into executable memory after the common fields:
  // checked on several functions so a coincidence cannot pick the wrong slot.
  const probes = ['strlen', 'system', 'str_replace', 'count'].map((n) => hashFind(functions, n))
    .filter((z) => z !== null).map((z) => z.readPointer());
  for (let off = 40; off <= 128; off += 8) {
    if (probes.every((fn) => { try { return isCode(fn.add(off).readPointer()); } catch (e) { return false; } }))
      return off;
  }
  throw new Error('zend_internal_function.handler offset not found');
}

function classMethodTableOffset(classes) {
  // zend_class_entry embeds its function_table (a HashTable, not a pointer): find the offset
  // where Exception's methods ("getmessage") sit.
  const ce = hashFind(classes, 'exception').readPointer();
  for (let off = 16; off < 512; off += 8) {
    const ht = ce.add(off);
    if (!plausibleTable(ht)) continue;
    try { if (htFind(ht, 'getmessage') !== null) return off; } catch (e) { /* next */ }
  }
  throw new Error('zend_class_entry.function_table offset not found');
}

// ------------------------------------------------------------------------- request context
const sapiGlobals = sym('sapi_globals');
const sapiGetenvAddr = sym('sapi_getenv');
const sapiGetenv = sapiGetenvAddr ? new NativeFunction(sapiGetenvAddr, 'pointer', ['pointer', 'size_t'], HOT) : null;
const ENV_NAMES = {};
function envName(name) {
  if (!ENV_NAMES[name]) ENV_NAMES[name] = Memory.allocUtf8String(name);
  return ENV_NAMES[name];
}
function getenv(name) {
  // sapi_getenv asks the SAPI (FastCGI params for php-fpm); the copy it returns is emalloc'ed
  // and freed with the request's memory.
  if (sapiGetenv === null) return '';
  const p = sapiGetenv(envName(name), name.length);
  return p.isNull() ? '' : cstr(p, 1024);
}
const HEADERS = [['user-agent', 'HTTP_USER_AGENT'], ['content-type', 'CONTENT_TYPE'],
  ['host', 'HTTP_HOST'], ['referer', 'HTTP_REFERER'], ['x-forwarded-for', 'HTTP_X_FORWARDED_FOR']];

// EG(symbol_table): embedded in executor_globals; found by the "_GET" key every request has.
// Searched lazily, inside a request (php -S rebuilds it per request).
let symtabOff = -1, symtabTries = 0;
function superGlobal(name) {
  const eg = sym('executor_globals');
  if (eg === null) return null;
  if (symtabOff < 0) {
    if (symtabTries++ > 8) return null;
    for (let off = 0; off < 2048; off += 8) {
      const ht = eg.add(off);
      if (!plausibleTable(ht)) continue;
      try { if (htFind(ht, '_GET') !== null) { symtabOff = off; break; } } catch (e) { /* next */ }
    }
    if (symtabOff < 0) return null;
  }
  let z = hashFind(eg.add(symtabOff), name);
  if (z === null) return null;
  if (z.add(8).readU8() === IS_INDIRECT) z = z.readPointer();
  if (z.add(8).readU8() === IS_REFERENCE) z = z.readPointer().add(8);
  return z.add(8).readU8() === IS_ARRAY ? z.readPointer() : null;
}

function arrayParams(ht, params) {
  if (ht === null) return;
  htForEach(ht, (key, z) => {
    if (key === null || key.isNull()) return true;
    const k = zstr(key, 256);
    (params[k] = params[k] || []).push(zvalString(z, 0));
    return Object.keys(params).length < ARGS_MAX;
  });
}

const SERVER_VARS = ['REMOTE_ADDR'].concat(HEADERS.map((h) => h[1]));
/* The $_SERVER entries we report. */
function serverVars() {
  const out = {};
  let ht = null;
  try { ht = superGlobal('_SERVER'); } catch (e) { ht = null; }
  if (ht === null) return out;
  for (const name of SERVER_VARS) {
    const z = hashFind(ht, name);
    if (z !== null) out[name] = zvalString(z, 0).slice(0, 1024);
  }
  return out;
}

function requestContext() {
  if (sapiGlobals === null) return null;
  // natively: one call for what is ~25 reads from JS (sapi_getenv returns copies)
  const native = collector.request === null ? null
    : JSON.parse(collector.buf.readUtf8String(collector.request(collector.rq, collector.cfg)));
  const method = native !== null ? native[0] || '' : cstr(sapiGlobals.add(SG_METHOD).readPointer(), 16);
  if (!method) return null; // CLI, or outside a request
  const uri = native !== null ? native[1] || '' : cstr(sapiGlobals.add(SG_URI).readPointer(), ARG_CAP);
  const qs = native !== null ? native[2] || '' : cstr(sapiGlobals.add(SG_QUERY).readPointer(), ARG_CAP);
  const params = {};
  parseQuery(qs, params);
  if (method === 'POST') {
    try { arrayParams(superGlobal('_POST'), params); } catch (e) { /* no form */ }
  }
  // php-fpm answers sapi_getenv (FastCGI params) and then has everything we want; the
  // built-in server has no getenv: read $_SERVER instead (one pass)
  const nativeEnv = {};
  if (native !== null) native[3].forEach((v, i) => { nativeEnv[SERVER_VARS[i]] = v || ''; });
  const sapiEnv = native !== null ? nativeEnv.REMOTE_ADDR !== '' : getenv('REMOTE_ADDR') !== '';
  let server = null;
  const env = (name) => {
    if (sapiEnv) return native !== null ? nativeEnv[name] : getenv(name);
    if (server === null) server = serverVars();
    return server[name] || '';
  };
  const headers = {};
  for (const [h, name] of HEADERS) {
    const v = env(name);
    if (v) headers[h] = v;
  }
  const req = { method, url: uri || '', params, headers };
  const addr = env('REMOTE_ADDR');
  if (addr) req.remote_addr = addr;
  if (uri && qs && uri.indexOf('?') < 0) req.url = uri + '?' + qs;
  return req;
}

// ------------------------------------------------------------------------- stack
let filenameOffset = -1; // zend_op_array.filename, found on first use
const getExecutedFilenameEx = sym('zend_get_executed_filename_ex')
  ? new NativeFunction(sym('zend_get_executed_filename_ex'), 'pointer', [], HOT) : null;

function findFilenameOffset(ed) {
  // the innermost user frame's op_array holds the zend_string the engine reports as the file
  if (getExecutedFilenameEx === null) return;
  const fname = getExecutedFilenameEx();
  if (fname.isNull()) return;
  for (let f = ed; !f.isNull(); f = f.add(ED_PREV).readPointer()) {
    const func = f.add(ED_FUNC).readPointer();
    if (func.isNull() || func.readU8() !== ZEND_USER_FUNCTION) continue;
    for (let off = 72; off < 320; off += 8) {
      if (func.add(off).readPointer().equals(fname)) { filenameOffset = off; return; }
    }
    return;
  }
}

function frameName(func) {
  const name = func.add(FN_NAME).readPointer();
  let s = name.isNull() ? '{main}' : zstr(name, 256);
  const scope = func.add(FN_SCOPE).readPointer();
  if (!scope.isNull()) s = zstr(scope.add(CE_NAME).readPointer(), 256) + '::' + s;
  return s;
}

// zend_function address -> "name" or "name (file" for user code. Cleared at every request
// start: without opcache a request's op_arrays are freed and their addresses reused.
let funcCache = new Map();

function funcLabel(addr) {
  // -> [label, true when user code (the caller appends ":line)")]
  let entry = funcCache.get(addr);
  if (entry === undefined) {
    const func = ptr(addr);
    const user = func.readU8() === ZEND_USER_FUNCTION && filenameOffset > 0;
    let label = frameName(func);
    if (user) label += ' (' + zstr(func.add(filenameOffset).readPointer(), 1024);
    entry = [label, user];
    if (funcCache.size > 4096) funcCache = new Map();
    funcCache.set(addr, entry);
  }
  return entry;
}

function stackOf(ed) {
  // ed: the innermost PHP frame to report (the caller of a hooked internal function)
  const frames = [];
  if (filenameOffset < 0) findFilenameOffset(ed);
  let f = ed;
  while (!f.isNull() && frames.length < state.stackDepth) {
    const dv = new DataView(f.readByteArray(ED_PREV + 8)); // opline, ..., func, This, prev
    const func = u64(dv, ED_FUNC);
    if (func !== 0) {
      const [label, user] = funcLabel(func);
      if (!user) frames.push(label);
      else {
        const opline = u64(dv, ED_OPLINE);
        const line = opline === 0 ? 0 : ptr(opline).add(OPLINE_LINENO).readU32();
        frames.push(label + ':' + line + ')');
      }
    }
    f = ptr(u64(dv, ED_PREV));
  }
  return frames;
}

// ------------------------------------------------------------------------- native collector
/*
 * Reading a call's arguments and stack from JS cost ~16 us of the ~19 us a hooked call added
 * (bench/php_hook_cost.py): every NativePointer read is a call out of QuickJS (~0.6 us), and an
 * event needs dozens. This C function (Frida CModule) does all the reads and writes the
 * arguments and stack labels as one JSON text, `[[args...], [frames...]]`, that JS reads
 * with a single readUtf8String and parses: ~2 us. Strings become JSON as php_agent_core.js's
 * utf8Decode would decode them (an invalid byte -> U+FFFD), capped like the JS path. Arguments
 * that are not strings, integers, booleans or null come out as null and are read by JS
 * (zvalString: arrays, objects, doubles). Layouts are the ones documented at the top of this
 * file and checked at install (filename offset found, not assumed). If the CModule does not
 * compile, or RAMPART.native is false (bench), the JS readers below run instead.
 */
const COLLECT_BYTES = 512 * 1024; // content cap; a 4 KiB reserve keeps the JSON closed
const COLLECT_C = `
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

typedef struct { u8 * buf; u32 pos; u32 content; u32 total; } W;
/* cfg: buf, total size, zend_op_array.filename offset (or -1), stack depth, arg cap, max args;
 * out: where the args end in the text */
typedef struct { u8 * buf; u64 total; i64 fname_off; u64 depth; u64 arg_cap; u64 max_args; u64 split; } Cfg;

static const char HEX[] = "0123456789abcdef";

static void put (W * w, u8 c) { if (w->pos < w->total) w->buf[w->pos++] = c; }
static void lit (W * w, const char * s) { while (*s) put (w, (u8) *s++); }

static void dec (W * w, i64 v)
{
  char tmp[24];
  int k = 0;
  u64 u = v < 0 ? (u64) (-(v + 1)) + 1 : (u64) v;
  if (v < 0) put (w, '-');
  do { tmp[k++] = '0' + (char) (u % 10); u /= 10; } while (u != 0);
  while (k > 0) put (w, (u8) tmp[--k]);
}

static void hex4 (W * w, u32 v)
{
  lit (w, "\\\\u");
  put (w, (u8) HEX[(v >> 12) & 15]); put (w, (u8) HEX[(v >> 8) & 15]);
  put (w, (u8) HEX[(v >> 4) & 15]); put (w, (u8) HEX[v & 15]);
}

/* bytes as the inside of a JSON string; stops (truncates) at the content cap */
static void bytes (W * w, const u8 * p, u64 n)
{
  u64 i = 0;
  while (i < n) {
    u8 b = p[i];
    int need, k, ok;
    u32 cp = 0;
    if (w->pos + 16 > w->content) return;
    if (b < 0x80) {
      if (b == '"' || b == '\\\\') { put (w, '\\\\'); put (w, b); }
      else if (b < 0x20) { lit (w, "\\\\u00"); put (w, (u8) HEX[b >> 4]); put (w, (u8) HEX[b & 15]); }
      else put (w, b);
      i++;
      continue;
    }
    if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; }
    else if (b >= 0xe0 && b <= 0xef) { need = 2; cp = b & 0x0f; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 3; cp = b & 0x07; }
    else need = 0;
    ok = need > 0;
    for (k = 1; ok && k <= need; k++) {
      if (i + k >= n || (p[i + k] & 0xc0) != 0x80) ok = 0;
      else cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok && ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))) ok = 0;
    if (!ok) { lit (w, "\\\\ufffd"); i++; continue; }
    /* as \\\\uXXXX (a surrogate pair above U+FFFF): the text stays ASCII, so JS string
     * indexes are byte offsets (the args/stack split) */
    if (cp >= 0x10000) { cp -= 0x10000; hex4 (w, 0xd800 + (cp >> 10)); hex4 (w, 0xdc00 + (cp & 0x3ff)); }
    else hex4 (w, cp);
    i += need + 1;
  }
}

/* zend_string: len @16, val @24 */
static void zstr (W * w, const u8 * zs, u64 cap)
{
  u64 n = *(const u64 *) (zs + 16);
  bytes (w, zs + 24, n < cap ? n : cap);
}

static void args (W * w, const u8 * ed, const Cfg * c)
{
  u32 n = *(const u32 *) (ed + 44), i;
  if (n > c->max_args) n = (u32) c->max_args;
  put (w, '[');
  for (i = 0; i < n; i++) {
    const u8 * z = ed + 80 + (u64) i * 16;
    u8 t = z[8];
    if (i > 0) put (w, ',');
    if (t == 10) { z = *(const u8 * const *) z + 8; t = z[8]; } /* a reference: its zval */
    if (t == 6) { put (w, '"'); zstr (w, *(const u8 * const *) z, c->arg_cap); put (w, '"'); }
    else if (t == 4) { put (w, '"'); dec (w, *(const i64 *) z); put (w, '"'); }
    else if (t <= 1) lit (w, "\\"\\"");
    else if (t == 2) lit (w, "\\"false\\"");
    else if (t == 3) lit (w, "\\"true\\"");
    else lit (w, "null");
  }
  put (w, ']');
}

/* "{main} (/srv/app.php:16)", "Foo::bar (/srv/lib.php:3)", "strlen" */
static void stack (W * w, const u8 * ed, const Cfg * c)
{
  u64 n = 0;
  put (w, '[');
  while (ed != 0 && n < c->depth) {
    const u8 * func = *(const u8 * const *) (ed + 24);
    if (func != 0) {
      const u8 * name = *(const u8 * const *) (func + 8);
      const u8 * scope = *(const u8 * const *) (func + 16);
      if (n > 0) put (w, ',');
      put (w, '"');
      if (scope != 0) { zstr (w, *(const u8 * const *) (scope + 8), 256); lit (w, "::"); }
      if (name != 0) zstr (w, name, 256); else lit (w, "{main}");
      if (func[0] == 2 && c->fname_off > 0) {
        const u8 * opline = *(const u8 * const *) ed;
        lit (w, " (");
        zstr (w, *(const u8 * const *) (func + c->fname_off), 1024);
        put (w, ':');
        dec (w, opline != 0 ? *(const u32 *) (opline + 24) : 0);
        put (w, ')');
      }
      put (w, '"');
      n++;
    }
    ed = *(const u8 * const *) (ed + 48);
  }
  put (w, ']');
}

/* a C string as a JSON string (null for NULL), at most cap bytes */
static void cstring (W * w, const u8 * p, u64 cap)
{
  u64 n = 0;
  if (p == 0) { lit (w, "null"); return; }
  while (n < cap && p[n] != 0) n++;
  put (w, '"');
  bytes (w, p, n);
  put (w, '"');
}

typedef u8 * (*getenv_fn) (const char * name, u64 len);
/* rq: sapi_globals, sapi_getenv (or 0), the number of names, then name/length pairs */
typedef struct { const u8 * sg; getenv_fn getenv; u64 n; const char * names[16]; u64 lens[16]; } Rq;

/* [method, request URI, query string, [sapi_getenv(name) for each name]], from
 * sapi_globals.request_info (method @8, query @16, URI @48) */
u32 rampart_request (const Rq * rq, const Cfg * c)
{
  W w;
  u64 i;
  w.buf = c->buf;
  w.pos = 0;
  w.total = (u32) c->total;
  w.content = (u32) c->total - 4096;
  put (&w, '[');
  cstring (&w, *(const u8 * const *) (rq->sg + 8), 16);
  put (&w, ',');
  cstring (&w, *(const u8 * const *) (rq->sg + 48), c->arg_cap);
  put (&w, ',');
  cstring (&w, *(const u8 * const *) (rq->sg + 16), c->arg_cap);
  lit (&w, ",[");
  for (i = 0; i < rq->n; i++) {
    if (i > 0) put (&w, ',');
    cstring (&w, rq->getenv != 0 ? rq->getenv (rq->names[i], rq->lens[i]) : 0, 1024);
  }
  lit (&w, "]]");
  return w.pos;
}

/* JSON texts joined by '\n' (JSON.stringify never emits a raw newline) -> frames: each a
 * 4-byte big-endian length, then the text. Returns the bytes written to out. */
u64 rampart_frame (const u8 * in, u8 * out)
{
  u64 o = 0, k;
  while (1) {
    const u8 * start = in;
    u64 n;
    while (*in != 0 && *in != '\\n') in++;
    n = (u64) (in - start);
    out[o] = (u8) (n >> 24); out[o + 1] = (u8) (n >> 16); out[o + 2] = (u8) (n >> 8); out[o + 3] = (u8) n;
    for (k = 0; k < n; k++) out[o + 4 + k] = start[k];
    o += 4 + n;
    if (*in == 0) return o;
    in++;
  }
}

/* [[args of args_ed], [stack from stack_ed, or from args_ed's caller]]; returns the length */
u32 rampart_collect (const u8 * args_ed, const u8 * stack_ed, Cfg * c)
{
  W w;
  w.buf = c->buf;
  w.pos = 0;
  w.total = (u32) c->total;
  w.content = (u32) c->total - 4096;
  put (&w, '[');
  if (args_ed != 0) args (&w, args_ed, c); else lit (&w, "[]");
  c->split = w.pos;
  put (&w, ',');
  if (stack_ed == 0 && args_ed != 0) stack_ed = *(const u8 * const *) (args_ed + 48);
  stack (&w, stack_ed, c);
  put (&w, ']');
  return w.pos;
}
`;

const collector = {
  fn: null, frame: null, request: null, rq: null, cfg: null, split: null, buf: null, fnameOff: -2,
  depth: -1,
};

function installCollector() {
  if (CFG.native === false) return;
  try {
    const cm = new CModule(COLLECT_C);
    collector.buf = Memory.alloc(COLLECT_BYTES + 4096);
    collector.cfg = Memory.alloc(56);
    // read from JS through a typed array over it: no NativePointer read (see HOT)
    collector.split = new Uint32Array(ArrayBuffer.wrap(collector.cfg.add(48), 4));
    collector.cfg.writePointer(collector.buf);
    collector.cfg.add(8).writeU64(COLLECT_BYTES + 4096);
    collector.cfg.add(32).writeU64(ARG_CAP);
    collector.cfg.add(40).writeU64(ARGS_MAX);
    collector.fn = new NativeFunction(cm.rampart_collect, 'uint32', ['pointer', 'pointer', 'pointer'], GUARDED);
    collector.frame = new NativeFunction(cm.rampart_frame, 'uint64', ['pointer', 'pointer'], FAST);
    if (sapiGlobals !== null) {
      const names = ['REMOTE_ADDR'].concat(HEADERS.map((h) => h[1]));
      const rq = Memory.alloc(24 + 16 * 8 * 2);
      rq.writePointer(sapiGlobals);
      rq.add(8).writePointer(sapiGetenvAddr || NULL);
      rq.add(16).writeU64(names.length);
      names.forEach((name, i) => {
        rq.add(24 + i * 8).writePointer(envName(name));
        rq.add(24 + 128 + i * 8).writeU64(name.length);
      });
      collector.rq = rq;
      // sapi_getenv is PHP's: allocates from the request's memory, never enters JS
      collector.request = new NativeFunction(cm.rampart_request, 'uint32', ['pointer', 'pointer'], GUARDED);
    }
    state.keep.push(cm);
  } catch (e) {
    log('native collector failed (' + e.message + '): arguments and stacks read from JS');
    collector.fn = null;
  }
}

/* [args, stack] of a call: argsEd is the internal call's frame (null for include/eval),
 * stackEd the innermost PHP frame to report (null: argsEd's caller). */
function collect(argsEd, stackEd, hook) {
  if (filenameOffset < 0) findFilenameOffset(stackEd !== null ? stackEd : argsEd.add(ED_PREV).readPointer());
  if (collector.fn === null) {
    const sed = stackEd !== null ? stackEd : argsEd.add(ED_PREV).readPointer();
    return [argsEd === null ? [] : argsOf(argsEd, hook), sed.isNull() ? [] : stackOf(sed), null, null];
  }
  // the cfg words that can change, written only when they do (each write is a call out of JS)
  if (collector.fnameOff !== filenameOffset) {
    collector.fnameOff = filenameOffset;
    collector.cfg.add(16).writeS64(filenameOffset);
  }
  if (collector.depth !== state.stackDepth) {
    collector.depth = state.stackDepth;
    collector.cfg.add(24).writeU64(state.stackDepth);
  }
  const n = collector.fn(argsEd === null ? NULL : argsEd, stackEd === null ? NULL : stackEd, collector.cfg);
  const text = collector.buf.readUtf8String(n); // ASCII: the rest is \u-escaped
  const split = collector.split[0];
  const out = JSON.parse(text);
  const args = out[0];
  let argsJson = text.slice(1, split);
  for (let i = 0; i < args.length; i++) {
    if (args[i] !== null) continue;
    const z = argsEd.add(ED_ARGS + i * ZVAL);
    args[i] = hook === 'curl_exec' && z.add(8).readU8() === IS_OBJECT ? curlUrl(z.readPointer()) : zvalString(z, 0);
    argsJson = null;
  }
  // the JSON of args and stack, reused when the event is encoded (eventMessage)
  out.push(argsJson !== null ? argsJson : JSON.stringify(args), text.slice(split + 1, -1));
  return out;
}

// ------------------------------------------------------------------------- policy
// ------------------------------------------------------------------------- events
// the request context is read once per request (php_request_startup bumps the counter)
const requestCache = { gen: -1, req: null, json: null };

function envelope(type, data) {
  return {
    message_type: type, pid: state.pid, runtime: 'php', runtime_version: RUNTIME_VERSION,
    probe_version: PROBE_VERSION, time: Date.now(), data,
  };
}

/* An event as {message_type, raw}: its JSON built from pieces that are JSON already (the C
 * collector's args and stack, the request's, stringified once a request): JSON.stringify of a
 * whole event cost ~10-20 us in QuickJS, on Frida's thread but under the same JS lock. */
let eventHead = null;
function eventMessage(ev, argsJson, stackJson) {
  if (argsJson === null || stackJson === null) return envelope(2, ev);
  if (eventHead === null) {
    eventHead = '{"message_type":2,"pid":' + state.pid + ',"runtime":"php","runtime_version":' +
      JSON.stringify(RUNTIME_VERSION) + ',"probe_version":' + JSON.stringify(PROBE_VERSION) + ',"time":';
  }
  let raw = eventHead + Date.now() + ',"data":{"hook":' + JSON.stringify(ev.hook) + ',"kind":"' +
    ev.kind + '","args":' + argsJson + ',"stack":' + stackJson + ',"blocked":' + ev.blocked;
  if (ev.policy_id !== undefined) raw += ',"policy_id":' + JSON.stringify(ev.policy_id);
  if (ev.request !== undefined) raw += ',"request":' + requestCache.json;
  return { message_type: 2, raw: raw + '}}' };
}

function toJson(m) {
  return m.raw !== undefined ? m.raw : JSON.stringify(m);
}

function enqueue(msg) {
  if (state.conn === null) { drop('agent_away'); return; }
  if (state.queue.length >= QUEUE_MAX) { drop('queue_full'); return; }
  state.queue.push(msg);
}

/*
 * One hooked call, on PHP's thread. Returns the blocking rule, or null to let the call run.
 * Order (probe contract): quota -> build the event -> block rules -> filter rules -> enqueue.
 */
function onCall(hook, kind, args, ed, argsEd) {
  const allowed = state.quotas.allow(hook, Date.now());
  // a kind a block-mode detection rule looks at is checked over its quota too: the quota
  // limits reporting, never blocking
  const detecting = state.detect.covers(kind);
  if (!allowed && !detecting) {
    drop('quota');
    return null;
  }
  // args: given (include/eval), or read from argsEd, the internal call's frame; ed: the
  // innermost PHP frame (null: argsEd's caller)
  if (ed === null && argsEd === null) ed = NULL;
  const [collected, stack, argsJson, stackJson] = ed !== null && ed.isNull() ? [[], [], null, null]
    : collect(argsEd, ed, hook);
  const ev = { hook, kind, args: args !== null ? args : collected, stack, blocked: false };
  const gen = requestGen();
  if (gen < 0 || requestCache.gen !== gen) {
    if (requestCache.gen !== gen) funcCache = new Map(); // a new request: op_arrays may differ
    requestCache.gen = gen;
    requestCache.req = requestContext();
    requestCache.json = requestCache.req === null ? null : JSON.stringify(requestCache.req);
  }
  if (requestCache.req !== null) ev.request = requestCache.req;
  let blockRule = null;
  for (const r of state.blocks) {
    if (ruleMatches(r, ev)) { blockRule = r; break; }
  }
  if (blockRule === null && detecting && requestCache.req !== null) {
    let rule = null;
    try {
      rule = state.detect.check(kind, hook, ev.args, requestCache.req);
    } catch (e) {
      if (!state.errorsReported['detect']) {
        state.errorsReported['detect'] = true;
        log('detection check failed: ' + e.message);
      }
    }
    if (rule !== null) blockRule = { policy_id: rule };
  }
  if (blockRule !== null) {
    ev.blocked = true;
    ev.policy_id = blockRule.policy_id;
    state.counters.blocked++;
  } else {
    if (!allowed) { drop('quota'); return null; }
    for (const r of state.filters) {
      if (ruleMatches(r, ev)) { drop('filter'); return null; }
    }
  }
  if (allowed) enqueue(eventMessage(ev, args !== null ? JSON.stringify(args) : argsJson, stackJson));
  else drop('quota');
  return blockRule;
}

function hookFailed(hook, e) {
  // a hook that raises disables itself; the app's call proceeds
  state.disabled[hook] = true;
  drop('error');
  if (!state.errorsReported[hook]) {
    state.errorsReported[hook] = true;
    log('hook ' + hook + ' disabled after an internal error: ' + e.message);
  }
}

// ------------------------------------------------------------------------- blocking
const zendThrowException = sym('zend_throw_exception')
  ? new NativeFunction(sym('zend_throw_exception'), 'pointer', ['pointer', 'pointer', 'int64']) : null;
const zendCeException = sym('zend_ce_exception');

function throwBlocked(hook, rule) {
  // PHP's Exception (catchable by `catch (Exception $e)`), as a failing call would throw
  const msg = Memory.allocUtf8String('Rampart blocked ' + hook + ' by policy ' + rule.policy_id);
  zendThrowException(zendCeException.readPointer(), msg, 0);
}

const canBlock = zendThrowException !== null && zendCeException !== null;

// ------------------------------------------------------------------------- install
/* Each Frida memory read costs 1-6 us under QuickJS, so the hot path reads blocks and parses
 * them with a DataView. Addresses fit in a double (user space is below 2^47). */
function u64(dv, off) {
  return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 4294967296;
}

function argsOf(ed, hookName) {
  const n = Math.min(ed.add(ED_NUM_ARGS).readU32(), ARGS_MAX);
  if (n === 0) return [];
  const dv = new DataView(ed.add(ED_ARGS).readByteArray(n * ZVAL));
  const out = [];
  for (let i = 0; i < n; i++) {
    const type = dv.getUint8(i * ZVAL + 8);
    if (type === IS_STRING) out.push(zstr(ptr(u64(dv, i * ZVAL))));
    else if (type === IS_OBJECT && hookName === 'curl_exec') out.push(curlUrl(ptr(u64(dv, i * ZVAL))));
    else out.push(zvalString(ed.add(ED_ARGS + i * ZVAL), 0));
  }
  return out;
}

/*
 * curl_exec($ch): the URL the handle will fetch, not "[object]". PHP keeps no copy of it
 * (curl_init($url), curl_setopt(CURLOPT_URL) and curl_setopt_array all hand it to
 * curl_easy_setopt, which copies it), but libcurl answers CURLINFO_EFFECTIVE_URL with the
 * URL set by CURLOPT_URL until a transfer changes it (setopt.c sets state.url). So: find the
 * CURL * in PHP's php_curl, which starts with `CURL *cp` and embeds its zend_object (std)
 * at the offset the object's handlers record (zend_object_handlers.offset, their first
 * field), and ask libcurl. No extra hooks on curl_init/curl_setopt, no per-handle map.
 */
const OBJ_CE = 16, OBJ_HANDLERS = 24; // zend_object: gc (8), handle (4, padded), ce, handlers
const CURLINFO_EFFECTIVE_URL = 0x100001; // CURLINFO_STRING + 1
let curlGetinfo; // undefined: not looked up yet; null: no libcurl in this process
let curlUrlOut = null;
function curlUrl(obj) {
  if (curlGetinfo === undefined) {
    const a = Module.findGlobalExportByName('curl_easy_getinfo');
    curlGetinfo = a === null ? null
      : new NativeFunction(a, 'int', ['pointer', 'int', '...', 'pointer']);
    curlUrlOut = Memory.alloc(Process.pointerSize);
  }
  if (curlGetinfo === null || obj.isNull()) return '[object]';
  const ce = obj.add(OBJ_CE).readPointer();
  if (zstr(ce.add(CE_NAME).readPointer(), 64) !== 'CurlHandle') return '[object]';
  const offset = obj.add(OBJ_HANDLERS).readPointer().readS32();
  if (offset <= 0) return '[object]';
  const cp = obj.sub(offset).readPointer();
  if (cp.isNull()) return '[object]';
  curlUrlOut.writePointer(ptr(0));
  if (curlGetinfo(cp, CURLINFO_EFFECTIVE_URL, curlUrlOut) !== 0) return '[object]';
  return cstr(curlUrlOut.readPointer());
}

function swapHandler(hookName, kind, fn, handlerOff) {
  const slot = fn.add(handlerOff);
  const orig = slot.readPointer();
  const callOrig = new NativeFunction(orig, 'void', ['pointer', 'pointer'], HOT);
  const replacement = new NativeCallback(function (ed, rv) {
    let rule = null;
    // never runs in a forked child: the fork guard's C gate calls the original there
    if (!state.stopped && !state.disabled[hookName]) {
      try {
        if (edOffset < 0) locateEd(ed); // teaches include/eval where the current frame is
        rule = onCall(hookName, kind, null, null, ed);
      } catch (e) {
        hookFailed(hookName, e);
        rule = null;
      }
    }
    if (rule !== null && canBlock) {
      rv.add(8).writeU32(IS_FALSE); // return false, as a failing call does
      throwBlocked(hookName, rule);
      return;
    }
    callOrig(ed, rv);
  }, 'void', ['pointer', 'pointer']);
  state.keep.push(callOrig, replacement);
  slot.writePointer(gate('handler', orig, replacement) || replacement);
  state.swaps.push({ slot, orig });
}

// ------------------------------------------------------------------------- fork guard
/*
 * pcntl_fork (issue 6). A forked child inherits every hook but no Frida thread, and any lock a
 * Frida thread held at the fork stays locked for ever in it (the script's JS lock, Gum's heap
 * and interceptor locks): a child that entered Frida hung there. Stress run of
 * tests/apps/php/fork.php (6 x 1,000 children, 8 alive at once, the parent busy reporting):
 * 51 children hung in pthread_mutex_lock called from Frida's agent code. So nothing of Frida
 * runs in a child: each hook is a small C gate (Frida CModule, plain machine code, no lock)
 * in front of its JS callback. glibc's fork runs our atfork child handler, which sets
 * `rampart_forked` in the child; a gate that sees it calls PHP's original directly. A forked
 * child therefore runs unprobed: it neither reports (it never could: no thread to send) nor
 * blocks. Until the handler is registered (the end of start(): an atfork handler cannot be
 * removed, so it is registered once nothing can fail any more) the gates compare getpid().
 *
 * Slots (pointers, written before a gate is put in PHP's tables): 0 compile_file original,
 * 1 its JS callback, 2 zend_get_executed_filename_ex, 3/4 compile_string original/JS,
 * 5/6 the exit hook's original/JS, 7 getpid, 8 our pid (until armed, then 0), then two per
 * internal-function hook: original, JS.
 */
const GATES = SINKS.length + 4;
const SLOT_HOOKS = 9;
const forkGuard = { cm: null, slots: null, flag: null, patches: null, next: 0 };
const PATCHES_MAX = 32;

function gateSource(n) {
  let src = `
typedef void (*handler_fn) (void *, void *);
typedef void * (*compile_file_fn) (void *, int);
typedef void * (*compile_string_fn) (void *, void *, int);
typedef int (*shutdown_fn) (int, int);
typedef void * (*filename_fn) (void);
typedef int (*getpid_fn) (void);
typedef int (*mprotect_fn) (void *, unsigned long, int);
extern volatile int rampart_forked;
extern void * volatile rampart_slots[];
/* code Frida patched (see codePatches): mprotect, a count, then {address, original 16 bytes} */
extern unsigned char rampart_patches[];

/* glibc's fork runs this in the child, on the forking thread (the only one there). Frida's
 * inline hooks (exit, _exit, abort, signal, sigaction, ld.so's _dl_debug_state that dlopen and
 * dlclose call, our php_request_startup listener) would run Gum's code in the child: the
 * child gets the original bytes back, in its own copy of those pages. */
void rampart_on_fork_child (void)
{
  const unsigned long long * h = (const unsigned long long *) rampart_patches;
  mprotect_fn mp = (mprotect_fn) h[0];
  unsigned long long n = h[1], i;
  int k;
  rampart_forked = 1;
  for (i = 0; i < n; i++) {
    unsigned char * at = (unsigned char *) h[2 + 3 * i];
    const unsigned char * orig = (const unsigned char *) &h[3 + 3 * i];
    unsigned long long page = (unsigned long long) at & ~4095ULL;
    unsigned long long len = ((unsigned long long) at + 16 - page + 4095) & ~4095ULL;
    for (k = 0; k < 16 && at[k] == orig[k]; k++) {}
    if (k == 16) continue; /* not patched */
    if (mp ((void *) page, len, 7) != 0) continue; /* read, write, exec */
    for (k = 0; k < 16; k++) at[k] = orig[k];
    mp ((void *) page, len, 5); /* read, exec */
  }
}

/* 1 in a forked child: then only PHP's originals run */
static int child (void)
{
  if (rampart_forked) return 1;
  if (rampart_slots[8] != 0 && ((getpid_fn) rampart_slots[7]) () != (int) (long) rampart_slots[8])
    { rampart_forked = 1; return 1; }
  return 0;
}

/* a request's primary script (no PHP frame running) is not an include: no JS for it */
void * rampart_compile_file (void * handle, int type)
{
  if (child () || ((filename_fn) rampart_slots[2]) () == 0)
    return ((compile_file_fn) rampart_slots[0]) (handle, type);
  return ((compile_file_fn) rampart_slots[1]) (handle, type);
}

void * rampart_compile_string (void * source, void * filename, int position)
{
  return ((compile_string_fn) rampart_slots[child () ? 3 : 4]) (source, filename, position);
}

int rampart_shutdown (int type, int module)
{
  return ((shutdown_fn) rampart_slots[child () ? 5 : 6]) (type, module);
}
`;
  for (let i = 0; i < n; i++) {
    const k = SLOT_HOOKS + 2 * i;
    src += `void rampart_h${i} (void * ed, void * rv) ` +
      `{ ((handler_fn) rampart_slots[child () ? ${k} : ${k + 1}]) (ed, rv); }\n`;
  }
  return src;
}

function installForkGuard() {
  try {
    const slots = Memory.alloc((SLOT_HOOKS + 2 * GATES) * Process.pointerSize);
    const flag = Memory.alloc(8);
    const patches = Memory.alloc(16 + PATCHES_MAX * 24); // count 0 until armForkGuard
    patches.writePointer(Module.getGlobalExportByName('mprotect'));
    slots.add(7 * Process.pointerSize).writePointer(Module.getGlobalExportByName('getpid'));
    slots.add(8 * Process.pointerSize).writePointer(ptr(state.pid));
    const cm = new CModule(gateSource(GATES),
      { rampart_forked: flag, rampart_slots: slots, rampart_patches: patches });
    Object.assign(forkGuard, { cm, slots, flag, patches });
    state.keep.push(cm, slots, flag, patches);
  } catch (e) {
    log('fork guard in C failed (' + e.message + '): a forked child may hang in a hook');
  }
}

/* The gate to write into PHP's table for a hook: `orig` in a forked child, `js` otherwise.
 * `which`: 'handler', 'compile_file', 'compile_string' or 'shutdown'. Null without a guard
 * (the caller then writes `js` itself, as before the guard existed). */
function gate(which, orig, js, extra) {
  if (forkGuard.cm === null) return null;
  const put = (i, p) => forkGuard.slots.add(i * Process.pointerSize).writePointer(p);
  switch (which) {
    case 'compile_file': put(0, orig); put(1, js); put(2, extra); return forkGuard.cm.rampart_compile_file;
    case 'compile_string': put(3, orig); put(4, js); return forkGuard.cm.rampart_compile_string;
    case 'shutdown': put(5, orig); put(6, js); return forkGuard.cm.rampart_shutdown;
    default: {
      if (forkGuard.next >= GATES) return null;
      const i = forkGuard.next++;
      put(SLOT_HOOKS + 2 * i, orig);
      put(SLOT_HOOKS + 2 * i + 1, js);
      return forkGuard.cm['rampart_h' + i];
    }
  }
}

/* Functions whose code Frida patches in this process (inline hooks: Gum's exceptor on
 * signal/sigaction, Frida's exit monitor on exit/_exit/abort, its module registry on ld.so's
 * _dl_debug_state, our php_request_startup listener...): each candidate's first 16 bytes as
 * the file it is mapped from has them. -> [[address, original bytes]] */
const PATCH_CANDIDATES = ['abort', 'signal', 'ssignal', 'sigaction', '__sigaction', 'exit', '_exit',
  '_Exit', 'fork', 'vfork', 'execve', 'dlopen', 'dlclose', 'close', 'posix_spawn', 'raise'];
function codePatches() {
  const addrs = PATCH_CANDIDATES.map((n) => Module.findGlobalExportByName(n));
  addrs.push(sym('php_request_startup'), sym('php_module_shutdown'));
  // ld.so's r_debug.r_brk (_dl_debug_state), which Gum hooks to see dlopen/dlclose
  const rDebug = Module.findGlobalExportByName('_r_debug');
  if (rDebug !== null) addrs.push(rDebug.add(16).readPointer());
  const open = libcFn('open', 'int', ['pointer', 'int']);
  const pread = libcFn('pread', 'ssize_t', ['int', 'pointer', 'size_t', 'int64']);
  const buf = Memory.alloc(16);
  const seen = new Set();
  const out = [];
  for (const a of addrs) {
    if (a === null || seen.has(a.toString())) continue;
    seen.add(a.toString());
    const r = Process.findRangeByAddress(a);
    if (r === null || !r.file || a.add(16).compare(r.base.add(r.size)) > 0) continue;
    const fd = open(Memory.allocUtf8String(r.file.path), 0);
    if (fd < 0) continue;
    try {
      if (pread(fd, buf, 16, r.file.offset + a.sub(r.base).toInt32()).toNumber() !== 16) continue;
    } finally { net.close(fd); }
    // kept whether patched now or not: Frida patches some later (ld.so's, seen in tests)
    out.push([a, new Uint8Array(buf.readByteArray(16))]);
  }
  return out;
}

/* Called last in start() (an atfork handler cannot be removed, and the script is unloaded
 * after a failed start): from now on glibc's fork tells the gates (no getpid() a call) and
 * gives the child the original code back. */
function armForkGuard() {
  if (forkGuard.cm === null) return;
  const reg = Module.findGlobalExportByName('__register_atfork');
  if (reg === null) return; // not glibc: the gates keep comparing getpid()
  const patches = codePatches().slice(0, PATCHES_MAX);
  patches.forEach(([a, orig], i) => {
    forkGuard.patches.add(16 + i * 24).writePointer(a);
    forkGuard.patches.add(24 + i * 24).writeByteArray(orig.buffer);
  });
  forkGuard.patches.add(8).writeU64(patches.length);
  const registerAtfork = new NativeFunction(reg, 'int', ['pointer', 'pointer', 'pointer', 'pointer']);
  if (registerAtfork(NULL, NULL, forkGuard.cm.rampart_on_fork_child, NULL) === 0) {
    forkGuard.slots.add(8 * Process.pointerSize).writePointer(NULL);
  }
}

function installCompileHooks() {
  // include/require (zend_compile_file) and eval (zend_compile_string): function pointers the
  // engine calls for every compile, opcache's cached includes too.
  const getExecutedFilename = getExecutedFilenameEx;
  const fileSlot = sym('zend_compile_file');
  if (fileSlot !== null && getExecutedFilename !== null) {
    const orig = fileSlot.readPointer();
    const callOrig = new NativeFunction(orig, 'pointer', ['pointer', 'int'], HOT);
    const cb = new NativeCallback(function (handle, type) {
      let rule = null;
      // no running PHP frame = the request's primary script (auto_prepend too): not an event
      if (!state.stopped && !state.disabled.include && !getExecutedFilename().isNull()) {
        try {
          // zend_file_handle (8.1+): handle union (40 bytes), then zend_string *filename
          const name = zstr(handle.add(40).readPointer());
          rule = onCall('include', 'code', [name], currentExecuteData(), null);
        } catch (e) { hookFailed('include', e); rule = null; }
      }
      if (rule !== null && canBlock) { throwBlocked('include', rule); return ptr(0); }
      return callOrig(handle, type);
    }, 'pointer', ['pointer', 'int']);
    state.keep.push(callOrig, cb);
    fileSlot.writePointer(gate('compile_file', orig, cb, getExecutedFilename) || cb);
    state.swaps.push({ slot: fileSlot, orig });
    state.installed.push('include');
  } else state.missing.push('include');

  const strSlot = sym('zend_compile_string');
  if (strSlot !== null) {
    const orig = strSlot.readPointer();
    // 8.2: (zend_string *source, const char *filename, zend_compile_position position)
    const callOrig = new NativeFunction(orig, 'pointer', ['pointer', 'pointer', 'int'], HOT);
    const cb = new NativeCallback(function (source, filename, position) {
      let rule = null;
      if (!state.stopped && !state.disabled.eval) {
        try {
          rule = onCall('eval', 'code', [zstr(source)], currentExecuteData(), null);
        } catch (e) { hookFailed('eval', e); rule = null; }
      }
      if (rule !== null && canBlock) { throwBlocked('eval', rule); return ptr(0); }
      return callOrig(source, filename, position);
    }, 'pointer', ['pointer', 'pointer', 'int']);
    state.keep.push(callOrig, cb);
    strSlot.writePointer(gate('compile_string', orig, cb) || cb);
    state.swaps.push({ slot: strSlot, orig });
    state.installed.push('eval');
  } else state.missing.push('eval');
}

let edOffset = -1; // EG(current_execute_data), found at install
function currentExecuteData() {
  if (edOffset < 0) locateEdFromFilename();
  if (edOffset < 0) return null;
  const ed = sym('executor_globals').add(edOffset).readPointer();
  return ed.isNull() ? null : ed;
}

/* Before any hooked internal call has shown us EG(current_execute_data), find it from inside
 * an include/eval: it is the pointer in executor_globals to a frame whose user function's
 * op_array holds the file zend_get_executed_filename_ex() reports (this also finds
 * zend_op_array.filename). Tried a few times, then left to locateEd. */
let edSearches = 0;
function locateEdFromFilename() {
  const eg = sym('executor_globals');
  if (eg === null || getExecutedFilenameEx === null || edSearches++ > 4) return;
  const fname = getExecutedFilenameEx();
  if (fname.isNull()) return;
  for (let off = 0; off < 1024; off += 8) {
    try {
      const ed = eg.add(off).readPointer();
      if (ed.isNull()) continue;
      const func = ed.add(ED_FUNC).readPointer();
      if (func.isNull() || func.readU8() !== ZEND_USER_FUNCTION) continue;
      for (let f = 72; f < 320; f += 8) {
        if (func.add(f).readPointer().equals(fname)) {
          edOffset = off;
          if (filenameOffset < 0) filenameOffset = f;
          return;
        }
      }
    } catch (e) { /* not a pointer to a frame */ }
  }
}

function locateEd(ed) {
  // the executor's current_execute_data is the frame of the internal call being made
  const eg = sym('executor_globals');
  if (eg === null) return;
  for (let off = 0; off < 1024; off += 8) {
    if (eg.add(off).readPointer().equals(ed)) { edOffset = off; return; }
  }
}

// Bumped by php_request_startup, which runs once per request in every SAPI. A CModule
// (~0.2 us a call) rather than a JS onEnter (~25 us measured on php-fpm): it runs on every
// request, events or not. The counter lives in a Memory.alloc buffer passed to the CModule
// (reading a CModule-defined variable from JS crashed targets: platform notes).
let requestGenPtr = null;

function installRequestHook() {
  const addr = sym('php_request_startup');
  if (addr === null) return; // requestGen() stays -1: the context is read on every event
  requestGenPtr = Memory.alloc(8);
  try {
    const cm = new CModule(`
      #include <gum/guminterceptor.h>
      extern volatile unsigned int request_gen;
      void onEnter (GumInvocationContext * ic) { request_gen++; }
    `, { request_gen: requestGenPtr });
    state.keep.push(cm);
    state.listeners.push(Interceptor.attach(addr, cm));
  } catch (e) {
    log('request hook in C failed (' + e.message + '), using JS');
    state.listeners.push(Interceptor.attach(addr, {
      onEnter() { requestGenPtr.writeU32(requestGenPtr.readU32() + 1); },
    }));
  }
}

let requestGenView = null; // a typed array over the counter: no NativePointer read a call
function requestGen() {
  if (requestGenPtr === null) return -1;
  if (requestGenView === null) requestGenView = new Uint32Array(ArrayBuffer.wrap(requestGenPtr, 4));
  return requestGenView[0];
}

/*
 * The process is shutting down (php-fpm after pm.max_requests, the end of a CLI script):
 * Frida's thread may never run again, so what is queued would be lost. Send it from PHP's
 * thread, synchronously, on a fresh connection (the agent replaces the old one with it):
 * hello, the queued events, a heartbeat, exit. Bounded by a 200 ms send timeout; the only
 * socket I/O this probe does on PHP's thread, and only at exit.
 */
function exitFlush() {
  if (state.stopped || libc.getpid() !== state.pid) return; // a forked child: not ours to say
  const c = net;
  const queued = state.queue.filter((m) => m.message_type === 2);
  state.queue = [];
  state.alreadyRunning = true;
  const msgs = [hello()].concat(queued, [heartbeat(), envelope(0, { reason: 'php shutdown' })]);
  const fd = c.socket(AF_UNIX, SOCK_STREAM_CLOEXEC, 0);
  if (fd < 0) return;
  try {
    const tv = Memory.alloc(16);
    tv.writeU64(0);
    tv.add(8).writeU64(200000);
    c.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv, 16);
    if (c.connect(fd, sockaddrUn(SOCKET_PATH), 110) !== 0) return;
    const bytes = encodeFrames(msgs);
    const buf = Memory.alloc(bytes.byteLength);
    buf.writeByteArray(bytes);
    let off = 0;
    while (off < bytes.byteLength) {
      const n = c.write(fd, buf.add(off), bytes.byteLength - off).toNumber();
      if (n <= 0) break;
      off += n;
    }
    state.counters.sent += queued.length;
  } finally {
    c.close(fd);
    state.stopped = true; // nothing more to say; the process is going away
  }
}

// zend_module_entry (PHP 8.x, LP64): size, zend_api, zend_debug, zts, ini_entry @16, deps @24,
// name @32, functions @40, module_startup_func @48, module_shutdown_func @56
const ME_NAME = 32, ME_SHUTDOWN = 56;

/* The exit flush runs from the "standard" module's MSHUTDOWN, which php_module_shutdown calls
 * for every SAPI (zend_shutdown destroys the modules): a function pointer swapped behind the
 * fork guard's gate, so a forked child's exit never enters Frida. (An Interceptor listener on
 * php_module_shutdown runs Gum's invocation code first, which allocates on a thread's first
 * pass: Gum's heap lock, possibly held by a Frida thread at the fork.) */
function installExitHook() {
  let entry = null;
  try {
    const reg = sym('module_registry');
    const z = reg === null ? null : hashFind(reg, 'standard');
    if (z !== null && z.add(8).readU8() === IS_PTR) entry = z.readPointer();
    if (entry !== null && cstr(entry.add(ME_NAME).readPointer(), 16) !== 'standard') entry = null;
  } catch (e) { entry = null; }
  const slot = entry === null ? null : entry.add(ME_SHUTDOWN);
  const orig = slot === null ? null : slot.readPointer();
  if (orig !== null && !orig.isNull() && isCode(orig)) {
    const callOrig = new NativeFunction(orig, 'int', ['int', 'int'], HOT);
    const cb = new NativeCallback(function (type, module) {
      try { exitFlush(); } catch (e) { /* exiting anyway */ }
      return callOrig(type, module);
    }, 'int', ['int', 'int']);
    const g = gate('shutdown', orig, cb);
    if (g !== null) {
      state.keep.push(callOrig, cb);
      slot.writePointer(g);
      state.swaps.push({ slot, orig });
      return;
    }
  }
  const addr = sym('php_module_shutdown');
  if (addr === null) return;
  log('exit hook: standard module not found, using an Interceptor listener');
  state.listeners.push(Interceptor.attach(addr, {
    onEnter() {
      try { exitFlush(); } catch (e) { /* exiting anyway */ }
    },
  }));
}

function install() {
  installRequestHook();
  installCollector();
  const { functions, classes } = findTables();
  const hoff = handlerOffset(functions);
  let moff = -1;
  try { if (classes !== null) moff = classMethodTableOffset(classes); } catch (e) { log(e.message); }
  for (const [name, kind, cls] of SINKS) {
    const hook = cls ? CLASS_NAMES[cls] + '::' + name : name;
    let z = null;
    try {
      if (!cls) z = hashFind(functions, name);
      else if (moff >= 0) {
        const cz = hashFind(classes, cls);
        if (cz !== null) z = hashFind(cz.readPointer().add(moff), name);
      }
    } catch (e) { z = null; }
    const fn = z === null ? null : z.readPointer();
    if (fn === null || fn.readU8() !== 1) { state.missing.push(hook); continue; }
    try {
      swapHandler(hook, kind, fn, hoff);
      state.installed.push(hook);
    } catch (e) {
      state.missing.push(hook);
      log('hook ' + hook + ' not installed: ' + e.message);
    }
  }
  installCompileHooks();
}

function uninstall() {
  for (const s of state.swaps.reverse()) {
    try { s.slot.writePointer(s.orig); } catch (e) { /* keep going */ }
  }
  state.swaps = [];
  for (const l of state.listeners) l.detach();
  state.listeners = [];
}

// ------------------------------------------------------------------------- socket
function hello() {
  return envelope(100, {
    mode: 'attached', hooks: state.installed, already_running: state.alreadyRunning,
    protocol_version: 1, hooks_missing: state.missing, role: ROLE,
  });
}

function heartbeat() {
  return envelope(1, {
    sent: state.counters.sent, dropped: state.counters.dropped, blocked: state.counters.blocked,
    dropped_by: state.droppedBy, policies: state.policies, queue: state.queue.length,
  });
}

async function connect(replace) {
  if (state.connecting || state.stopped || (state.conn !== null && !replace)) return;
  state.connecting = true;
  try {
    const conn = openConnection();
    const old = state.conn;
    state.conn = conn; // the old connection, if any, is replaced at the agent by this hello
    state.backoff = 500;
    await conn.output.writeAll(encodeFrames([hello()]));
    state.alreadyRunning = true; // any later hello is a reconnect
    if (old !== null) old.close().catch(() => {});
    readLoop(conn);
  } catch (e) {
    if (state.conn === null) {
      setTimeout(() => connect(false), state.backoff);
      state.backoff = Math.min(state.backoff * 2, 30000);
    }
  } finally {
    state.connecting = false;
  }
}

/*
 * "Already running?" A second `rasp-attach` must not inject a second probe (double hooks, two
 * connections superseding each other). The probe listens on the abstract Unix socket
 * `rampart-php-<pid>`: the attacher finds it in /proc/<pid>/net/unix, connects instead of
 * injecting, and the probe answers with a fresh hello (`already_running: true`) on a new
 * connection, at once, even while it was waiting to reconnect.
 */
async function listenForPokes() {
  try {
    const l = await Socket.listen({
      family: 'unix', type: 'abstract', path: 'rampart-php-' + state.pid, backlog: 4,
    });
    state.listener = l;
    for (;;) {
      const c = await l.accept();
      c.close().catch(() => {});
      if (state.stopped) return;
      state.alreadyRunning = true;
      state.backoff = 500;
      connect(true);
    }
  } catch (e) {
    if (!state.stopped) log('poke listener: ' + e.message);
  }
}

function lost(conn) {
  if (state.conn !== conn) return;
  state.conn = null;
  for (let i = 0; i < state.queue.length; i++) drop('agent_away');
  state.queue = [];
  conn.close().catch(() => {});
  if (!state.stopped) setTimeout(() => connect(false), state.backoff);
}

let writing = false;
const encodeBuf = { size: 0, out: null };
/* Frames for `msgs`, encoded natively: Memory.allocUtf8String does the UTF-8 work that a JS
 * loop does 20x slower in QuickJS (and the JS lock is held meanwhile: PHP's hooks wait). */
function encodeFrames(msgs) {
  if (collector.frame !== null) {
    // one UTF-8 conversion and one C call for the whole batch: the texts joined by '\n'
    // (which JSON.stringify never emits raw), framed by rampart_frame into a buffer kept from
    // one batch to the next. (allocUtf8String: 10-20 us for a 10-event batch, 4.5 KB;
    // writeUtf8String into a kept buffer took 110 us.)
    const text = msgs.map(toJson).join('\n');
    const need = text.length * 3 + 4 * msgs.length + 1; // UTF-8: at most 3 bytes a UTF-16 unit
    if (encodeBuf.size < need) {
      encodeBuf.size = Math.max(need, 2 * encodeBuf.size, 256 * 1024);
      encodeBuf.out = Memory.alloc(encodeBuf.size);
    }
    const n = collector.frame(Memory.allocUtf8String(text), encodeBuf.out).toNumber();
    return encodeBuf.out.readByteArray(n);
  }
  const bodies = [];
  let total = 0;
  for (const m of msgs) {
    const mem = Memory.allocUtf8String(toJson(m));
    const n = libc.strlen(mem).toNumber(); // JSON escapes U+0000, so strlen is the byte length
    bodies.push([mem, n]);
    total += 4 + n;
  }
  const out = Memory.alloc(total);
  let off = 0;
  for (const [mem, n] of bodies) {
    out.add(off).writeU8((n >>> 24) & 0xff);
    out.add(off + 1).writeU8((n >>> 16) & 0xff);
    out.add(off + 2).writeU8((n >>> 8) & 0xff);
    out.add(off + 3).writeU8(n & 0xff);
    Memory.copy(out.add(off + 4), mem, n);
    off += 4 + n;
  }
  return out.readByteArray(total);
}

async function write(msgs) {
  const conn = state.conn;
  if (conn === null) return;
  await conn.output.writeAll(encodeFrames(msgs));
}

async function flush() {
  if (writing || state.conn === null || state.queue.length === 0) return;
  writing = true;
  const batch = state.queue.splice(0, 64);
  try {
    await write(batch);
    state.counters.sent += batch.filter((m) => m.message_type === 2).length;
  } catch (e) {
    for (let i = 0; i < batch.length; i++) drop('agent_away');
    lost(state.conn);
  } finally {
    writing = false;
  }
}

async function readLoop(conn) {
  const splitter = new FrameSplitter(MAX_FRAME);
  try {
    for (;;) {
      const chunk = await conn.input.read(65536);
      if (chunk.byteLength === 0) break;
      for (const payload of splitter.feed(new Uint8Array(chunk))) {
        let msg;
        try {
          msg = decodeFromAgent(payload);
        } catch (e) {
          if (e.code === 'too_large') throw e;
          log('ignored a bad frame from the agent: ' + e.message);
          continue;
        }
        onFrame(msg);
      }
    }
  } catch (e) {
    log('connection: ' + e.message);
  }
  lost(conn);
}

function ruleSkipped(r, e) {
  log('rule ' + r.policy_id + ' skipped: ' + e.message);
}

function onFrame(msg) {
  const d = msg.data || {};
  switch (msg.message_type) {
    case 3: // config
      state.policies.config = d.uuid || '';
      state.disabled = {};
      for (const h of d.hooks_disabled || []) state.disabled[h] = true;
      if (Number.isInteger(d.stack_depth)) state.stackDepth = Math.min(Math.max(d.stack_depth, 0), 256);
      break;
    case 6:
      state.filters = compileRules(d.filters, ruleSkipped);
      state.policies.filter = d.uuid || '';
      break;
    case 7:
      state.blocks = compileRules(d.blocks, ruleSkipped);
      try {
        state.detect = new RampartDetect.DetectTable(d.detect);
      } catch (e) {
        state.detect = new RampartDetect.DetectTable(); // an exemption JS cannot compile
        log('detection rules refused: ' + e.message);
      }
      state.policies.block = d.uuid || '';
      break;
    case 8:
      state.quotas.set(d.quotas, DEFAULT_QUOTA);
      state.policies.quota = d.uuid || '';
      break;
    case 0: // exit: stop reporting, put the engine back as it was
      stop('agent asked: ' + (d.reason || 'exit'));
      break;
    case 99:
      log('agent refused: ' + d.code + ': ' + d.reason);
      break;
    default:
      return;
  }
  // say at once which tables are in force (the next periodic heartbeat may be 10 s away)
  if (msg.message_type !== 99 && !heartbeatSoon) {
    heartbeatSoon = true;
    setTimeout(() => {
      heartbeatSoon = false;
      if (state.conn !== null && !state.stopped) state.queue.push(heartbeat());
    }, 100);
  }
}
let heartbeatSoon = false;

function stop(reason) {
  if (state.stopped) return;
  state.stopped = true;
  uninstall();
  if (state.listener) state.listener.close().catch(() => {});
  const conn = state.conn;
  state.conn = null;
  if (conn !== null) {
    conn.output.writeAll(encodeFrames([envelope(0, { reason })]))
      .catch(() => {}).then(() => conn.close().catch(() => {}));
  }
}

// ------------------------------------------------------------------------- start
let started = false;
function start() {
  if (started) return;
  started = true;
  installForkGuard();
  try {
    if (ROLE === 'worker') install();
    installExitHook();
  } catch (e) {
    uninstall(); // the script is unloaded after a failed start: no pointer may lead into it
    throw e;
  }
  try { armForkGuard(); } catch (e) { log("fork guard: atfork: " + e.message); }
  setInterval(() => { flush(); }, 50);
  setInterval(() => {
    if (state.conn !== null && !state.stopped) {
      state.queue.push(heartbeat());
    }
  }, HEARTBEAT_MS);
  connect(false);
  listenForPokes();
}

rpc.exports = {
  start() {
    start();
    return { installed: state.installed, missing: state.missing, pid: state.pid };
  },
  stop() {
    stop('detach');
    return true;
  },
};
