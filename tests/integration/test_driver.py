"""The driver's real BPF programs in this kernel, and real victim processes this test starts.

One driver (every event on, `open` included) is loaded for the module; each test starts its
victims and waits for their events, matched by the victim's pid (other engineers' processes
on the machine produce events too). Needs root and BTF, as the driver does.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from driver import events as ev
from driver import libbpf
from driver.btfcheck import layout_differences
from driver.loader import DEFAULT_OBJECT, Driver, DriverConfig, DriverError
from driver.programs import EVENT_NAMES, PROGRAMS
from tests.agentproc import REPO, wait_for

pytestmark = pytest.mark.integration

PY = "/usr/bin/python3"
VICTIM = str(REPO / "tests" / "apps" / "driver" / "victim.py")
SENSITIVE = "/tmp/rampart-sensitive-"  # an `open_paths` prefix of the test's own


class Collector:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.seen: list[ev.DriverEvent] = []

    def _pull(self) -> None:
        self.driver.flush()
        self.seen.extend(ev.decode(r) for r in self.driver.take())

    def wait(
        self, pred: Callable[[ev.DriverEvent], bool], n: int = 1, what: str = "events"
    ) -> list[ev.DriverEvent]:
        def found() -> list[ev.DriverEvent] | None:
            self._pull()
            hits = [e for e in self.seen if pred(e)]
            return hits if len(hits) >= n else None

        return wait_for(found, 10, what)


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    d = Driver(DriverConfig(events=set(EVENT_NAMES), open_paths=[SENSITIVE]))
    d.start()
    try:
        yield Collector(d)
    finally:
        d.stop()


def run_victim(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run victim.py to completion (reaped by subprocess.run)."""
    return subprocess.run(
        [PY, VICTIM, *args], capture_output=True, text=True, timeout=30, check=True, **kw
    )


