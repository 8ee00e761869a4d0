"""The batch decoder (driver/batch.py) on synthetic records laid out by the ctypes mirrors of
rampart.h: equal to events.decode, the same errors, and the agent's batch consumer
(HostDriver._apply_batch): what it decodes, stores, skips and counts. Real records of the
real programs: tests/integration/test_driver_batch.py."""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import pytest

from driver import batch as rbatch
from driver import events as ev
from host_agent.hostdriver import HostDriver
from host_agent.proccache import NS_PER_TICK, ProcessCache
from host_agent.settings import Settings


def hdr(dt: int, pid: int = 4242, comm: bytes = b"curl") -> ev.rp_hdr:
    return ev.rp_hdr(
        ts=123456789,
        start_time=77 * NS_PER_TICK,
        cgroup_id=9,
        data_type=dt,
        pid=pid,
        tid=pid + 1,
        ppid=1,
        pgid=pid,
        sid=pid,
        uid=1000,
        euid=1000,
        gid=1000,
        pns=4026531836,
        nspid=pid,
        comm=comm,
        nodename=b"host-a",
    )


def sock(dt: int, v6: bool = False, pid: int = 4242, port: int = 443) -> ev.rp_sock:
    r = ev.rp_sock(h=hdr(dt, pid), ret=-111, fd=3, port=port, lport=50000, sock_type=1)
    r.family = ev.AF_INET6 if v6 else ev.AF_INET
    addr = bytes(15) + b"\1" if v6 else bytes([127, 0, 0, 1]) + bytes(12)
    ctypes.memmove(r.addr, addr, 16)
    ctypes.memmove(r.laddr, addr, 16)
    return r


def pack(*records: bytes) -> bytes:
    """The batch layout of rp_drain.c: [u32 size][u32 0][record][pad to 8]."""
    out = b""
    for r in records:
        out += len(r).to_bytes(4, "little") + bytes(4) + r + bytes(-len(r) % 8)
    return out


def samples() -> list[bytes]:
    ex = ev.rp_exec(h=hdr(ev.DT_EXECVE), argv_len=12, argv_kept=12, old_uid=0xFFFFFFFF)
    ex.filename = b"/usr/bin/curl"
    ctypes.memmove(ex.argv, b"curl\0-s\0x.io\0", 12)
    fork = ev.rp_fork(h=hdr(ev.DT_FORK), child_start_time=5, child_pid=4300, child_ppid=4242)
    memfd = ev.rp_memfd(h=hdr(ev.DT_MEMFD_CREATE), flags=1, name=b"payload")
    return [
        bytes(ex),
        bytes(fork),
        bytes(ev.rp_exit(h=hdr(ev.DT_EXIT), exit_code=-9)),
        bytes(sock(ev.DT_CONNECT)),
        bytes(sock(ev.DT_CONNECT, v6=True)),
        bytes(sock(ev.DT_BIND, v6=True)),
        bytes(sock(ev.DT_ACCEPT)),
        bytes(memfd),
        bytes(ev.rp_cred(h=hdr(ev.DT_CRED_CHANGE), nr=105, old_uid=1000, old_euid=1000)),
    ]


def test_every_record_decodes_as_the_reference_does() -> None:
    recs = samples()
    batch = pack(*recs)
    got = [(dt, pid, rbatch.decode_at(batch, s, n)) for dt, pid, s, n in rbatch.records(batch)]
    assert len(got) == len(recs)
    for (dt, pid, fast), raw in zip(got, recs, strict=True):
        ref = ev.decode(raw)
        assert fast == ref
        assert (dt, pid) == (ref.data_type, ref.pid)
    connect6 = got[4][2]
    assert connect6.fields["dip"] == "::1" and connect6.args == ["::1", "443"]
    assert got[0][2].args == ["curl", "-s", "x.io"]
    assert rbatch.split(batch) == recs


