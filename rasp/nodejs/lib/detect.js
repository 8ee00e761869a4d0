'use strict';
// In-probe detection checks for block mode (docs/detection.md, "Block mode"): the rules the
// agent pushed in the block frame's `detect`, checked on the app's thread before the sink
// runs, only for events of a kind a rule looks at that happen in a request. Same semantics as
// the agent's detectors for the input-correlated cases; tested against the shared corpus
// rasp/protocol/vectors/detect.json (test/detect.test.js). Called from the generic blocking
// path (Probe.check), never from a hook. Pure logic and no require(): the PHP probe loads the
// same file into PHP processes with Frida (rasp/php/php_agent.py, detect_source).

const MIN_INPUT = 3;
const MAX_INPUTS = 64;

const RULE_KINDS = {
  'sqli.input': ['sql'],
  'sqli.stacked': ['sql'],
  'cmdi.input': ['process'],
  'path.traversal': ['file'],
  'ssrf.internal': ['network', 'dns'],
};

// ------------------------------------------------------------------------------ SQL

const COMMON = '|`(?:[^`]|``)*(?:`|$)'
  + '|\\$(?<tag>[A-Za-z_]\\w*)?\\$[\\s\\S]*?(?:\\$\\k<tag>\\$|\\$\\$|$)'
  + '|--[^\\n]*|#[^\\n]*|/\\*[\\s\\S]*?(?:\\*/|$)';
const LIT_MYSQL = new RegExp(`'(?:[^'\\\\]|''|\\\\[\\s\\S])*(?:'|$)|"(?:[^"\\\\]|""|\\\\[\\s\\S])*(?:"|$)${COMMON}`, 'g');
const LIT_STD = new RegExp(`'(?:[^']|'')*(?:'|$)|"(?:[^"]|"")*(?:"|$)${COMMON}`, 'g');
// the agent's SQL token classes: whitespace, numbers, words and placeholders are not
// structure by themselves; every other token (quotes, comments, operators, punctuation) is
const TOKENS = new RegExp('(?<ws>\\s+)'
  + '|(?<number>0[xX][0-9a-fA-F]+|\\d+(?:\\.\\d*)?(?:[eE][-+]?\\d+)?|\\.\\d+)'
  + '|(?<word>[A-Za-z_][\\w$]*)'
  + '|(?<param>\\?\\d*|:[A-Za-z_]\\w*|\\$\\d+|@@?\\w+)'
  + "|(?<literal>'|\"|`|--|#|/\\*|\\*/)"
  + '|(?<other>[\\s\\S])', 'g');
const SQL_KEYWORDS = new Set(['select', 'union', 'insert', 'update', 'delete', 'drop', 'create',
  'alter', 'truncate', 'replace', 'exec', 'execute', 'or', 'and', 'not', 'xor', 'like', 'rlike',
  'regexp', 'between', 'is', 'null', 'in', 'exists', 'case', 'when', 'then', 'else', 'end', 'from',
  'where', 'having', 'group', 'order', 'by', 'limit', 'offset', 'into', 'outfile', 'dumpfile',
  'load_file', 'sleep', 'benchmark', 'pg_sleep', 'waitfor', 'delay', 'if', 'ifnull', 'char', 'chr',
  'concat', 'substring', 'substr', 'ascii', 'information_schema', 'sqlite_master', 'pg_catalog',
  'declare', 'cast', 'convert']);
const STACKED = /;\s*(?:select|insert|update|delete|drop|create|alter|exec|declare)\b/i;

function scanners(hook) {
  const h = hook.toLowerCase();
  if (h.includes('mysql') || h.includes('mariadb')) return [LIT_MYSQL];
  if (h.includes('sqlite') || h.includes('psycopg') || h.includes('postgres') || h.includes('pgx')) {
    return [LIT_STD];
  }
  return [LIT_STD, LIT_MYSQL];
}

