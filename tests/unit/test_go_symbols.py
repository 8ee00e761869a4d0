"""rasp/golang/symbols.py and offsets.py on the Go binaries we build (static, cgo, stripped),
plus the pclntab layouts of Go versions the machine cannot build (1.16, 1.18), assembled by
hand from the header format."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from rasp.golang import offsets, symbols
from rasp.golang.hooks import ALL_SYMBOLS, HOOKS
from tests.conftest import GoBuild


@pytest.fixture(scope="module")
def builds(go_build: GoBuild) -> dict[str, Path]:
    return {
        "static": go_build("vulnapp"),
        "cgo": go_build("vulnapp", cgo=True),
        "stripped": go_build("vulnapp", stripped=True),
        # Debian's Go 1.19: the pclntab 1.18 layout and its own struct offsets
        "go1.19": go_build("vulnapp", go="1.19"),
        "go1.19-stripped": go_build("vulnapp", go="1.19", stripped=True),
    }


def _symtab_funcs(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {
            s.name: s["st_value"]
            for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC"
        }


def test_every_hook_resolves_in_every_build(builds: dict[str, Path]) -> None:
    found = {k: symbols.inspect(p, ALL_SYMBOLS) for k, p in builds.items()}
    for name, b in found.items():
        assert b.version.startswith("go1.") and b.module == "rampart/tests/vulnapp", name
        resolved = {h.name for h in HOOKS if any(s in b.offsets for s in h.symbols)}
        # the linker drops what the app never calls: the app uses (*DB).QueryContext,
        # (*DB).ExecContext, (*Conn).ExecContext and (*Tx).ExecContext of database/sql
        missing = {h.name for h in HOOKS} - resolved
        assert all(m.startswith("database/sql.") for m in missing), (name, missing)
        assert "database/sql.(*DB).QueryContext" in resolved and len(resolved) >= 13
    assert found["go1.19"].version.startswith("go1.19.")
    assert not found["static"].version.startswith("go1.19.")
    for plain, stripped in (("static", "stripped"), ("go1.19", "go1.19-stripped")):
        assert found[stripped].stripped and not found[plain].stripped
        assert not found[stripped].has_dwarf and found[plain].has_dwarf
        # -s -w drops symbols and DWARF only: the code, hence every entry offset, is the same;
        # the stripped build's offsets come from .gopclntab alone
        assert found[stripped].offsets == found[plain].offsets
        # every probe point is the `jbe morestack` after Go's stack check (probe_skip)
        code = builds[plain].read_bytes()
        for off in found[plain].offsets.values():
            assert code[off] == 0x76 or code[off : off + 2] == b"\x0f\x86", (plain, hex(off))


def test_pclntab_matches_symtab_for_every_function(builds: dict[str, Path]) -> None:
    for name in ("static", "cgo"):
        with open(builds[name], "rb") as f:
            table = symbols._pclntab(ELFFile(f))
        assert table is not None and table.layout == "1.20"
        funcs = _symtab_funcs(builds[name])
        common = set(table.entries) & set(funcs)
        assert len(common) > 3000
        differ = [n for n in common if table.entries[n] != funcs[n]]
        # only assembly functions of the runtime with an ABI wrapper of the same name in
        # pclntab (runtime.osyield, asmcgocall, ...) differ; Go functions never do
        assert len(differ) < 10 and all(n.startswith("runtime") for n in differ), differ


def _fake_pclntab(layout: str, funcs: list[tuple[str, int]], text: int) -> bytes:
    """A minimal pclntab of the 1.16 or 1.18 layout holding `funcs` (name, entry address)."""
    names = b""
    name_offs = []
    for n, _ in funcs:
        name_offs.append(len(names))
        names += n.encode() + b"\0"
    nfunc = len(funcs)
    hdr_words = 7 if layout == "1.16" else 8
    funcname = 8 + 8 * hdr_words
    pcln = funcname + len(names)
    pair = 16 if layout == "1.16" else 8
    ftab = b""
    funcs_blob = b""
    func_base = (nfunc + 1) * pair
    for i, (_, entry) in enumerate(funcs):
        off = func_base + len(funcs_blob)
        if layout == "1.16":
            ftab += struct.pack("<QQ", entry, off)
            funcs_blob += struct.pack("<Qi", entry, name_offs[i]) + b"\0" * 4
        else:
            ftab += struct.pack("<II", entry - text, off)
            funcs_blob += struct.pack("<Ii", entry - text, name_offs[i])
    ftab += b"\0" * pair
    if layout == "1.16":
        magic = 0xFFFFFFFA
        words = [nfunc, 0, funcname, 0, 0, 0, pcln]
    else:
        magic = 0xFFFFFFF0
        words = [nfunc, 0, text, funcname, 0, 0, 0, pcln]
    head = struct.pack("<IBBBB", magic, 0, 0, 1, 8) + struct.pack(f"<{len(words)}Q", *words)
    return head + names + ftab + funcs_blob


@pytest.mark.parametrize("layout", ["1.16", "1.18"])
def test_older_pclntab_layouts(layout: str) -> None:
    funcs = [("main.main", 0x401200), ("os.OpenFile", 0x4D9420), ("os/exec.(*Cmd).Start", 0x67B0E0)]
    table = symbols.parse_pclntab(_fake_pclntab(layout, funcs, 0x401000))
    assert table.layout == layout
    assert table.entries == dict(funcs)


def test_probe_skip() -> None:
    jbe8, jbe32 = b"\x76\x61", b"\x0f\x86\xb7\x03\x00\x00"
    assert symbols.probe_skip(b"\x49\x3b\x66\x10" + jbe8) == 4
    assert symbols.probe_skip(b"\x4c\x8d\x64\x24\xd0\x4d\x3b\x66\x10" + jbe32) == 9
    assert symbols.probe_skip(b"\x4c\x8d\xa4\x24\x58\xff\xff\xff\x4d\x3b\x66\x10" + jbe32) == 12
    assert symbols.probe_skip(b"\x49\x3b\x66\x10\x90\x90") == 0  # no jbe: stay at entry
    assert symbols.probe_skip(b"\x55\x48\x89\xe5") == 0  # assembly without stack check


def test_pre_116_and_unknown_pclntab_refused() -> None:
    with pytest.raises(symbols.TooOld):
        symbols.parse_pclntab(struct.pack("<IBBBB", 0xFFFFFFFB, 0, 0, 1, 8) + b"\0" * 64)
    with pytest.raises(symbols.SymbolError, match="unknown pclntab magic"):
        symbols.parse_pclntab(struct.pack("<IBBBB", 0x12345678, 0, 0, 1, 8) + b"\0" * 64)


def test_go_older_than_117_refused(builds: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(builds["static"].read_bytes())
    at = data.index(b"\xff Go buildinf:") + 33
    data[at + 4 : at + 6] = b"16"
    old = tmp_path / "go116"
    old.write_bytes(bytes(data))
    with pytest.raises(symbols.TooOld, match=r"built by go1\.16.*needs Go >= 1\.17"):
        symbols.inspect(old, ALL_SYMBOLS)


def test_not_go(tmp_path: Path) -> None:
    with pytest.raises(symbols.NotGo, match="not a Go binary"):
        symbols.inspect("/usr/bin/sleep", ALL_SYMBOLS)
    (tmp_path / "x").write_text("#!/bin/sh\n")
    with pytest.raises(symbols.NotGo, match="not an ELF"):
        symbols.inspect(tmp_path / "x", ALL_SYMBOLS)
    with pytest.raises(symbols.SymbolError, match="cannot read"):
        symbols.inspect(tmp_path / "missing", ALL_SYMBOLS)


@pytest.mark.parametrize("plain,stripped", [("static", "stripped"), ("go1.19", "go1.19-stripped")])
def test_field_offsets_dwarf_matches_table(builds: dict[str, Path], plain: str, stripped: str):
    """The per-version table (what a stripped binary gets) says what DWARF says, for the
    machine's Go and for Go 1.19: every field, the liveness-check ones included."""
    b = symbols.inspect(builds[plain], ALL_SYMBOLS)
    minor = symbols.parse_version(b.version)[1]  # type: ignore[index]
    assert minor in offsets.VERIFIED
    dwarf = offsets.resolve(str(builds[plain]), minor, b.has_dwarf)
    assert dwarf.source == "dwarf" and set(dwarf.values) == set(offsets.FIELDS)
    table = offsets.resolve(str(builds[stripped]), minor, False)
    assert table.source == f"table go1.{minor}"
    assert dwarf.values == table.values
    assert all(dwarf.values[k] for k in offsets.OPTIONAL)  # the liveness check is on


def test_field_offsets_of_unverified_versions() -> None:
    """Versions no binary here checked keep the liveness check off (0) rather than guess."""
    assert offsets.from_table(99).source.startswith("table go1.27 (nearest")
    for minor in (99, 21, 16):
        values = offsets.from_table(minor).values
        assert all(values[k] == 0 for k in offsets.OPTIONAL), minor
        assert values["resp_req"] == 8