def spawn_victim(*args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([PY, VICTIM, *args], stdout=subprocess.PIPE, text=True)
    p.wait(30)
    return p


def test_exec_fork_exit_of_a_child(collector: Collector) -> None:
    p = subprocess.Popen(["/bin/echo", "rampart-exec", "two words"], stdout=subprocess.DEVNULL)
    p.wait(10)
    me = os.getpid()
    (exe,) = collector.wait(lambda e: e.data_type == ev.DT_EXECVE and e.pid == p.pid)
    assert exe.args == ["/bin/echo", "rampart-exec", "two words"]
    assert exe.fields["run_path"] == "/bin/echo"
    assert exe.fields["argv"] == "/bin/echo rampart-exec two words"
    assert exe.hook == "sched_process_exec"
    # Elkeid's common fields
    assert exe.ppid == me and exe.comm == "echo"
    assert exe.uid == os.getuid() and exe.euid == os.geteuid()
    assert exe.sid == os.getsid(0) and exe.pgid == os.getpgid(0)
    assert exe.nodename == os.uname().nodename
    assert exe.pns == os.stat("/proc/self/ns/pid").st_ino
    assert exe.nspid == p.pid  # no pid namespace of its own
    assert exe.common()["tgid"] == p.pid
    # the fork that made it (from us) and its exit
    (fork,) = collector.wait(lambda e: e.data_type == ev.DT_FORK and e.args == [str(p.pid)])
    assert fork.pid == me and fork.fields["child_ppid"] == me
    assert fork.fields["child_start_time_ns"] == exe.start_time_ns
    (gone,) = collector.wait(lambda e: e.data_type == ev.DT_EXIT and e.pid == p.pid)
    assert gone.fields["exit_code"] == 0


def test_exec_in_a_new_pid_namespace(collector: Collector) -> None:
    subprocess.run(
        ["unshare", "--pid", "--fork", "/bin/echo", "rampart-pidns"],
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )
    (exe,) = collector.wait(
        lambda e: e.data_type == ev.DT_EXECVE and e.args == ["/bin/echo", "rampart-pidns"]
    )
    assert exe.nspid == 1 and exe.pid != 1  # init of its namespace, a host pid outside
    assert exe.pns != os.stat("/proc/self/ns/pid").st_ino


def test_long_argv_is_cut_and_says_so(collector: Collector) -> None:
    long = "y" * 3000
    subprocess.run(["/bin/echo", long], stdout=subprocess.DEVNULL, check=True)
    (exe,) = collector.wait(
        lambda e: (
            e.data_type == ev.DT_EXECVE
            and e.args[:1] == ["/bin/echo"]
            and len(e.args) == 2
            and e.args[1].startswith("yyyy")
        )
    )
    assert exe.fields["argv_truncated"] is True
    assert len(exe.args[1]) < len(long)


def test_connect_ipv4_and_ipv6_loopback(collector: Collector) -> None:
    for host in ("127.0.0.1", "::1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as srv:
            srv.bind((host, 0))
            srv.listen()
            port = srv.getsockname()[1]
            p = spawn_victim("connect", host, str(port))
        (c,) = collector.wait(lambda e, p=p: e.data_type == ev.DT_CONNECT and e.pid == p.pid)
        assert c.fields["dip"] == host and c.fields["dport"] == port
        assert c.fields["sip"] == host and c.fields["sport"] > 0  # the local end
        assert c.fields["res"] == 0 and c.fields["sock_type"] == socket.SOCK_STREAM
        assert c.fields["sa_family"] == fam
        assert c.args == [host, str(port)]


def test_refused_connect_carries_the_error(collector: Collector) -> None:
    with socket.socket() as s:  # a port nobody listens on: bind, never listen
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        p = subprocess.run([PY, VICTIM, "connect", "127.0.0.1", str(port)], capture_output=True)
    assert p.returncode != 0
    (c,) = collector.wait(
        lambda e: e.data_type == ev.DT_CONNECT and e.fields.get("dport") == port and e.pid != 0
    )
    assert c.fields["res"] == -111  # ECONNREFUSED


def test_accept_reports_both_ends(collector: Collector) -> None:
    server = subprocess.Popen(
        [PY, VICTIM, "accept", "127.0.0.1"], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port)) as client:
            local_port = client.getsockname()[1]
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    (a,) = collector.wait(lambda e: e.data_type == ev.DT_ACCEPT and e.pid == server.pid)
    assert a.hook == "accept" and a.fields["res"] >= 0
    assert (a.fields["dip"], a.fields["dport"]) == ("127.0.0.1", local_port)  # the peer
    assert (a.fields["sip"], a.fields["sport"]) == ("127.0.0.1", port)


def test_bind(collector: Collector) -> None:
    p = spawn_victim("bind", "127.0.0.1")
    (b,) = collector.wait(lambda e: e.data_type == ev.DT_BIND and e.pid == p.pid)
    assert b.fields["sip"] == "127.0.0.1" and b.fields["res"] == 0


def test_dns_query_by_sendto_and_on_a_connected_socket(collector: Collector) -> None:
    p = spawn_victim("dns", "rampart-test.example.org")
    hits = collector.wait(lambda e: e.data_type == ev.DT_DNS and e.pid == p.pid, n=2)
    assert {h.hook for h in hits} == {"sendto"}  # Python's send() is sendto(..., NULL, 0)
    for h in hits:
        assert h.fields["query"] == "rampart-test.example.org"
        assert h.fields["qtype"] == 1 and h.fields["dport"] == 53
        assert h.fields["dip"] == "127.0.0.1"


def test_ptrace_attach(collector: Collector) -> None:
    p = spawn_victim("ptrace")
    target = int(p.stdout.read().strip())  # type: ignore[union-attr]
    (t,) = collector.wait(lambda e: e.data_type == ev.DT_PTRACE and e.pid == p.pid)
    assert t.fields["ptrace_request_name"] == "PTRACE_ATTACH"
    assert t.fields["target_pid"] == target


def test_memfd_create(collector: Collector) -> None:
    p = spawn_victim("memfd", "rampart-memfd")
    (m,) = collector.wait(lambda e: e.data_type == ev.DT_MEMFD_CREATE and e.pid == p.pid)
    assert m.fields["fdname"] == "rampart-memfd"
    assert m.fields["flags"] == os.MFD_CLOEXEC  # Python's default


def test_module_load_attempts(collector: Collector) -> None:
    p = spawn_victim("module", "rampart_param=1")
    hits = collector.wait(lambda e: e.data_type == ev.DT_LOAD_MODULE and e.pid == p.pid, n=2)
    by_hook = {h.hook: h for h in hits}
    assert by_hook["init_module"].fields["args"] == "rampart_param=1"
    assert by_hook["finit_module"].fields["ko_file"] == "null"  # /dev/null's name


def test_prctl_set_name(collector: Collector) -> None:
    p = spawn_victim("prctl", "rampart-renamed")
    (r,) = collector.wait(lambda e: e.data_type == ev.DT_PRCTL and e.pid == p.pid)
    assert r.fields["new_name"] == "rampart-renamed"


def test_mount_in_a_private_namespace(collector: Collector) -> None:
    with tempfile.TemporaryDirectory(prefix="rampart-mnt-") as d:
        p = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "mount",
                "-t",
                "tmpfs",
                "rampart-tmpfs",
                d,
            ],
            capture_output=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
    (m,) = collector.wait(lambda e: e.data_type == ev.DT_MOUNT and e.fields["file_path"] == d)
    assert m.fields["dev"] == "rampart-tmpfs" and m.fields["fstype"] == "tmpfs"
    assert m.comm == "mount"


