"""The driver inside the agent: start it (or say why not), feed the process cache, store events.

The ring-buffer reader thread only copies records; decoding, the cache and the pipeline all
run on the event loop thread, in ring-buffer order, so an exec is always applied before the
exit of the same process and before any RASP event of it is enriched. When the agent needs a
pid the cache does not know yet (a hello from a process that exec'd a moment ago), `flush()`
reads what the kernel already wrote, synchronously, before falling back to /proc.

Modes (`stats()["mode"]`): `ebpf` (driver running); `proc-connector+fanotify` (no eBPF: the
kernel's proc connector feeds exec/fork/exit to the cache, with facts read from /proc as
events arrive, and fanotify adds the path of every exec'd file and writes under the
`driver_open_paths` prefixes); `proc-connector` (the same without fanotify, which needs
CAP_SYS_ADMIN); `proc` (neither: process facts read from /proc at hello, as before the
driver).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from driver import batch as rbatch
from driver import events as ev
from driver.fanotify import Fanotify, FanotifyError
from driver.loader import DEFAULT_OBJECT, Driver, DriverConfig, DriverError
from driver.proc_connector import ProcConnector, ProcConnectorError
from driver.programs import EVENT_BY_TYPE
from host_agent.proccache import ProcessCache

if TYPE_CHECKING:
    from host_agent.pipeline import Pipeline
    from host_agent.settings import Settings

log = logging.getLogger("rampart.driver")

SWEEP_S = 5.0
#: records the process cache reads beyond the pid (ProcessCache.apply)
_CACHE_TYPES = frozenset({ev.DT_EXECVE, ev.DT_FORK, ev.DT_EXIT, ev.DT_PRCTL})
_LISTENED_TYPES = (ev.DT_EXECVE, ev.DT_EXIT)
#: high-volume records no host rule reads: identical ones (every byte but the timestamp) in
#: one batch are stored as one row with `count` and `last_ts` (docs/driver.md, "Storms")
AGGREGATED_TYPES = frozenset({ev.DT_CONNECT, ev.DT_BIND, ev.DT_ACCEPT, ev.DT_DNS, ev.DT_OPEN})
_TS = rbatch.TS
_SOCK_TYPES = frozenset({ev.DT_CONNECT, ev.DT_BIND, ev.DT_ACCEPT})
_H = ev.HDR_SIZE
_DT_OFF = ev.rp_hdr.data_type.offset
_PID_OFF = ev.rp_hdr.pid.offset
_PID = struct.Struct("<I").unpack_from
# rp_sock: ret, fd, then family, port, addr (up to laddr), ..., sock_type
_RET, _FAMILY, _LADDR = ev.rp_sock.ret.offset, ev.rp_sock.family.offset, ev.rp_sock.laddr.offset
_STYPE = ev.rp_sock.sock_type.offset
assert _FAMILY < ev.rp_sock.port.offset < ev.rp_sock.addr.offset < _LADDR


EXACT, SUMMARY, SHED = 0, 1, 2  # how storm records are stored (HostDriver._storm_mode)


def _summary_key(batch: bytes, dt: int, start: int, size: int) -> bytes:
    """What a summary row keeps of a record: the process and event, and for a socket
    record its result, family, port, address and socket type (rp_sock: ret, fd, family,
    port, addr, laddr, lport, sock_type); for the others everything after the header."""
    pid = batch[start + _PID_OFF : start + _PID_OFF + 4]
    if dt in _SOCK_TYPES:
        return (
            pid
            + batch[start + _DT_OFF : start + _DT_OFF + 4]
            + (
                batch[start + _RET : start + _RET + 8]
                + batch[start + _FAMILY : start + _LADDR]
                + batch[start + _STYPE : start + _STYPE + 2]
            )
        )
    return pid + batch[start + _DT_OFF : start + _DT_OFF + 4] + batch[start + _H : start + size]


def boot_to_epoch_offset_ns() -> int:
    """Add to a CLOCK_BOOTTIME timestamp (bpf_ktime_get_boot_ns) to get epoch ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class HostDriver:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.cache = ProcessCache(settings.proc_cache_size, settings.proc_cache_keep_s)
        self.driver: Driver | ProcConnector | None = None
        self.fanotify: Fanotify | None = None  # beside the proc connector, without eBPF
        self.mode = "proc"
        self.reason = ""
        self.stored_types = {
            e.data_type for e in EVENT_BY_TYPE.values() if e.name in settings.driver_events
        }
        self.decode_errors = 0
        self.stored = 0  # rows handed to the pipeline
        self.aggregated = 0  # records folded into the row of an identical earlier record
        #: the sinks behind: records folded into a summary row (same process, event and
        #: args), and records of AGGREGATED_TYPES not stored at all (per event name)
        self.summarized = 0
        self.shed: dict[str, int] = {}
        #: socket records: their header (all but ts) -> the encoded parts of their row that
        #: depend on it alone, while the process cache does not change (_sock_row)
        self._heads: dict[bytes, tuple[str, str, bytes, bytes]] = {}
        self._heads_gen = -1
        #: the open fold window (_apply_batch): key -> [row, last ts, count, summary]
        self._folded: dict[bytes, list[Any]] = {}
        self._fold_since = 0.0
        self._fold_timer: asyncio.TimerHandle | None = None
        self._encode = msgspec.json.Encoder().encode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._offset_ns = boot_to_epoch_offset_ns()
        self._last_sweep = time.monotonic()
        #: called with each decoded exec and exit event (auto-attach discovers through this)
        self.process_listeners: list[Callable[[ev.DriverEvent], None]] = []
        pipeline.host_lookup = self.process_facts

    # ------------------------------------------------------------------ start / stop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the driver per the `driver` setting. Raises DriverError only for `on`."""
        self._loop = loop
        s = self.settings
        if s.driver == "off":
            self.reason = "driver: off"
            log.info("driver off (setting): process facts from /proc")
            return
        config = DriverConfig(
            events=set(s.driver_events),
            object_path=s.driver_object or DEFAULT_OBJECT,
            ringbuf_kb=s.driver_ringbuf_kb,
            open_paths=list(s.driver_open_paths),
        )
        driver = Driver(config, notify=self._notify)
        try:
            driver.start()
        except DriverError as e:
            self.reason = str(e)
            if s.driver == "on":
                raise
            self._fallback(e)
            return
        self.driver = driver
        self.mode = "ebpf"
        # after attach, so nothing that starts in between is missed; events replay on top
        n = self.cache.scan()
        log.info(
            "driver: %d programs attached in %.0f ms (%s); process cache: %d processes",
            len(driver.attached),
            driver.load_ms,
            ", ".join(sorted(driver.events)),
            n,
        )
        self._drain()

    def _fallback(self, why: DriverError) -> None:
        """No eBPF: exec/fork/exit from the proc connector if we may, plus exec paths and
        sensitive writes from fanotify if we may; else /proc alone. One log line says which."""
        pc = ProcConnector(notify=self._notify)
        try:
            pc.start()
        except ProcConnectorError as e:
            log.warning("driver not started: %s; %s; process facts from /proc", why, e)
            return
        self.driver = pc
        self.mode = "proc-connector"
        # writes are watched only when the `open` event is on, as with the eBPF driver
        watch = list(self.settings.driver_open_paths) if ev.DT_OPEN in self.stored_types else []
        fan = Fanotify(open_paths=watch, notify=self._notify)
        try:
            fan.start()
        except FanotifyError as e:
            extra = f"; {e}: no exec paths, no file writes"
        else:
            self.fanotify = fan
            self.mode = "proc-connector+fanotify"
            extra = f"; exec paths{' and writes under driver_open_paths' if watch else ''} "
            extra += f"from fanotify ({', '.join(fan.marked)})"
        n = self.cache.scan()
        log.warning(
            "driver not started: %s; exec/fork/exit from the proc connector%s "
            "(process cache: %d processes, no other host events)",
            why,
            extra,
            n,
        )

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.flush()
            self._drain(force=True)
            self._emit_folded()
            if self.fanotify is not None:
                self.fanotify.stop()
            log.info("driver stopped: %s", self.stats())
            self.driver.stop()
            self.driver = None
            self.fanotify = None
            self.mode = "proc"

    # ------------------------------------------------------------------ records

    def _notify(self) -> None:
        """Reader thread: records are waiting. Schedule one drain on the loop."""
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the agent is stopping
            self._scheduled = False

    def _drain(self, force: bool = False) -> None:
        """Everything the reader queued, in order. Never put off when the sinks are behind:
        every record reaches the process cache and the host rules (a security product must
        not lose an exec because a connect storm filled its store); the sinks' backlog only
        decides how the high-volume records are stored (_apply_batch)."""
        self._scheduled = False
        if self.driver is None:
            return
        if isinstance(self.driver, Driver):
            for b in self.driver.take_batches():
                self._apply_batch(b, self._storm_mode())
            records: list[Any] = []
        else:
            records = self.driver.take()
        if self.fanotify is not None:
            # after the proc connector's: fanotify queued an exec's file open before the
            # kernel sent that exec to the proc connector, so it is read by now, and its
            # path fills in the entry that exec made for a process already gone from /proc
            self.fanotify.flush()
            records += self.fanotify.take()
        for raw in records:
            if isinstance(raw, ev.DriverEvent):  # the fallbacks', already decoded
                e = raw
            else:
                try:
                    e = ev.decode(raw)
                except ValueError as err:
                    self.decode_errors += 1
                    log.debug("driver record not decoded: %s", err)
                    continue
            if e.hook == "fanotify":
                self._fanotify_event(e)
                continue
            entry = self.cache.apply(e)
            if e.data_type in (ev.DT_EXECVE, ev.DT_EXIT):
                for listener in self.process_listeners:
                    listener(e)
            if e.data_type in self.stored_types:
                self._store(e, entry)
        self._end_window()
        self._maybe_sweep()

    def _end_window(self) -> None:
        """Hand the folded rows over once their window is `store_flush_ms` old (the delay
        the pipeline allows a batch anyway); a timer closes a window nothing else closes."""
        if not self._folded:
            return
        wait = self.settings.store_flush_ms / 1000
        if time.monotonic() - self._fold_since >= wait or self._loop is None:
            self._emit_folded()
        elif self._fold_timer is None:
            self._fold_timer = self._loop.call_later(wait, self._emit_folded)

    def _storm_mode(self) -> int:
        """How AGGREGATED_TYPES records are stored, from how far the sinks are behind:
        EXACT (identical records folded), SUMMARY (folded by process, event and args), SHED
        (not stored, counted)."""
        backlog, limit = self.pipeline.backlog, self.settings.queue_limit
        return EXACT if backlog < limit else SUMMARY if backlog < 2 * limit else SHED

    def _apply_batch(self, batch: bytes, mode: int = 0) -> None:
        """The records of one batch, in order: decoded only when something needs more than
        the pid. A record that is neither stored nor read by the cache (a connect when
        `connect` is not stored...) only touches the cache by its pid, which is all
        ProcessCache.apply does with it.

        Stored records of AGGREGATED_TYPES (no host rule reads them) are folded over a
        window of `store_flush_ms` from its first record (_end_window or stop closes it,
        _emit_folded hands its rows over, in the order of their first record, after the
        window's other events). In mode EXACT a record whose bytes (all but the timestamp)
        equal an earlier one's is counted into that one's row; in mode SUMMARY (the sinks a
        queue_limit behind) one whose process, event and args (a connect's destination,
        family, socket type and result) equal an earlier one's, the row marked `summary`
        (its tid, fd, source port are the first record's); in mode SHED (two queue_limits
        behind) they are not stored, and counted by event. A row is built at its first
        record (`process` as it was then), with `count` and `last_ts` when it folded any."""
        stored, full = self.stored_types, _CACHE_TYPES | self.stored_types
        lookup = self.cache.lookup
        folded = self._folded
        if not folded:
            self._fold_since = time.monotonic()
        summary = mode == SUMMARY
        for dt, pid, start, size in rbatch.records(batch):
            try:
                if dt not in full:
                    rbatch.check(dt, size)
                    lookup(pid)
                    continue
                if dt in AGGREGATED_TYPES and dt in stored:
                    rbatch.check(dt, size)
                    if mode == EXACT:
                        key = batch[start + 8 : start + size]
                    elif mode == SUMMARY:
                        key = _summary_key(batch, dt, start, size)
                    else:
                        lookup(pid)
                        name = EVENT_BY_TYPE[dt].name
                        self.shed[name] = self.shed.get(name, 0) + 1
                        continue
                    row = folded.get(key)
                    if row is not None:
                        row[1] = _TS(batch, start)[0]
                        row[2] += 1
                        continue
                    if dt in _SOCK_TYPES:
                        enc = self._sock_row(batch, dt, start, size)
                        folded[key] = [enc, enc[0], 1, summary]
                        continue
                    e = rbatch.decode_at(batch, start, size)
                    folded[key] = [self._event(e, self.cache.apply(e)), e.ts_ns, 1, summary]
                    continue
                e = rbatch.decode_at(batch, start, size)
            except ValueError as err:
                self.decode_errors += 1
                log.debug("driver record not decoded: %s", err)
                continue
            entry = self.cache.apply(e)
            if dt in _LISTENED_TYPES:
                for listener in self.process_listeners:
                    listener(e)
            if dt in stored:
                self._store(e, entry)

    def _emit_folded(self) -> None:
        """The rows of the fold window to the pipeline, in the order of their first record."""
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        folded, self._folded = self._folded, {}
        for event, last_ns, count, summary in folded.values():
            if isinstance(event, tuple):  # a socket row, encoded
                ts_ns, pid, kind, hook, args, body = event
                if count > 1:
                    last = (last_ns + self._offset_ns) // 1_000_000
                    body += b',"count":%d,"last_ts":%d' % (count, last)
                    if summary:
                        body += b',"summary":true'
                        self.summarized += count - 1
                    else:
                        self.aggregated += count - 1
                self.stored += 1
                ms = (ts_ns + self._offset_ns) // 1_000_000
                self.pipeline.submit_row(ms, pid, kind, hook, args, b'{"ts":%d,' % ms + body, count)
                continue
            if count > 1:
                event["count"] = count
                event["last_ts"] = (last_ns + self._offset_ns) // 1_000_000
                if summary:
                    event["summary"] = True
                    self.summarized += count - 1
                else:
                    self.aggregated += count - 1
            self.stored += 1
            self.pipeline.submit_host(event)

    def _sock_row(
        self, batch: bytes, dt: int, start: int, size: int
    ) -> tuple[int, int, str, str, list[str], bytes]:
        """A connect/bind/accept record → (ts ns, pid, kind, hook, args, its event's JSON
        without the "ts" member and the closing brace): the same event as _event gives
        (tests/unit/test_driver_batch.py compares them), without building it as a dict.
        What depends on the header alone (the `process` object, the common fields) is
        encoded once per header while the process cache does not change."""
        gen = self.cache.generation
        if gen != self._heads_gen:
            self._heads.clear()
            self._heads_gen = gen
        hkey = batch[start + 8 : start + _H]
        head = self._heads.get(hkey)
        if head is None:
            e = rbatch.decode_at(batch, start, size)
            event = self._event(e, self.cache.apply(e))
            drv = event.pop("driver")
            for k in e.fields:
                del drv[k]
            del event["ts"], event["args"]
            head = (event["kind"], e.hook, self._encode(event)[1:-1], self._encode(drv)[:-1])
            if self.cache.generation != self._heads_gen:  # the cache read /proc meanwhile
                self._heads.clear()
                self._heads_gen = self.cache.generation
            if len(self._heads) < 4096:
                self._heads[hkey] = head
        kind, hook, mid, drv_head = head
        ret, fd, family, port, addr, laddr, lport, sock_type = rbatch.SOCK.unpack_from(
            batch, start + _H
        )
        ip = rbatch._ip(family, addr)
        (ts,) = _TS(batch, start)
        pid = _PID(batch, start + _PID_OFF)[0]
        if dt == ev.DT_BIND:
            private = b'"sa_family":%d,"res":%d,"fd":%d,"sock_type":%d,"sip":"%s","sport":%d' % (
                family,
                ret,
                fd,
                sock_type,
                ip.encode(),
                port,
            )
        else:
            private = (
                b'"sa_family":%d,"res":%d,"fd":%d,"sock_type":%d,"dip":"%s","dport":%d,'
                b'"sip":"%s","sport":%d'
                % (family, ret, fd, sock_type, ip.encode(), port,
                   rbatch._ip(family, laddr).encode(), lport)
            )  # fmt: skip
        sport = str(port)
        body = b'"args":["%s","%s"],%s,"driver":%s,%s}' % (
            ip.encode(),
            sport.encode(),
            mid,
            drv_head,
            private,
        )
        return ts, pid, kind, hook, [ip, sport], body

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep > SWEEP_S:
            self._last_sweep = now
            self.cache.sweep(now)
            self._offset_ns = boot_to_epoch_offset_ns()  # follows wall-clock steps

    def _fanotify_event(self, e: ev.DriverEvent) -> None:
        """An exec'd file or a write seen by fanotify. Not applied to the cache as an exec
        (the open precedes the exec, and the proc connector reports the exec itself), but
        its path fills in the exe of a process that was gone before /proc could be read."""
        entry = self.cache.get(e.pid)
        if entry is None and e.data_type == ev.DT_OPEN:
            entry = self.cache.lookup(e.pid)
        if e.data_type == ev.DT_EXECVE and entry is not None and not entry.exe:
            entry.exe = e.fields["run_path"]
            self.cache.changed()
        if e.data_type in self.stored_types:
            self._store(e, entry)

    def flush(self) -> None:
        """Apply everything the kernel has written so far (loop thread), even when the sinks
        are behind: a pid about to be enriched needs its exec in the cache."""
        if self.driver is not None:
            self.driver.flush()
            self._drain(force=True)

    def _store(self, e: ev.DriverEvent, entry: Any) -> None:
        self.stored += 1
        self.pipeline.submit_host(self._event(e, entry))

    def _event(self, e: ev.DriverEvent, entry: Any) -> dict[str, Any]:
        """The stored event (design §4 shape) of a decoded record."""
        meta = EVENT_BY_TYPE[e.data_type]
        process = self.cache.process_fields(e.pid) or {}
        fields = e.common()
        fields["exe"] = process.get("exe", "")
        fields["start_time"] = entry.start_time if entry is not None else 0
        fields.update(e.fields)
        if e.data_type == ev.DT_EXECVE and entry is not None:
            fields["cwd"] = entry.cwd  # "" when the process was gone before we looked
        return {
            "ts": (e.ts_ns + self._offset_ns) // 1_000_000,
            "pid": e.pid,
            "runtime": "kernel",
            "runtime_version": "",
            "hook": e.hook,
            "kind": meta.kind,
            "args": e.args,
            "stack": [],
            "blocked": False,
            "policy_id": None,
            "request": None,
            "process": process,
            "source": "driver",
            "data_type": e.data_type,
            "event": meta.name,
            "driver": fields,
        }

    # ------------------------------------------------------------------ enrichment

    def process_facts(self, pid: int) -> dict[str, Any] | None:
        """The `process` object for a RASP event of `pid` from the cache; None → use /proc."""
        if self.driver is None:
            return None
        facts = self.cache.process_fields(pid)
        if facts is None:
            self.flush()  # its exec may still be in the ring buffer
            entry = self.cache.lookup(pid)
            facts = self.cache.process_fields(pid) if entry is not None else None
        return facts

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "stored": self.stored,
            "aggregated": self.aggregated,
            "summarized": self.summarized,
            "shed": dict(self.shed),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.driver is not None:
            out.update(self.driver.stats())
            if self.fanotify is not None:
                out["fanotify"] = self.fanotify.stats()
            out["mode"] = self.mode
            out["decode_errors"] = self.decode_errors
            out["cache"] = self.cache.stats()
        return out
