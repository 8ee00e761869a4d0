"""Republishing the agent jar while a JVM runs with the old one (scripts/publish-file.sh,
the copy + rename scripts/build.d/30-jvm-agent.sh uses; a jar rewritten in place under a JVM
crashed it with SIGBUS in libzip): the live JVM keeps working on the old inode, including
probe classes it loads only later (detach, re-attach), and a new attach gets the new jar.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from injector.attach_jvm import AGENT_JAR, JvmAttacher
from injector.detect import detect
from rasp.protocol.client import control
from tests.agentproc import AgentProc, wait_for
from tests.conftest import REPO, Spawner
from tests.integration.test_jvm_probe import (
    POLICY,
    events,
    get,
    jvm_classes,  # noqa: F401 - a fixture
    remove_listener_socket,
    start_app,
)

pytestmark = pytest.mark.slow

PUBLISH = REPO / "scripts" / "publish-file.sh"


def open_inodes(pid: int) -> set[tuple[int, int]]:
    """(dev, inode) of every file the process has open or mapped."""
    out = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(fd.path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != "0":
            dev_major, dev_minor = (int(x, 16) for x in fields[3].split(":"))
            out.add((os.makedev(dev_major, dev_minor), int(fields[4])))
    return out


def ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def attach(jar: Path, pid: int, agent: AgentProc) -> dict:
    """rasp-attach's steps (injector/attach.py) with this jar."""
    agent.control("attach.expect", pid=pid, runtime="jvm")
    JvmAttacher(jar).attach(detect(pid), agent.socket, 30)
    return control(agent.socket, "attach.wait", {"pid": pid, "timeout": 30}, timeout=35)


def test_republished_jar_leaves_the_live_jvm_alone_and_reaches_new_attaches(
    spawn: Spawner,
    jvm_classes: Path,  # noqa: F811
    agent_factory,
    tmp_path: Path,
) -> None:
    agent = agent_factory()
    agent.policy.write_text(POLICY)
    agent.start()
    tmp_path.chmod(0o755)
    published = tmp_path / "jvm" / "rampart-jvm-agent.jar"
    subprocess.run(["bash", str(PUBLISH), str(AGENT_JAR), str(published)], check=True)
    old = ident(published)

    a, port_a = start_app(spawn, jvm_classes)
    try:
        attach(published, a.pid, agent)
        assert old in open_inodes(a.pid)
        assert get(port_a, "/exec", {"cmd": "echo before"})[0] == 200
        events(agent, a.pid, "java.lang.ProcessImpl.start", "before")

        # a rebuilt jar: different bytes, size and central directory (an extra entry)
        rebuilt = tmp_path / "rebuilt.jar"
        shutil.copy(AGENT_JAR, rebuilt)
        with zipfile.ZipFile(rebuilt, "a") as z:
            z.writestr("rampart/jvm/rebuilt.txt", os.urandom(4096).hex())
        subprocess.run(["bash", str(PUBLISH), str(rebuilt), str(published)], check=True)
        new = ident(published)
        assert new != old and not list(published.parent.glob(".*"))  # no temp copy left

        # the live JVM still reads the old inode and keeps working, probe included
        held = open_inodes(a.pid)
        assert old in held and new not in held
        assert get(port_a, "/exec", {"cmd": "echo after"})[0] == 200
        events(agent, a.pid, "java.lang.ProcessImpl.start", "after")
        # classes it loads only now (detach path, a fresh start) come from its jars intact
        JvmAttacher(published).detach(detect(a.pid), agent.socket, 30)
        wait_for(
            lambda: any(
                r["pid"] == a.pid and r["state"] != "connected" for r in agent.control("ps")
            ),
            15,
            "the probe's exit",
        )
        assert get(port_a, "/exec", {"cmd": "sh -c true"})[0] == 200  # unhooked
        attach(published, a.pid, agent)
        wait_for(lambda: get(port_a, "/exec", {"cmd": "sh -c true"})[0] == 403, 15, "blocking")
        assert a.poll() is None

        # a JVM attached now gets the new jar
        b, port_b = start_app(spawn, jvm_classes)
        try:
            attach(published, b.pid, agent)
            held_b = open_inodes(b.pid)
            assert new in held_b and old not in held_b
            assert get(port_b, "/exec", {"cmd": "echo newjar"})[0] == 200
            events(agent, b.pid, "java.lang.ProcessImpl.start", "newjar")
        finally:
            b.kill()
            b.wait()
            remove_listener_socket(b.pid)
    finally:
        a.kill()
        a.wait()
        remove_listener_socket(a.pid)
