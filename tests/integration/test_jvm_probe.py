"""The JVM probe end to end: a real JDK HttpServer app (tests/apps/jvm/VulnApp.java), attached
live with `rasp-attach`, driven over loopback; events asserted in the real agent's store.

One agent and one attached app serve the whole module (JVM start-up dominates); tests that
change the probe's state (detach) restore it before they end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket as socketlib
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from injector.attach import AttachError
from injector.attach_jvm import AGENT_JAR, check_ready
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.conftest import BUILD, REPO, Spawner

pytestmark = pytest.mark.slow

APPS = REPO / "tests" / "apps" / "jvm"
VECTORS = REPO / "rasp" / "protocol" / "vectors" / "frames.json"
CLASSES = BUILD / "jvm"
#: the embedded JDBC driver and servlet container the build copies next to the agent
#: (rasp/jvm/pom.xml)
LIBS = REPO / "rasp" / "jvm" / "target" / "test-apps-lib"
H2_JAR = LIBS / "h2.jar"
TEST_LIBS = f"{LIBS}/tomcat-embed-core.jar:{LIBS}/tomcat-annotations-api.jar"

POLICY = r"""
policies:
  - id: no-shell-from-web
    runtime: jvm
    kind: process
    match: {args: "(^|/)(sh|bash)\\b"}
    action: block
  - id: no-ldap-to-blocked
    kind: naming
    match: {args: "^ldap://127\\.0\\.0\\.1:1/blocked"}
    action: block
  - id: no-discard-port
    kind: network
    hook: java.net.Socket.connect
    match: {args: ":9$"}
    action: block
  - id: no-sql-tautology
    kind: sql
    match: {args: "\\b[Oo][Rr]\\s+1\\s*=\\s*1\\b"}
    action: block
  - id: no-gadgets
    kind: deserialization
    match: {args: "Gadget"}
    action: block
