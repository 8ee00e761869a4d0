"""A cgroup with memory and CPU caps for attach helpers, where the host lets us make one.

Elkeid runs its helpers at 200 MiB / 10 % CPU with a 60 s kill (elkeid-reference §2.0). We
use cgroup v2 when its memory and cpu controllers are available, else the v1 memory and cpu
hierarchies (hybrid hosts like our CI machines), else nothing — the time limit still holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("rampart.cgroup")

NAME = "rampart-attach"
PERIOD_US = 100_000


def _mounts() -> dict[str, Path]:
    """cgroup mount points by controller ("" for the v2 unified hierarchy)."""
    out: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup2":
            out[""] = Path(parts[1])
        elif parts[2] == "cgroup":
            for opt in parts[3].split(","):
                if opt in ("memory", "cpu"):
                    out[opt] = Path(parts[1])
    return out


class HelperCgroup:
    def __init__(self, memory_mb: int, cpu_percent: int) -> None:
        self.memory = memory_mb << 20
        self.quota = PERIOD_US * cpu_percent // 100
        self.dirs: list[Path] = []
        self.kind = "none"

    def setup(self) -> str:
        """Create the cgroup(s); returns which kind is in force ("v2", "v1" or "none")."""
        mounts = _mounts()
        try:
            v2 = mounts.get("")
            if v2 is not None:
                controllers = (v2 / "cgroup.controllers").read_text().split()
                if {"memory", "cpu"} <= set(controllers):
                    (v2 / "cgroup.subtree_control").write_text("+memory +cpu")
                    d = v2 / NAME
                    d.mkdir(exist_ok=True)
                    (d / "memory.max").write_text(str(self.memory))
                    (d / "cpu.max").write_text(f"{self.quota} {PERIOD_US}")
                    self.dirs, self.kind = [d], "v2"
                    return self.kind
            if "memory" in mounts and "cpu" in mounts:
                mem = mounts["memory"] / NAME
                cpu = mounts["cpu"] / NAME
                mem.mkdir(exist_ok=True)
                cpu.mkdir(exist_ok=True)
                (mem / "memory.limit_in_bytes").write_text(str(self.memory))
                (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(self.quota))
                self.dirs, self.kind = [mem, cpu], "v1"
                return self.kind
        except OSError as e:
            log.warning("no cgroup for attach helpers (%s); time limits still apply", e)
        self.dirs, self.kind = [], "none"
        return self.kind

    def add(self, pid: int) -> None:
        for d in self.dirs:
            try:
                (d / "cgroup.procs").write_text(str(pid))
            except OSError as e:  # the helper may already have exited
                log.debug("cgroup %s: %s", d, e)

    def teardown(self) -> None:
        for d in self.dirs:
            # fails while a member remains (a helper being killed); harmless
            with contextlib.suppress(OSError):
                os.rmdir(d)
