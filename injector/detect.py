"""Which runtime a process runs: the first question `rasp-attach` and `rasp-agent ps` ask.

Detection only *reads files*: /proc/<pid>/{stat,status,exe,maps,cmdline,environ} and the
target's binaries and JDK `release` file. It never signals, ptraces or executes the target or
its binary: asking `node --version` would run code an attacker may have planted, and a
`SIGQUIT` to a JVM prints a thread dump into the app's log. Files are read through
/proc/<pid>/exe and /proc/<pid>/root/<path> so that a process in another mount namespace
(a container) is judged by *its* files, not by whatever sits at the same path on the host.

Checks run cheapest first: the exe's basename and the mapped libraries in /proc/<pid>/maps
decide almost every process; ELF parsing (pyelftools) runs only when those say nothing, and its
result is cached per binary so a host-wide `scan()` parses each distinct binary once.
The rules and evidence strings are documented in docs/runtime-detection.md.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from elftools.elf.elffile import ELFFile
from elftools.elf.hash import ELFHashSection, GNUHashSection
from elftools.elf.sections import Symbol, SymbolTableSection

from injector.process import (
    PROC,
    ProcessDenied,
    ProcessError,
    ProcessGone,
    read_exe,
    read_process,
)

RUNTIMES = ("python", "jvm", "golang", "nodejs", "php")
_SUPPORTED = ", ".join(RUNTIMES)

# Exe basenames. Matched against the *resolved* exe (/proc/<pid>/exe), so /usr/bin/python3 is
# seen as python3.11 and /usr/bin/php (an alternatives link) as php8.2.
# The optional "t" is CPython's free-threaded build (python3.13t).
_PYTHON_EXE = re.compile(r"python(\d+(?:\.\d+)?)?t?|uwsgi")
_NODE_EXE = re.compile(r"node|nodejs")
_PHP_EXE = re.compile(r"php(?:-fpm|-cgi)?(\d+(?:\.\d+)?)?")

# Mapped libraries, one path per /proc/<pid>/maps line (the path is the 6th field and may
# contain spaces; a replaced file shows a " (deleted)" suffix).
_MAPS_JVM = re.compile(rb"^\S+ \S+ \S+ \S+ \S+ +(/.*/libjvm\.so)(?: \(deleted\))?$", re.M)
_MAPS_PYTHON = re.compile(
    rb"^\S+ \S+ \S+ \S+ \S+ +(/.*/libpython(\d+\.\d+)t?[a-z]*\.so[.\d]*)(?: \(deleted\))?$", re.M
)
_MAPS_NODE = re.compile(rb"^\S+ \S+ \S+ \S+ \S+ +(/.*/libnode\.so[.\d]*)(?: \(deleted\))?$", re.M)
_MAPS_PHP = re.compile(
    rb"^\S+ \S+ \S+ \S+ \S+ +(/.*/libphp(\d+(?:\.\d+)?)?\.so)(?: \(deleted\))?$", re.M
)

# A path component naming a full version: pyenv (~/.pyenv/versions/3.11.7/), the GitHub
# Actions tool cache (/opt/hostedtoolcache/Python/3.11.7/x64/), /opt/python/3.12.1/.
_PATH_FULL_VERSION = re.compile(r"/(\d+\.\d+\.\d+)(?:[^/]*)/")

# JDK directory names: java-17-openjdk-amd64, jdk-17.0.2, jdk1.8.0_292, temurin-25-jdk-amd64.
_JDK_DIR_VERSION = re.compile(
    r"(?:jdk|jre|java|temurin|zulu|corretto)-?(\d+(?:\.\d+)*(?:_\d+)?)", re.IGNORECASE
)
_RELEASE_VERSION = re.compile(rb'^JAVA_VERSION="([^"\n]{1,64})"', re.M)

# What official Node builds carry in .rodata (checked on Node 20's /usr/bin/node, v20.20.2):
# the inspector's /json/version "Browser" value "node.js/v20.20.2" and process.release's
# source URL ".../download/release/v20.20.2/node-v20.20.2.tar.gz", both within the first
# MiB of .rodata. A bare "v20.20.2" string also exists but is too generic to search for.
_NODE_VERSION = re.compile(rb"node\.js/v(\d+\.\d+\.\d+)|/release/v(\d+\.\d+\.\d+)/node-v")
# PHP builds its default X-Powered-By header as one literal: "X-Powered-By: PHP/8.2.36".
_PHP_VERSION = re.compile(rb"X-Powered-By: PHP/(\d+\.\d+\.\d+)")

# Version scans read at most this much of a binary: Node 20's .rodata is 45 MiB, and a scan
# that finds nothing must still end quickly.
SCAN_LIMIT = 64 << 20
_SCAN_CHUNK = 4 << 20
_SCAN_OVERLAP = 256  # longer than any version pattern, so a match across chunks is not lost

RELEASE_CAP = 64 << 10  # a JDK `release` file is under 2 KiB

# Go's debug/buildinfo: a 32-byte header starting with this magic, 16-byte aligned at the
# start of .go.buildinfo, or (sections stripped) somewhere in the first 64 KiB of the first
# writable PT_LOAD segment.
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_GO_BUILDINFO_ALIGN = 16
_GO_BUILDINFO_SEARCH = 64 << 10
_GO_FLAG_INLINE_STRINGS = 0x2  # Go >= 1.18: strings follow the header, uvarint-prefixed
_GO_VERSION_MAX = 64

# A symbol every CPython since 2.x exports; finding it in an exe with no python-looking name
# catches interpreters with libpython linked in statically (Debian's /usr/bin/python3.11)
# and applications embedding CPython.
_PYTHON_EXPORT = "PyRun_SimpleString"
# `const unsigned long Py_Version = PY_VERSION_HEX`, exported since CPython 3.11.
_PYTHON_VERSION_SYMBOL = "Py_Version"


@dataclass(frozen=True, slots=True)
class Detection:
    pid: int
    #: one of RUNTIMES
    runtime: str
    #: best effort, "" when unknown: "3.11", "3.11.7", "17.0.15", "go1.26.8", "20.20.2", "8.2"
    version: str
    #: how we knew, one short phrase: "exe name python3.11", "libjvm.so mapped", ...
    evidence: str
    #: the exe as the target sees it (its mount namespace)
    exe: str
    nspid: int
    #: why attaching will be refused although the runtime is supported, "" when it will not:
    #: a JVM started with -XX:+DisableAttachMechanism has no attach listener to talk to.
    refusal: str = ""


class NotSupported(Exception):
    """The process exists but runs no runtime we support."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.pid = pid
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# per-binary cache


