"""The batch reader (driver/native/rp_drain.c) and decoder (driver/batch.py) on records of the
real BPF programs, made by real victim processes this test starts. Needs root and BTF.

The reference is events.decode (ctypes Structures checked against the object's BTF): every
record the batch path sees must decode to the very same DriverEvent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver import batch as rbatch
from driver import events as ev
from driver import loader
from driver.loader import BATCH_BYTES, Driver, DriverConfig
from driver.programs import EVENT_NAMES
from tests.agentproc import REPO, wait_for

pytestmark = pytest.mark.integration

PY = "/usr/bin/python3"
VICTIM = str(REPO / "tests" / "apps" / "driver" / "victim.py")


def victim(*args: str) -> int:
    p = subprocess.Popen([PY, VICTIM, *args], stdout=subprocess.PIPE, text=True)
    p.wait(30)
    assert p.returncode == 0
    return p.pid


def drain(d: Driver) -> list[bytes]:
    d.flush()
    return d.take_batches()


@pytest.fixture()
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    native = getattr(request, "param", True)
    d = Driver(
        DriverConfig(
            events=set(EVENT_NAMES), reader=False, ringbuf_kb=32 << 10, native_reader=native
        )
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.mark.parametrize("driver", [True, False], ids=["native", "python"], indirect=True)
def test_batch_decode_equals_reference_decode(driver: Driver) -> None:
    assert driver.reader_kind == ("native" if driver.config.native_reader else "python")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        pids = {
            victim("connect", "127.0.0.1", str(port)): ev.DT_CONNECT,
            victim("bind", "127.0.0.1"): ev.DT_BIND,
            victim("memfd", "rampart-batch"): ev.DT_MEMFD_CREATE,
            victim("prctl", "rp-batch"): ev.DT_PRCTL,
            victim("dns", "batch.rampart.test"): ev.DT_DNS,
        }
    seen: Counter[int] = Counter()
    by_pid: dict[int, set[int]] = {}

    def pull() -> bool:
        for b in drain(driver):
            for dt, pid, start, size in rbatch.records(b):
                fast = rbatch.decode_at(b, start, size)
                assert fast == ev.decode(b[start : start + size])
                assert (fast.data_type, fast.pid) == (dt, pid)
                seen[dt] += 1
                by_pid.setdefault(pid, set()).add(dt)
        return all(dt in by_pid.get(pid, ()) for pid, dt in pids.items())

    wait_for(pull, 10, "the victims' records")
    for pid in pids:  # each victim's own exec and exit went through the batch path too
        assert {ev.DT_EXECVE, ev.DT_EXIT} <= by_pid[pid]
    assert seen[ev.DT_FORK] >= len(pids)
    assert driver.stats()["batch_lost"] == 0


def test_a_burst_larger_than_a_batch_is_read_whole(driver: Driver) -> None:
    """More records than one batch holds: the C callback stops at a full batch, the loader
    takes it and consumes again, and not one record is lost or repeated."""
    n = 12_000  # x 216 bytes: ≈ 2.5 batches of 1 MiB
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for i in range({n}): s.connect(('127.0.0.1', 9 + i % 2))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code])
    assert p.wait(60) == 0
    time.sleep(0.1)
    batches = drain(driver)
    assert len(batches) >= 3 and all(len(b) <= BATCH_BYTES for b in batches)
    ports: Counter[int] = Counter()
    last_ts = 0
    for b in batches:
        for dt, pid, start, size in rbatch.records(b):
            if dt != ev.DT_CONNECT or pid != p.pid:
                continue
            e = rbatch.decode_at(b, start, size)
            assert e.fields["dip"] == "127.0.0.1" and e.fields["res"] == 0
            assert e.ts_ns >= last_ts  # ring-buffer order, batch after batch
            last_ts = e.ts_ns
            ports[e.fields["dport"]] += 1
    assert ports == {9: n // 2, 10: n // 2}
    assert driver.kernel_drops() == 0 and driver.stats()["batch_lost"] == 0
    assert driver.stats()["queued"] == 0


def test_take_still_gives_one_bytes_per_record(driver: Driver) -> None:
    pid = victim("memfd", "rampart-take")

    def found() -> list[ev.DriverEvent] | None:
        driver.flush()
        hits = [e for e in map(ev.decode, driver.take()) if e.pid == pid]
        return hits if any(e.data_type == ev.DT_MEMFD_CREATE for e in hits) else None

    hits = wait_for(found, 10, "the memfd record")
    (memfd,) = [e for e in hits if e.data_type == ev.DT_MEMFD_CREATE]
    assert memfd.fields["fdname"] == "rampart-take"
    assert os.getpid() not in {e.pid for e in hits}


def test_without_the_native_library_the_python_reader_takes_over(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loader, "DRAIN_LIB", Path("/nonexistent/librp_drain.so"))
    monkeypatch.setattr(loader, "_drain_lib", None)
    d = Driver(DriverConfig(events={"execve"}, reader=False))
    d.start()
    try:
        assert d.reader_kind == "python" and d.stats()["reader"] == "python"
        pid = victim("memfd", "rampart-fallback")

        def found() -> bool:
            return any(
                dt == ev.DT_EXECVE and p == pid
                for b in drain(d)
                for dt, p, _s, _n in rbatch.records(b)
            )

        wait_for(found, 10, "the victim's exec through the Python reader")
    finally:
        d.stop()
    assert "records copied by a Python callback" in caplog.text
