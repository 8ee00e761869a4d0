"""Live attach for PHP: the `php` CLI, the built-in server (`php -S`) and php-fpm.

The probe is a Frida script (rasp/php/php_agent.js) loaded into the process and eternalized;
see docs/php-probe.md.

php-fpm: requests run in the workers, which the master forks at start, on demand
(`pm = dynamic|ondemand`) and after `pm.max_requests`. A Frida script does not follow a fork
(the child inherits hooks whose script has no thread and no connection of its own), so:

- the master gets a probe that reports (hello, heartbeats) but hooks nothing: its children
  then inherit no hooks at all;
- every worker gets its own probe;
- workers forked later are found by a watcher process that `rasp-attach` leaves running in the
  background (`python -m injector.attach_php watch --master PID`). It polls the master's
  children every 100 ms, attaches each new worker like `rasp-attach` would (record, inject,
  wait for the hello), and exits when the master exits. One watcher per master: it holds the
  abstract Unix socket name `rampart-php-fpm-watch-<master pid>` as its lock.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket as socketlib
import subprocess
import sys
import time
from pathlib import Path

from injector import attach as attach_mod
from injector import container
from injector.detect import Detection
from rasp.php.php_agent import ProbeLoadError, load, running_probe

WATCH_INTERVAL = 0.1


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def is_fpm_master(pid: int) -> bool:
    """A php-fpm process whose parent is not php-fpm."""
    if not _exe_name(pid).startswith("php-fpm"):
        return False
    try:
        return not _exe_name(_ppid(pid)).startswith("php-fpm")
    except OSError:
        return False


def fpm_workers(master: int) -> list[int]:
    """The master's children that run php-fpm (all its threads' children)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{master}/task")
    except OSError:
        return kids
    for tid in tasks:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{master}/task/{tid}/children").read_text()
            kids += [int(k) for k in text.split()]
    return [k for k in kids if _exe_name(k).startswith("php-fpm")]


class PhpAttacher:
    runtime = "php"

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        master = is_fpm_master(target.pid)
        self._load(target, socket, timeout, "master" if master else "worker")
        if master:
            for worker in fpm_workers(target.pid):
                with contextlib.suppress(attach_mod.AttachError):  # a worker may exit meanwhile
                    attach_mod.attach(worker, "php", socket, timeout)
            start_watcher(target.pid, socket, timeout)

    def _load(self, target: Detection, socket: Path, timeout: float, role: str) -> None:
        try:
            foreign = container.is_foreign(target.pid)
        except container.ContainerError as e:  # gone meanwhile
            raise attach_mod.AttachError(attach_mod.EXIT_PROCESS, str(e)) from None
        # the probe's script travels over Frida; only the agent socket is a path the target
        # must resolve: bind it into a container's root (injector/container.py)
        if foreign and not running_probe(target.pid):
            try:
                socket = Path(container.place(target.pid, {}, socket).socket(socket))
            except container.ContainerError as e:
                raise attach_mod.AttachError(attach_mod.EXIT_FAIL, str(e)) from None
        try:
            loaded = load(
                target.pid, socket, role=role, runtime_version=target.version, timeout=timeout
            )
        except ProbeLoadError as e:
            code = attach_mod.EXIT_FAIL
            if e.gone:
                code = attach_mod.EXIT_PROCESS
            elif e.denied:
                code = attach_mod.EXIT_DENIED
            raise attach_mod.AttachError(code, str(e)) from None
        for line in loaded.logs:  # what the probe said while starting (a fallback it took, …)
            print(f"rasp-attach: pid {target.pid}: probe: {line}", file=sys.stderr)
        if loaded.missing and role == "worker":
            print(
                f"rasp-attach: pid {target.pid}: not in this PHP build, not hooked: "
                + ", ".join(loaded.missing),
                file=sys.stderr,
            )

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        raise attach_mod.AttachError(
            attach_mod.EXIT_UNSUPPORTED, f"pid {target.pid}: detach for php is not available"
        )


ATTACHER = PhpAttacher()


# ------------------------------------------------------------------------------ fpm watcher


#: where the background watcher writes its log lines (default: nowhere)
WATCH_LOG_ENV = "RASP_PHP_WATCH_LOG"
WATCH_ATTEMPTS = 3


def start_watcher(master: int, socket: Path, timeout: float) -> None:
    """Leave a watcher running in the background (its own session, no terminal)."""
    log = os.environ.get(WATCH_LOG_ENV)
    # never rasp-attach's stderr: it is gone once rasp-attach exits (SIGPIPE on the next line)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "injector.attach_php",
            "watch",
            "--master",
            str(master),
            "--socket",
            str(socket),
            "--timeout",
            str(timeout),
        ],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
        cwd="/",
    )
    if log:
        out.close()


def watch(master: int, socket: Path, timeout: float) -> int:
    lock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        lock.bind(f"\0rampart-php-fpm-watch-{master}")
    except OSError:
        return 0  # another watcher has this master
    print(f"watch {master}: started", file=sys.stderr, flush=True)
    seen: set[int] = set()
    failures: dict[int, int] = {}
    while os.path.exists(f"/proc/{master}") and is_fpm_master(master):
        workers = fpm_workers(master)
        for worker in workers:
            if worker in seen:
                continue
            t0 = time.monotonic()
            try:
                attach_mod.attach(worker, "php", socket, timeout)
                seen.add(worker)
                ms = (time.monotonic() - t0) * 1000
                print(f"watch {master}: worker {worker} attached in {ms:.0f} ms", file=sys.stderr)
            except attach_mod.AttachError as e:
                # agent away: try again next round; otherwise a few attempts, then give up
                if e.code != attach_mod.EXIT_NO_AGENT:
                    failures[worker] = failures.get(worker, 0) + 1
                    if failures[worker] >= WATCH_ATTEMPTS:
                        seen.add(worker)
                print(f"watch {master}: worker {worker}: {e.reason}", file=sys.stderr)
            except Exception as e:  # the watcher must outlive any one worker's failure
                failures[worker] = failures.get(worker, 0) + 1
                if failures[worker] >= WATCH_ATTEMPTS:
                    seen.add(worker)
                print(f"watch {master}: worker {worker}: {type(e).__name__}: {e}", file=sys.stderr)
            sys.stderr.flush()
        alive = set(workers)
        seen &= alive
        failures = {w: n for w, n in failures.items() if w in alive}
        time.sleep(WATCH_INTERVAL)
    print(f"watch {master}: master gone, exiting", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m injector.attach_php")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="attach php-fpm workers as the master forks them")
    w.add_argument("--master", type=int, required=True)
    w.add_argument("--socket", type=Path, required=True)
    w.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    return watch(args.master, args.socket, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