_T = TypeVar("_T")


class _Cache:
    """A small LRU keyed by file identity; bounded because a host's binaries change over time
    (upgrades, containers coming and going) and a daemon scans for weeks."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]  # type: ignore[return-value]
        value = compute()  # outside the lock: parsing may take milliseconds
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._size:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_CACHE = _Cache(1024)
FileKey = tuple[str, int, int, int, int]


def _file_key(open_path: str, shown_path: str) -> FileKey:
    """Identity of a binary: a replaced file (upgrade, other container image) gets a new key.

    `open_path` is how we reach it (/proc/<pid>/exe, /proc/<pid>/root/...), `shown_path` the
    path the target sees; stat follows the /proc link to the real inode."""
    st = os.stat(open_path)
    return (shown_path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def clear_cache() -> None:
    """Forget every cached per-binary fact (tests, or after a mass upgrade)."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------
# ELF facts


@dataclass(frozen=True, slots=True)
class _ElfFacts:
    go_evidence: str = ""  # "" when not a Go binary
    go_version: str = ""
    python_evidence: str = ""  # "" when CPython is not linked in
    python_version: str = ""  # from Py_Version, "" before 3.11 or when not found

    @staticmethod
    def of(f: BinaryIO) -> _ElfFacts:
        # Binaries are attacker-controllable input and pyelftools raises many exception types
        # (ELFError, struct.error, construct errors, ...) on malformed ones: a binary we cannot
        # parse is simply not one we recognise, and must never break a host-wide scan.
        try:
            elf = ELFFile(f)
            go_evidence, go_version = _go_facts(elf)
            python_evidence, python_version = _python_facts(elf)
        except Exception:
            return _ElfFacts()
        return _ElfFacts(go_evidence, go_version, python_evidence, python_version)


def _go_facts(elf: ELFFile) -> tuple[str, str]:
    buildinfo = elf.get_section_by_name(".go.buildinfo")
    blob = b""
    if buildinfo is not None and buildinfo["sh_type"] != "SHT_NOBITS":
        offset, size = buildinfo["sh_offset"], buildinfo["sh_size"]
        blob = _read_at(elf.stream, offset, size, _GO_BUILDINFO_SEARCH)
    if elf.get_section_by_name(".gopclntab") is not None:
        return ".gopclntab section", go_buildinfo_version(blob)
    if buildinfo is not None:
        return ".go.buildinfo section", go_buildinfo_version(blob)
    # No section headers (sstrip'ed): Go's own debug/buildinfo falls back to searching the
    # start of the first writable segment, 16-byte aligned; so do we.
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 0x2:  # PF_W
            data = _read_at(elf.stream, seg["p_offset"], seg["p_filesz"], _GO_BUILDINFO_SEARCH)
            for off in range(0, len(data) - len(GO_BUILDINFO_MAGIC) + 1, _GO_BUILDINFO_ALIGN):
                if data.startswith(GO_BUILDINFO_MAGIC, off):
                    return "Go buildinfo in data segment", go_buildinfo_version(data[off:])
            break
    return "", ""


