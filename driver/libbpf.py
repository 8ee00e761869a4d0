"""ctypes bindings to the system libbpf.so.1: just the calls the loader makes.

Why ctypes over the system library: BCC needs kernel headers we do not have, and the PyPI
bindings lack ring buffers (notes/platform-facts.md §3, §4.5). libbpf 1.x returns NULL and
sets errno on failure for pointer-returning calls, and a negative errno for int ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_char_p = ctypes.c_char_p

LIBBPF_SONAME = "libbpf.so.1"
BTF_KIND_STRUCT = 4

#: int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, ctypes.c_size_t)
#: int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *, va_list)
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class LibbpfMissing(OSError):
    pass


class BtfType(ctypes.Structure):
    """struct btf_type (uapi linux/btf.h): followed by `vlen` btf_member for structs."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (c_void_p, [c_void_p]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, ctypes.c_uint32]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [c_void_p, c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(BtfType), [c_void_p, ctypes.c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, ctypes.c_uint32]),
    "btf__resolve_size": (ctypes.c_int64, [c_void_p, ctypes.c_uint32]),
}

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()
_log_sink: list[Callable[[int, str], None]] = []
_print_ref: object = None  # keeps the C callback alive
_vsnprintf = None


def lib() -> ctypes.CDLL:
    """The loaded library, with typed functions. Raises LibbpfMissing with the reason."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        try:
            handle = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
        except OSError as e:
            raise LibbpfMissing(
                f"{LIBBPF_SONAME} not found ({e}); install the libbpf1 package"
            ) from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _install_printer(handle)
        _lib = handle
        return handle


def _install_printer(handle: ctypes.CDLL) -> None:
    """Route libbpf's messages (verifier logs included) to whoever listens (the loader)."""
    global _print_ref, _vsnprintf
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    _vsnprintf = libc.vsnprintf
    _vsnprintf.argtypes = [c_char_p, ctypes.c_size_t, c_char_p, c_void_p]
    _vsnprintf.restype = c_int

    def printer(level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        _vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode("utf-8", "replace").rstrip()
        for sink in list(_log_sink):
            sink(level, text)
        return 0

    _print_ref = PRINT_FN(printer)
    handle.libbpf_set_print(ctypes.cast(_print_ref, c_void_p))


def add_log_sink(sink: Callable[[int, str], None]) -> None:
    _log_sink.append(sink)


def remove_log_sink(sink: Callable[[int, str], None]) -> None:
    if sink in _log_sink:
        _log_sink.remove(sink)


def errno_text(err: int) -> str:
    err = abs(err)
    return f"{os.strerror(err)} (errno {err})"


def last_errno() -> int:
    return ctypes.get_errno()
