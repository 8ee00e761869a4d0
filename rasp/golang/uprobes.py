"""Load the Go probe's BPF object once, attach its uprobes per process, read its ring buffer.

    u = GoUprobes(notify=callback)
    u.load()                                   # GoProbeError with a one-line reason
    res = u.attach(pid, "/proc/<pid>/exe", offsets_by_hook, field_offsets)
    records = u.take()                         # raw records, ring-buffer order
    u.detach(pid); u.stop()

Each uprobe is attached with the process's pid, so the kernel only plants the breakpoint in
that process (uprobe filtering is by mm: every thread of it), and with the hook's index as
attach cookie. The BPF side also drops records of processes absent from `go_procs`, so a
process is silent from the moment it is detached even while its links are being destroyed.
"""

from __future__ import annotations

import ctypes
import logging
import select
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from driver import libbpf
from driver.loader import DriverError, check_environment
from rasp.golang.hooks import HOOKS, PROGRAMS
from rasp.golang.records import GO_STR_MAX, go_event, go_proc, go_uprobe_opts
from rasp.golang.ring import MappedRing

log = logging.getLogger("rampart.golang")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OBJECT = REPO / "build" / "bpf" / "golang.bpf.o"
#: the BPF side wakes the reader only when the data waiting crosses 64 KiB (gorasp.h
#: go_submit): this bounds the delay of a lone event
POLL_MS = 50
QUEUE_LIMIT = 100_000
RECORD_SIZE = ctypes.sizeof(go_event)
#: the shortest record: header and one string slot (gorasp.h GO_RECORD_SIZE)
MIN_RECORD = go_event.str.offset + GO_STR_MAX


class GoProbeError(Exception):
    """The Go probe cannot run or attach; str() is one line."""


@dataclass
class AttachResult:
    attached: list[str] = field(default_factory=list)  # hook names
    failed: dict[str, str] = field(default_factory=dict)  # hook name -> why


def _lib() -> ctypes.CDLL:
    lib = libbpf.lib()
    fn = lib.bpf_program__attach_uprobe_opts
    fn.restype = ctypes.c_void_p
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(go_uprobe_opts),
    ]
    lib.bpf_map_delete_elem.restype = ctypes.c_int
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return lib