@pytest.mark.parametrize(
    "raw",
    [
        bytes(40),  # shorter than a header
        bytes(hdr(999)),  # unknown data_type
        bytes(sock(ev.DT_CONNECT))[:180],  # a connect cut short
    ],
    ids=["short", "unknown", "truncated"],
)
def test_bad_records_raise_what_the_reference_raises(raw: bytes) -> None:
    batch = pack(raw)
    ((_dt, _pid, start, size),) = rbatch.records(batch)
    with pytest.raises(ValueError) as ref:
        ev.decode(raw)
    with pytest.raises(ValueError) as fast:
        rbatch.decode_at(batch, start, size)
    assert str(fast.value) == str(ref.value)


class Pipe:
    backlog = 0
    host_lookup: Any = None

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit_host(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def submit_row(
        self, ts: int, pid: int, kind: str, hook: str, args: list[str], body: bytes, n: int = 1
    ) -> None:
        """Pipeline.submit_row: an encoded socket row (closed by the pipeline)."""
        e = json.loads(body + b"}")
        assert (e["ts"], e["pid"], e["kind"], e["hook"], e["args"]) == (ts, pid, kind, hook, args)
        assert e.get("count", 1) == n
        self.events.append(e)


def agent(stored: list[str]) -> tuple[HostDriver, Pipe]:
    pipe = Pipe()
    return HostDriver(Settings(driver_events=stored), pipe), pipe  # type: ignore[arg-type]


def test_stored_records_become_events_with_the_reference_fields() -> None:
    hd, pipe = agent(["connect"])
    raw = bytes(sock(ev.DT_CONNECT, pid=os.getpid()))
    hd._apply_batch(pack(bytes(hdr(999)), raw))  # a bad record first: counted, skipped
    hd._emit_folded()
    assert hd.decode_errors == 1
    (event,) = pipe.events
    ref = ev.decode(raw)
    assert event["hook"] == "connect" and event["args"] == ref.args
    assert event["driver"] == {
        **ref.common(),
        "exe": os.readlink("/proc/self/exe"),
        "start_time": event["driver"]["start_time"],
        **ref.fields,
    }
    assert event["process"]["pid_tree"].startswith(f"{os.getpid()}.")


def test_records_neither_stored_nor_cached_only_look_the_pid_up() -> None:
    hd, pipe = agent(["execve"])
    me = os.getpid()
    assert hd.cache.get(me) is None
    hd._apply_batch(pack(bytes(sock(ev.DT_CONNECT, pid=me))))
    assert pipe.events == [] and hd.decode_errors == 0
    entry = hd.cache.get(me)  # ProcessCache.apply's lookup: read from /proc, as before
    assert entry is not None and entry.exe == os.readlink("/proc/self/exe")
    hd._apply_batch(pack(bytes(sock(ev.DT_CONNECT, pid=me))[:100]))
    assert hd.decode_errors == 1  # still checked


def test_process_fields_memo_follows_every_change() -> None:
    cache = ProcessCache()
    a, b = 90_000_011, 90_000_012

    def event(dt: int, pid: int, ppid: int, comm: str, **fields: Any) -> ev.DriverEvent:
        e = ev.decode(bytes(ev.RECORDS[dt](h=hdr(dt, pid, comm.encode()))))
        e.ppid, e.fields, e.args = ppid, fields, [comm]
        return e

    cache.apply(event(ev.DT_EXECVE, a, a, "server", run_path="/srv/server"))
    cache.apply(event(ev.DT_EXECVE, b, a, "worker", run_path="/srv/worker"))
    first = cache.process_fields(b)
    assert first is not None and first["pid_tree"] == f"{b}.worker<{a}.server"
    first["pid_tree"] = "changed by a caller"
    again = cache.process_fields(b)
    assert again is not None and again["pid_tree"] == f"{b}.worker<{a}.server"
    cache.apply(event(ev.DT_PRCTL, a, a, "server", new_name="renamed"))
    renamed = cache.process_fields(b)
    assert renamed is not None and renamed["pid_tree"] == f"{b}.worker<{a}.renamed"
    cache.apply(event(ev.DT_EXECVE, a, a, "other", run_path="/srv/other"))
    assert cache.process_fields(b)["pid_tree"] == f"{b}.worker<{a}.other"  # type: ignore[index]
    cache.get(a).exe = "/edited/in/place"  # type: ignore[union-attr]
    cache.changed()
    assert cache.process_fields(a)["exe"] == "/edited/in/place"  # type: ignore[index]


def _at(raw: bytes, ts: int) -> bytes:
    """The same record with another timestamp (rp_hdr.ts is its first 8 bytes)."""
    return ts.to_bytes(8, "little") + raw[8:]


def test_identical_storm_records_of_a_batch_are_one_row_with_their_count() -> None:
    hd, pipe = agent(["connect", "execve"])
    me = os.getpid()
    a = bytes(sock(ev.DT_CONNECT, pid=me, port=443))
    b = bytes(sock(ev.DT_CONNECT, pid=me, port=8443))  # another destination: its own row
    ex = ev.rp_exec(h=hdr(ev.DT_EXECVE, pid=me), argv_len=5, argv_kept=5, old_uid=0xFFFFFFFF)
    ctypes.memmove(ex.argv, b"curl\0", 5)
    ts = [10_000_000 * i for i in range(1, 8)]
    hd._apply_batch(pack(_at(a, ts[0]), _at(b, ts[1]), _at(a, ts[2]), bytes(ex)))
    assert len(pipe.events) == 1  # the exec; the connects wait for the window to close
    hd._apply_batch(pack(_at(a, ts[3]), _at(b, ts[4])))  # the window spans batches
    hd._emit_folded()
    execs = [e for e in pipe.events if e["data_type"] == ev.DT_EXECVE]
    conns = [e for e in pipe.events if e["data_type"] == ev.DT_CONNECT]
    assert len(execs) == 1 and "count" not in execs[0]
    # first-occurrence order, each with the timestamp of its first record and its last
    assert [c["args"][1] for c in conns] == ["443", "8443"]
    first, second = conns
    off = hd._offset_ns
    assert first["count"] == 3 and first["ts"] == (ts[0] + off) // 1_000_000
    assert first["last_ts"] == (ts[3] + off) // 1_000_000
    assert second["count"] == 2 and second["last_ts"] == (ts[4] + off) // 1_000_000
    assert first["driver"]["dport"] == 443 and first["process"]["pid_tree"].startswith(f"{me}.")
    # every record is accounted for: rows + records folded into them
    assert hd.stored == 3 and hd.aggregated == 3
    assert hd.stats()["aggregated"] == 3
    # the next window starts afresh: a lone record is a row of its own, without `count`
    hd._apply_batch(pack(_at(a, ts[5])))
    hd._end_window()  # no loop: closes at once
    assert "count" not in pipe.events[-1] and hd.stored == 4


def test_records_differing_in_any_field_are_not_folded() -> None:
    hd, pipe = agent(["connect"])
    me = os.getpid()
    a = sock(ev.DT_CONNECT, pid=me)
    b = sock(ev.DT_CONNECT, pid=me)
    b.lport = 50001  # another TCP connect: another source port
    c = sock(ev.DT_CONNECT, pid=me)
    c.ret = 0
    hd._apply_batch(pack(bytes(a), bytes(b), bytes(c), _at(bytes(a), 5)))
    hd._emit_folded()
    assert [e.get("count", 1) for e in pipe.events] == [2, 1, 1]
    assert [e["driver"]["sport"] for e in pipe.events] == [50000, 50001, 50000]


def test_pipeline_counts_an_aggregated_row_as_its_records() -> None:
    from host_agent.pipeline import Pipeline
    from host_agent.policy import loads_policy

    policy = loads_policy(
        "policies:\n  - {id: quiet, kind: network, hook: connect, action: ignore}\n"
    )
    pipe = Pipeline(Settings(), [], policy)
    hd = HostDriver(Settings(driver_events=["connect"]), pipe)
    raw = bytes(sock(ev.DT_CONNECT, pid=os.getpid()))
    hd._apply_batch(pack(raw, _at(raw, 7), _at(raw, 9)))
    hd._emit_folded()
    assert pipe.received == 3 and pipe.ignored == 3


def test_sinks_behind_fold_by_destination_then_shed_but_the_cache_sees_everything() -> None:
    from host_agent import hostdriver
    from host_agent.cli import _driver_line

    hd, pipe = agent(["connect", "execve"])
    me = os.getpid()
    a, b, c = (sock(ev.DT_CONNECT, pid=me) for _ in range(3))
    b.lport, b.fd = 50001, 4  # another connect to the same place: same summary row
    c.port = 8443  # another destination: a row of its own
    ex = ev.rp_exec(h=hdr(ev.DT_EXECVE, pid=me), argv_len=5, argv_kept=5, old_uid=0xFFFFFFFF)
    recs = pack(bytes(a), _at(bytes(b), 99), bytes(c), bytes(ex))
    pipe.backlog = hd.settings.queue_limit  # the sinks a queue_limit behind
    assert hd._storm_mode() == hostdriver.SUMMARY
    hd._apply_batch(recs, hd._storm_mode())
    hd._emit_folded()
    conns = [e for e in pipe.events if e["data_type"] == ev.DT_CONNECT]
    assert [(e["args"][1], e.get("count", 1)) for e in conns] == [("443", 2), ("8443", 1)]
    assert conns[0]["summary"] is True and conns[0]["driver"]["sport"] == 50000
    assert hd.summarized == 1 and hd.aggregated == 0
    assert sum(e["data_type"] == ev.DT_EXECVE for e in pipe.events) == 1

    pipe.events.clear()
    pipe.backlog = 2 * hd.settings.queue_limit
    assert hd._storm_mode() == hostdriver.SHED
    hd._apply_batch(recs, hd._storm_mode())
    hd._emit_folded()
    # the exec is stored and reaches the cache; the connects are counted, not stored
    assert [e["data_type"] for e in pipe.events] == [ev.DT_EXECVE]
    assert hd.shed == {"connect": 3} and hd.stats()["shed"] == {"connect": 3}
    line = _driver_line({**hd.stats(), "mode": "ebpf"})
    assert "+1 into summary rows" in line and "NOT STORED (sinks behind): connect 3" in line


def test_socket_rows_encoded_directly_equal_the_event_dicts() -> None:
    """_sock_row (the storm path: no dict per record) gives what _event + JSON give."""
    hd, _pipe = agent(["connect", "bind", "accept"])
    me = os.getpid()
    recs = [
        sock(ev.DT_CONNECT, pid=me),
        sock(ev.DT_CONNECT, v6=True, pid=me),
        sock(ev.DT_BIND, pid=me),
        sock(ev.DT_BIND, v6=True, pid=me),
        sock(ev.DT_ACCEPT, pid=me),
    ]
    recs[1].h.tid = me + 7  # another thread: another header
    batch = pack(*(bytes(r) for r in recs))
    at = [(dt, start, size) for dt, _pid, start, size in rbatch.records(batch)]
    decoded = [rbatch.decode_at(batch, start, size) for _dt, start, size in at]
    refs = [json.loads(json.dumps(hd._event(e, hd.cache.lookup(e.pid)))) for e in decoded]
    for _round in range(2):  # encoded parts built, then reused
        for (dt, start, size), e, ref in zip(at, decoded, refs, strict=True):
            ts, pid, kind, hook, args, body = hd._sock_row(batch, dt, start, size)
            assert json.loads(b'{"ts":%d,' % ref["ts"] + body + b"}") == ref
            assert (ts, pid, kind, hook, args) == (
                e.ts_ns,
                me,
                ref["kind"],
                ref["hook"],
                ref["args"],
            )
    # one per header (all but ts): the second connect is another thread's
    assert len(hd._heads) == 4
    # a change in the cache (an exec, a rename...) drops what was encoded
    hd.cache.changed()
    hd._sock_row(batch, *at[0])
    assert len(hd._heads) == 1
