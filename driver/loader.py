"""Load, attach and read the driver: one BPF object, one ring buffer, one reader thread.

    d = Driver(DriverConfig(events={"execve", "connect"}), notify=callback)
    d.start()          # DriverError with a one-line reason if it cannot run here
    records = d.take() # raw records, in ring-buffer order (decode with driver.events.decode)
    d.stop()           # destroys every link, frees the ring buffer, closes the object

The reader thread waits on the ring buffer's epoll fd, consumes under a lock into a bounded
queue, and calls `notify()` so the owner (the agent's event loop) can take them:
`take_batches()` (batches of records, driver/batch.py: the fast path) or `take()` (one bytes
per record). Records are copied by a C callback (driver/native/rp_drain.c) into a batch
buffer while ctypes has released the GIL: no Python code runs per record in the reader.
Without that library (not built) a Python callback does the same, several times slower.
When the owner falls behind by `queue_limit` records the thread stops consuming: the ring
buffer fills and the kernel side counts what it could not write (`rp_drops`), never silently.
`flush()` consumes synchronously (the agent calls it before it concludes a pid is unknown).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver import batch as rbatch
from driver import libbpf
from driver.btfcheck import layout_differences
from driver.events import OPEN_PREFIXES, PREFIX_LEN, rp_config, rp_prefix
from driver.programs import PROGRAMS, Program, loaded_events, programs_for

log = logging.getLogger("rampart.driver")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OBJECT = REPO / "build" / "bpf" / "rampart.bpf.o"
DRAIN_LIB = REPO / "build" / "driver" / "librp_drain.so"
BATCH_BYTES = 1 << 20  # one consume fills at most this much (≈ 5k connect records)
RP_BATCH_FULL = -28  # rp_drain.c: the batch is full, take it and consume again
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
#: the BPF side wakes the reader only when 256 KiB wait (rampart.h rp_submit): this bounds the
#: delay of a lone event
POLL_MS = 50
# O_WRONLY | O_RDWR | O_CREAT | O_TRUNC
OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000


class RpBatch(ctypes.Structure):
    """struct rp_batch of driver/native/rp_drain.c."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("cap", ctypes.c_uint64),
        ("used", ctypes.c_uint64),
        ("records", ctypes.c_uint64),
        ("max_record", ctypes.c_uint64),
        ("lost", ctypes.c_uint64),
    ]


_drain_lib: ctypes.CDLL | None = None  # loaded once, kept: libbpf holds its function pointer


def _drain_callback() -> int | None:
    """The address of rp_batch_sample, or None when the library was not built."""
    global _drain_lib
    if _drain_lib is None:
        try:
            _drain_lib = ctypes.CDLL(str(DRAIN_LIB))
        except OSError as e:
            log.warning(
                "driver: %s not loaded (%s): records copied by a Python callback", DRAIN_LIB, e
            )
            return None
    return ctypes.cast(_drain_lib.rp_batch_sample, ctypes.c_void_p).value


class DriverError(Exception):
    """The driver cannot run here; str() is one line for the log."""


@dataclass
class DriverConfig:
    #: events whose records are wanted (the cache's own are always added)
    events: set[str] = field(default_factory=set)
    object_path: Path = DEFAULT_OBJECT
    ringbuf_kb: int = 8192
    queue_limit: int = 200_000
    #: this process's own syscalls are not reported (the agent writing its store, ...)
    ignore_self: bool = True
    #: read on a thread of our own; False: the caller reads with flush() (benchmarks)
    reader: bool = True
    #: `open`: opens under these prefixes are reported whatever their flags (≤ 8, < 64 bytes)
    open_paths: list[str] = field(default_factory=list)
    #: copy records with the C callback (driver/native/rp_drain.c) when it is built
    native_reader: bool = True


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_environment(object_path: Path) -> None:
    """Raise DriverError naming the first thing missing: privileges, BTF, the object, libbpf."""
    caps = _effective_caps()
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        raise DriverError("needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)")
    if not VMLINUX_BTF.exists():
        raise DriverError(f"this kernel has no BTF ({VMLINUX_BTF} missing): CO-RE cannot load")
    if not object_path.is_file():
        raise DriverError(f"BPF object {object_path} not found: build it with `make setup`")
    try:
        libbpf.lib()
    except libbpf.LibbpfMissing as e:
        raise DriverError(str(e)) from None


def _ringbuf_bytes(kb: int) -> int:
    """A power of two multiple of the page size, as the kernel requires."""
    size = max(kb * 1024, os.sysconf("SC_PAGE_SIZE"))
    return 1 << (size - 1).bit_length()


