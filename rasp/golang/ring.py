"""The Go probe's ring buffer, read straight from its memory mapping.

libbpf's ring_buffer__consume calls a Python callback per record, and each callback takes
the GIL back: in the agent, whose event loop thread is busy with the previous batch, every
record then waits for a GIL hand-over (up to the 5 ms switch interval), the reader falls
behind and the kernel ring fills and drops (bench/go_overhead.py: a third of the records at
12k sink events/s). Reading the mapping from Python keeps the GIL for a whole batch and
costs a slice per record.

The layout is the kernel's (kernel/bpf/ringbuf.c, as libbpf maps it): page 0 holds the
consumer position (read-write), page 1 the producer position, then the data pages mapped
twice in a row, so a record that wraps around the end is contiguous. Each record starts with
an 8-byte header: a u32 length whose bit 31 says "still being written" and bit 30
"discarded", and a u32 page offset; records are 8-byte aligned. On x86-64 plain loads and
stores have the acquire/release ordering the protocol needs.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MappedRing:
    def __init__(self, fd: int, size: int) -> None:
        """`fd` of a BPF_MAP_TYPE_RINGBUF map of `size` bytes (its max_entries, a power of 2
        and a multiple of the page size)."""
        page = mmap.PAGESIZE
        self.fd = fd
        self.mask = size - 1
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        try:
            self._prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, 0, page)
        except BaseException:
            self._cons.close()
            raise
        self._page = page

    def waiting(self) -> int:
        return int(_U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0])

    def consume(self, sample: Callable[[bytes], None], limit: int = 1 << 16) -> int:
        """Hand every committed record to `sample` (a copy), up to `limit`; the consumer
        position is published once per batch. Returns the number of records."""
        prod_map, data0 = self._prod, self._page
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(prod_map, 0)[0]
        n = 0
        while cons < prod and n < limit:
            at = data0 + (cons & self.mask)
            length = _U32.unpack_from(prod_map, at)[0]
            if length & BUSY:
                break  # reserved, not yet submitted: the records after it wait for it
            size = length & ~(BUSY | DISCARD)
            if not length & DISCARD:
                sample(prod_map[at + HEADER : at + HEADER + size])
                n += 1
            cons += (size + HEADER + 7) & ~7
            if n & 1023 == 0:  # free the space for the producer during a long batch
                _U64.pack_into(self._cons, 0, cons)
        _U64.pack_into(self._cons, 0, cons)
        return n

    def close(self) -> None:
        self._prod.close()
        self._cons.close()
