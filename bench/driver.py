#!/usr/bin/env python3
"""Driver cost and throughput (issue 7). Needs root and `make setup` (the BPF object).

1. Cost per program run from the kernel's own BPF statistics, per workload: what the hooks
   themselves cost (execve against Elkeid's published 15.2 µs), free of scheduling noise.
2. Slowdown: C loops of connect, fork+exec and getpid (bench/workloads/syscall_loop.c), driver
   off / on with a reader only / on with the agent's consumer (HostDriver: decode, process
   cache, stored-event dicts), interleaved in one run; medians and spread of the per-round
   ratios.
3. Consumer capacity: a UDP-connect storm left in a large ring buffer, then read and consumed
   stage by stage with the CPUs free; the per-record ctypes path it replaced, for comparison.
4. Live: a UDP-connect storm while the agent's consumer runs as in the agent (reader thread,
   asyncio loop): records/s consumed and kernel drops.

    .venv/bin/python bench/driver.py [--rounds 11] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from driver import batch as rbatch  # noqa: E402
from driver import events as ev  # noqa: E402
from driver.loader import Driver, DriverConfig  # noqa: E402
from driver.programs import DEFAULT_STORED  # noqa: E402
from host_agent.hostdriver import EXACT, HostDriver  # noqa: E402
from host_agent.pipeline import Pipeline  # noqa: E402
from host_agent.policy import empty as empty_policy  # noqa: E402
from host_agent.settings import Settings  # noqa: E402
from host_agent.sinks import SinkRunner  # noqa: E402
from host_agent.sinks.sqlite import SqliteSink  # noqa: E402

SRC = REPO / "bench" / "workloads" / "syscall_loop.c"
BIN = REPO / "build" / "bench" / "syscall_loop"
ELKEID_EXECVE_US = 15.2  # Elkeid's published average cost of its execve hook


def build() -> Path:
    if not BIN.exists() or BIN.stat().st_mtime < SRC.stat().st_mtime:
        BIN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["clang", "-O2", "-o", str(BIN), str(SRC)], check=True)
    return BIN


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens: every TCP connect is refused at once
    return port


def run_loop(*args: str) -> float:
    """Wall ns per operation of one syscall_loop run (bench/enforce.py uses it too)."""
    return run_loop_cpu(*args)[0]


def run_loop_cpu(*args: str) -> tuple[float, float]:
    """(wall ns, CPU ns) per operation of one syscall_loop run."""
    env = {**os.environ, "SYSCALL_LOOP_CPU": "1"}
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True, check=True, env=env)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


class CountingPipeline:
    """Stands in for host_agent.pipeline.Pipeline: counts what the driver hands over. The
    pipeline's own cost (policies, detectors, SQLite) is bench/agent_ingest.py's."""

    backlog = 0
    host_lookup: Any = None

    def __init__(self) -> None:
        self.received = 0

    def submit_host(self, event: dict[str, Any]) -> None:
        self.received += event.get("count", 1)

    def submit_row(self, *row: Any) -> None:  # ts, pid, kind, hook, args, body, n
        self.received += row[6]


class AgentConsumer:
    """The agent's driver consumer, as in the agent: HostDriver on an asyncio loop of its own
    thread, the loader's reader thread notifying it."""

    def __init__(
        self, events: list[str], ringbuf_kb: int = 8192, store: bool = True, sqlite: bool = False
    ) -> None:
        settings = Settings(driver="on", driver_events=events, driver_ringbuf_kb=ringbuf_kb)
        self.runner: SinkRunner | None = None
        self.pipeline: Any = CountingPipeline()
        if sqlite:  # the agent's own pipeline and SQLite store, in a temporary directory
            self._tmp = tempfile.TemporaryDirectory(prefix="rampart-bench-")
            self.runner = SinkRunner(SqliteSink(Path(self._tmp.name) / "events.db"))
            self.runner.start()
            self.pipeline = Pipeline(settings, [self.runner], empty_policy())
        self.hd = HostDriver(settings, self.pipeline)
        if not store:  # the programs load, their records feed the cache only
            self.hd.stored_types = set()
        self.loop = asyncio.new_event_loop()
        self._t = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AgentConsumer:
        self._t.start()
        done = threading.Event()

        def start() -> None:
            try:
                self.hd.start(self.loop)
            finally:
                done.set()

        self.loop.call_soon_threadsafe(start)
        done.wait(30)
        return self

    def sync(self, fn: Any) -> Any:
        out: list[Any] = []
        ev_done = threading.Event()

        def run() -> None:
            try:
                out.append(fn())
            finally:
                ev_done.set()

        self.loop.call_soon_threadsafe(run)
        ev_done.wait(60)
        return out[0] if out else None

    def stats(self) -> dict[str, Any]:
        return self.sync(self.hd.stats)

    def rows(self) -> int:
        """Rows the SQLite sink has written (sqlite=True)."""
        return self.runner.written if self.runner is not None else 0

    def __exit__(self, *exc: object) -> None:
        self.sync(self.hd.stop)
        if self.runner is not None:
            self.sync(self.pipeline.flush)
            self.runner.close()
            self._tmp.cleanup()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._t.join(10)
        self.loop.close()