class GoUprobes:
    def __init__(
        self, object_path: Path = DEFAULT_OBJECT, notify: Callable[[], None] | None = None
    ) -> None:
        self.object_path = object_path
        self.notify = notify or (lambda: None)
        self._obj: int | None = None
        self._progs: dict[str, int] = {}
        self._links: dict[int, list[int]] = {}
        self._ring: MappedRing | None = None
        self._lock = threading.Lock()
        self._queue: deque[bytes] = deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._procs_fd = -1
        self._drops_fd = -1
        self._log: deque[str] = deque(maxlen=40)
        self.received = 0
        self.malformed = 0
        self.queue_drops = 0

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    # ------------------------------------------------------------------ load / stop

    def load(self) -> None:
        if self._obj is not None:
            return
        try:
            check_environment(self.object_path)
        except DriverError as e:
            raise GoProbeError(f"eBPF unavailable: {e}") from None
        lib = _lib()
        libbpf.add_log_sink(self._on_log)
        try:
            obj = lib.bpf_object__open_file(str(self.object_path).encode(), None)
            if not obj:
                raise self._fail(f"cannot open {self.object_path}", libbpf.last_errno())
            self._obj = obj
            err = lib.bpf_object__load(obj)
            if err:
                raise self._fail("the kernel refused the Go probe's programs", err)
            for name in PROGRAMS:
                prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                if not prog:
                    raise GoProbeError(f"program {name} not in {self.object_path}: `make setup`")
                self._progs[name] = prog
            self._procs_fd = lib.bpf_map__fd(self._map("go_procs"))
            self._drops_fd = lib.bpf_map__fd(self._map("go_drops"))
            self._start_reader()
        except BaseException:
            self.stop()
            raise
        finally:
            libbpf.remove_log_sink(self._on_log)

    def _on_log(self, level: int, text: str) -> None:
        self._log.append(text)

    def _fail(self, what: str, err: int) -> GoProbeError:
        tail = [x for x in self._log if x.strip()][-3:]
        detail = f": {' | '.join(tail)}" if tail else ""
        return GoProbeError(f"{what}: {libbpf.errno_text(err)}{detail}")

    def _map(self, name: str) -> int:
        m = libbpf.lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise GoProbeError(f"map {name} not in {self.object_path}")
        return m  # type: ignore[no-any-return]

    def _start_reader(self) -> None:
        lib = libbpf.lib()
        events = self._map("go_events")
        fn = lib.bpf_map__max_entries
        fn.restype, fn.argtypes = ctypes.c_uint32, [ctypes.c_void_p]
        try:
            self._ring = MappedRing(lib.bpf_map__fd(events), fn(events))
        except (OSError, ValueError) as e:
            raise GoProbeError(f"cannot map the Go probe's ring buffer: {e}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name="go-ringbuf", daemon=True)
        self._thread.start()

    def _on_sample(self, raw: bytes) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.queue_drops += 1  # the agent is far behind: count, never grow
        elif not MIN_RECORD <= len(raw) <= RECORD_SIZE:
            self.malformed += 1
        else:
            self._queue.append(raw)

    def _read_loop(self) -> None:
        assert self._ring is not None
        poller = select.poll()
        poller.register(self._ring.fd, select.POLLIN)  # the ring map's fd polls readable
        while not self._stop.is_set():
            poller.poll(POLL_MS)
            if self.flush():
                self.notify()

    def flush(self) -> int:
        with self._lock:
            if self._ring is None:
                return 0
            n = self._ring.consume(self._on_sample)
        self.received += n
        return n

    def take(self) -> list[bytes]:
        out = []
        q = self._queue
        while q:
            out.append(q.popleft())
        return out

    def stop(self) -> None:
        """Idempotent: detach every process, stop the reader, close the object."""
        for pid in list(self._links):
            self.detach(pid)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        lib = libbpf.lib()
        with self._lock:
            if self._ring is not None:
                self._ring.close()
                self._ring = None
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None
        self._progs.clear()

    # ------------------------------------------------------------------ per process

    def attach(
        self, pid: int, binary: str, offsets: dict[int, int], fields: dict[str, int]
    ) -> AttachResult:
        """Attach the hooks at `offsets` (hook index -> file offset) for `pid` only."""
        if self._obj is None:
            raise GoProbeError("the Go probe is not loaded")
        if pid in self._links:
            raise GoProbeError(f"pid {pid} is already attached")
        lib = _lib()
        key = ctypes.c_uint32(pid)
        value = go_proc(**fields)
        err = lib.bpf_map_update_elem(self._procs_fd, ctypes.byref(key), ctypes.byref(value), 0)
        if err:
            raise GoProbeError(f"cannot register pid {pid}: {libbpf.errno_text(err)}")
        result = AttachResult()
        links: list[int] = []
        self._links[pid] = links
        for index, offset in sorted(offsets.items()):
            hook = HOOKS[index]
            opts = go_uprobe_opts(sz=ctypes.sizeof(go_uprobe_opts), bpf_cookie=index)
            link = lib.bpf_program__attach_uprobe_opts(
                self._progs[hook.program], pid, binary.encode(), offset, ctypes.byref(opts)
            )
            if not link:
                result.failed[hook.name] = libbpf.errno_text(libbpf.last_errno())
                continue
            links.append(link)
            result.attached.append(hook.name)
        if not links:
            self.detach(pid)
        return result

    def attach_program(
        self, pid: int, binary: str, program: str, offset: int, fields: dict[str, int]
    ) -> None:
        """One uprobe running `program` (any in the object, go_empty included) at `offset`, for
        `pid`: what bench/go_overhead.py measures a single program's per-hit cost with.
        Detached with `detach(pid)`."""
        if self._obj is None:
            raise GoProbeError("the Go probe is not loaded")
        if pid in self._links:
            raise GoProbeError(f"pid {pid} is already attached")
        lib = _lib()
        key = ctypes.c_uint32(pid)
        value = go_proc(**fields)
        if lib.bpf_map_update_elem(self._procs_fd, ctypes.byref(key), ctypes.byref(value), 0):
            raise GoProbeError(f"cannot register pid {pid}")
        opts = go_uprobe_opts(sz=ctypes.sizeof(go_uprobe_opts), bpf_cookie=0)
        link = lib.bpf_program__attach_uprobe_opts(
            self._progs[program], pid, binary.encode(), offset, ctypes.byref(opts)
        )
        self._links[pid] = [link] if link else []
        if not link:
            self.detach(pid)
            raise GoProbeError(f"{program}: {libbpf.errno_text(libbpf.last_errno())}")

    def detach(self, pid: int) -> bool:
        links = self._links.pop(pid, None)
        if links is None:
            return False
        lib = _lib()
        key = ctypes.c_uint32(pid)
        lib.bpf_map_delete_elem(self._procs_fd, ctypes.byref(key))  # silent from here on
        for link in links:
            lib.bpf_link__destroy(link)
        return True

    def attached_pids(self) -> list[int]:
        return list(self._links)

    def kernel_drops(self) -> int:
        if self._drops_fd < 0 or self._obj is None:
            return 0
        ncpu = libbpf.lib().libbpf_num_possible_cpus()
        values = (ctypes.c_uint64 * max(ncpu, 1))()
        key = ctypes.c_uint32(0)
        if libbpf.lib().bpf_map_lookup_elem(self._drops_fd, ctypes.byref(key), values):
            return 0
        return sum(values)
