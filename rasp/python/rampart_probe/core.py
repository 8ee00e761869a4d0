"""The probe: hot path (`Probe.emit`), counters, policy tables, and the shipper thread.

Hot path (the app's thread): quota -> build the event -> block rules -> filter rules ->
enqueue on a bounded deque, or drop and count. It never touches the socket.
Shipper (one daemon thread): connect with backoff, hello first, batches of frames, a
heartbeat every 10 s, and the agent's tables read from the same socket.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import select
import socket
import sys
import threading
import time

from . import accel, context, wire
from .detect import DetectTable
from .rules import Quotas, RuleTable

log = logging.getLogger("rampart.probe")

PROBE_VERSION = "0.1.0"
DEFAULT_SOCKET = "/run/rampart/probe.sock"
QUEUE_MAX = 10000
BATCH_MAX = 256
HEARTBEAT_S = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
ARG_MAX, ARGS_MAX = 4096, 64
STACK_DEPTH = 32
_PROBE_DIR = os.path.dirname(os.path.abspath(__file__))


class _ThreadState(threading.local):
    #: set for the probe's own thread: its socket and file calls are not events. A class
    #: default, so reading it never raises inside threading.local (getattr with a default
    #: on a missing attribute costs ~0.5 µs; this costs ~40 ns).
    busy = False


_tls = _ThreadState()


class RampartBlocked(PermissionError):
    """Raised in place of a call a block policy refused.

    A PermissionError (so an OSError): what apps already expect from a refused process,
    file or socket call, so their usual error path runs."""

    def __init__(self, hook: str, policy_id: str) -> None:
        PermissionError.__init__(self, f"Rampart blocked {hook} by policy {policy_id}")
        self.hook = hook
        self.policy_id = policy_id


def _s(v) -> str:
    if isinstance(v, str):
        s = v
    elif isinstance(v, (bytes, bytearray)):
        s = bytes(v[: ARG_MAX * 4]).decode("utf-8", "replace")
    elif v is None:
        s = ""
    else:
        try:
            s = os.fspath(v) if hasattr(v, "__fspath__") else str(v)
            if isinstance(s, bytes):
                s = s.decode("utf-8", "replace")
        except Exception:
            s = f"<{type(v).__name__}>"
    return s if len(s) <= ARG_MAX else s[:ARG_MAX]


_frame_text: dict = {}  # (file, first line, last instruction) -> "function (file:line)"
_FRAME_CACHE_MAX = 8192


# The C accelerator's stack walk (accel.py sets it while the accelerator is active): the
# calls Python must decide (block, filter and detection rules) then walk the stack in C too,
# ~0.03 µs a frame instead of ~0.5 (on 3.11+ each f_code read below is an audit event).
_c_stack = None


def capture_stack(depth: int, skip: int = 1) -> list:
    """Innermost first: "function (file:line)", the probe's own frames left out.

    With the accelerator, its C walk: it starts at the innermost Python frame, and the
    `skip`ped frames are the probe's own (left out either way). Else a sys._getframe walk;
    each frame's text is cached by code location and instruction offset, because computing
    f_lineno and formatting dominate the cost otherwise (traceback.extract_stack costs ~30 µs
    at depth 20)."""
    out = []
    if depth <= 0:
        return out
    c_stack = _c_stack
    if c_stack is not None:
        try:
            return c_stack(depth)
        except Exception:  # never the app's problem: the Python walk below gives the same
            pass
    try:
        f = sys._getframe(skip)
    except ValueError:
        return out
    cache = _frame_text
    while f is not None:
        # Reading f_code raises an audit event on 3.11+ (so does id()), and hashing a code
        # object hashes its bytecode: the key is made of the code's file and first line
        # (strings and ints, whose hashes are cheap or cached) and the instruction offset.
        code = f.f_code
        fn = code.co_filename
        key = (fn, code.co_firstlineno, f.f_lasti)
        text = cache.get(key)
        if text is None:
            text = "" if fn.startswith(_PROBE_DIR) else f"{code.co_name} ({fn}:{f.f_lineno})"
            if len(cache) >= _FRAME_CACHE_MAX:
                cache.clear()
            cache[key] = text
        if text:
            out.append(text)
            if len(out) >= depth:
                break
        f = f.f_back
    return out


class Probe:
    def __init__(self, socket_path: str, mode: str) -> None:
        self.socket_path = socket_path
        self.mode = mode
        self.enabled = True
        self.hooks: list = []  # names installed
        self.missing: list = []  # hooks that failed to install
        self.hooks_disabled: set = set()
        self.stack_depth = STACK_DEPTH
        self.stack_by_hook: dict = {}
        self.filters = RuleTable()
        self.blocks = RuleTable()
        #: detection rules in block mode (the block frame's `detect`), by event kind
        self.detect = DetectTable()
        self.quotas = Quotas()
        self.config_uuid = ""
        self.failed_once: set = set()
        self.runtime_version = "{}.{}.{}".format(*sys.version_info[:3])
        self._reset_process_state()
        atexit.register(self.shutdown)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_child)

    # ---------------------------------------------------------------- process-local state

    def _reset_process_state(self) -> None:
        self.pid = os.getpid()
        self.queue: collections.deque = collections.deque()
        self.connected = False
        # away: a connection attempt failed or the connection was lost. Until the first
        # attempt, events queue (bounded), so a fresh process or fork loses none of them.
        self.away = False
        self.sent = self.dropped = self.blocked = 0
        self.dropped_by: dict = {}
        self.sock = None
        self.was_connected = False
        self.already_running = False
        self.stopping = False
        self.detached = False
        self.wake = threading.Event()
        self.thread = None

    def start_thread(self, delay: float = 0.0) -> None:
        t = threading.Thread(target=self._run, args=(delay,), name="rampart-probe", daemon=True)
        self.thread = t
        t.start()

    def _after_fork_child(self) -> None:
        """A fork()ed child (gunicorn worker, multiprocessing) gets its own connection, a new
        hello with its own pid, empty counters and the parent's tables. The parent's socket is
        closed here, never written to: it belongs to the parent."""
        try:
            old = self.sock
            self._reset_process_state()
            if old is not None:
                try:
                    old.close()
                except OSError:
                    pass
            if self.enabled:
                # subprocess with preexec_fn also runs at-fork handlers in a child that is
                # about to exec: waiting a moment before connecting keeps such children from
                # saying hello at all (exec ends the thread); events meanwhile are queued
                self.start_thread(delay=0.1)
        except Exception:
            self.enabled = False

    # ---------------------------------------------------------------- hot path

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + 1

    def hook_failed(self, hook: str, exc: BaseException) -> None:
        """A hook raised internally: it disables itself (the caller removes it), the app's
        call proceeds, and the failure is reported once."""
        self.drop("error")
        if hook not in self.failed_once:
            self.failed_once.add(hook)
            try:
                log.warning("rampart: hook %s disabled after an internal error: %r", hook, exc)
            except Exception:
                pass

    def emit(self, hook: str, kind: str, args: list) -> None:
        """Report one sink call; raises RampartBlocked if a block rule refuses it.

        The pure-Python path. With the C accelerator (accel.py) the probe's `emit` is the C
        one, which calls this (`_emit_py`) whenever a rule needs Python to decide.

        Order (docs/probe-contract.md): block rules (synchronous, before the sink runs) ->
        detection rules in block mode (inside a request) -> quota -> drop now if the agent is
        away or the queue is full -> filter rules -> stack -> enqueue. Quotas limit what is
        *reported*; they never let through a call that a block rule refuses. Filter rules
        that do not look at the stack run before it is captured, so a filtered call never
        pays for it; the event's dict is built on the shipper thread. The only audit events
        raised in here are frame/code reads, which no hook handles, so this cannot recurse."""
        if not self.enabled or hook in self.hooks_disabled or _tls.busy:
            return
        stack = None
        policy_id = None
        blocks = self.blocks
        cands = None if blocks.empty else blocks.candidates(hook)
        normalised = False
        if cands:
            args = [
                a if a.__class__ is str and len(a) <= ARG_MAX else _s(a) for a in args[:ARGS_MAX]
            ]
            normalised = True
            if blocks.wants_stack:
                stack = capture_stack(self.stack_by_hook.get(hook, self.stack_depth), 2)
            for r in cands:
                if r.matches(hook, kind, args, stack or []):
                    policy_id = r.policy_id
                    self.blocked += 1
                    break
        detect = self.detect
        if policy_id is None and kind in detect.by_kind:
            # block mode on detections: only inside a request (input correlation needs its
            # parameters), so events outside requests never pay for it
            req = context.current.get()
            if req is not None:
                if not normalised:
                    args = [
                        a if a.__class__ is str and len(a) <= ARG_MAX else _s(a)
                        for a in args[:ARGS_MAX]
                    ]
                    normalised = True
                try:
                    policy_id = detect.check(kind, hook, args, req.to_dict())
                except Exception as e:  # a check that fails lets the call through
                    if "detect" not in self.failed_once:
                        self.failed_once.add("detect")
                        log.warning("rampart: detection check failed: %r", e)
                if policy_id is not None:
                    self.blocked += 1
        if not self.quotas.allow(hook):
            self.drop("quota")
        elif self.away:
            self.drop("agent_away")
        elif len(self.queue) >= QUEUE_MAX:
            self.drop("queue_full")
        else:
            if not normalised:  # a call dropped before this point never pays for it
                args = [
                    a if a.__class__ is str and len(a) <= ARG_MAX else _s(a)
                    for a in args[:ARGS_MAX]
                ]
            filters = self.filters
            if not filters.empty and filters.wants_stack and stack is None:
                stack = capture_stack(self.stack_by_hook.get(hook, self.stack_depth), 2)
            if not filters.empty and filters.first_match(hook, kind, args, stack or ()):
                self.drop("filter")
            else:
                if stack is None:
                    by_hook = self.stack_by_hook
                    depth = by_hook.get(hook, self.stack_depth) if by_hook else self.stack_depth
                    stack = capture_stack(depth, 2) if depth > 0 else []
                req = context.current.get()
                if req is not None:
                    try:
                        req = req.to_dict()
                    except Exception:
                        req = None
                self.queue.append((time.time(), hook, kind, args, policy_id, req, stack))
        if policy_id is not None:
            raise RampartBlocked(hook, policy_id)

    _emit_py = emit

    # ---------------------------------------------------------------- frames

    def envelope(self, message_type: int, data: dict, ms: int = 0) -> dict:
        return {
            "message_type": message_type,
            "pid": self.pid,
            "runtime": "python",
            "runtime_version": self.runtime_version,
            "probe_version": PROBE_VERSION,
            "time": ms or int(time.time() * 1000),
            "data": data,
        }

    def trace_prefix(self) -> bytes:
        """The constant part of this process's trace frames, encoded once per batch."""
        env = self.envelope(wire.TRACE, {})
        del env["time"], env["data"]
        return wire.dumps(env)[:-1].encode() + b',"time":'

    def hello(self) -> dict:
        data = {
            "mode": self.mode,
            "hooks": [h for h in self.hooks if h not in self.hooks_disabled],
            "already_running": self.already_running or self.was_connected,
            "protocol_version": 1,
        }
        nspid = _nspid()
        if nspid and nspid != self.pid:
            data["nspid"] = nspid
        return self.envelope(wire.HELLO, data)

    def heartbeat(self) -> dict:
        policies = {}
        for name, uuid in (
            ("filter", self.filters.uuid),
            ("block", self.blocks.uuid),
            ("quota", self.quotas.uuid),
            ("config", self.config_uuid),
        ):
            if uuid:
                policies[name] = uuid
        return self.envelope(
            wire.HEARTBEAT,
            {
                "sent": self.sent,
                "dropped": self.dropped,
                "blocked": self.blocked,
                "dropped_by": dict(self.dropped_by),
                "policies": policies,
                "queue": len(self.queue),
            },
        )

    def apply(self, msg: dict) -> None:
        """One frame from the agent. Tables replace the table of their kind whole."""
        mt = msg["message_type"]
        data = msg.get("data") or {}
        if mt in (wire.BLOCK, wire.FILTER, wire.QUOTA, wire.CONFIG):
            self.beat_now = True  # tell the agent at once which tables are in force
        if mt == wire.BLOCK:
            self.blocks = RuleTable(data["uuid"], data.get("blocks", []))
            try:
                self.detect = DetectTable(data.get("detect") or ())
            except Exception as e:  # an exemption re cannot compile: no block mode
                self.detect = DetectTable()
                log.warning("rampart: detection rules refused: %r", e)
        elif mt == wire.FILTER:
            self.filters = RuleTable(data["uuid"], data.get("filters", []))
        elif mt == wire.QUOTA:
            self.quotas = Quotas(data["uuid"], data.get("quotas", []))
        elif mt == wire.CONFIG:
            self.config_uuid = data["uuid"]
            self.hooks_disabled = set(data.get("hooks_disabled", []))
            if data.get("stack_depth") is not None:
                self.stack_depth = data["stack_depth"]
            by_hook = (data.get("settings") or {}).get("stack_depth_by_hook")
            if isinstance(by_hook, dict):
                self.stack_by_hook = {
                    k: v for k, v in by_hook.items() if isinstance(v, int) and 0 <= v <= 256
                }
        elif mt == wire.EXIT:
            # the agent detaches us: stop reporting; audit hooks stay but do nothing
            self.enabled = False
            self.detached = True
        elif mt == wire.ERROR:
            log.debug("rampart: agent refused the probe: %s", data)

    # ---------------------------------------------------------------- shipper thread

    def kick(self, mode=None) -> None:
        """A second attach: reconnect now and say a fresh hello (`already_running`)."""
        if mode:
            self.mode = mode
        self.already_running = True
        self.enabled = True
        self.detached = False
        self.reconnect_now = True
        self.wake.set()
        if self.thread is None or not self.thread.is_alive():
            self.start_thread()

    reconnect_now = False
    beat_now = False

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5.0)
            s.connect(self.socket_path)
            s.sendall(wire.encode(self.hello()))
            s.settimeout(30.0)
        except BaseException:
            s.close()
            raise
        return s

    def _close(self) -> None:
        self.connected = False
        s, self.sock = self.sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
        # what was queued for the lost connection is counted, not kept
        n = len(self.queue)
        self.queue.clear()
        for _ in range(n):
            self.drop("agent_away")

    def _run(self, delay: float = 0.0) -> None:
        _tls.busy = True  # the probe's own socket calls are not events
        if accel.mod is not None:
            accel.mod.set_busy()  # the same for the C audit hook
        if delay:
            time.sleep(delay)
        try:
            self._loop()
        except Exception as e:  # a probe bug: the probe stops, the app goes on
            self.enabled = False
            self.away = True
            try:
                log.warning("rampart: probe disabled after an internal error: %r", e)
                self._close()
            except Exception:
                pass

    def _loop(self) -> None:
        backoff = BACKOFF_MIN
        reader = wire.FrameReader()
        next_heartbeat = 0.0
        while not self.detached:
            if self.reconnect_now:
                self.reconnect_now = False
                self._close()
                backoff = BACKOFF_MIN
            if self.sock is None:
                if self.stopping:
                    return
                try:
                    self.sock = self._connect()
                except OSError:
                    self.away = True
                    self._close()
                    self.wake.wait(backoff)
                    self.wake.clear()
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                reader = wire.FrameReader()
                self.connected = self.was_connected = True
                self.away = False
                self.already_running = False
                backoff = BACKOFF_MIN
                next_heartbeat = 0.0  # one right after the hello: counters from while away
            try:
                self._pump(reader)
                if self.beat_now or time.monotonic() >= next_heartbeat:
                    self.beat_now = False
                    self.sock.sendall(wire.encode(self.heartbeat()))
                    next_heartbeat = time.monotonic() + HEARTBEAT_S
                if self.stopping:
                    self._pump(reader)
                    self.sock.sendall(
                        wire.encode(self.envelope(wire.EXIT, {"reason": "interpreter shutdown"}))
                    )
                    self._close()
                    return
            except (OSError, wire.WireError):
                self.away = True
                self._close()
        self.away = True
        self._close()

    def _pump(self, reader) -> None:
        """Send what is queued (in batches), then read what the agent sent."""
        q = self.queue
        sock = self.sock
        # the C encoder when the accelerator runs (the same bytes; None: Python encodes it)
        enc = accel.mod.encode_event if accel.mod is not None and accel.mod.active() else None
        while q:
            parts = []
            prefix = self.trace_prefix()
            while q and len(parts) < BATCH_MAX:
                entry = q.popleft()
                frame = None
                if enc is not None:
                    try:
                        frame = enc(prefix, entry)
                    except Exception as e:  # never lose the event: Python encodes it
                        enc = None
                        log.warning("rampart: C trace encoder failed, Python encodes: %r", e)
                if frame is None:
                    frame = wire.encode_trace(prefix, *_event(entry))
                parts.append(frame)
            sock.sendall(b"".join(parts))
            self.sent += len(parts)

        # After a batch too, wait for the agent (or 50 ms) rather than loop at once: a shipper
        # that comes back for every event or two takes the GIL from the app's thread each
        # time, and those hand-offs cost the app more than the encoding itself.
        r, _, _ = select.select([sock], [], [], 0 if self.stopping else 0.05)
        if r:
            data = sock.recv(65536)
            if not data:
                raise OSError("agent closed the connection")
            for payload in reader.feed(data):
                try:
                    msg = wire.decode_from_agent(payload)
                except wire.WireError as e:
                    log.debug("rampart: bad frame from the agent: %s", e)
                    continue
                self.apply(msg)
                if self.detached:
                    raise OSError("detached by the agent")

    def shutdown(self) -> None:
        """atexit: flush what is queued and say exit, waiting at most one second."""
        self.stopping = True
        self.wake.set()
        t = self.thread
        if t is not None and t.is_alive() and self.pid == os.getpid():
            t.join(1.0)


def _event(entry: tuple) -> tuple:
    """A queued call (Probe.emit) -> (ms, event data, stack) for wire.encode_trace."""
    t, hook, kind, args, policy_id, req, stack = entry
    data = {"hook": hook, "kind": kind, "args": args}
    if policy_id is not None:
        data["blocked"] = True
        data["policy_id"] = policy_id
    if req is not None:
        data["request"] = req
    return int(t * 1000), data, stack


def _nspid() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except Exception:
        pass
    return 0
