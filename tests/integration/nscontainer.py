"""A minimal "container" made by the test itself (no Docker here): `unshare` gives the app its
own mount, pid and net namespaces, and it is pivot_root'ed into a root made of read-only binds of
/usr and /etc, the /bin, /lib… symlinks of a merged-/usr host, a /proc of its own pid
namespace, /dev, and a /tmp that is a bind of a host directory the test can look into. The
repo (and the agent's directory) do not exist in that root. pivot_root, not chroot, as a
container runtime does: the injector finds the target's libc by its /proc/<pid>/maps path,
which must resolve under /proc/<pid>/root."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from tests.agentproc import wait_for

_SETUP = r"""
set -e
R=$1; shift
mount --make-rprivate /
mount -t tmpfs -o mode=755 rampart-root "$R"
for d in usr etc; do
    mkdir "$R/$d"; mount --rbind "/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"
done
for l in bin lib lib64 sbin; do
    if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l"
    elif [ -d "/$l" ]; then
        mkdir "$R/$l"; mount --rbind "/$l" "$R/$l"; mount -o remount,bind,ro "$R/$l"
    fi
done
mkdir "$R/tmp" "$R/run" "$R/proc" "$R/dev"
mount --bind "$RAMPART_CTMP" "$R/tmp"
[ -z "$RAMPART_CTMP_RO" ] || mount -o remount,bind,ro "$R/tmp"
mount --bind "$RAMPART_CRUN" "$R/run"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
for b in $RAMPART_CBINDS; do  # extra read-only binds: INSIDE=HOST (a runtime not in /usr)
    dst="$R${b%%=*}"
    mkdir -p "$dst"; mount --rbind "${b#*=}" "$dst"; mount -o remount,bind,ro "$dst"
done
ip link set lo up
mkdir "$R/.old"
cd "$R"
pivot_root . .old
umount -l /.old
rmdir /.old
exec "$@"
"""


RUNTIMES = ("python", "php", "node", "java")  # the app, once `sh` and `unshare` exec'd it


class Container:
    """`unshare` (the spawned process) and the app in it (`pid`: its host pid)."""

    def __init__(
        self, spawn, base: Path, argv: list[str], exist_ok: bool = False, tmp_ro: bool = False,
        binds: dict[str, Path] | None = None, **popen,
    ) -> None:  # fmt: skip
        self.root = base / "root"
        self.tmp = base / "ctmp"  # the container's /tmp, seen from the host
        self.run = base / "crun"  # and its /run
        self.root.mkdir()
        self.tmp.mkdir(exist_ok=exist_ok)
        self.tmp.chmod(0o1777)
        self.run.mkdir()
        unshare = ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child"]
        self.proc = spawn(
            [*unshare, "sh", "-c", _SETUP, "rampart-container", str(self.root), *argv],
            env={
                "RAMPART_CTMP": str(self.tmp),
                "RAMPART_CRUN": str(self.run),
                "RAMPART_CTMP_RO": "1" if tmp_ro else "",
                "RAMPART_CBINDS": " ".join(f"{k}={v}" for k, v in (binds or {}).items()),
                "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            },
            **popen,
        )
        self.pid = wait_for(self._app_pid, 10, "the app in its namespaces")

    def _app_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for k in kids.split():
                if Path(f"/proc/{k}/exe").resolve().name.startswith(RUNTIMES):
                    return int(k)
        return None

    def placed(self, where: str = "tmp") -> list[str]:
        """What an attach left in the container's /tmp (or /run)."""
        d = self.tmp if where == "tmp" else self.run
        return sorted(p.name for p in d.iterdir() if p.name.startswith(".rampart-"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
