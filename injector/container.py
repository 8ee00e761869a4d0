"""Attaching to a process in another mount namespace (a container): make the probe files and
the agent socket resolve *inside* its root. Shared by the attachers; see docs/auto-attach.md.

A target is foreign when its root (`/proc/<pid>/root`) or its mount namespace differs from
ours: our paths (the repo's probe directory, the agent socket) may not exist there, or be
other files. For such a target, `place()`:

1. makes a private directory `/tmp/.rampart-<pid>-<random>` in the target's own /tmp (or,
   read-only, its /run or /dev/shm), reached through /proc/<pid>/root one O_NOFOLLOW
   component at a time (a container's `tmp` symlink would resolve against *our* root),
   mode 0700 and owned by the target's uid, and copies
   the probe files in with fd-relative calls (nothing there can redirect our writes);
2. starts a keeper process (`python -m injector.container keep`) that bind-mounts the agent
   socket, read-only, nosuid/nodev/noexec, on `<private dir>/agent.sock` inside the
   target's mount namespace: `open_tree(OPEN_TREE_CLONE)` in our namespace, then
   `setns(CLONE_NEWNS)` and `move_mount` (a classic `mount --bind` cannot take its source
   from another namespace). Only the socket file, not its directory: the container sees
   nothing else of the agent's (store, other pids' FIFO pairs). A restarted agent has a new
   socket, which the keeper binds in its place within a second (it watches the socket's
   inode), so the probe's reconnect finds it.
   For a JVM on the FIFO route (JDK 8-15, host_agent/fifo.py) the keeper also binds that
   one pid's pair directory `<socket dir>/fifo/<pid>/` on `<private dir>/fifo/`, with the
   same flags. The directory, not the two FIFOs: the agent renews the FIFO inodes every
   session (unlink + mkfifo in that directory), which a bind of the directory shows as they
   are, while a bind of a FIFO would keep the dead inode. Read-only still lets the JVM open
   the FIFOs for writing: the kernel's read-only check covers regular files, directories and
   symlinks only (a FIFO's data never touches the filesystem), and an O_CREAT|O_TRUNC open
   of an existing FIFO neither creates nor truncates. The container can create, rename or
   replace nothing there (read-only, and the directory is the agent's, 0711). It is the same
   inode on the same device, so the agent's holder check (st_dev, st_ino of the pid's fds)
   holds across the namespace. A restarted agent makes the directory anew on the next
   attach; the keeper binds the new one (it watches that inode too).
   The socket stays one kernel object: SO_PEERCRED gives the agent the probe's *host* pid
   (the kernel translates it to the reader's pid namespace), and the probe's hello may carry
   its namespace pid (host_agent/server.py accepts the NStgid);
3. the keeper holds a pidfd of the target and its mount namespace; when the target exits
   (or the keeper gets SIGTERM/SIGINT) it unmounts the bind and removes the private
   directory, so nothing is left in the container's /tmp. It never touches a directory it
   did not create.

The keeper runs in its own session with no stdio of ours (an attach helper's output pipe
closes when the helper exits) and takes a few MB while the target lives.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = "/proc"
KEEP_READY_TIMEOUT = 10.0
REBIND_CHECK_S = 1.0
RELEASE_WAIT_S = 5.0
MOUNTPOINT = "agent.sock"
FIFO_MOUNTPOINT = "fifo"  # the JVM's FIFO pair directory (JDK 8-15)
SKIP = {"__pycache__", "node_modules", "test"}  # never needed in a target

# x86-64 syscall numbers and flags (linux/mount.h, asm/unistd_64.h)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _AT_EMPTY_PATH, _AT_RECURSIVE = 1, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_SYMLINK_NOFOLLOW = 0x100
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
_CLONE_NEWNS = 0x00020000
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8


class ContainerError(Exception):
    pass


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_foreign(pid: int) -> bool:
    """True when `pid` sees another root or mount namespace than we do."""
    try:
        root = os.stat(f"{PROC}/{pid}/root")
        mnt = os.stat(f"{PROC}/{pid}/ns/mnt")
    except OSError as e:
        raise ContainerError(f"pid {pid}: cannot read its root: {e.strerror}") from None
    return not _same(root, os.stat("/")) or not _same(mnt, os.stat(f"{PROC}/self/ns/mnt"))


def nspid(pid: int) -> int:
    """The pid the target sees for itself (last NStgid field)."""
    with open(f"{PROC}/{pid}/status") as f:
        for line in f:
            if line.startswith("NStgid:"):
                return int(line.split()[-1])
    return pid


#: where the private directory may go in the target's root, in order: its /tmp, else (a
#: read-only /tmp) its /run or /dev/shm
PARENTS = ("tmp", "run", "dev/shm")


def open_in_root(pid: int, rel: str) -> int:
    """A directory fd for `rel` under the target's root, every component opened O_NOFOLLOW:
    a container's symlink (`tmp -> /somewhere`) would resolve against *our* root."""
    fd = os.open(f"{PROC}/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.split("/"):
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Placement:
    pid: int
    parent: str  # one of PARENTS
    name: str  # the private directory's name in the target's parent directory
    keeper: subprocess.Popen[bytes] | None  # None: an earlier attach's placement, reused
    has_fifo: bool = False  # the JVM's FIFO pair directory is bound in too

    @property
    def inside(self) -> str:
        """The private directory as the target sees it."""
        return f"/{self.parent}/{self.name}"

    @property
    def host(self) -> str:
        """The private directory from our namespace (valid while the target runs)."""
        return f"{PROC}/{self.pid}/root/{self.parent}/{self.name}"

    def socket(self, socket: Path) -> str:
        """The agent socket `socket` as the target sees it."""
        return f"{self.inside}/{MOUNTPOINT}"

    @property
    def fifo(self) -> str:
        """The JVM's FIFO pair directory as the target sees it."""
        return f"{self.inside}/{FIFO_MOUNTPOINT}"


def _copy_tree(src: Path, dst_fd: int, uid: int, gid: int) -> None:
    for entry in sorted(src.iterdir()):
        if entry.name in SKIP or entry.suffix == ".pyc" or entry.is_symlink():
            continue
        if entry.is_dir():
            os.mkdir(entry.name, 0o700, dir_fd=dst_fd)
            os.chown(entry.name, uid, gid, dir_fd=dst_fd, follow_symlinks=False)
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dst_fd)
            try:
                _copy_tree(entry, sub, uid, gid)
            finally:
                os.close(sub)
        elif entry.is_file():
            _write(dst_fd, entry.name, entry.read_bytes(), uid, gid)