"""


def rasp_attach(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RASP_ATTACH, *args], capture_output=True, text=True, timeout=60)


def get(port: int, endpoint: str, params: dict[str, str] | None = None) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="session")
def jvm_classes() -> Path:
    """tests/apps/jvm/*.java compiled once per session into build/tests/jvm."""
    assert AGENT_JAR.is_file(), "the agent jar is missing: run `make setup`"
    CLASSES.mkdir(parents=True, exist_ok=True)
    for app in ("VulnApp", "ServletApp"):
        stamp = CLASSES / f"{app}.class"
        src = APPS / f"{app}.java"
        if stamp.exists() and stamp.stat().st_mtime >= src.stat().st_mtime:
            continue
        # compile aside, then move in: parallel sessions never run half-written classes
        tmp = Path(tempfile.mkdtemp(dir=BUILD, prefix=".jvm-"))
        subprocess.run(
            ["javac", "-nowarn", "-cp", TEST_LIBS, "-d", str(tmp), str(src)],
            check=True,
            timeout=120,
            capture_output=True,
        )
        for f in tmp.iterdir():
            f.replace(CLASSES / f.name)
        tmp.rmdir()
    return CLASSES


def start_app(spawn: Spawner, classes: Path, *jvm_args: str, **kw) -> tuple[subprocess.Popen, int]:
    p = spawn(
        ["java", *jvm_args, "-cp", f"{classes}:{H2_JAR}", "VulnApp"],
        stdout=subprocess.PIPE,
        stderr=kw.pop("stderr", subprocess.DEVNULL),
        **kw,
    )
    assert p.stdout is not None
    line = p.stdout.readline().decode().split()
    assert line and line[0] == "ready", line
    return p, int(line[1])


def remove_listener_socket(pid: int) -> None:
    """A JVM killed with SIGKILL leaves its attach socket behind: remove the ones we caused."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/tmp/.java_pid{pid}")


@pytest.fixture(scope="module")
def jvm_agent() -> Iterator[AgentProc]:
    with tempfile.TemporaryDirectory(prefix="rampart-jvm-") as td:
        d = Path(td)
        d.chmod(0o755)
        (d / "policy.yaml").write_text(POLICY)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        env["RAMPART_DRIVER"] = "off"
        a = AgentProc(
            dir=d,
            socket=d / "probe.sock",
            store=d / "events.db",
            jsonl=d / "events.jsonl",
            policy=d / "policy.yaml",
            log=d / "agent.log",
            env=env,
        )
        a.start()
        try:
            yield a
        finally:
            a.stop()


@pytest.fixture(scope="module")
def app(spawn_module: Spawner, jvm_classes: Path, jvm_agent: AgentProc) -> Iterator[dict]:
    p, port = start_app(spawn_module, jvm_classes)
    res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    try:
        yield {"proc": p, "port": port, "attach": out}
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


def events(agent: AgentProc, pid: int, hook: str, marker: str, n: int = 1) -> list[dict]:
    """The stored events of `hook` in `pid` whose args mention `marker`."""

    def found() -> list[dict]:
        rows = agent.rows("pid = ? AND hook = ?", (pid, hook))
        hits = [r for r in rows if any(marker in a for a in r["args"])]
        return hits if len(hits) >= n else []

    return wait_for(found, 15, f"{hook} event with {marker!r}")


# ------------------------------------------------------------------------------ protocol


def test_protocol_code_passes_the_shared_vectors() -> None:
    res = subprocess.run(
        ["java", "-cp", str(AGENT_JAR), "rampart.jvm.VectorCheck", str(VECTORS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 failed" in res.stdout


# ------------------------------------------------------------------------------ attach


def test_attach_says_hello_with_its_hooks(app: dict, jvm_agent: AgentProc) -> None:
    probe = app["attach"]["probe"]
    assert app["attach"]["runtime"] == "jvm" and not app["attach"]["already"]
    assert probe["mode"] == "attached" and probe["runtime_version"].startswith("17")
    assert probe["hooks"] >= 15
    # the attach left no trigger file behind, in the JVM's cwd or its /tmp
    pid = app["proc"].pid
    assert not Path(f"/proc/{pid}/cwd/.attach_pid{pid}").exists()
    assert not Path(f"/tmp/.attach_pid{pid}").exists()


def test_second_attach_is_a_no_op(app: dict, jvm_agent: AgentProc) -> None:
    res = rasp_attach("--pid", str(app["proc"].pid), "--socket", str(jvm_agent.socket))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("already attached")


def test_second_load_of_the_agent_says_hello_again(app: dict, jvm_agent: AgentProc) -> None:
    """Below the orchestration (which does not inject twice): loading the jar into a JVM
    that runs the probe starts nothing new, and the probe says hello with already_running."""
    from injector.attach_jvm import ATTACHER
    from injector.detect import detect

    pid = app["proc"].pid
    ATTACHER.attach(detect(pid), jvm_agent.socket, 10)
    again = re.compile(rf"probe connected: pid={pid} .*\(already running\)")
    wait_for(lambda: again.search(jvm_agent.log_text()), 15, "a hello with already_running")
    wait_for(
        lambda: any(r["pid"] == pid and r["state"] == "connected" for r in jvm_agent.control("ps"))
    )
    assert get(app["port"], "/ok") == (200, "ok")


# ------------------------------------------------------------------------------ events

FIS, FOS = "java.io.FileInputStream.<init>", "java.io.FileOutputStream.<init>"
UFSP = "sun.nio.fs.UnixFileSystemProvider"
NIO_OPEN = f"{UFSP}.newByteChannel"
SINKS = [
    # (endpoint, params, hook, kind, args the event must carry)
    ("/exec", {"cmd": "echo {m}"}, "java.lang.ProcessImpl.start", "process", ["echo", "{m}"]),
    ("/read", {"path": "{f}"}, FIS, "file", ["{f}"]),
    ("/write", {"path": "{f}", "data": "x"}, FOS, "file", ["{f}", "write"]),
    ("/nio", {"path": "{f}"}, NIO_OPEN, "file", None),
    ("/delete", {"path": "{f}"}, "java.io.File.delete", "file", ["{f}"]),
    ("/copy", {"from": "{f}", "to": "{f}.copy"}, f"{UFSP}.copy", "file", ["{f}", "{f}.copy"]),
    ("/move", {"from": "{f}", "to": "{f}.moved"}, f"{UFSP}.move", "file", ["{f}", "{f}.moved"]),
    ("/list", {"path": "{d}", "m": "{m}"}, f"{UFSP}.newDirectoryStream", "file", ["{d}"]),
    ("/dns", {"host": "localhost", "m": "{m}"}, "java.net.InetAddress.getAllByName", "dns",
     ["localhost"]),
    ("/jndi", {"name": "ldap://127.0.0.1:1/{m}"}, "javax.naming.InitialContext.lookup", "naming",
     ["ldap://127.0.0.1:1/{m}"]),
    ("/deser", {"m": "{m}"}, "java.io.ObjectInputStream.resolveClass", "deserialization",
     ["java.util.ArrayList"]),
    ("/define", {"m": "{m}"}, "java.lang.ClassLoader.defineClass", "classload", None),
    ("/sql", {"name": "x' OR '1'='1 {m}"}, "java.sql.Statement.executeQuery", "sql",
     ["SELECT name FROM users WHERE name = 'x' OR '1'='1 {m}'"]),
    ("/sqlp", {"name": "{m}"}, "java.sql.Connection.prepareStatement", "sql",
     ["SELECT name FROM users WHERE name = ?"]),
    ("/eval", {"code": "print('{m}')"}, "javax.script.ScriptEngine.eval", "code",
     ["print('{m}')"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "params", "hook", "kind", "args"), SINKS, ids=[s[0] for s in SINKS]
)
def test_sink_reports_event_with_request_context(
    app: dict, jvm_agent: AgentProc, tmp_path: Path, path, params, hook, kind, args
) -> None:
    m = uuid.uuid4().hex[:12]
    f = str(tmp_path / f"file-{m}.txt")
    Path(f).write_text("content")

    def fill(s: str) -> str:
        return s.replace("{m}", m).replace("{f}", f).replace("{d}", str(tmp_path))

    query = {k: fill(v) for k, v in params.items()}
    status, body = get(app["port"], path, query)
    assert status == 200, body
    pid = app["proc"].pid
    # the request's marker is in the URL; events of shared hooks (dns, classload) are found
    # by the request they belong to
    rows = wait_for(
        lambda: [
            r
            for r in jvm_agent.rows("pid = ? AND hook = ?", (pid, hook))
            if r.get("request") and m in r["request"]["url"]
        ],
        15,
        f"{hook} event in the request with {m}",
    )
    ev = rows[0]
    assert ev["kind"] == kind and ev["runtime"] == "jvm" and not ev["blocked"]
    if args is not None:
        assert ev["args"] == [fill(a) for a in args]
    if hook.endswith("newByteChannel"):
        assert ev["args"][0] == f
    if kind == "classload":
        assert ev["args"][:2] == ["VulnApp$Gadget", "VulnApp$ByteLoader"]
    req = ev["request"]
    assert req["method"] == "GET" and req["url"].startswith(path + "?")
    assert req["remote_addr"] == "127.0.0.1"
    assert {k: v[0] for k, v in req["params"].items()} == query
    assert "python-urllib" in req["headers"]["user-agent"].lower()
    # innermost frame: the hooked method (for JDBC, the driver's implementation of it)
    assert "." + hook.rsplit(".", 1)[1] + "(" in ev["stack"][0]
    assert any(frame.startswith("VulnApp") for frame in ev["stack"])
    assert ev["process"]["exe"].endswith("/java")


def test_loopback_connect_is_a_network_event(app: dict, jvm_agent: AgentProc) -> None:
    port = app["port"]
    status, body = get(port, "/connect", {"port": str(port)})
    assert (status, body) == (200, "connected")
    (ev,) = events(jvm_agent, app["proc"].pid, "java.net.Socket.connect", f"127.0.0.1:{port}")[:1]
    assert ev["kind"] == "network" and ev["request"]["url"].startswith("/connect?")


def test_events_outside_requests_have_no_request(app: dict, jvm_agent: AgentProc) -> None:
    """The request context ends with the request: the same worker thread's next sink call
    outside a request (there are none in the app) -- so check no event leaked another's
    URL: every event with a request names the endpoint that caused it."""
    for ev in jvm_agent.rows("pid = ?", (app["proc"].pid,)):
        if ev.get("request") and ev["kind"] == "process":
            assert ev["request"]["url"].startswith("/exec")


def test_a_request_that_reaches_no_sink_enters_no_hook(
    app: dict, jvm_agent: AgentProc, tmp_path: Path
) -> None:
    """The JDK HttpServer's own work on a request (socket reads and writes, header parsing,
    the executor) must not reach a hooked method: only the request bracket runs for `/ok`.
    Events leave in order over one connection, so once the later `/read` event is stored,
    any event a `/ok` request caused would be too."""
    marker = f"noop-{uuid.uuid4().hex[:8]}"
    for i in range(100):
        assert get(app["port"], "/ok", {"m": f"{marker}-{i}"}) == (200, "ok")
    data = tmp_path / f"{marker}.txt"
    data.write_text("x")
    assert get(app["port"], "/read", {"path": str(data)}) == (200, "x")
    events(jvm_agent, app["proc"].pid, "java.io.FileInputStream.<init>", marker)
    during_ok = [
        e
        for e in jvm_agent.rows("pid = ?", (app["proc"].pid,))
        if marker in ((e.get("request") or {}).get("url") or "") and "/ok" in e["request"]["url"]
    ]
    assert during_ok == []


# ------------------------------------------------------------------------------ blocking

BLOCKS = [
    ("/exec", {"cmd": "sh -c true"}, "java.lang.ProcessImpl.start", "no-shell-from-web"),
    ("/jndi", {"name": "ldap://127.0.0.1:1/blocked"}, "javax.naming.InitialContext.lookup",
     "no-ldap-to-blocked"),
    ("/connect", {"port": "9"}, "java.net.Socket.connect", "no-discard-port"),
    ("/deser", {"what": "gadget"}, "java.io.ObjectInputStream.resolveClass", "no-gadgets"),
    ("/sql", {"name": "x' OR 1=1 --"}, "java.sql.Statement.executeQuery", "no-sql-tautology"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "hook", "policy"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_policy_takes_the_apps_error_path(
    app: dict, jvm_agent: AgentProc, path, params, hook, policy
) -> None:
    port = app["port"]
    # the tables arrive right after the hello; wait until this one is in force
    status, body = wait_for(
        lambda: (r := get(port, path, params))[0] == 403 and r, 15, f"{policy} in force"
    )
    assert body == f"blocked: Rampart blocked {hook} by policy {policy}"
    blocked = wait_for(
        lambda: jvm_agent.rows(
            "pid = ? AND hook = ? AND blocked = 1 AND policy_id = ?",
            (app["proc"].pid, hook, policy),
        ),
        15,
        f"a blocked {hook} event",
    )
    assert blocked[0]["request"]["url"].startswith(path + "?")
    # the same endpoint still works for what the policy allows, and so does the rest
    allowed = {
        "/exec": {"cmd": "echo fine"},
        "/jndi": {"name": "ldap://127.0.0.1:1/fine"},
        "/connect": {"port": str(port)},
        "/deser": {},
        "/sql": {"name": "alice"},
    }[path]
    status, body = get(port, path, allowed)
    assert status == 200, body
    assert get(port, "/ok") == (200, "ok")


def test_the_sink_did_not_run_when_blocked(app: dict, jvm_agent: AgentProc, tmp_path) -> None:
    marker = tmp_path / "ran"
    status, _ = get(app["port"], "/exec", {"cmd": f"bash -c touch {marker}"})
    assert status == 403
    assert not marker.exists()


def test_pushed_tables_apply_in_the_probe(app: dict, jvm_agent: AgentProc) -> None:
    """filter (ignore) and config (hooks_disabled) frames, pushed to this probe only, take
    effect on the next calls; empty tables restore the defaults. Hosts are IP literals: the
    dns hook fires, and no query leaves the machine."""
    pid, port = app["proc"].pid, app["port"]
    dns = "java.net.InetAddress.getAllByName"
    n = iter(range(1, 250))

    def push(frame: dict) -> None:
        jvm_agent.control("push", frame=frame, pid=pid)

    def dns_events(host: str) -> int:
        rows = jvm_agent.rows("pid = ? AND hook = ?", (pid, dns))
        return len([r for r in rows if r["args"] == [host]])

    def lookup(host: str) -> None:
        assert get(port, "/dns", {"host": host})[0] == 200

    def in_force(quiet_prefix: str) -> bool:
        """A quiet lookup then a loud one on the same thread: once the loud event is
        stored, the quiet one would have been too, had it been sent."""
        i = next(n)
        lookup(f"{quiet_prefix}{i}")
        lookup(f"127.2.0.{i}")
        wait_for(lambda: dns_events(f"127.2.0.{i}"), 15, "the loud event")
        return dns_events(f"{quiet_prefix}{i}") == 0

    try:
        rule = {"policy_id": "quiet", "hook": dns, "match": {"args": "^127\\.1\\."}}
        push({"message_type": 6, "data": {"uuid": "f-test", "filters": [rule]}})
        wait_for(lambda: in_force("127.1.0."), 15, "the filter in force")
        push({"message_type": 6, "data": {"uuid": "", "filters": []}})
        wait_for(lambda: not in_force("127.1.0."), 15, "the filter gone")

        push({"message_type": 3, "data": {"uuid": "c-test", "hooks_disabled": [dns]}})
        wait_for(
            lambda: (
                (lookup("127.3.0.1"), get(port, "/exec", {"cmd": "echo cfg"}))
                and events(jvm_agent, pid, "java.lang.ProcessImpl.start", "cfg")
            ),
            15,
            "exec",
        )
        before = dns_events("127.3.0.1")
        lookup("127.3.0.1")
        assert get(port, "/exec", {"cmd": "echo cfg-after"})[0] == 200
        events(jvm_agent, pid, "java.lang.ProcessImpl.start", "cfg-after")
        assert dns_events("127.3.0.1") == before  # the dns hook is off, exec still reports
    finally:
        push({"message_type": 6, "data": {"uuid": "", "filters": []}})
        push({"message_type": 3, "data": {"uuid": "", "hooks_disabled": []}})
    wait_for(lambda: not in_force("127.4.0."), 15, "dns events back")


# ------------------------------------------------------------------------------ the app survives


def test_two_hundred_requests_after_attach_all_succeed(app: dict, tmp_path: Path) -> None:
    f = tmp_path / "data.txt"
    f.write_text("hello")
    port = app["port"]
    for i in range(200):
        path, params = [("/ok", {}), ("/read", {"path": str(f)}), ("/dns", {"host": "localhost"})][
            i % 3
        ]
        status, body = get(port, path, params)
        assert status == 200, (i, path, body)
    assert app["proc"].poll() is None


def test_detach_restores_the_app_and_reattach_works(app: dict, jvm_agent: AgentProc) -> None:
    pid, port = app["proc"].pid, app["port"]
    res = rasp_attach("--pid", str(pid), "--socket", str(jvm_agent.socket), "--detach")
    assert res.returncode == 0, res.stderr
    wait_for(
        lambda: any(r["pid"] == pid and r["state"] != "connected" for r in jvm_agent.control("ps")),
        15,
        "the probe's exit",
    )
    # original bytecode: nothing is blocked or reported any more
    before = len(jvm_agent.rows("pid = ?", (pid,)))
    status, body = get(port, "/exec", {"cmd": "sh -c true"})
    assert status == 200, body
    assert len(jvm_agent.rows("pid = ?", (pid,))) == before
    # and a new attach brings the probe back
    res = rasp_attach("--pid", str(pid), "--socket", str(jvm_agent.socket))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("attached")
    wait_for(lambda: get(port, "/exec", {"cmd": "sh -c true"})[0] == 403, 15, "blocking again")


# ------------------------------------------------------------------------------ refusals


def test_jvm_with_xrs_is_attached_without_a_signal(spawn, jvm_agent: AgentProc) -> None:
    """-Xrs: the JVM does not handle SIGQUIT (the signal would kill it), but it starts its
    attach listener at start-up: the attacher uses it and never signals. The readiness check
    that guards the signal refuses this JVM."""
    p = spawn(["java", "-Xrs", str(APPS / "Sleeper.java")], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        with pytest.raises(AttachError) as err:
            check_ready(p.pid)
        assert "-Xrs" in err.value.reason
        res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket))
        assert res.returncode == 0, res.stderr
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


def test_a_dead_attach_socket_is_replaced(spawn, jvm_classes: Path, jvm_agent: AgentProc) -> None:
    """/tmp/.java_pid<pid> left by a dead JVM with the same pid refuses connections: the
    attacher removes it and starts the live JVM's listener the normal way."""
    p, port = start_app(spawn, jvm_classes)
    stale = f"/tmp/.java_pid{p.pid}"
    try:
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
            s.bind(stale)  # bound, never listening, then closed: a dead socket file
        res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket))
        assert res.returncode == 0, res.stderr
        assert get(port, "/ok") == (200, "ok")
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


def test_jvm_in_its_own_pid_and_mount_namespaces(spawn, jvm_classes: Path) -> None:
    """A container in miniature: the JVM is pid 1 of a new pid namespace, with its own /tmp
    and without the agent jar's directory. The attacher uses its namespace pid for the
    attach files, copies the jar into the JVM's /tmp, and the probe's hello is accepted."""
    # outside /tmp, which the JVM will not share, and outside the checkout, which may itself
    # live under /tmp (CI clones anywhere): the agent's socket and the app's classes
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="rampart-ns-") as td:
        d = Path(td)
        d.chmod(0o755)
        classes = d / "classes"
        shutil.copytree(jvm_classes, classes)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        names = ("probe.sock", "events.db", "events.jsonl", "policy.yaml", "agent.log")
        agent = AgentProc(d, *(d / n for n in names), env=env).start()
        # the jar's directory first: once /tmp is a fresh tmpfs, a checkout under /tmp is gone
        inside = (
            f"mount -t tmpfs none {AGENT_JAR.parent} && mount -t tmpfs none /tmp && "
            f"exec java -cp {classes} VulnApp"
        )
        shell = spawn(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "sh",
                "-c",
                inside,
            ],
            stdout=subprocess.PIPE,
        )
        java = 0
        try:
            assert shell.stdout is not None
            port = int(shell.stdout.readline().split()[1])
            kids = Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()
            java = int(kids[0])
            status = Path(f"/proc/{java}/status").read_text()
            assert status.split("NStgid:")[1].splitlines()[0].split() == [str(java), "1"]
            assert not Path(f"/proc/{java}/root{AGENT_JAR}").exists()
            res = rasp_attach("--pid", str(java), "--socket", str(agent.socket))
            assert res.returncode == 0, res.stderr + agent.log_text()
            copies = list(Path(f"/proc/{java}/root/tmp").glob("rampart-jvm-agent-*.jar"))
            assert len(copies) == 1 and not list(Path("/tmp").glob(copies[0].name))
            assert get(port, "/exec", {"cmd": "echo in-namespace"})[0] == 200
            (ev,) = events(agent, java, "java.lang.ProcessImpl.start", "in-namespace")[:1]
            assert ev["pid"] == java  # the host pid, though the JVM calls itself 1
        finally:
            if java:
                os.kill(java, 9)  # pid 1 of its namespace: the namespace goes with it
            shell.wait(timeout=30)
            agent.stop()


def test_readiness_check_refuses_a_process_that_is_not_a_jvm(spawn) -> None:
    p = spawn(["sleep", "100"])
    with pytest.raises(AttachError) as err:
        check_ready(p.pid)
    assert "libjvm.so is not mapped" in err.value.reason
    assert p.poll() is None


def test_jvm_of_another_user_is_attached_with_its_ids(
    spawn, jvm_classes: Path, jvm_agent: AgentProc
) -> None:
    """HotSpot accepts the trigger file and the socket peer only from its own euid/egid (JDK
    8) or root (9+): the attacher switches to the JVM's ids for both, then back."""
    nobody = 65534
    setpriv_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
    # the checkout may sit where nobody cannot read (/root/...): give the JVM its own copy
    # of the classes; the attacher copies the jar into /tmp if nobody cannot read ours
    classes = Path(tempfile.mkdtemp(prefix="rampart-nobody-"))
    classes.chmod(0o755)
    for f in jvm_classes.glob("VulnApp*.class"):
        shutil.copy(f, classes)
    jars_before = set(Path("/tmp").glob("rampart-jvm-agent-*.jar"))
    p = spawn(
        [*setpriv_nobody, "java", "-cp", str(classes), "VulnApp"],
        stdout=subprocess.PIPE,
        cwd="/",  # not writable by nobody: the trigger file goes to the JVM's /tmp instead
    )
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline().split()[1])
        res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket))
        assert res.returncode == 0, res.stderr
        assert os.stat(f"/tmp/.java_pid{p.pid}").st_uid == nobody
        assert get(port, "/exec", {"cmd": "echo nobody"})[0] == 200
        (ev,) = events(jvm_agent, p.pid, "java.lang.ProcessImpl.start", "nobody")[:1]
        assert ev["process"]["uid"] == nobody
        assert not Path(f"/tmp/.attach_pid{p.pid}").exists()
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)
        shutil.rmtree(classes, ignore_errors=True)
        for jar in set(Path("/tmp").glob("rampart-jvm-agent-*.jar")) - jars_before:
            jar.unlink()


def test_a_failing_hook_disables_itself_and_the_app_goes_on(
    spawn, jvm_classes: Path, agent_factory, tmp_path: Path
) -> None:
    """tests/apps/jvm/HookFault.java makes the process hook's callback throw inside the
    probe: the call returns normally, the hook is off (no process event), the others report."""
    agent = agent_factory().start()
    subprocess.run(
        ["javac", "-cp", str(AGENT_JAR), "-d", str(jvm_classes), str(APPS / "HookFault.java")],
        check=True,
        timeout=120,
    )
    data = tmp_path / "data.txt"
    data.write_text("data")
    p = spawn(
        [
            "java",
            f"-javaagent:{AGENT_JAR}=socket={agent.socket}",
            "-cp",
            f"{jvm_classes}:{AGENT_JAR}",
            "HookFault",
            str(data),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None and p.stdin is not None and p.stderr is not None
        assert p.stdout.readline().strip() == b"callback returned"
        wait_for(lambda: any(r["pid"] == p.pid for r in agent.control("ps")), 30, "hello")
        p.stdin.write(b"go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == b"exec exit 0"
        assert p.stdout.readline().strip() == b"read ok"
        events(agent, p.pid, "java.io.FileInputStream.<init>", str(data))
        assert agent.rows("pid = ? AND kind = 'process'", (p.pid,)) == []
    finally:
        p.kill()
        _, err = p.communicate(timeout=30)
        remove_listener_socket(p.pid)
    assert b"hook java.lang.ProcessImpl.start disabled after an internal error" in err


# ------------------------------------------------------------------------------ servlets


def test_servlet_request_context_and_block(
    spawn, jvm_classes: Path, jvm_agent: AgentProc, tmp_path: Path
) -> None:
    """A jakarta HttpServlet in embedded Tomcat 11: the request context comes from
    HttpServlet.service, blocking takes the servlet's error path."""
    # Tomcat's base directory is a temp dir the killed JVM cannot delete on exit: keep it in
    # the test's own tmp_path, not in /tmp.
    p = spawn(
        [
            "java",
            f"-Djava.io.tmpdir={tmp_path}",
            "-cp",
            f"{jvm_classes}:{TEST_LIBS}",
            "ServletApp",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert line and line[0] == b"ready", line
        port = int(line[1])
        res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket), "--json")
        assert res.returncode == 0, res.stderr
        assert get(port, "/exec", {"cmd": "echo servlet"}) == (200, "servlet\n")
        (ev,) = events(jvm_agent, p.pid, "java.lang.ProcessImpl.start", "servlet")[:1]
        req = ev["request"]
        assert req["method"] == "GET" and req["url"] == "/exec?cmd=echo+servlet"
        assert req["params"] == {"cmd": ["echo servlet"]} and req["remote_addr"] == "127.0.0.1"
        assert any("ExecServlet.doGet" in frame for frame in ev["stack"])
        _, body = wait_for(
            lambda: (r := get(port, "/exec", {"cmd": "sh -c true"}))[0] == 403 and r, 15, "block"
        )
        assert "by policy no-shell-from-web" in body
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


# ------------------------------------------------------------------------------ other JDKs

TEMURIN_25 = Path("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java")


@pytest.mark.skipif(not TEMURIN_25.exists(), reason="no Temurin 25 JDK on this machine")
def test_jdk_25_attach_events_and_block(spawn, jvm_classes: Path, jvm_agent: AgentProc) -> None:
    """The same jar (Java 8 bytecode, ASM that reads class version 69) on JDK 25."""
    p = spawn(
        [str(TEMURIN_25), "-cp", str(jvm_classes), "VulnApp"],
        stdout=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline().split()[1])
        res = rasp_attach("--pid", str(p.pid), "--socket", str(jvm_agent.socket), "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["probe"]["runtime_version"].startswith("25")
        assert get(port, "/exec", {"cmd": "echo jdk25"})[0] == 200
        (ev,) = events(jvm_agent, p.pid, "java.lang.ProcessImpl.start", "jdk25")[:1]
        assert ev["request"]["url"] == "/exec?cmd=echo+jdk25"
        wait_for(lambda: get(port, "/exec", {"cmd": "sh -c true"})[0] == 403, 15, "blocking")
        assert get(port, "/jndi", {"name": "ldap://127.0.0.1:1/blocked"})[0] == 403
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


# ------------------------------------------------------------------------------ SDK route


def test_sdk_route_reports_and_survives_the_agent_being_away(
    spawn, jvm_classes: Path, agent_factory
) -> None:
    """`java -javaagent:` with no agent listening: the app works, events are dropped and
    counted; once the agent starts, the probe connects (backoff) and its events arrive."""
    agent = agent_factory()
    p, port = start_app(spawn, jvm_classes, f"-javaagent:{AGENT_JAR}=socket={agent.socket}")
    try:
        for _ in range(5):
            assert get(port, "/exec", {"cmd": "echo away"})[0] == 200
        agent.start()
        wait_for(
            lambda: any(r["pid"] == p.pid and r["mode"] == "sdk" for r in agent.control("ps")),
            30,
            "the SDK probe's hello",
        )
        assert get(port, "/exec", {"cmd": "echo back"})[0] == 200
        (ev,) = events(agent, p.pid, "java.lang.ProcessImpl.start", "back")[:1]
        assert ev["request"]["url"] == "/exec?cmd=echo+back"
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)
