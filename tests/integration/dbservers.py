"""Private PostgreSQL and MariaDB servers for tests: each in a fresh temp dir, run as the
package's unprivileged user (Popen's user/group, so the pid we signal is the server's own),
listening only on a Unix socket in that dir (no TCP port), stopped and removed at the end.
Never the system service.

Both come from Debian (scripts/apt-packages.txt: postgresql, mariadb-server)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class DbServer:
    def __init__(self, kind: str, root: Path, proc: subprocess.Popen, socket: Path) -> None:
        self.kind = kind
        self.root = root
        self.proc = proc
        self.socket = socket

    def statements(self) -> str:
        """What the server logged as executed (log_statement=all / the general log)."""
        name = "server.log" if self.kind == "postgres" else "general.log"
        try:
            return (self.root / name).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # postgres: SIGINT is the "fast" shutdown (SIGTERM waits for clients)
            self.proc.send_signal(signal.SIGINT if self.kind == "postgres" else signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def _owned_tmp(user: str, prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    pw = pwd.getpwnam(user)
    os.chown(root, pw.pw_uid, pw.pw_gid)
    return root


def _as(user: str) -> dict:
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "cwd": "/"}


def _wait_socket(proc: subprocess.Popen, sock: Path, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sock.exists():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start (rc={proc.poll()}): {text}")


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def start_postgres() -> DbServer:
    """PostgreSQL as `postgres`, trust auth, socket `<root>/.s.PGSQL.5432`, superuser
    `rampart`."""
    bindir = postgres_bin()
    assert bindir is not None
    root = _owned_tmp("postgres", "rampart-pg-")
    data, log = root / "data", root / "server.log"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data),
         "-A", "trust", "-U", "rampart", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120, **_as("postgres"),
    )  # fmt: skip
    logf = open(log, "wb")  # noqa: SIM115 - the server writes it until stop()
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data),
         "-k", str(root), "-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432",
         "-c", "log_statement=all"],
        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, **_as("postgres"),
    )  # fmt: skip
    logf.close()
    srv = DbServer("postgres", root, proc, root / ".s.PGSQL.5432")
    try:
        _wait_socket(proc, srv.socket, log, "postgres")
    except BaseException:
        srv.stop()
        raise
    return srv


def mariadb_bin() -> Path | None:
    exe = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None
    )
    return Path(exe) if exe else None


def start_mariadb() -> DbServer:
    """MariaDB as `mysql`, no networking, socket `<root>/mysql.sock`, `root` without a
    password (mysql_native_password, so every driver can log in)."""
    exe = mariadb_bin()
    assert exe is not None
    root = _owned_tmp("mysql", "rampart-my-")
    data, log = root / "data", root / "server.log"
    subprocess.run(
        ["mariadb-install-db", "--no-defaults",
         f"--datadir={data}", "--auth-root-authentication-method=normal", "--skip-test-db",
         "--skip-name-resolve"],
        check=True, capture_output=True, timeout=180, **_as("mysql"),
    )  # fmt: skip
    proc = subprocess.Popen(
        [str(exe), "--no-defaults", f"--datadir={data}",
         f"--socket={root / 'mysql.sock'}", "--skip-networking", f"--log-error={log}",
         f"--pid-file={root / 'mysqld.pid'}", "--innodb-buffer-pool-size=16M",
         "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
         "--general-log=1", f"--general-log-file={root / 'general.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        **_as("mysql"),
    )  # fmt: skip
    srv = DbServer("mariadb", root, proc, root / "mysql.sock")
    try:
        _wait_socket(proc, srv.socket, log, "mariadbd")
    except BaseException:
        srv.stop()
        raise
    return srv
