"""rasp/golang/ring.py's record walk on a ring laid out as the kernel maps a BPF ring buffer
(consumer page, producer page, data twice), built in a memfd: committed, discarded and
still-busy records, a record that wraps around the end, and the consumer position it
publishes. The real kernel ring is covered by tests/integration/test_go_probe.py."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from rasp.golang.ring import BUSY, DISCARD, HEADER, MappedRing

PAGE = mmap.PAGESIZE
SIZE = PAGE  # the smallest ring: one page of data


@pytest.fixture
def ring() -> Iterator[tuple[int, MappedRing]]:
    fd = os.memfd_create("rampart-ring-test")
    os.ftruncate(fd, 2 * PAGE + 2 * SIZE)
    r = MappedRing(fd, SIZE)
    yield fd, r
    r.close()
    os.close(fd)


def _put(fd: int, pos: int, length: int, payload: bytes) -> int:
    """Write a record at logical position `pos` into both data copies; the next position."""
    rec = struct.pack("<II", length, 0) + payload
    for copy in (0, SIZE):
        at = (pos % SIZE) + copy
        first = rec[: max(0, min(len(rec), 2 * SIZE - at))]
        os.pwrite(fd, first, 2 * PAGE + at)
    size = length & ~(BUSY | DISCARD)
    return pos + ((size + HEADER + 7) & ~7)


def _positions(fd: int, cons: int, prod: int) -> None:
    os.pwrite(fd, struct.pack("<Q", cons), 0)
    os.pwrite(fd, struct.pack("<Q", prod), PAGE)


def _cons(fd: int) -> int:
    return int(struct.unpack("<Q", os.pread(fd, 8, 0))[0])


def test_walk(ring: tuple[int, MappedRing]) -> None:
    fd, r = ring
    pos = _put(fd, 0, 5, b"hello")
    pos = _put(fd, pos, 3 | DISCARD, b"xxx")  # discarded: skipped, not handed out
    pos = _put(fd, pos, 4, b"four")
    _positions(fd, 0, pos)
    got: list[bytes] = []
    assert r.waiting() == pos
    assert r.consume(got.append) == 2
    assert got == [b"hello", b"four"]
    assert _cons(fd) == pos and r.waiting() == 0
    assert r.consume(got.append) == 0


def test_busy_record_stops_the_walk(ring: tuple[int, MappedRing]) -> None:
    fd, r = ring
    pos = _put(fd, 0, 2, b"ok")
    busy_at = pos
    pos = _put(fd, pos, 4 | BUSY, b"wait")  # reserved, not submitted yet
    pos = _put(fd, pos, 5, b"after")
    _positions(fd, 0, pos)
    got: list[bytes] = []
    assert r.consume(got.append) == 1 and got == [b"ok"]
    assert _cons(fd) == busy_at  # the busy record and what follows it wait
    _put(fd, busy_at, 4, b"wait")  # submitted
    assert r.consume(got.append) == 2 and got == [b"ok", b"wait", b"after"]
    assert _cons(fd) == pos


def test_record_across_the_end(ring: tuple[int, MappedRing]) -> None:
    fd, r = ring
    start = SIZE - 16  # header at the end, payload continues at the start (second copy)
    payload = bytes(range(40))
    end = _put(fd, start, len(payload), payload)
    os.pwrite(fd, (struct.pack("<II", len(payload), 0) + payload)[16:], 2 * PAGE)
    _positions(fd, start, end)
    got: list[bytes] = []
    assert r.consume(got.append) == 1 and got == [payload]
    assert _cons(fd) == end


def test_limit(ring: tuple[int, MappedRing]) -> None:
    fd, r = ring
    pos = 0
    for i in range(10):
        pos = _put(fd, pos, 1, bytes([i]))
    _positions(fd, 0, pos)
    got: list[bytes] = []
    assert r.consume(got.append, limit=4) == 4
    assert r.consume(got.append) == 6 and got == [bytes([i]) for i in range(10)]