# ---------------------------------------------------------------------------------- 1. costs


def _own_prog_ids() -> set[int]:
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def _prog_stats(mine: set[int]) -> dict[str, tuple[int, int]]:
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
    ).stdout
    return {
        p["name"]: (p.get("run_cnt", 0), p.get("run_time_ns", 0))
        for p in json.loads(out)
        if p.get("id") in mine
    }


def other_dispatchers() -> int:
    """sys_enter dispatchers of *other* loaded drivers (other agents on this machine): each
    one puts its own cost on every syscall of the "off" runs too."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for p in json.loads(out) if p.get("name") == "rp_sys_enter")


def program_costs() -> dict[str, Any]:
    """BPF run time per program and per workload operation, from kernel.bpf_stats_enabled
    (switched on for this and restored). A dispatcher's figure includes the handler it
    tail-calls (a tail call is part of the same run)."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    stats.write_text("1")
    port = str(closed_port())
    workloads = [
        ("connect", 50_000, ["connect", "50000", port]),
        ("udpconnect", 200_000, ["udpconnect", "200000", port]),
        ("fork+exec", 1000, ["exec", "1000"]),
        ("getpid", 1_000_000, ["getpid", "1000000"]),
    ]
    per_op: dict[str, dict[str, Any]] = {}
    try:
        d = Driver(DriverConfig(events=set(DEFAULT_STORED)))
        d.start()
        try:
            mine = _own_prog_ids()
            for name, n, args in workloads:
                before = _prog_stats(mine)
                run_loop(*args)
                after = _prog_stats(mine)
                progs = {}
                for prog, (cnt, ns) in after.items():
                    c0, t0 = before.get(prog, (0, 0))
                    if cnt - c0:
                        progs[prog] = {"runs": cnt - c0, "avg_ns": round((ns - t0) / (cnt - c0))}
                # runs are machine-wide (every process's syscalls pass the dispatchers): the
                # averages are the figures, not the totals
                per_op[name] = {"ops": n, "programs": progs}
        finally:
            d.stop()
    finally:
        stats.write_text(old)
    return per_op


# ---------------------------------------------------------------------------------- 2. slowdown


def slowdown(rounds: int) -> list[dict[str, Any]]:
    """Each round runs every workload under off / reader / agent, in a rotating order (no
    configuration always runs first); ratios are per round (on / off of the same round), so
    a slow phase of the shared VM moves both sides. Medians, min and max over the rounds.

    Two clocks: the loop's wall time, and its CPU time (user + system of the loop and its
    children): the BPF programs run in the workload's system time, so the CPU ratio is what
    the hooks cost the application; the wall ratio adds the consumer competing for the
    cores, and on a loaded VM every other process too."""
    port = str(closed_port())
    workloads = {
        "connect": ["connect", "20000", port],
        "fork+exec": ["exec", "300"],
        "getpid": ["getpid", "1000000"],
    }
    configs = ["off", "reader", "agent"]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {
        (w, c): [] for w in workloads for c in configs
    }

    def run_all(c: str) -> None:
        for w, args in workloads.items():
            times[w, c].append(run_loop_cpu(*args))

    for r in range(rounds):
        order = configs[r % 3 :] + configs[: r % 3]
        for c in order:
            if c == "off":
                run_all(c)
            elif c == "reader":
                d = Driver(DriverConfig(events=set(DEFAULT_STORED)))
                d.start()
                try:
                    run_all(c)
                finally:
                    d.stop()
            else:
                with AgentConsumer(list(DEFAULT_STORED)):
                    run_all(c)
    out = []
    for w in workloads:
        row: dict[str, Any] = {"workload": w, "rounds": rounds}
        for clock, i in (("wall", 0), ("cpu", 1)):
            off = [t[i] for t in times[w, "off"]]
            row[f"off_{clock}_ns"] = round(statistics.median(off), 1)
            for c in ("reader", "agent"):
                on = [t[i] for t in times[w, c]]
                ratios = [a / b for a, b in zip(on, off, strict=True)]
                row[f"{c}_{clock}"] = {
                    "median_ns": round(statistics.median(on), 1),
                    "ratio_median": round(statistics.median(ratios), 3),
                    "ratio_min": round(min(ratios), 3),
                    "ratio_max": round(max(ratios), 3),
                    "added_ns": round(statistics.median(on) - statistics.median(off), 1),
                }
        out.append(row)
    return out