function regionsOf(query, scanner) {
  const out = [];
  scanner.lastIndex = 0;
  for (let m; (m = scanner.exec(query)) !== null;) {
    if (m[0] === '') { scanner.lastIndex++; continue; }
    out.push(m.index, m.index + m[0].length);
  }
  return out;
}

function sqlBreaks(query, start, end, regions) {
  for (let i = 0; i < regions.length; i += 2) {
    const rs = regions[i];
    const re = regions[i + 1];
    if (re <= start) continue;
    if (rs >= end) break;
    return !(rs < start && end < re); // inside one literal: data; else a crossing
  }
  const text = query.slice(start, end);
  TOKENS.lastIndex = 0;
  for (let t; (t = TOKENS.exec(text)) !== null;) {
    const g = t.groups;
    if (g.ws !== undefined || g.number !== undefined || g.param !== undefined) continue;
    if (g.word !== undefined) {
      if (SQL_KEYWORDS.has(g.word.toLowerCase())) return true;
    } else if (t[0] !== ',') {
      return true;
    }
  }
  return false;
}

function sqliInput(query, values, hook) {
  let lowered = null;
  let regions = null; // per scanner, once per query: the one pass over the whole text
  for (const v of values) {
    let pos = query.indexOf(v);
    if (pos < 0) {
      if (lowered === null) lowered = query.toLowerCase();
      pos = lowered.indexOf(v.toLowerCase());
      if (pos < 0) continue;
    }
    if (regions === null) regions = scanners(hook).map((sc) => regionsOf(query, sc));
    for (const r of regions) if (sqlBreaks(query, pos, pos + v.length, r)) return true;
  }
  return false;
}

// ------------------------------------------------------------------------------ shell

const SHELL_HOOKS = new Set(['os.system', 'os.popen', 'child_process.exec',
  'child_process.execSync', 'system', 'exec', 'shell_exec', 'passthru', 'popen', 'proc_open',
  'Runtime.exec']);
const SHELLS = new Set(['sh', 'bash', 'dash', 'zsh', 'ksh', 'ash', 'busybox']);
const SHELL_OPS = /[;&|\n`<>]|\$\(|\$\{/;
const QUOTED = /'[^']*'|"(?:[^"\\$`]|\\[\s\S])*"/g;

const base = (p) => p.slice(p.lastIndexOf('/') + 1);

function shellScript(hook, args) {
  if (!args.length) return null;
  if (SHELL_HOOKS.has(hook)) return args[0];
  for (let i = 0; i + 2 < args.length; i++) {
    if (args[i + 1] === '-c' && SHELLS.has(base(args[i]))) return args[i + 2];
  }
  const a0 = args[0];
  const s1 = a0.indexOf(' ');
  const s2 = s1 < 0 ? -1 : a0.indexOf(' ', s1 + 1);
  if (s2 >= 0 && a0.slice(s1 + 1, s2) === '-c' && SHELLS.has(base(a0.slice(0, s1)))) {
    return a0.slice(s2 + 1);
  }
  return null;
}

function cmdiInput(hook, args, values) {
  const script = shellScript(hook, args);
  if (script === null) return false;
  let joined = null;
  let quoted = null;
  for (const v of values) {
    const pos = script.indexOf(v);
    if (pos < 0) {
      if (joined === null) joined = args.join(' ');
      if (joined.includes(v) && SHELL_OPS.test(v) && SHELL_OPS.test(script)) return true;
      continue;
    }
    if (!SHELL_OPS.test(v)) continue;
    if (quoted === null) quoted = [...script.matchAll(QUOTED)].map((m) => [m.index, m.index + m[0].length]);
    const end = pos + v.length;
    if (!quoted.some(([qs, qe]) => qs < pos && end < qe)) return true;
  }
  return false;
}

// ------------------------------------------------------------------------------ path

const TRAVERSAL = /(?:^|[\\/])\.\.(?:[\\/]|$)|%2e%2e|\.\.%2f|%252e/i;
const SCHEME = /^(?:file|php|phar|zip|data|expect|glob|jar|netdoc|gopher):\/\//i;

