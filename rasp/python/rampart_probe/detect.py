"""In-probe detection checks for block mode (docs/detection.md, "Block mode").

The agent pushes the detection rules in block mode with the block frame (`detect`); the probe
runs the check of an event's kind only when such a rule is in force AND the event happens in a
request, on the app's thread, before the sink runs. Semantics are the agent's detectors' for
the input-correlated cases (host_agent/detectors/): a request parameter of 3+ characters found
in the sink's argument that
- sql: crosses a string/comment boundary or brings SQL structure (`sqli.input`); a stacked
  statement in any query of a request (`sqli.stacked`);
- process: brings shell syntax into a command a shell parses (`cmdi.input`);
- file: climbs out with `../` (or encoded) or is an absolute path (`path.traversal`);
- network/dns: names a loopback, link-local, private or internal host (`ssrf.internal`).
The agent's full detector still runs on the event afterwards and records the detection.
Tested against the shared corpus rasp/protocol/vectors/detect.json. Pure logic, no I/O; the
probe calls it from its generic blocking path (core.Probe.emit), never from a hook.
"""

from __future__ import annotations

import ipaddress
import re

MIN_INPUT = 3
MAX_INPUTS = 64

#: rule id -> event kinds it looks at
RULE_KINDS = {
    "sqli.input": ("sql",),
    "sqli.stacked": ("sql",),
    "cmdi.input": ("process",),
    "path.traversal": ("file",),
    "ssrf.internal": ("network", "dns"),
}

# ------------------------------------------------------------------------------ SQL

_COMMON = (
    r"""|`(?:[^`]|``)*(?:`|\Z)"""
    r"""|\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z)"""
    r"""|--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z)"""
)
_LIT_MYSQL = re.compile(
    r"""'(?:[^'\\]|''|\\.)*(?:'|\Z)|"(?:[^"\\]|""|\\.)*(?:"|\Z)""" + _COMMON, re.S
)
_LIT_STD = re.compile(r"""'(?:[^']|'')*(?:'|\Z)|"(?:[^"]|"")*(?:"|\Z)""" + _COMMON, re.S)
# the agent's SQL token classes (host_agent/detectors/sql.py): whitespace, words, numbers,
# placeholders and commas are not structure by themselves; every other token is
_TOKENS = re.compile(
    r"""(?P<ws>\s+)
    |(?P<literal>'|"|`|--|\#|/\*|\*/)
    |(?P<number>0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)
    |(?P<word>[A-Za-z_][\w$]*)
    |(?P<param>\?\d*|:[A-Za-z_]\w*|\$\d+|@@?\w+)
    |(?P<op><=>|<>|!=|<=|>=|\|\||&&|::|[-+*/%=<>!~^&|])
    |(?P<punct>[(),;.])
    |(?P<other>.)""",
    re.X | re.S,
)
_PLAIN = frozenset(("ws", "number", "param"))
SQL_KEYWORDS = frozenset(
    [
        "select",
        "union",
        "insert",
        "update",
        "delete",
        "drop",
        "create",
        "alter",
        "truncate",
        "replace",
        "exec",
        "execute",
        "or",
        "and",
        "not",
        "xor",
        "like",
        "rlike",
        "regexp",
        "between",
        "is",
        "null",
        "in",
        "exists",
        "case",
        "when",
        "then",
        "else",
        "end",
        "from",
        "where",
        "having",
        "group",
        "order",
        "by",
        "limit",
        "offset",
        "into",
        "outfile",
        "dumpfile",
        "load_file",
        "sleep",
        "benchmark",
        "pg_sleep",
        "waitfor",
        "delay",
        "if",
        "ifnull",
        "char",
        "chr",
        "concat",
        "substring",
        "substr",
        "ascii",
        "information_schema",
        "sqlite_master",
        "pg_catalog",
        "declare",
        "cast",
        "convert",
    ]
)
_STACKED = re.compile(r";\s*(?:select|insert|update|delete|drop|create|alter|exec|declare)\b", re.I)


def _scanners(hook: str) -> tuple:
    h = hook.lower()
    if "mysql" in h or "mariadb" in h:
        return (_LIT_MYSQL,)
    if "sqlite" in h or "psycopg" in h or "postgres" in h or "pgx" in h:
        return (_LIT_STD,)
    return (_LIT_STD, _LIT_MYSQL)