def _write(dir_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int = 0o400) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, gid)
        os.write(fd, data)
    finally:
        os.close(fd)


def _ids(pid: int) -> tuple[int, int]:
    uid = gid = 0
    with open(f"{PROC}/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[2])  # effective: who opens the files
            elif line.startswith("Gid:"):
                gid = int(line.split()[2])
    return uid, gid


def fifo_source(socket: Path, fifo: Path) -> str:
    """`fifo` relative to the agent socket's directory (the keeper looks it up from there:
    `fifo/` itself goes when the agent stops). Only the agent's own pair directories."""
    rel = os.path.relpath(os.path.abspath(fifo), os.path.dirname(os.path.abspath(socket)))
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] != FIFO_MOUNTPOINT or not parts[1].isdigit():
        raise ContainerError(f"{fifo} is not a FIFO pair directory of the agent at {socket}")
    return rel


def place(pid: int, trees: dict[str, Path], socket: Path, fifo: Path | None = None) -> Placement:
    """Copies each `trees` directory into the target's private dir under its key, binds the
    agent socket there (and `fifo`, the pid's FIFO pair directory, when given), and leaves a
    keeper to clean up when the target exits."""
    fifo_rel = fifo_source(socket, fifo) if fifo is not None else None
    try:
        uid, gid = _ids(pid)
    except OSError as e:
        raise ContainerError(f"pid {pid}: cannot read its ids: {e.strerror}") from None
    name = f".rampart-{pid}-{secrets.token_hex(4)}"
    tmp, parent, tried = -1, "", []
    for parent in PARENTS:
        try:
            tmp = open_in_root(pid, parent)
        except OSError as e:
            tried.append(f"/{parent}: {e.strerror}")
            continue
        try:
            os.mkdir(name, 0o700, dir_fd=tmp)
            break
        except OSError as e:  # read-only, full: the next one
            tried.append(f"/{parent}: {e.strerror}")
            os.close(tmp)
            tmp = -1
    if tmp < 0:
        raise ContainerError(f"pid {pid}: no writable place for the probe: {'; '.join(tried)}")
    try:
        try:
            os.chown(name, uid, gid, dir_fd=tmp, follow_symlinks=False)
            d = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=tmp)
            try:
                for key, src in trees.items():
                    os.mkdir(key, 0o700, dir_fd=d)
                    os.chown(key, uid, gid, dir_fd=d, follow_symlinks=False)
                    sub = os.open(key, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
                    try:
                        _copy_tree(src, sub, uid, gid)
                    finally:
                        os.close(sub)
                _write(d, MOUNTPOINT, b"", uid, gid)  # the bind's mountpoint
                if fifo_rel is not None:  # the pair directory's mountpoint
                    os.mkdir(FIFO_MOUNTPOINT, 0o700, dir_fd=d)
                    os.chown(FIFO_MOUNTPOINT, uid, gid, dir_fd=d, follow_symlinks=False)
            finally:
                os.close(d)
            keeper = _start_keeper(pid, parent, name, Path(os.path.abspath(socket)), fifo_rel)
        except BaseException:
            shutil.rmtree(name, dir_fd=tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise ContainerError(f"pid {pid}: cannot place the probe files: {e}") from None
    finally:
        os.close(tmp)
    return Placement(pid, parent, name, keeper, fifo_rel is not None)


def placed(pid: int, socket: Path, fifo: Path | None = None) -> Placement:
    """The placement an earlier attach made for `pid` with this agent socket (and this FIFO
    pair, when asked), else a new one. A probe that runs already keeps the paths it was
    started with (a second attach only makes it say hello again), so a re-attach (after an
    agent restart, say) must hand it the same ones: the keeper rebinds what they point to."""
    src = os.path.abspath(socket).encode()
    want_fifo = fifo_source(socket, fifo).encode() if fifo is not None else None
    for keeper in keepers(pid):
        argv = _argv(keeper)
        if len(argv) < 8 or argv[7] != src or argv[5].decode() not in PARENTS:
            continue
        has_fifo = argv[8:10] == [b"--fifo", want_fifo] if want_fifo else len(argv) >= 10
        if want_fifo and not has_fifo:
            continue
        p = Placement(pid, argv[5].decode(), argv[6].decode(), None, has_fifo)
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(p.host).st_mode):
                return p
    return place(pid, {}, socket, fifo)


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1]
    except OSError:
        return []