def go_buildinfo_version(blob: bytes) -> str:
    """The Go version ("go1.26.8") from a buildinfo blob; "" when absent or unparseable.

    Layout (Go's debug/buildinfo): 14-byte magic, pointer size (byte 14), flags (byte 15).
    With flag 0x2 (Go >= 1.18) the version follows at offset 32 as a uvarint length and bytes,
    then the module info the same way. Older binaries hold two pointers to Go string headers
    instead; resolving them needs virtual-address translation, which we skip (version "")."""
    if len(blob) < 33 or not blob.startswith(GO_BUILDINFO_MAGIC):
        return ""
    if not blob[15] & _GO_FLAG_INLINE_STRINGS:
        return ""
    length, pos = 0, 32
    for shift in range(0, 64, 7):  # uvarint: 7 bits a byte, low group first
        if pos >= len(blob):
            return ""
        byte = blob[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        return ""
    if not 0 < length <= _GO_VERSION_MAX or pos + length > len(blob):
        return ""
    version = blob[pos : pos + length]
    if not all(0x21 <= c < 0x7F for c in version):  # printable, no spaces: "go1.26.8", "devel"
        return ""
    return version.decode("ascii")


def _python_facts(elf: ELFFile) -> tuple[str, str]:
    if _exported_symbol(elf, _PYTHON_EXPORT) is None:
        return "", ""
    version = ""
    sym = _exported_symbol(elf, _PYTHON_VERSION_SYMBOL)
    # an unsigned long: 4 or 8 bytes, read whole so big-endian 64-bit targets work too
    size = sym["st_size"] if sym is not None else 0
    if sym is not None and size in (4, 8):
        for offset in elf.address_offsets(sym["st_value"], size):
            raw = _read_at(elf.stream, offset, size, size)
            hexversion = int.from_bytes(raw, "little" if elf.little_endian else "big")
            # PY_VERSION_HEX: 0x030B02F0 is 3.11.2 final
            major, minor, micro, _level = hexversion.to_bytes(8, "big")[4:]
            if len(raw) == size and major == 3:
                version = f"{major}.{minor}.{micro}"
            break
    return f"exports {_PYTHON_EXPORT}", version


def _exported_symbol(elf: ELFFile, name: str) -> Symbol | None:
    """A symbol *defined* in .dynsym, found through the hash table (no full-table walk)."""
    sym: Symbol | None = None
    for section in elf.iter_sections():
        if isinstance(section, GNUHashSection | ELFHashSection):
            sym = section.get_symbol(name)
            break
    else:
        dynsym = elf.get_section_by_name(".dynsym")
        if isinstance(dynsym, SymbolTableSection):
            found = dynsym.get_symbol_by_name(name)
            sym = found[0] if found else None
    if sym is None or sym["st_shndx"] == "SHN_UNDEF":
        return None  # an import (uwsgi, pyenv's python linking libpython.so) is not CPython itself
    return sym


def _read_at(f: BinaryIO, offset: int, size: int, cap: int) -> bytes:
    f.seek(offset)
    return f.read(min(size, cap))


def _elf_facts(pid: int, exe: str) -> _ElfFacts:
    open_path = f"{PROC}/{pid}/exe"
    try:
        key = ("elf", *_file_key(open_path, exe))
    except OSError:
        return _ElfFacts()

    def compute() -> _ElfFacts:
        try:
            with open(open_path, "rb") as f:
                return _ElfFacts.of(f)
        except OSError:
            return _ElfFacts()

    return _CACHE.get(key, compute)


# ---------------------------------------------------------------------------------------------
# bounded version scans (Node, PHP)


def _scan_version(open_path: str, shown_path: str, pattern: re.Pattern[bytes]) -> str:
    """First match of `pattern` in the binary's .rodata (the whole file when it has no section
    headers), reading at most SCAN_LIMIT bytes; cached per binary. "" when not found."""
    try:
        key = ("scan", pattern.pattern, *_file_key(open_path, shown_path))
    except OSError:
        return ""

    def compute() -> str:
        try:
            with open(open_path, "rb") as f:
                start, size = _rodata_range(f)
                return _scan(f, start, min(size, SCAN_LIMIT), pattern)
        except OSError:
            return ""

    return _CACHE.get(key, compute)


def _rodata_range(f: BinaryIO) -> tuple[int, int]:
    try:
        section = ELFFile(f).get_section_by_name(".rodata")
    except Exception:  # not ELF or malformed: see _ElfFacts.of
        section = None
    if section is None:
        return 0, SCAN_LIMIT
    return section["sh_offset"], section["sh_size"]


def _scan(f: BinaryIO, start: int, size: int, pattern: re.Pattern[bytes]) -> str:
    f.seek(start)
    tail = b""
    done = 0
    while done < size:
        chunk = f.read(min(_SCAN_CHUNK, size - done))
        if not chunk:
            break
        done += len(chunk)
        m = pattern.search(tail + chunk)
        if m:
            return next(g for g in m.groups() if g).decode("ascii")
        tail = chunk[-_SCAN_OVERLAP:]
    return ""


# ---------------------------------------------------------------------------------------------
# per-runtime details


def _in_root(pid: int, path: str) -> str:
    """`path` as the target sees it, reachable from our mount namespace."""
    return f"{PROC}/{pid}/root{path}"


def _read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"{PROC}/{pid}/{name}", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        raise ProcessDenied(pid, f"{PROC}/{pid}/{name}") from None


def _jvm_version(pid: int, start_dir: str, depths: tuple[int, ...]) -> str:
    """JAVA_VERSION from the JDK's `release` file, JAVA_HOME being `depths` levels above
    `start_dir`; else the version in the JDK directory's name."""
    for depth in depths:
        home = start_dir
        for _ in range(depth):
            home = os.path.dirname(home)
        try:
            with open(_in_root(pid, f"{home}/release"), "rb") as f:
                m = _RELEASE_VERSION.search(f.read(RELEASE_CAP))
        except OSError:
            continue
        if m:
            return m.group(1).decode("utf-8", "replace")
    m = _JDK_DIR_VERSION.search(start_dir)
    return m.group(1) if m else ""


# Launcher options whose value is the next argument: they must not end the option scan.
_JAVA_VALUE_OPTIONS = frozenset(
    {"-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path"}
    | {"--add-modules", "--limit-modules", "--add-reads", "--add-exports", "--add-opens"}
    | {"--patch-module", "--source", "--enable-native-access"}
)


_JAVA_OPTION_VARS = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")


def _jvm_refusal(pid: int, cmdline: list[str]) -> str:
    environ: dict[str, str] = {}
    try:
        for item in _read_proc(pid, "environ").split(b"\0"):
            name, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep and name in _JAVA_OPTION_VARS:
                environ[name] = value
    except ProcessError:
        pass  # environ needs the same access as maps; if it went away, judge by cmdline
    return jvm_attach_refusal(cmdline, environ)


def jvm_attach_refusal(cmdline: list[str], environ: Mapping[str, str]) -> str:
    """Why a JVM started with this argv and (initial) environment will refuse a dynamic
    attach; "" when it will not.

    HotSpot reads options from JAVA_TOOL_OPTIONS, then the launcher's JDK_JAVA_OPTIONS (JDK 9+)
    and command line up to the main class / -jar / -m, then _JAVA_OPTIONS; the last
    -XX:±DisableAttachMechanism wins. @argfiles and -XX:Flags= files are not expanded."""
    options = environ.get("JAVA_TOOL_OPTIONS", "").split()
    options += environ.get("JDK_JAVA_OPTIONS", "").split()
    args = iter(cmdline[1:])
    for arg in args:
        if arg in ("-jar", "-m", "--module") or not arg.startswith("-"):
            break  # what follows is the application's own argv
        options.append(arg)
        if arg in _JAVA_VALUE_OPTIONS:
            next(args, None)
    options += environ.get("_JAVA_OPTIONS", "").split()
    disabled = False
    for opt in options:
        if opt == "-XX:+DisableAttachMechanism":
            disabled = True
        elif opt == "-XX:-DisableAttachMechanism":
            disabled = False
    return "started with -XX:+DisableAttachMechanism" if disabled else ""


def _python_version(short: str, *paths: str) -> str:
    """The full version when a directory in the interpreter's paths names it (pyenv's
    versions/3.11.7/) and it agrees with the `short` one we know ("3.11"); else `short`."""
    for path in paths:
        for m in _PATH_FULL_VERSION.finditer(path):
            if not short or m.group(1).startswith(short + "."):
                return m.group(1)
    return short


# ---------------------------------------------------------------------------------------------
# detection


def detect(pid: int) -> Detection:
    """The runtime `pid` runs. Raises ProcessGone, ProcessDenied, NotSupported, and
    ProcessError for a zombie."""
    info = read_process(pid)
    if info.zombie:
        raise ProcessError(pid, "is a zombie (exited, not yet reaped)")
    exe = info.exe
    if not exe:
        read_exe(pid)  # read_process hides a denied exe link; this raises ProcessDenied for it
        raise NotSupported(pid, f"not a supported runtime (kernel thread); supported: {_SUPPORTED}")
    maps = _read_proc(pid, "maps")
    name = os.path.basename(exe)

    def found(runtime: str, version: str, evidence: str, refusal: str = "") -> Detection:
        return Detection(pid, runtime, version, evidence, exe, info.nspid, refusal)

    # 1. cheap: names and mapped libraries, in the order jvm, python, nodejs, php
    if b"/libjvm.so" in maps and (m := _MAPS_JVM.search(maps)):
        libjvm = m.group(1).decode("utf-8", "replace")
        # JDK 9+: <home>/lib/server/libjvm.so; JDK 8: <home>/jre/lib/amd64/server/libjvm.so,
        # whose `release` sits in <home> (and sometimes in <home>/jre).
        version = _jvm_version(pid, os.path.dirname(libjvm), (2, 3, 4))
        return found("jvm", version, "libjvm.so mapped", _jvm_refusal(pid, info.cmdline))
    if name == "java":
        # before the launcher has loaded libjvm (its first milliseconds): <home>/bin/java
        version = _jvm_version(pid, os.path.dirname(exe), (1, 2, 3))
        return found("jvm", version, "exe name java", _jvm_refusal(pid, info.cmdline))

    lib_python = _MAPS_PYTHON.search(maps) if b"/libpython" in maps else None
    lib_path = lib_python.group(1).decode("utf-8", "replace") if lib_python else ""
    lib_version = lib_python.group(2).decode() if lib_python else ""
    if m := _PYTHON_EXE.fullmatch(name):
        short = m.group(1) or ""
        if "." not in short and lib_version:
            short = lib_version  # "python3" or "uwsgi" with libpython3.11.so mapped
        version = _python_version(short, exe, lib_path)
        if version.count(".") < 2:
            # Debian-style static libpython: the exact version is one cached symbol read away
            full = _elf_facts(pid, exe).python_version
            if full.startswith(f"{version}.") or (full and not version):
                version = full
        return found("python", version, f"exe name {name}")
    if lib_python:
        version = _python_version(lib_version, lib_path)
        return found("python", version, f"{os.path.basename(lib_path)} mapped")

    if _NODE_EXE.fullmatch(name):
        version = _scan_version(f"{PROC}/{pid}/exe", exe, _NODE_VERSION)
        return found("nodejs", version, f"exe name {name}")
    if b"/libnode.so" in maps and (m := _MAPS_NODE.search(maps)):
        lib = m.group(1).decode("utf-8", "replace")
        version = _scan_version(_in_root(pid, lib), lib, _NODE_VERSION)
        return found("nodejs", version, f"{os.path.basename(lib)} mapped")

    if m := _PHP_EXE.fullmatch(name):
        version = m.group(1) or ""
        if "." not in version:  # /usr/local/bin/php of the Docker images: no version in the name
            version = _scan_version(f"{PROC}/{pid}/exe", exe, _PHP_VERSION) or version
        return found("php", version, f"exe name {name}")
    if b"/libphp" in maps and (m := _MAPS_PHP.search(maps)):
        lib = m.group(1).decode("utf-8", "replace")
        version = (m.group(2) or b"").decode()
        if "." not in version:
            version = _scan_version(_in_root(pid, lib), lib, _PHP_VERSION) or version
        return found("php", version, f"{os.path.basename(lib)} mapped")

    # 2. ELF: embedded CPython, Go (any name; statically linked, so nothing shows in maps)
    facts = _elf_facts(pid, exe)
    if facts.python_evidence:
        return found("python", facts.python_version, facts.python_evidence)
    if facts.go_evidence:
        return found("golang", facts.go_version, facts.go_evidence)

    raise NotSupported(pid, f"not a supported runtime (exe {exe}); supported: {_SUPPORTED}")


def scan() -> list[Detection]:
    """Every runtime process on the host, by pid. Skips our own process and, silently,
    kernel threads, zombies, processes we may not read and those running no runtime."""
    me = os.getpid()
    found: list[Detection] = []
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            found.append(detect(int(entry)))
        except (ProcessError, NotSupported):
            continue
    found.sort(key=lambda d: d.pid)
    return found
