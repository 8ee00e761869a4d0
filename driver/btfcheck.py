"""Check the ctypes mirrors in driver/events.py against the BTF of the built BPF object.

clang writes every struct of rampart.h into the object's BTF (dispatch.bpf.c keeps them all
referenced), so sizes and member offsets can be compared at load time: a layout that drifted
between C and Python is refused with the first difference, instead of decoding garbage.
"""

from __future__ import annotations

import ctypes

from driver import libbpf
from driver.events import SHARED_STRUCTS


def _members(btf: int, type_id: int) -> tuple[int, list[tuple[str, int]]]:
    lib = libbpf.lib()
    t = lib.btf__type_by_id(btf, type_id)
    vlen = t.contents.info & 0xFFFF
    kflag = t.contents.info >> 31
    base = ctypes.addressof(t.contents) + ctypes.sizeof(libbpf.BtfType)
    out = []
    for i in range(vlen):
        m = libbpf.BtfMember.from_address(base + i * ctypes.sizeof(libbpf.BtfMember))
        bits = m.offset & 0xFFFFFF if kflag else m.offset
        name = (lib.btf__name_by_offset(btf, m.name_off) or b"").decode()
        out.append((name, bits // 8))
    return t.contents.size, out


def layout_differences(
    btf: int, structs: tuple[type[ctypes.Structure], ...] = SHARED_STRUCTS
) -> list[str]:
    """Differences between each shared ctypes Structure and the object's BTF (empty = same)."""
    lib = libbpf.lib()
    diffs: list[str] = []
    for cls in structs:
        name = cls.__name__
        type_id = lib.btf__find_by_name_kind(btf, name.encode(), libbpf.BTF_KIND_STRUCT)
        if type_id < 0:
            diffs.append(f"struct {name}: not in the object's BTF")
            continue
        size, members = _members(btf, type_id)
        if size != ctypes.sizeof(cls):
            diffs.append(f"struct {name}: {size} bytes in C, {ctypes.sizeof(cls)} in Python")
        py = [(f[0], getattr(cls, f[0]).offset) for f in cls._fields_]
        if members != py:
            for c_m, p_m in zip(members, py, strict=False):
                if c_m != p_m:
                    diffs.append(f"struct {name}: C member {c_m} vs Python {p_m}")
                    break
            else:
                diffs.append(f"struct {name}: {len(members)} members in C, {len(py)} in Python")
    return diffs