def keepers(pid: int) -> list[int]:
    """The keepers of what was placed for `pid`: processes of our own euid only (anyone can
    name a process like a keeper; a re-attach trusts a keeper's placement)."""
    want = [b"injector.container", b"keep", str(pid).encode()]
    found = []
    for e in os.listdir(PROC):
        if e.isdigit() and _argv(int(e))[2:5] == want:
            with contextlib.suppress(OSError):
                if os.stat(f"{PROC}/{e}").st_uid == os.geteuid():
                    found.append(int(e))
    return found


def release(pid: int) -> None:
    """The probe in `pid` was stopped (detach): have its keepers unmount and remove now, and
    wait (a little) until they did, so an attach right after cannot reuse what goes away."""
    for keeper in keepers(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, signal.SIGTERM)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while keepers(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # not our children: an exited keeper is a zombie, its argv empty


#: where keepers write their log lines (default: nowhere)
KEEP_LOG_ENV = "RASP_CONTAINER_KEEP_LOG"


def _start_keeper(
    pid: int, parent: str, name: str, source: Path, fifo: str | None
) -> subprocess.Popen[bytes]:
    repo = Path(__file__).resolve().parents[1]
    log = os.environ.get(KEEP_LOG_ENV)
    # never our stderr: an attach helper's pipe, gone once it exits
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    argv = [sys.executable, "-m", "injector.container", "keep", str(pid), parent, name]
    argv += [str(source), *(["--fifo", fifo] if fifo else [])]
    keeper = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        env={**os.environ, "RAMPART_DISABLE": "1"},  # never a target of auto-attach itself
        start_new_session=True,
        cwd=str(repo),
    )
    if log:
        err.close()
    assert keeper.stdout is not None
    ready, _, _ = select.select([keeper.stdout], [], [], KEEP_READY_TIMEOUT)
    line = keeper.stdout.readline().decode(errors="replace").strip() if ready else ""
    keeper.stdout.close()
    if line != "ready":
        if keeper.poll() is None:
            keeper.terminate()  # it cleans up on SIGTERM
        keeper.wait(KEEP_READY_TIMEOUT)
        raise ContainerError(f"pid {pid}: cannot bind the agent socket in: {line or 'timeout'}")
    return keeper