def test_cred_change_by_setuid_syscall(collector: Collector) -> None:
    # nobody, allowed CAP_SETUID: setuid(0) takes it from uid 65534 to 0
    code = "import os; os.setuid(0); print(os.getpid())"
    p = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+setuid",
            "--ambient-caps=+setuid",
            PY,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid = int(p.stdout)
    (c,) = collector.wait(lambda e: e.data_type == ev.DT_CRED_CHANGE and e.pid == pid)
    assert c.hook == "setuid"
    assert c.fields["old_uid"] == 65534 and c.uid == 0


def test_cred_change_by_setuid_exec(collector: Collector) -> None:
    with tempfile.TemporaryDirectory(prefix="rampart-suid-") as d:
        os.chmod(d, 0o755)
        binary = Path(d) / "id-suid"
        shutil.copy("/usr/bin/id", binary)
        binary.chmod(0o4755)
        p = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary)],
            stdout=subprocess.PIPE,
            text=True,
        )
        out = p.communicate(timeout=30)[0]
    assert "euid=0" in out
    (c,) = collector.wait(lambda e: e.data_type == ev.DT_CRED_CHANGE and e.pid == p.pid)
    assert c.hook == "execve" and c.fields["old_uid"] == 65534 and c.euid == 0


def test_open_for_write(collector: Collector, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    p = spawn_victim("open", str(target))
    (o,) = collector.wait(lambda e: e.data_type == ev.DT_OPEN and e.pid == p.pid)
    assert o.fields["filename"] == str(target)
    assert o.fields["flags"] & os.O_WRONLY


def test_reads_under_a_sensitive_prefix_only(collector: Collector, tmp_path: Path) -> None:
    secret = Path(tempfile.mkstemp(prefix="rampart-sensitive-", dir="/tmp")[1])
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    try:
        p = spawn_victim("read", str(plain), str(secret))
        (o,) = collector.wait(lambda e: e.data_type == ev.DT_OPEN and e.pid == p.pid)
    finally:
        secret.unlink()
    assert o.fields["filename"] == str(secret) and o.fields["write"] is False
    # the plain read was not reported (the event above came after it)
    assert not [e for e in collector.seen if e.pid == p.pid and e.args[:1] == [str(plain)]]


def test_bad_open_paths_are_refused() -> None:
    d = Driver(DriverConfig(events={"open"}, open_paths=["/x" * 40]))
    with pytest.raises(DriverError, match="open paths: at most 8 prefixes of 1 to 63 bytes"):
        d.start()


def test_layouts_match_the_object_and_a_drifted_one_is_named() -> None:
    obj = libbpf.lib().bpf_object__open_file(str(DEFAULT_OBJECT).encode(), None)
    assert obj
    try:
        btf = libbpf.lib().bpf_object__btf(obj)
        assert layout_differences(btf) == []

        class rp_exit(ctypes.Structure):  # a drifted mirror: members swapped
            _fields_ = [("h", ev.rp_hdr), ("_pad", ctypes.c_uint32), ("exit_code", ctypes.c_int32)]

        (diff,) = layout_differences(btf, (rp_exit,))
        assert diff == "struct rp_exit: C member ('exit_code', 152) vs Python ('_pad', 152)"

        class rp_fork(ctypes.Structure):  # a drifted mirror: a member short
            _fields_ = [("h", ev.rp_hdr), ("child_start_time", ctypes.c_uint64)]

        diffs = layout_differences(btf, (rp_fork,))
        assert diffs == [
            "struct rp_fork: 168 bytes in C, 160 in Python",
            "struct rp_fork: 4 members in C, 2 in Python",
        ]
    finally:
        libbpf.lib().bpf_object__close(obj)


def test_every_program_of_the_table_is_in_the_object() -> None:
    syms = subprocess.run(
        ["llvm-objdump", "-t", str(DEFAULT_OBJECT)], capture_output=True, text=True, check=True
    ).stdout
    funcs = {line.split()[-1] for line in syms.splitlines() if " F " in line}
    assert {p.bpf_name for p in PROGRAMS} == {f for f in funcs if f.startswith("rp_")}


def test_missing_object_is_a_clear_error(tmp_path: Path) -> None:
    d = Driver(DriverConfig(object_path=tmp_path / "nope.bpf.o"))
    with pytest.raises(DriverError, match=r"nope\.bpf\.o not found: build it with `make setup`"):
        d.start()
    assert not d.running


def test_not_root_is_a_clear_error() -> None:
    code = (
        "from driver.loader import Driver, DriverConfig, DriverError\n"
        "try:\n    Driver(DriverConfig()).start()\nexcept DriverError as e:\n    print(e)\n"
    )
    p = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert "needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)" in p.stdout, p.stderr


def _bpf_fds() -> dict[str, int]:
    """BPF links and programs this process holds, from /proc/self/fdinfo."""
    counts = {"link": 0, "prog": 0}
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if "link_id:" in text:
            counts["link"] += 1
        elif "prog_id:" in text:
            counts["prog"] += 1
    return counts


def test_stop_detaches_everything(collector: Collector) -> None:
    before = _bpf_fds()
    d = Driver(DriverConfig(events={"execve", "connect"}))
    d.start()
    during = _bpf_fds()
    assert during["link"] - before["link"] == 5  # exec, fork, exit, sys_enter, sys_exit
    assert during["prog"] > before["prog"]
    d.stop()
    d.stop()  # idempotent
    assert _bpf_fds() == before


def test_full_ring_buffer_is_counted(collector: Collector) -> None:
    # one page of ring buffer, and a reader that stops after one record: the rest must be
    # counted as kernel drops, not lost silently
    d = Driver(DriverConfig(events={"execve"}, ringbuf_kb=4, queue_limit=1))
    d.start()
    try:
        for _ in range(20):
            subprocess.run(["/bin/true"], check=True)
        drops = wait_for(d.kernel_drops, 10, "kernel drops")
        assert drops > 0
        assert d.stats()["kernel_drops"] >= drops
        # and the reader, its queue full, stops taking from the ring buffer (bounded memory)
        wait_for(lambda: d.paused > 0, 10, "the reader to pause")
        taken = d.take()  # one ring-buffer's worth at most (8-byte record headers)
        assert 0 < sum(len(r) + 8 for r in taken) <= 4096
    finally:
        d.stop()