# ---------------------------------------------------------------------------------- 3. capacity


def _fill(n: int, native: bool, storm: str = "udpconnect") -> tuple[Driver, list[bytes], float]:
    """n UDP connects (`udpconnect`: identical records; `udpscan`: to 20,000 ports in turn)
    left in a 512 MiB ring buffer, then read in one go: (driver, batches, read seconds). The
    driver is still loaded (stop it)."""
    port = "20000" if storm == "udpscan" else str(closed_port())
    d = Driver(
        DriverConfig(
            events={"connect"},
            ringbuf_kb=512 << 10,
            reader=False,
            queue_limit=1 << 30,
            native_reader=native,
        )
    )
    d.start()
    run_loop(storm, str(n), port)
    t0 = time.thread_time()
    d.flush()
    batches = d.take_batches()
    return d, batches, time.thread_time() - t0


def _consume(batches: list[bytes], store: bool) -> tuple[int, float]:
    """HostDriver._apply_batch over the batches: (records stored, seconds)."""
    pipe = CountingPipeline()
    hd = HostDriver(Settings(driver_events=["connect"]), pipe)  # type: ignore[arg-type]
    if not store:
        hd.stored_types = set()
    hd.cache.scan()
    t0 = time.thread_time()
    for b in batches:
        hd._apply_batch(b)
    hd._emit_folded()
    return pipe.received, time.thread_time() - t0


def stored_capacity(storm: str, n: int = 300_000) -> dict[str, Any]:
    """The whole stored path over records waiting in the ring buffer: HostDriver (mode
    EXACT: every record stored, identical ones folded per batch), the agent's Pipeline
    (policies, host rules) and the SQLite sink in its thread, until the last row is written.
    CPU time of this process (every thread: the loop's and the sink's), and the loop
    thread's alone."""
    d, batches, _read_s = _fill(n, native=True, storm=storm)
    d.stop()
    records = sum(1 for b in batches for _ in rbatch.records(b))
    connects = sum(1 for b in batches for r in rbatch.records(b) if r[0] == ev.DT_CONNECT)
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp:
        settings = Settings(driver_events=["connect"])
        runner = SinkRunner(SqliteSink(Path(tmp) / "events.db"))
        runner.start()
        out: dict[str, Any] = {}

        async def consume() -> None:
            pipe = Pipeline(settings, [runner], empty_policy())
            hd = HostDriver(settings, pipe)
            hd.cache.scan()
            p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            for b in batches:
                hd._apply_batch(b, EXACT)
                hd._end_window()  # as the agent's drain does: rows every store_flush_ms
            hd._emit_folded()
            pipe.flush()
            out["loop_s"] = time.thread_time() - t0
            while runner.pending:
                await asyncio.sleep(0.002)
            out["cpu_s"] = time.process_time() - p0
            out["wall_s"] = time.perf_counter() - w0
            out["rows"] = runner.written
            out["folded"] = hd.aggregated
            out["received"] = pipe.received

        asyncio.run(consume())
        runner.close()
    return {
        "storm": storm,
        "records": records,
        "rows": out["rows"],
        "connects": connects,
        # every connect record is a row or counted in one (the others feed the cache only)
        "accounted": out["rows"] + out["folded"] == connects == out["received"],
        "per_cpu_s": round(records / out["cpu_s"]),
        "loop_per_s": round(records / out["loop_s"]),
        "rows_per_cpu_s": round(out["rows"] / out["cpu_s"]),
        "per_wall_s": round(records / out["wall_s"]),
    }


