"""The fanotify fallback's pure part: which file the kernel opens for exec next (the ELF
interpreter of a dynamic binary, the interpreter of a script), read from the exec'd file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from driver.fanotify import follow_up


def _follow(path: str | Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return follow_up(fd)
    finally:
        os.close(fd)


def test_dynamic_elf_names_its_interpreter() -> None:
    interp = _follow("/bin/echo")
    assert interp.startswith("/") and "ld-linux" in interp


def test_script_names_its_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh -e\necho hi\n")
    assert _follow(script) == "/bin/sh"
    env = tmp_path / "e.py"
    env.write_text("#! /usr/bin/env python3\n")
    assert _follow(env) == "/usr/bin/env"
    nul = tmp_path / "nul.sh"
    nul.write_bytes(b"#!/bin/s\0h\n")  # the kernel stops at the NUL; so do we
    assert _follow(nul) == "/bin/s"


def _elf(path: Path, p_type: int, interp: bytes = b"") -> Path:
    """A minimal ELF64 header with one program header of `p_type`."""
    hdr = bytearray(64)
    hdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", hdr, 32, 64)  # e_phoff
    struct.pack_into("<HH", hdr, 54, 56, 1)  # e_phentsize, e_phnum
    ph = struct.pack("<IIQQQQQQ", p_type, 0, 120, 0, 0, len(interp) + 1, 0, 0)
    path.write_bytes(bytes(hdr) + ph + interp + b"\0")
    return path


def test_elf_program_headers_are_read(tmp_path: Path) -> None:
    assert _follow(_elf(tmp_path / "dyn", 3, b"/lib/ld-test.so")) == "/lib/ld-test.so"
    assert _follow(_elf(tmp_path / "static", 1)) == ""  # PT_LOAD only: statically linked


def test_other_files_name_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"\x7fELF" + b"\0" * 10)  # truncated header
    assert _follow(data) == ""
    assert _follow("/etc/hostname") == ""
    empty = tmp_path / "empty"
    empty.touch()
    assert _follow(empty) == ""