function pathTraversal(hook, args, values) {
  const path = /rename|copy|move/.test(hook) ? args[args.length - 1] : args[0];
  for (const v of values) {
    if (!path.includes(v)) continue;
    if (SCHEME.test(v)) return false; // path.scheme's case
    if (TRAVERSAL.test(v) || (v[0] === '/' && path.startsWith(v))) return true;
  }
  return false;
}

// ------------------------------------------------------------------------------ SSRF

const METADATA = new Set(['metadata.google.internal', 'metadata', 'instance-data']);
const ODD_SCHEMES = new Set(['file', 'gopher', 'dict', 'ftp', 'ldap', 'jar', 'netdoc', 'tftp']);
const HOSTPORT = /^\[?([^\]\s/]+?)\]?(?::\d+)?$/;
const URL_HOST = /^([A-Za-z][\w+.-]*):\/\/(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)/;

const strip = (h) => (h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h);

/** [scheme, host] of a URL or host[:port] argument. */
function target(a) {
  if (a.includes('://')) {
    const m = URL_HOST.exec(a);
    return m ? [m[1].toLowerCase(), strip(m[2])] : ['', ''];
  }
  const m = HOSTPORT.exec(a);
  return ['', m ? m[1] : ''];
}

/** An IPv4 address (as a number) from usual and disguised spellings, or -1. */
function parseV4(host) {
  const parts = host.split('.');
  if (parts.length < 1 || parts.length > 4) return -1;
  const nums = [];
  for (const p of parts) {
    let n;
    if (/^0x[0-9a-f]+$/.test(p)) n = parseInt(p.slice(2), 16);
    else if (/^0[0-7]+$/.test(p)) n = parseInt(p, 8);
    else if (/^[0-9]+$/.test(p) && !(p.length > 1 && p[0] === '0')) n = parseInt(p, 10);
    else return -1;
    nums.push(n);
  }
  let value = 0;
  for (let i = 0; i < nums.length - 1; i++) {
    if (nums[i] > 255) return -1;
    value = value * 256 + nums[i];
  }
  const rest = 8 * (5 - nums.length);
  const last = nums[nums.length - 1];
  if (last >= 2 ** rest) return -1;
  return value * 2 ** rest + last;
}

// Python's ipaddress is_loopback / is_link_local / is_private / is_unspecified
const V4_INTERNAL = [[0x00000000, 8], [0x0A000000, 8], [0x7F000000, 8], [0xA9FE0000, 16],
  [0xAC100000, 12], [0xC0000000, 29], [0xC00000AA, 31], [0xC0000200, 24], [0xC0A80000, 16],
  [0xC6120000, 15], [0xC6336400, 24], [0xCB007100, 24], [0xF0000000, 4], [0xFFFFFFFF, 32]];