def capacity(n: int = 500_000) -> dict[str, Any]:
    """Records per second of this thread's CPU time (time.thread_time: on a loaded VM, wall
    time would mostly measure the wait for a core), each stage over the same records."""
    d, batches, read_s = _fill(n, native=True)
    try:
        drops = d.kernel_drops()
    finally:
        d.stop()
    records = sum(1 for b in batches for _ in rbatch.records(b))
    t0 = time.thread_time()
    for b in batches:
        for _dt, _pid, start, size in rbatch.records(b):
            rbatch.decode_at(b, start, size)
    decode_s = time.thread_time() - t0
    _stored, cache_s = _consume(batches, store=False)
    stored, store_s = _consume(batches, store=True)
    # the path this replaced: a ctypes callback per record, then events.decode on each
    old_n = min(n, 300_000)
    d, old_batches, old_read_s = _fill(old_n, native=False)
    d.stop()
    old_records = [r for b in old_batches for r in rbatch.split(b)]
    t0 = time.thread_time()
    for r in old_records:
        ev.decode(r)
    old_decode_s = time.thread_time() - t0
    rate = lambda k, s: round(k / s) if s else 0  # noqa: E731
    return {
        "records": records,
        "kernel_drops": drops,
        "read_per_s": rate(records, read_s),
        "decode_per_s": rate(records, decode_s),
        "cache_only_per_s": rate(records, cache_s),
        "stored": stored,
        "stored_per_s": rate(records, store_s),
        "old_read_per_s": rate(len(old_records), old_read_s),
        "old_decode_per_s": rate(len(old_records), old_decode_s),
    }


def exec_consumer(n: int = 1000) -> dict[str, Any]:
    """Agent-side CPU per execve, live: the agent's consumer (reader thread + loop) decodes the
    fork, exec and exit records of each process, applies them to the process cache (readlink
    of exe and cwd while the process still lives) and builds the stored exec event. This
    process's CPU time (the workload is a child) over the loop, per exec."""
    with AgentConsumer(["execve"]) as agent:
        p0 = time.process_time()
        run_loop("exec", str(n))
        deadline = time.monotonic() + 30
        while agent.pipeline.received < n and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = time.process_time() - p0
        got = agent.pipeline.received
    return {"execs": got, "us_per_exec": round(cpu / max(got, 1) * 1e6, 1)}


# ---------------------------------------------------------------------------------- 4. live


