"""Where Go functions start in a binary, and which Go built it.

Uprobes attach at a *file offset*. Go binaries keep a symbol table unless linked with
`-ldflags=-s`; every Go binary keeps `.gopclntab` (the runtime needs it for stack traces and
GC), which maps function entries to names, so stripped binaries resolve too. The Go version
and main module come from the build info (`.go.buildinfo`, Go >= 1.18 stores them inline).

Go < 1.17 passed arguments on the stack (ABI0); the probe reads them from registers
(ABIInternal, Go >= 1.17 on amd64), so older binaries are refused (`TooOld`).

Binaries of processes in containers are read through `/proc/<pid>/exe`, which the kernel
resolves in the process's own mount namespace (`/proc/<pid>/root` + the path would miss a
binary deleted or replaced after start).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from injector.detect import GO_BUILDINFO_MAGIC, go_buildinfo_version

#: pclntab header magics (runtime/symtab.go)
PCLN_MAGIC = {
    0xFFFFFFFB: "1.2",  # Go 1.2 - 1.15
    0xFFFFFFFA: "1.16",  # Go 1.16 - 1.17
    0xFFFFFFF0: "1.18",  # Go 1.18 - 1.19
    0xFFFFFFF1: "1.20",  # Go 1.20 and later (1.26 still)
}
MIN_GO = (1, 17)


class SymbolError(Exception):
    """The binary cannot be probed; str() is one line for the user."""


class NotGo(SymbolError):
    pass


class TooOld(SymbolError):
    pass


@dataclass
class GoBinary:
    path: str  # what was opened (/proc/<pid>/exe or a file)
    version: str  # "go1.26.8", "" when the build info does not say
    module: str  # main module path, "" when unknown
    stripped: bool  # no .symtab: entries came from .gopclntab
    pclntab: str  # pclntab layout ("1.20", ...)
    has_dwarf: bool
    #: function name -> file offset to probe (its entry, or past Go's stack-check prologue:
    #: probe_skip), for the names asked for
    offsets: dict[str, int] = field(default_factory=dict)


def parse_version(version: str) -> tuple[int, int] | None:
    m = re.match(r"go(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _vaddr_to_offset(elf: ELFFile, addr: int) -> int | None:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        start = seg["p_vaddr"]
        if start <= addr < start + seg["p_filesz"]:
            return int(addr - start + seg["p_offset"])
    return None


def _from_symtab(elf: ELFFile, wanted: set[str]) -> dict[str, int]:
    symtab = elf.get_section_by_name(".symtab")
    out: dict[str, int] = {}
    if symtab is None:
        return out
    for sym in symtab.iter_symbols():
        if sym.name in wanted and sym["st_info"]["type"] == "STT_FUNC":
            off = _vaddr_to_offset(elf, sym["st_value"])
            if off is not None:
                out[sym.name] = off
    return out


@dataclass
class Pclntab:
    """The function table of `.gopclntab` (Go 1.16+ layouts; see runtime/symtab.go)."""

    layout: str
    entries: dict[str, int]  # name -> entry virtual address
    text_base: int = 0  # what entry offsets were added to (1.18+)


def parse_pclntab(data: bytes, text_start: int = 0) -> Pclntab:
    """Function names and entry addresses from a pclntab blob.

    Header: magic u32, 2 pad bytes, min instruction size u8, pointer size u8, then pointer-sized
    words: nfunc, nfiles, [textStart (1.18+)], funcnameOffset, cuOffset, filetabOffset,
    pctabOffset, pclnOffset. The function table at pclnOffset holds nfunc+1 pairs of
    (entry, _func offset): u32 offsets from textStart since 1.18, pointer-sized addresses in
    1.16. Each _func starts with the entry (u32 / pointer) then nameOff (i32 into funcnametab).
    `text_start` overrides the header's textStart (0: use the header's)."""
    if len(data) < 16:
        raise SymbolError("pclntab too short")
    magic = struct.unpack_from("<I", data, 0)[0]
    layout = PCLN_MAGIC.get(magic)
    if layout is None:
        raise SymbolError(f"unknown pclntab magic {magic:#x}")
    if layout == "1.2":
        raise TooOld("Go < 1.16 pclntab: no register ABI (Go >= 1.17 needed)")
    ptr = data[7]
    if ptr != 8:
        raise SymbolError(f"pointer size {ptr}: only 64-bit binaries are supported")
    words_at = lambda i: struct.unpack_from("<Q", data, 8 + 8 * i)[0]  # noqa: E731
    nfunc = words_at(0)
    if layout == "1.16":
        text, funcname, pcln = 0, words_at(2), words_at(6)
    else:
        text, funcname, pcln = words_at(2), words_at(3), words_at(7)
    if text_start:
        text = text_start
    entries: dict[str, int] = {}
    if layout == "1.16":
        pair, fmt = 16, "<QQ"
    else:
        pair, fmt = 8, "<II"
    for i in range(nfunc):
        entry, funcoff = struct.unpack_from(fmt, data, pcln + i * pair)
        name_off = struct.unpack_from("<i", data, pcln + funcoff + (8 if layout == "1.16" else 4))[
            0
        ]
        start = funcname + name_off
        end = data.index(b"\0", start)
        name = data[start:end].decode("utf-8", "replace")
        entries.setdefault(name, entry + text if layout != "1.16" else entry)
    return Pclntab(layout, entries, text)


def _pclntab(elf: ELFFile) -> Pclntab | None:
    sec = elf.get_section_by_name(".gopclntab")
    if sec is None:
        return None
    text = elf.get_section_by_name(".text")
    table = parse_pclntab(sec.data())
    if table.layout != "1.16" and text is not None and table.text_base == 0:
        # Go 1.26 links textStart as 0 in the header (the runtime takes it from moduledata);
        # entries are offsets from the start of .text
        table = parse_pclntab(sec.data(), text_start=text["sh_addr"])
    return table


def buildinfo(elf: ELFFile) -> tuple[str, str]:
    """(Go version, main module path) from `.go.buildinfo` (inline strings, Go >= 1.18)."""
    sec = elf.get_section_by_name(".go.buildinfo")
    if sec is None:
        return "", ""
    blob = sec.data()[:65536]
    version = go_buildinfo_version(blob)
    module = ""
    if version and blob.startswith(GO_BUILDINFO_MAGIC):
        # after the version string: the module info, uvarint length + text; its lines are
        # "path\t<cmd path>" / "mod\t<module>\t<version>\t..." between 16-byte sentinels
        m = re.search(rb"\bmod\t([^\t\n]+)", blob)
        if m:
            module = m.group(1).decode("utf-8", "replace")
    return version, module


def _open_elf(f: BinaryIO, path: str) -> ELFFile:
    try:
        return ELFFile(f)
    except ELFError as e:
        raise NotGo(f"{path}: not an ELF binary ({e})") from None


def inspect(path: str | Path, functions: Iterable[str]) -> GoBinary:
    """Resolve `functions` in the Go binary at `path`; missing names are simply absent from
    `offsets`. Raises NotGo, TooOld or SymbolError with a one-line reason."""
    path = str(path)
    wanted = set(functions)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as e:
        raise SymbolError(f"cannot read {path}: {e.strerror}") from None
    with f:
        elf = _open_elf(f, path)
        if elf.header["e_machine"] != "EM_X86_64":
            raise SymbolError(f"{path}: {elf.header['e_machine']}: only x86-64 is supported")
        has_pcln = elf.get_section_by_name(".gopclntab") is not None
        version, module = buildinfo(elf)
        if not has_pcln and not version:
            raise NotGo(f"{path}: not a Go binary (no .gopclntab, no Go build info)")
        parsed = parse_version(version)
        if parsed is not None and parsed < MIN_GO:
            raise TooOld(
                f"{path} was built by {version}: the Go probe needs Go >= 1.17 (register ABI)"
            )
        stripped = elf.get_section_by_name(".symtab") is None
        offsets = _from_symtab(elf, wanted)
        layout = ""
        if has_pcln and (stripped or len(offsets) < len(wanted) or not version):
            table = _pclntab(elf)
            assert table is not None
            layout = table.layout
            if layout == "1.16" and not version:
                # 1.16 and 1.17 share this layout; only 1.17 has the register ABI, and
                # without build info we cannot tell them apart
                raise TooOld(f"{path}: Go 1.16/1.17 binary without build info: cannot tell")
            for name in wanted - offsets.keys():
                addr = table.entries.get(name)
                if addr is not None:
                    off = _vaddr_to_offset(elf, addr)
                    if off is not None:
                        offsets[name] = off
        elif has_pcln:
            sec = elf.get_section_by_name(".gopclntab")
            magic = struct.unpack("<I", sec.data()[:4])[0]
            layout = PCLN_MAGIC.get(magic, "?")
        for name, off in list(offsets.items()):
            f.seek(off)
            offsets[name] = off + probe_skip(f.read(16))
        has_dwarf = elf.has_dwarf_info() and elf.get_section_by_name(".debug_info") is not None
        if not has_dwarf:
            has_dwarf = elf.get_section_by_name(".zdebug_info") is not None
        return GoBinary(path, version, module, stripped, layout, has_dwarf, offsets)


#: Go's stack-check prologue, which leaves every argument register (and r14) untouched:
#: `cmp rsp, [r14+0x10]`, or `lea r12, [rsp-N]; cmp r12, [r14+0x10]` (disp8 / disp32)
_PROLOGUES = (
    re.compile(rb"\x49\x3b\x66\x10", re.S),
    re.compile(rb"\x4c\x8d\x64\x24.\x4d\x3b\x66\x10", re.S),
    re.compile(rb"\x4c\x8d\xa4\x24....\x4d\x3b\x66\x10", re.S),
)


def probe_skip(code: bytes) -> int:
    """Bytes to skip from a Go function's entry to put the uprobe on its `jbe morestack`.

    The kernel emulates a conditional jump in place, but executes `cmp`/`lea` out of line
    with a second trap (single-step): probing the jump halves the cost of a hit. Nothing the
    probe reads has changed by then (the prologue only sets flags and r12), and when the
    stack must grow, morestack re-enters the function from its entry, so the jump runs (and
    fires) twice, as the entry itself would. 0 when the code is not this prologue."""
    for pattern in _PROLOGUES:
        m = pattern.match(code)
        if m is None:
            continue
        after = code[m.end() : m.end() + 2]
        if after[:1] == b"\x76" or after == b"\x0f\x86":  # jbe rel8 / rel32
            return m.end()
    return 0


def process_binary(pid: int) -> str:
    """The path through which to read (and attach to) the binary of `pid`."""
    return f"/proc/{pid}/exe"