def _sql_breaks(query: str, start: int, end: int, regions: list) -> bool:
    for rs, re_ in regions:
        if re_ <= start:
            continue
        if rs >= end:
            break
        return not (rs < start and end < re_)  # inside one literal: data; else a crossing
    for m in _TOKENS.finditer(query[start:end]):
        k = m.lastgroup
        if k in _PLAIN:
            continue
        if k == "word":
            if m.group().lower() in SQL_KEYWORDS:
                return True
        elif m.group() != ",":
            return True
    return False


def sqli_input(query: str, values: list, hook: str) -> bool:
    lowered = None
    regions = None  # per scanner, computed once per query: the one pass over the whole text
    for v in values:
        pos = query.find(v)
        if pos < 0:
            if lowered is None:
                lowered = query.lower()
            pos = lowered.find(v.lower())
            if pos < 0:
                continue
        if regions is None:
            regions = [[m.span() for m in sc.finditer(query)] for sc in _scanners(hook)]
        for spans in regions:
            if _sql_breaks(query, pos, pos + len(v), spans):
                return True
    return False


# ------------------------------------------------------------------------------ shell

SHELL_HOOKS = frozenset(
    [
        "os.system",
        "os.popen",
        "child_process.exec",
        "child_process.execSync",
        "system",
        "exec",
        "shell_exec",
        "passthru",
        "popen",
        "proc_open",
        "Runtime.exec",
    ]
)
SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"))
_SHELL_OPS = re.compile(r"[;&|\n`<>]|\$\(|\$\{")
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\$`]|\\.)*\"")


def _base(p: str) -> str:
    return p.rpartition("/")[2]


def shell_script(hook: str, args: list):
    if not args:
        return None
    if hook in SHELL_HOOKS:
        return args[0]
    for i in range(len(args) - 2):
        if args[i + 1] == "-c" and _base(args[i]) in SHELLS:
            return args[i + 2]
    first = args[0].split(" ", 2)
    if len(first) == 3 and first[1] == "-c" and _base(first[0]) in SHELLS:
        return first[2]
    return None


def cmdi_input(hook: str, args: list, values: list) -> bool:
    script = shell_script(hook, args)
    if script is None:
        return False
    quoted = None
    joined = None
    for v in values:
        pos = script.find(v)
        if pos < 0:
            if joined is None:
                joined = " ".join(args)
            if v in joined and _SHELL_OPS.search(v) and _SHELL_OPS.search(script):
                return True
            continue
        if not _SHELL_OPS.search(v):
            continue
        if quoted is None:
            quoted = [m.span() for m in _QUOTED.finditer(script)]
        end = pos + len(v)
        if any(qs < pos and end < qe for qs, qe in quoted):
            continue
        return True
    return False


# ------------------------------------------------------------------------------ path

_TRAVERSAL = re.compile(r"(?:^|[\\/])\.\.(?:[\\/]|$)|%2e%2e|\.\.%2f|%252e", re.I)
_SCHEME = re.compile(r"^(?:file|php|phar|zip|data|expect|glob|jar|netdoc|gopher)://", re.I)


def path_traversal(hook: str, args: list, values: list) -> bool:
    if not args:
        return False
    path = args[-1] if ("rename" in hook or "copy" in hook or "move" in hook) else args[0]
    for v in values:
        if v not in path:
            continue
        if _SCHEME.match(v):
            return False  # a URL through a file API: path.scheme, not this rule
        if _TRAVERSAL.search(v) or (v[0] == "/" and path.startswith(v)):
            return True
    return False


# ------------------------------------------------------------------------------ SSRF

_METADATA = frozenset(("metadata.google.internal", "metadata", "instance-data"))
_ODD_SCHEMES = frozenset(("file", "gopher", "dict", "ftp", "ldap", "jar", "netdoc", "tftp"))
_HOSTPORT = re.compile(r"^\[?(?P<host>[^\]\s/]+?)\]?(?::\d+)?$")
_URL_HOST = re.compile(r"^([A-Za-z][\w+.-]*)://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)")


_IP_CHARS = "0123456789abcdefx.:%"


def parse_ip(host: str):
    """An IP from its usual and disguised (decimal, hex, octal) spellings, or None."""
    host = host.strip("[]").lower()
    if not host or host.strip(_IP_CHARS):
        return None  # a name (a letter beyond hex and "x"): no exception raised and caught
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums = []
    for p in parts:
        try:
            if p.startswith("0x"):
                nums.append(int(p, 16))
            elif len(p) > 1 and p[0] == "0":
                nums.append(int(p, 8))
            else:
                nums.append(int(p, 10))
        except ValueError:
            return None
    value = 0
    for n in nums[:-1]:
        if n > 255:
            return None
        value = value << 8 | n
    rest = 8 * (5 - len(nums))
    if nums[-1] >= 1 << rest:
        return None
    return ipaddress.IPv4Address(value << rest | nums[-1])


def internal(host: str) -> bool:
    h = host.lower()
    if h.rstrip(".") in _METADATA or h == "localhost":
        return True
    ip = parse_ip(host)
    if ip is None:
        return False
    return ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified


def _target(a: str) -> tuple:
    """(scheme, host) of a URL or host[:port] argument."""
    if "://" in a:
        m = _URL_HOST.match(a)
        return (m.group(1).lower(), m.group(2).strip("[]")) if m else ("", "")
    m = _HOSTPORT.match(a)
    return "", m.group("host") if m else ""


def ssrf_internal(args: list, values: list) -> bool:
    if not args:
        return False
    scheme, host = _target(args[0])
    if not host:
        return False
    for v in values:
        if v not in args[0]:
            named = _target(v)[1]
            if not named or named.lower() != host.lower():
                continue
        if scheme in _ODD_SCHEMES:
            return False  # ssrf.scheme's case
        if internal(host):
            return True
    return False


# ------------------------------------------------------------------------------ the table


class Exempt:
    __slots__ = ("args", "path", "request_path")

    def __init__(self, spec: dict) -> None:
        self.request_path = re.compile(spec["request_path"]) if spec.get("request_path") else None
        self.args = re.compile(spec["args"]) if spec.get("args") else None
        self.path = re.compile(spec["path"]) if spec.get("path") else None

    def holds(self, args: list, url: str) -> bool:
        if self.path is not None and not (args and self.path.search(args[0])):
            return False
        if self.args is not None and not self.args.search(" ".join(args)):
            return False
        return self.request_path is None or bool(self.request_path.search(_url_path(url)))


def _url_path(url: str) -> str:
    rest = url.partition("://")[2] if "://" in url else url
    i = rest.find("/")
    path = rest[i:] if i >= 0 else ""
    return path.partition("?")[0].partition("#")[0]


class DetectTable:
    """The block-mode detection rules in force, indexed by event kind (an event of a kind no
    rule looks at costs one dict lookup)."""

    __slots__ = ("by_kind", "exempts")

    def __init__(self, specs: list = ()) -> None:
        self.by_kind: dict = {}
        self.exempts: dict = {}
        for s in specs:
            rule = s.get("rule")
            if rule not in RULE_KINDS:
                continue  # a rule this probe has no check for: the agent still alerts on it
            for kind in RULE_KINDS[rule]:
                self.by_kind.setdefault(kind, []).append(rule)
            self.exempts[rule] = [Exempt(e) for e in s.get("exempt") or ()]

    def check(self, kind: str, hook: str, args: list, request: dict):
        """The rule id that blocks this event, or None. `request` is the wire dict."""
        rules = self.by_kind.get(kind)
        if rules is None or not args:
            return None
        values = []
        for vals in (request.get("params") or {}).values():
            for v in vals:
                if len(v) >= MIN_INPUT:
                    values.append(v)
        values = values[:MAX_INPUTS]
        for rule in rules:
            if rule == "sqli.stacked":
                q = args[0]
                hit = ";" in q and _STACKED.search(q) is not None
            elif not values:
                continue
            elif rule == "sqli.input":
                hit = sqli_input(args[0], values, hook)
            elif rule == "cmdi.input":
                hit = cmdi_input(hook, args, values)
            elif rule == "path.traversal":
                hit = path_traversal(hook, args, values)
            else:
                hit = ssrf_internal(args, values)
            if hit:
                url = request.get("url") or ""
                if not any(e.holds(args, url) for e in self.exempts[rule]):
                    return rule
        return None
