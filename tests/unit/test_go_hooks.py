"""rasp/golang/hooks.py: how a record's strings become an event's args (pure logic), and the
table's invariants the BPF side relies on (cookie = index, request hook first), and the
record layouts against the BPF object's BTF."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import pytest

from rasp.golang import hooks, offsets
from rasp.golang.hooks import HOOKS, REQUEST_HOOK, open_flags
from rasp.golang.records import GO_STR_MAX, decode, go_event, go_proc
from tests.conftest import REPO


def _hook(name: str) -> hooks.Hook:
    return next(h for h in HOOKS if h.name == name)


def test_table() -> None:
    assert HOOKS[REQUEST_HOOK].program == "go_serve_http"  # GO_REQUEST_HOOK in gorasp.h
    assert len({h.name for h in HOOKS}) == len(HOOKS)
    assert all(h.kind in ("", "process", "file", "network", "dns", "sql") for h in HOOKS)


def test_open_flags() -> None:
    assert open_flags(0) == "O_RDONLY"
    assert open_flags(0o1 | 0o100 | 0o1000) == "O_WRONLY|O_CREATE|O_TRUNC"
    assert open_flags(0o2 | 0o2000) == "O_RDWR|O_APPEND"


def test_args() -> None:
    start = _hook("os/exec.(*Cmd).Start")
    assert start.args(["/usr/bin/sh", "sh", "-c", "id"], 3) == ["/usr/bin/sh", "-c", "id"]
    assert start.args(["/bin/true"], 0) == ["/bin/true"]
    dial = _hook("net.(*Dialer).DialContext")
    assert dial.args(["tcp", "127.0.0.1:8080"], 0) == ["127.0.0.1", "8080", "tcp"]
    assert dial.args(["tcp6", "[::1]:443"], 0) == ["::1", "443", "tcp6"]
    assert dial.args(["unix", "/run/x.sock"], 0) == ["/run/x.sock", "", "unix"]
    assert _hook("net.(*Resolver).lookupIPAddr").args(["ip", "example.test"], 0) == [
        "example.test",
        "ip",
    ]
    assert _hook("os.OpenFile").args(["/etc/passwd"], 0) == ["/etc/passwd", "O_RDONLY"]
    assert _hook("os.Rename").args(["a", "b"], 0) == ["a", "b"]


def test_decode_lengths_and_truncation() -> None:
    e = go_event(tgid=7, hook=3, nstr=2, num=-1)
    e.len[0], e.full_len[0] = 3, 3
    ctypes.memmove(ctypes.addressof(e.str[0]), b"abcXYZ", 6)  # bytes past len are ignored
    e.len[1], e.full_len[1] = GO_STR_MAX - 1, 5000
    raw = bytes(e)
    ev, strs, truncated = decode(raw)
    assert (ev.tgid, ev.hook, ev.num) == (7, 3, -1)
    assert strs[0] == "abc" and len(strs[1]) == GO_STR_MAX - 1 and truncated
    # a record of one slot (as the BPF side writes for one-string hooks): the second slot
    # the header claims is not there, and is not read
    short = raw[: go_event.str.offset + GO_STR_MAX]
    ev, strs, truncated = decode(short)
    assert strs == ["abc"] and not truncated


def test_records_mirror_the_objects_btf() -> None:
    """records.py's go_proc (the value the agent writes into go_procs) has the layout the BPF
    object was compiled with (its BTF, read with bpftool): a field added on one side only fails
    here, not as garbage offsets in the kernel. (go_event has no BTF of its own: the programs
    only use it through ring-buffer pointers; test_decode_* cover it.)"""
    obj = REPO / "build" / "bpf" / "golang.bpf.o"
    if not obj.exists() or not shutil.which("bpftool"):
        pytest.fail("build/bpf/golang.bpf.o or bpftool missing: run `make setup`")
    res = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    structs = {t["name"]: t for t in json.loads(res.stdout)["types"] if t.get("kind") == "STRUCT"}
    for cls in (go_proc,):
        btf = structs[cls.__name__]
        assert btf["size"] == ctypes.sizeof(cls), cls.__name__
        assert [(m["name"], m["bits_offset"] // 8) for m in btf["members"]] == [
            (name, getattr(cls, name).offset) for name, *_ in cls._fields_
        ], cls.__name__
    assert set(offsets.FIELDS) <= {name for name, *_ in go_proc._fields_}