class Driver:
    def __init__(self, config: DriverConfig, notify: Callable[[], None] | None = None) -> None:
        self.config = config
        self.notify = notify or (lambda: None)
        self.events = loaded_events(config.events)
        self.programs: list[Program] = programs_for(self.events)
        self._obj: int | None = None
        self._links: list[int] = []
        self._rb: int | None = None
        self._cb: Any = None
        self._lock = threading.Lock()
        self._queue: deque[tuple[bytes, int]] = deque()  # (batch, records in it)
        self._queued_in = 0  # records queued (reader thread only)
        self._queued_out = 0  # records taken (owner only)
        self._buf = bytearray(BATCH_BYTES)
        self._buf_c = (ctypes.c_char * BATCH_BYTES).from_buffer(self._buf)  # pins the address
        self._batch = RpBatch(
            buf=ctypes.addressof(self._buf_c),
            cap=BATCH_BYTES,
            max_record=rbatch.MAX_RECORD,
        )
        self.reader_kind = ""  # "native" or "python" once started
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._drops_fd = -1
        self._libbpf_log: deque[str] = deque(maxlen=60)
        self.attached: list[str] = []
        self.failed: dict[str, str] = {}
        self.received = 0
        self.paused = 0  # times the reader waited because the owner was behind
        self.by_type: Counter[int] = Counter()
        self.load_ms = 0.0

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        check_environment(self.config.object_path)
        t0 = time.perf_counter()
        libbpf.add_log_sink(self._on_libbpf_log)
        try:
            self._open_and_load()
            self._attach()
            self._start_reader()
        except BaseException:
            self.stop()
            raise
        finally:
            libbpf.remove_log_sink(self._on_libbpf_log)
        self.load_ms = (time.perf_counter() - t0) * 1000

    def _on_libbpf_log(self, level: int, text: str) -> None:
        self._libbpf_log.append(text)
        if level == 0:  # LIBBPF_WARN
            log.debug("libbpf: %s", text)

    def _fail(self, what: str, err: int) -> DriverError:
        # the verifier's last lines say why a program was refused; keep the useful tail
        tail = [x for x in self._libbpf_log if x.strip()][-3:]
        detail = f": {' | '.join(tail)}" if tail else ""
        return DriverError(f"{what}: {libbpf.errno_text(err)}{detail}")

    def _open_and_load(self) -> None:
        lib = libbpf.lib()
        obj = lib.bpf_object__open_file(str(self.config.object_path).encode(), None)
        if not obj:
            raise self._fail(f"cannot open {self.config.object_path}", libbpf.last_errno())
        self._obj = obj
        btf = lib.bpf_object__btf(obj)
        diffs = layout_differences(btf) if btf else ["the object has no BTF"]
        if diffs:
            raise DriverError(
                "driver/events.py does not match driver/bpf/rampart.h (rebuild with "
                f"`make setup`?): {diffs[0]}"
            )
        wanted = {p.bpf_name for p in self.programs}
        for p in PROGRAMS:
            prog = lib.bpf_object__find_program_by_name(obj, p.bpf_name.encode())
            if not prog:
                raise DriverError(f"program {p.bpf_name} not in {self.config.object_path}")
            lib.bpf_program__set_autoload(prog, p.bpf_name in wanted)
        rb = self._map("rp_events")
        lib.bpf_map__set_max_entries(rb, _ringbuf_bytes(self.config.ringbuf_kb))
        err = lib.bpf_object__load(obj)
        if err:
            raise self._fail("the kernel refused the BPF programs", err)
        paths = [p.encode() for p in self.config.open_paths]
        if len(paths) > OPEN_PREFIXES or any(not 0 < len(p) < PREFIX_LEN for p in paths):
            raise DriverError(
                f"open paths: at most {OPEN_PREFIXES} prefixes of 1 to {PREFIX_LEN - 1} bytes"
            )
        for i, p in enumerate(paths):
            self._update(self._map("rp_open_paths"), i, rp_prefix(len=len(p), s=p))
        cfg = rp_config(
            self_pid=os.getpid() if self.config.ignore_self else 0,
            open_flags=OPEN_WRITE_FLAGS,
            open_prefixes=len(paths),
        )
        self._update(self._map("rp_config"), 0, cfg)
        self._drops_fd = lib.bpf_map__fd(self._map("rp_drops"))

    def _map(self, name: str) -> int:
        m = libbpf.lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise DriverError(f"map {name} not in {self.config.object_path}")
        return m

    def _update(self, map_ptr: int, key: int, value: Any) -> None:
        lib = libbpf.lib()
        k = ctypes.c_uint32(key)
        err = lib.bpf_map_update_elem(
            lib.bpf_map__fd(map_ptr), ctypes.byref(k), ctypes.byref(value), 0
        )
        if err:
            raise self._fail("map update failed", err)

    def _attach(self) -> None:
        lib = libbpf.lib()
        tables = {"enter": self._map("rp_enter_calls"), "exit": self._map("rp_exit_calls")}
        # handlers into the tail-call tables first, then the dispatchers: no half state
        for p in self.programs:
            if p.attach not in tables:
                continue
            prog = lib.bpf_object__find_program_by_name(self._obj, p.bpf_name.encode())
            fd = ctypes.c_uint32(lib.bpf_program__fd(prog))
            for nr in p.syscalls:
                self._update(tables[p.attach], nr, fd)
            self.attached.append(p.bpf_name)
        for p in self.programs:
            if p.attach in tables:
                continue
            prog = lib.bpf_object__find_program_by_name(self._obj, p.bpf_name.encode())
            link = lib.bpf_program__attach(prog)
            if not link:
                err = libbpf.last_errno()
                if p.event == "":  # a dispatcher: every syscall event depends on it
                    raise self._fail(f"cannot attach {p.attach}", err)
                self.failed[p.bpf_name] = libbpf.errno_text(err)
                log.warning("driver: %s not attached: %s", p.attach, libbpf.errno_text(err))
                continue
            self._links.append(link)
            self.attached.append(p.bpf_name)

    def _start_reader(self) -> None:
        lib = libbpf.lib()

        native = _drain_callback() if self.config.native_reader else None
        if native is not None:
            self._cb = libbpf.SAMPLE_FN(native)
            ctx = ctypes.addressof(self._batch)
            self.reader_kind = "native"
        else:

            def on_sample(_ctx: int, data: int, size: int) -> int:
                pad = b"\0" * (-size % 8)
                rec = size.to_bytes(4, "little") + b"\0\0\0\0" + ctypes.string_at(data, size)
                self._queue.append((rec + pad, 1))
                self._queued_in += 1
                return 0

            self._cb = libbpf.SAMPLE_FN(on_sample)
            ctx = None
            self.reader_kind = "python"
        fd = lib.bpf_map__fd(self._map("rp_events"))
        rb = lib.ring_buffer__new(fd, self._cb, ctx, None)
        if not rb:
            raise self._fail("ring_buffer__new failed", libbpf.last_errno())
        self._rb = rb
        if self.config.reader:
            self._thread = threading.Thread(
                target=self._read_loop, name="driver-ringbuf", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Idempotent: stop the reader, destroy every link, free the ring buffer, close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        lib = libbpf.lib()
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        with self._lock:
            if self._rb is not None:
                lib.ring_buffer__free(self._rb)
                self._rb = None
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None

    @property
    def running(self) -> bool:
        return self._rb is not None

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        lib = libbpf.lib()
        assert self._rb is not None
        poller = select.poll()
        poller.register(lib.ring_buffer__epoll_fd(self._rb), select.POLLIN)
        while not self._stop.is_set():
            if self._queued_in - self._queued_out >= self.config.queue_limit:
                self.paused += 1
                time.sleep(0.01)  # the owner is behind: let the ring buffer take the load
                continue
            poller.poll(POLL_MS)  # woken early only when much is waiting (rp_submit)
            if self._consume():
                self.notify()

    def _consume(self) -> int:
        with self._lock:
            if self._rb is None:
                return 0
            if self.reader_kind != "native":
                n = max(libbpf.lib().ring_buffer__consume(self._rb), 0)
                self.received += n
                return n
            b, total = self._batch, 0
            while True:
                b.used = b.records = 0
                rc = libbpf.lib().ring_buffer__consume(self._rb)
                if b.records:
                    self._queue.append((bytes(memoryview(self._buf)[: b.used]), b.records))
                    self._queued_in += b.records
                    total += b.records
                # full: more may wait; stop anyway once the owner is queue_limit behind
                if rc != RP_BATCH_FULL or (
                    self._queued_in - self._queued_out >= self.config.queue_limit
                ):
                    break
        self.received += total
        return total

    def flush(self) -> int:
        """Consume what the kernel has written so far, on the caller's thread."""
        return self._consume()

    def take_batches(self) -> list[bytes]:
        """Every batch read so far, oldest first (walk them with driver.batch.records)."""
        out = []
        q = self._queue
        n = 0
        while q:
            b, k = q.popleft()
            out.append(b)
            n += k
        self._queued_out += n
        return out

    def take(self) -> list[bytes]:
        """Every record read so far, oldest first, one bytes each."""
        return [r for b in self.take_batches() for r in rbatch.split(b)]

    # ------------------------------------------------------------------ stats

    def kernel_drops(self) -> int:
        """Records the BPF side could not write (ring buffer full), summed over CPUs."""
        if self._drops_fd < 0 or self._obj is None:
            return 0
        ncpu = libbpf.lib().libbpf_num_possible_cpus()
        values = (ctypes.c_uint64 * max(ncpu, 1))()
        key = ctypes.c_uint32(0)
        if libbpf.lib().bpf_map_lookup_elem(self._drops_fd, ctypes.byref(key), values):
            return 0
        return sum(values)

    def stats(self) -> dict[str, Any]:
        return {
            "mode": "ebpf" if self.running else "off",
            "events": sorted(self.events),
            "programs": len(self.attached),
            "failed": dict(self.failed),
            "received": self.received,
            "queued": self._queued_in - self._queued_out,
            "reader": self.reader_kind,
            "batch_lost": self._batch.lost,
            "kernel_drops": self.kernel_drops(),
            "reader_paused": self.paused,
            "load_ms": round(self.load_ms, 1),
        }