def live(
    store: bool,
    procs: int = 1,
    each: int = 500_000,
    storm: str = "udpconnect",
    sqlite: bool = False,
) -> dict[str, Any]:
    """UDP-connect storms while the agent's consumer reads and consumes live; with `sqlite`,
    into the agent's pipeline and SQLite store (until the last row is written)."""
    port = "20000" if storm == "udpscan" else str(closed_port())
    with AgentConsumer(["connect"], ringbuf_kb=16384, store=store, sqlite=sqlite) as agent:
        before = agent.stats()
        t0 = time.perf_counter()
        workers = [
            subprocess.Popen([str(BIN), storm, str(each), port], stdout=subprocess.DEVNULL)
            for _ in range(procs)
        ]
        for w in workers:
            w.wait()
        storm_s = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let the consumer finish what is waiting
            s = agent.stats()
            time.sleep(0.2)
            s2 = agent.stats()
            idle = s2["received"] == s["received"] and not s2["queued"]
            if idle and (agent.runner is None or not agent.runner.pending):
                break
        total_s = time.perf_counter() - t0
        after = agent.stats()
        stored = agent.pipeline.received
        rows = agent.rows()
    got = after["received"] - before["received"]
    drops = after["kernel_drops"] - before["kernel_drops"]
    expected = procs * each
    return {
        "consumer": ("sqlite " if sqlite else "") + ("stored" if store else "cache only"),
        "storm": storm,
        "connects": expected,
        "offered_per_s": round(expected / storm_s),
        "consumed": got,
        "consumed_per_s": round(got / total_s),
        "stored": stored,
        "rows": rows,
        "folded": after["aggregated"] + after["summarized"],
        "shed": sum(after["shed"].values()),
        "kernel_drops": drops,
        "accounted": got + drops >= expected,
        "reader_paused": after["reader_paused"] - before["reader_paused"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/driver.py: needs root (the driver loads BPF programs)", file=sys.stderr)
        return 1
    build()
    res = {
        "other_drivers": other_dispatchers(),
        "costs": program_costs(),
        "exec": exec_consumer(),
        "slowdown": slowdown(a.rounds),
        "capacity": capacity(),
        "stored_capacity": [stored_capacity("udpconnect"), stored_capacity("udpscan")],
        "live": [
            live(store=False),
            live(store=True),
            live(store=True, sqlite=True),
            live(store=True, sqlite=True, storm="udpscan"),
        ],
    }
    res["other_drivers_at_end"] = other_dispatchers()
    BIN.with_name("driver.json").write_text(json.dumps(res))  # the raw figures, kept
    if a.json:
        print(json.dumps(res))
    else:
        report(res, a.rounds)
    return 0 if all(t["accounted"] for t in res["live"]) else 1


def report(res: dict[str, Any], rounds: int) -> None:
    costs, execs, slow, cap, lv = (
        res["costs"],
        res["exec"],
        res["slowdown"],
        res["capacity"],
        res["live"],
    )
    print(
        f"{res['other_drivers']} other rampart drivers were attached on this machine when the"
        " run started (other agents): their dispatchers run on every syscall, off runs included"
    )
    print(
        "BPF run time per program run, while each loop ran (kernel BPF stats, machine-wide runs;"
        " a dispatcher includes the handler it tail-calls)"
    )
    for w, c in costs.items():
        progs = ", ".join(f"{p} {v['avg_ns']:,} ns" for p, v in sorted(c["programs"].items()))
        print(f"  {w:<11} {progs}")
    ex = costs["fork+exec"]["programs"].get("rp_exec", {"avg_ns": 0})
    print(
        f"  execve hook (rp_exec, sched_process_exec): {ex['avg_ns'] / 1000:.2f} µs per execve"
        f" (Elkeid's published execve hook: {ELKEID_EXECVE_US} µs)"
    )
    print(
        f"  agent side per execve (decode fork/exec/exit, process cache, stored dict): "
        f"{execs['us_per_exec']} µs ({execs['execs']} execs)"
    )
    print(
        f"slowdown (C loops, {rounds} interleaved rounds; ratio = on / off of the same round,"
        " median [min-max]; cpu = the loop's own user+system time, wall = elapsed)"
    )
    for r in slow:
        for clock in ("cpu", "wall"):
            cells = [f"{r['workload']:<10} {clock:<4} off {r[f'off_{clock}_ns'] / 1000:>8.2f}µs"]
            for c in ("reader", "agent"):
                x = r[f"{c}_{clock}"]
                cells.append(
                    f"{c} {x['median_ns'] / 1000:>8.2f}µs {x['ratio_median']:.3f}"
                    f" [{x['ratio_min']:.2f}-{x['ratio_max']:.2f}]"
                )
            print("  " + "  ".join(cells))
    print(
        f"consumer capacity ({cap['records']:,} UDP-connect records waiting, kernel drops "
        f"{cap['kernel_drops']}; records per second of one core's CPU time)"
    )
    print(f"  read (C callback into batches)            {cap['read_per_s']:>11,}")
    print(f"  decode to DriverEvent (driver.batch)      {cap['decode_per_s']:>11,}")
    print(f"  agent, cache only (not stored)            {cap['cache_only_per_s']:>11,}")
    print(f"  agent, stored (identical records folded)  {cap['stored_per_s']:>11,}")
    print(f"  before: ctypes callback per record        {cap['old_read_per_s']:>11,}")
    print(f"  before: events.decode per record          {cap['old_decode_per_s']:>11,}")
    print(
        "stored path, end to end (HostDriver + Pipeline + SQLite sink until written; records per"
        " second of the process's CPU time, all threads / of the loop thread alone)"
    )
    for c in res["stored_capacity"]:
        print(
            f"  {c['storm']:<10} {c['connects']:,} connects -> {c['rows']:,} rows: "
            f"{c['per_cpu_s']:>10,}/s CPU, loop thread {c['loop_per_s']:>10,}/s, rows "
            f"{c['rows_per_cpu_s']:,}/s CPU  {'all accounted' if c['accounted'] else 'LOSS'}"
        )
    print("live UDP-connect storm, the agent's consumer (reader thread + asyncio loop)")
    for t in lv:
        print(
            f"  {t['consumer']:<14} {t['storm']:<10} offered {t['offered_per_s']:>9,}/s  consumed "
            f"{t['consumed_per_s']:>9,}/s  {t['consumed']:,} of {t['connects']:,}, kernel drops "
            f"{t['kernel_drops']:,}, rows {t['rows']:,} (+{t['folded']:,} folded, "
            f"{t['shed']:,} shed), reader paused {t['reader_paused']}"
            f"  {'all accounted' if t['accounted'] else 'UNACCOUNTED LOSS'}"
        )


if __name__ == "__main__":
    sys.exit(main())