# ------------------------------------------------------------------------------ the keeper

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class _Binder:
    """Binds one thing of the agent's (a name relative to the agent socket's directory in
    our namespace: the socket, or `fifo/<pid>`) on a mountpoint in the private directory in
    the target's namespace, and binds it again when the agent made it anew (new inode)."""

    def __init__(
        self, nsfd: int, home: int, dir_fd: int, src_dir: int, name: str, mountpoint: str,
        kind: int,
    ) -> None:  # fmt: skip
        self.nsfd, self.home, self.dir_fd, self.src_dir = nsfd, home, dir_fd, src_dir
        self.name, self.mountpoint, self.kind = name, mountpoint, kind
        self.bound = 0  # inode bound now (0: nothing bound yet)

    def current(self) -> int:
        """The inode of the source now (0: none, or not of its kind), from our namespace."""
        try:
            st = os.stat(self.name, dir_fd=self.src_dir, follow_symlinks=False)
        except OSError:
            return 0
        return st.st_ino if stat.S_IFMT(st.st_mode) == self.kind else 0

    def bind(self) -> None:
        _check(_libc.setns(self.home, _CLONE_NEWNS), "setns (ours)")
        flags = _OPEN_TREE_CLONE | _AT_SYMLINK_NOFOLLOW | os.O_CLOEXEC  # one mount, no submounts
        tree = _check(
            _libc.syscall(_SYS_OPEN_TREE, self.src_dir, self.name.encode(), flags), "open_tree"
        )
        try:
            st = os.fstat(tree)
            if stat.S_IFMT(st.st_mode) != self.kind:
                raise OSError(0, f"{self.name} is no longer what the agent made")
            attr = _MountAttr(
                _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | _MOUNT_ATTR_NOEXEC,
                0,
                0,
                0,
            )
            _check(
                _libc.syscall(
                    _SYS_MOUNT_SETATTR,
                    tree,
                    b"",
                    _AT_EMPTY_PATH,
                    ctypes.byref(attr),
                    ctypes.sizeof(attr),
                ),
                "mount_setattr",
            )
            _check(_libc.setns(self.nsfd, _CLONE_NEWNS), "setns")
            if self.bound:  # the old agent's, dead: replace it
                self.unmount()
            _check(
                _libc.syscall(
                    _SYS_MOVE_MOUNT,
                    tree,
                    b"",
                    self.dir_fd,
                    self.mountpoint.encode(),
                    _MOVE_MOUNT_F_EMPTY_PATH,  # no MOVE_MOUNT_T_SYMLINKS: a symlink there fails
                ),
                "move_mount",
            )
            self.bound = st.st_ino
        finally:
            os.close(tree)

    def unmount(self) -> None:
        """In the target's namespace, relative to the private dir (a name, never followed):
        only what this keeper bound there."""
        if not self.bound:
            return
        os.fchdir(self.dir_fd)
        try:
            st = os.lstat(self.mountpoint)
        except FileNotFoundError:
            return
        if stat.S_IFMT(st.st_mode) == self.kind and st.st_ino == self.bound:
            _check(
                _libc.umount2(self.mountpoint.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW), "umount"
            )


def _cleanup(tmp_fd: int, binders: list[_Binder], name: str) -> None:
    for b in binders:
        with contextlib.suppress(OSError):
            b.unmount()
    os.fchdir(tmp_fd)
    shutil.rmtree(name, dir_fd=tmp_fd)


def keep(pid: int, parent: str, name: str, source: Path, fifo: str | None = None) -> int:
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        pidfd = os.pidfd_open(pid)
        nsfd = os.open(f"{PROC}/{pid}/ns/mnt", os.O_RDONLY)
        home = os.open(f"{PROC}/self/ns/mnt", os.O_RDONLY)  # ours, to come back to
        src_dir = os.open(source.parent, os.O_PATH | os.O_DIRECTORY)
        tmp_fd = open_in_root(pid, parent)
        dir_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=tmp_fd)
    except OSError as e:
        print(f"pid {pid}: {e}", flush=True)
        return 1
    binders = [_Binder(nsfd, home, dir_fd, src_dir, source.name, MOUNTPOINT, stat.S_IFSOCK)]
    if fifo is not None:
        binders.append(_Binder(nsfd, home, dir_fd, src_dir, fifo, FIFO_MOUNTPOINT, stat.S_IFDIR))
    try:
        for b in binders:
            if b is binders[0] or b.current():  # a pair not made yet: bound once it is
                b.bind()
    except OSError as e:
        print(f"pid {pid}: {e}", flush=True)
        with contextlib.suppress(OSError):
            _libc.setns(nsfd, _CLONE_NEWNS)
            _cleanup(tmp_fd, binders, name)
        return 1
    print("ready", flush=True)
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not stop and not poller.poll(REBIND_CHECK_S * 1000):
        for b in binders:
            now = b.current()
            if now and now != b.bound:  # the agent restarted: its new one goes in
                try:
                    b.bind()
                    print(
                        f"pid {pid}: the agent's new {b.mountpoint} bound in",
                        file=sys.stderr,
                        flush=True,
                    )
                except OSError as e:
                    print(
                        f"pid {pid}: cannot bind the new {b.mountpoint}: {e}",
                        file=sys.stderr,
                        flush=True,
                    )
    _libc.setns(nsfd, _CLONE_NEWNS)
    _cleanup(tmp_fd, binders, name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m injector.container")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keep", help="bind the agent socket in; clean up when the target exits")
    k.add_argument("pid", type=int)
    k.add_argument("parent", choices=PARENTS)
    k.add_argument("name")
    k.add_argument("source", type=Path)
    k.add_argument("--fifo", help="the pid's FIFO pair directory, relative to the socket's")
    args = parser.parse_args(argv)
    return keep(args.pid, args.parent, args.name, args.source, args.fifo)


if __name__ == "__main__":
    sys.exit(main())