/** An IPv6 address as 8 16-bit groups, or null. */
function parseV6(h) {
  if (!/^[0-9a-f:.]+$/.test(h)) return null;
  const halves = h.split('::');
  if (halves.length > 2) return null;
  const groups = (part) => {
    if (part === '') return [];
    const out = [];
    const parts = part.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes('.')) {
        const o = p.split('.');
        if (o.length !== 4 || o.some((x) => !/^\d{1,3}$/.test(x) || +x > 255)) return null;
        out.push(+o[0] * 256 + +o[1], +o[2] * 256 + +o[3]);
      } else {
        if (!/^[0-9a-f]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (head === null || tail === null) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  return [...head, ...new Array(halves.length === 2 ? missing : 0).fill(0), ...tail];
}

/** Loopback, unspecified, link-local, unique-local, IPv4-mapped and documentation IPv6. */
function internalV6(h) {
  const g = parseV6(h);
  if (g === null) return false;
  const zeroHead = g.slice(0, 5).every((x) => x === 0);
  if (zeroHead && g[5] === 0 && g[6] === 0 && (g[7] === 0 || g[7] === 1)) return true;
  if (zeroHead && g[5] === 0xffff) return true;
  if ((g[0] & 0xffc0) === 0xfe80 || (g[0] & 0xfe00) === 0xfc00) return true;
  return g[0] === 0x2001 && g[1] === 0x0db8;
}

function internalV4(ip) {
  return V4_INTERNAL.some(([n, bits]) => Math.floor(ip / 2 ** (32 - bits)) === Math.floor(n / 2 ** (32 - bits)));
}

function internal(host) {
  const h = host.toLowerCase();
  if (METADATA.has(h.endsWith('.') ? h.slice(0, -1) : h) || h === 'localhost') return true;
  const bare = strip(h).split('%')[0];
  if (bare.includes(':')) return internalV6(bare);
  const ip = parseV4(bare);
  return ip >= 0 && internalV4(ip);
}

function ssrfInternal(args, values) {
  const [scheme, host] = target(args[0]);
  if (!host) return false;
  for (const v of values) {
    if (!args[0].includes(v)) {
      const named = target(v)[1];
      if (!named || named.toLowerCase() !== host.toLowerCase()) continue;
    }
    if (ODD_SCHEMES.has(scheme)) return false; // ssrf.scheme's case
    if (internal(host)) return true;
  }
  return false;
}

// ------------------------------------------------------------------------------ the table

function urlPath(url) {
  const s = url.indexOf('://');
  const rest = s >= 0 ? url.slice(s + 3) : url;
  const i = rest.indexOf('/');
  if (i < 0) return '';
  return rest.slice(i).split('?')[0].split('#')[0];
}

class DetectTable {
  /** specs: the block frame's `detect` list; rule ids without a check here are ignored. */
  constructor(specs = []) {
    this.byKind = new Map();
    this.exempts = new Map();
    for (const s of specs || []) {
      const kinds = RULE_KINDS[s.rule];
      if (!kinds) continue; // the agent still alerts on it
      for (const k of kinds) {
        if (!this.byKind.has(k)) this.byKind.set(k, []);
        this.byKind.get(k).push(s.rule);
      }
      this.exempts.set(s.rule, (s.exempt || []).map((e) => ({
        requestPath: e.request_path ? new RegExp(e.request_path) : null,
        args: e.args ? new RegExp(e.args) : null,
        path: e.path ? new RegExp(e.path) : null,
      })));
    }
  }

  covers(kind) {
    return this.byKind.has(kind);
  }

  /** The rule id that blocks this event, or null. `request` is the protocol's request. */
  check(kind, hook, args, request) {
    const rules = this.byKind.get(kind);
    if (!rules || !args.length || !request) return null;
    const values = [];
    for (const vs of Object.values(request.params || {})) {
      for (const v of vs) if (typeof v === 'string' && v.length >= MIN_INPUT) values.push(v);
    }
    values.length = Math.min(values.length, MAX_INPUTS);
    for (const rule of rules) {
      let hit;
      if (rule === 'sqli.stacked') hit = args[0].includes(';') && STACKED.test(args[0]);
      else if (!values.length) continue;
      else if (rule === 'sqli.input') hit = sqliInput(args[0], values, hook);
      else if (rule === 'cmdi.input') hit = cmdiInput(hook, args, values);
      else if (rule === 'path.traversal') hit = pathTraversal(hook, args, values);
      else hit = ssrfInternal(args, values);
      if (hit && !this.exempt(rule, args, request.url || '')) return rule;
    }
    return null;
  }

  exempt(rule, args, url) {
    for (const e of this.exempts.get(rule)) {
      if (e.path && !(args.length && e.path.test(args[0]))) continue;
      if (e.args && !e.args.test(args.join(' '))) continue;
      if (e.requestPath && !e.requestPath.test(urlPath(url))) continue;
      return true;
    }
    return false;
  }
}

if (typeof module !== 'undefined') module.exports = { DetectTable, RULE_KINDS, internal, parseV4 };
