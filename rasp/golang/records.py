"""The ring-buffer record of the Go probe, mirrored from rasp/golang/bpf/gorasp.h."""

from __future__ import annotations

import ctypes

GO_SLOTS = 8
GO_STR_MAX = 512


class go_event(ctypes.Structure):
    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("g", ctypes.c_uint64),
        ("req_id", ctypes.c_uint64),
        ("hook", ctypes.c_uint32),
        ("nstr", ctypes.c_uint32),
        ("num", ctypes.c_int64),
        ("len", ctypes.c_uint32 * GO_SLOTS),
        ("full_len", ctypes.c_uint32 * GO_SLOTS),
        ("str", (ctypes.c_char * GO_STR_MAX) * GO_SLOTS),
    ]


class go_proc(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in (
            "req_method",
            "req_url",
            "req_host",
            "req_remote",
            "url_path",
            "url_query",
            "cmd_path",
            "cmd_args",
            "resp_req",
            "resp_done",
            "g_goid",
            "_pad",
        )
    ]


class go_uprobe_opts(ctypes.Structure):
    """struct bpf_uprobe_opts as libbpf 1.1 knows it (sz lets newer libbpfs accept it)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


def decode(raw: bytes) -> tuple[go_event, list[str], bool]:
    """(record, its strings, whether any was truncated). A record holds only the string slots
    its hook fills (gorasp.h GO_RECORD_SIZE): pad it back to the full layout."""
    full = ctypes.sizeof(go_event)
    e = go_event.from_buffer_copy(raw[:full].ljust(full, b"\0"))
    slots = (min(len(raw), full) - go_event.str.offset) // GO_STR_MAX
    strs: list[str] = []
    truncated = False
    for i in range(min(e.nstr, GO_SLOTS, max(slots, 0))):
        n = e.len[i]
        strs.append(bytes(e.str[i])[:n].decode("utf-8", "replace"))
        truncated |= e.full_len[i] > n
    return e, strs, truncated
