"""PHP probe overhead: php-fpm throughput with and without the probe, and attach latency.

Three identical php-fpm pools (static, 2 workers each) serve tests/apps/php/app.php on
loopback: one without the probe, one with the probe as it ships, one with the probe reading
arguments and stacks from JS (`RASP_PHP_NATIVE=0`, the probe before its C collector; what
runs if the CModule cannot compile). A FastCGI loader (threads, one connection per request, as
nginx does by default) alternates between the pools in rounds, so all see the same machine
load, and prints requests/s for each and the ratios to the pool without. Endpoints:

- `ok`: no sink is called (the cost of having the probe in the process at all);
- `read`: `file_get_contents('/etc/hostname')` on every request, a hooked sink: one event per
  call until the default quota (12,000 per hook and minute) drops the rest, counted.

Attach latency: `php_agent.load()` (Frida attach + script load + start + detach, each phase
printed) on a php CLI process, a `php -S` server (with and without opcache) and a php-fpm
worker, and `rasp-attach` wall time for a whole php-fpm (master + workers + the watcher).

Usage: .venv/bin/python bench/php_overhead.py [--seconds 3] [--rounds 3] [--threads 4]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from injector.attach_php import fpm_workers  # noqa: E402
from rasp.php.php_agent import load  # noqa: E402
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for  # noqa: E402
from tests.apps.php import fcgi  # noqa: E402

APP = REPO / "tests" / "apps" / "php" / "app.php"
LOOP = REPO / "tests" / "apps" / "php" / "loop.php"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fpm(d: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = d / f"{name}.conf"
    conf.write_text(
        f"[global]\nerror_log = {d / name}.log\npid = {d / name}.pid\n"
        f"[{name}]\nlisten = 127.0.0.1:{port}\nlisten.backlog = 512\n"
        "pm = static\npm.max_children = 2\n"
    )
    p = subprocess.Popen(["php-fpm8.2", "-F", "-R", "-y", str(conf)])

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 15, f"php-fpm {name}")
    wait_for(lambda: len(fpm_workers(p.pid)) == 2, 10, "workers")
    return p, port


TICK = os.sysconf("SC_CLK_TCK")


def pool_cpu(master: int) -> float:
    """CPU seconds (user + system, all threads) of a php-fpm master and its workers."""
    total = 0.0
    for pid in [master, *fpm_workers(master)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def measure(port: int, op: str, seconds: float, threads: int) -> float:
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    query = {"op": op, "a": "/etc/hostname"}

    def run() -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop:
            r = fcgi.request(("127.0.0.1", port), str(APP), query)
            assert r.status == 200, r.text
            n += 1
        with lock:
            done += n

    t0 = time.monotonic()
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done / (time.monotonic() - t0)


def timed_load(agent: AgentProc, pid: int) -> str:
    agent.control("attach.expect", pid=pid, runtime="php")
    loaded = load(pid, agent.socket)
    phases = ", ".join(f"{k} {v:.0f}" for k, v in loaded.phases.items())
    return f"{loaded.elapsed_ms:.0f} ms ({phases})"


def attach_latency(agent: AgentProc, d: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cli = subprocess.Popen(["php", str(LOOP)], stdout=subprocess.PIPE)
        procs.append(cli)
        assert cli.stdout is not None and cli.stdout.readline().strip() == b"ready"
        out["php CLI"] = timed_load(agent, cli.pid)
        port = free_port()
        srv = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{port}", str(APP)], stderr=subprocess.DEVNULL
        )
        procs.append(srv)
        time.sleep(0.5)
        out["php -S"] = timed_load(agent, srv.pid)
        # opcache's shared memory (128 MB by default) is what makes Frida's attach to php -S
        # slow (docs/php-probe.md, "Attach latency"): the same server without it
        port = free_port()
        srv = subprocess.Popen(
            ["php", "-d", "opcache.enable=0", "-S", f"127.0.0.1:{port}", str(APP)],
            stderr=subprocess.DEVNULL,
        )
        procs.append(srv)
        time.sleep(0.5)
        out["php -S, opcache off"] = timed_load(agent, srv.pid)
        fpm, _ = start_fpm(d, "latency")
        procs.append(fpm)
        out["php-fpm worker"] = timed_load(agent, fpm_workers(fpm.pid)[0])
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    # reap what rasp-attach leaves behind (the php-fpm watcher): PID 1 may not
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    with tempfile.TemporaryDirectory(prefix="rampart-php-bench-") as td:
        d = Path(td)
        agent = AgentProc(
            dir=d,
            socket=d / "probe.sock",
            store=d / "events.db",
            jsonl=d / "events.jsonl",
            policy=d / "policy.yaml",
            log=d / "agent.log",
            # the probe's cost, not the eBPF driver's (it would store every exec on the host)
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")},
                "RAMPART_DRIVER": "off",
            },
        ).start()
        pools: list[tuple[str, subprocess.Popen[bytes], int]] = []
        try:
            for name, label in (
                ("plain", "without"),
                ("probed", "with"),
                ("probedjs", "with (JS reads)"),
            ):
                pool, port = start_fpm(d, name)
                pools.append((label, pool, port))
            probed, probed_js = pools[1][1], pools[2][1]
            t0 = time.monotonic()
            res = subprocess.run(
                [RASP_ATTACH, "--pid", str(probed.pid), "--socket", str(agent.socket)],
                capture_output=True,
                text=True,
            )
            fpm_attach_ms = (time.monotonic() - t0) * 1000
            assert res.returncode == 0, res.stderr
            res = subprocess.run(
                [RASP_ATTACH, "--pid", str(probed_js.pid), "--socket", str(agent.socket)],
                capture_output=True,
                text=True,
                env={**os.environ, "RASP_PHP_NATIVE": "0"},
            )
            assert res.returncode == 0, res.stderr
            for op in ("ok", "read"):
                for _, _, port in pools:
                    measure(port, op, 0.5, args.threads)  # warm up every pool
                rates: dict[str, list[float]] = {name: [] for name, _, _ in pools}
                cpu = {name: [0.0, 0.0] for name, _, _ in pools}  # cpu s, requests
                for _ in range(args.rounds):
                    for name, pool, port in pools:
                        c0 = pool_cpu(pool.pid)
                        rate = measure(port, op, args.seconds, args.threads)
                        cpu[name][0] += pool_cpu(pool.pid) - c0
                        cpu[name][1] += rate * args.seconds
                        rates[name].append(rate)
                b = sum(rates["without"]) / len(rates["without"])
                cb = cpu["without"][0] / cpu["without"][1] * 1e6
                print(f"php-fpm {op:5s}: without {b:6.0f} req/s, CPU {cb:4.0f} us/request")
                for name, _, _ in pools[1:]:
                    w = sum(rates[name]) / len(rates[name])
                    cw = cpu[name][0] / cpu[name][1] * 1e6
                    print(
                        f"  {name:16s} {w:6.0f} req/s (ratio {w / b:.2f}),"
                        f" CPU {cw:4.0f} us/request (+{cw - cb:.0f} us)"
                    )
            rows = {r["pid"]: r for r in agent.control("ps")}
            events = sum(r["events"] for r in rows.values())
            drops = sum(r["drops"] for r in rows.values())
            print(f"events stored {events}, dropped by the probes (quota etc.) {drops}")
            print(f"rasp-attach php-fpm (master + 2 workers + watcher): {fpm_attach_ms:.0f} ms")
            for what, timing in attach_latency(agent, d).items():
                print(f"attach {what}: {timing}")
        finally:
            for _, p, _ in pools:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
            agent.stop()
            time.sleep(0.3)
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break


if __name__ == "__main__":
    main()
