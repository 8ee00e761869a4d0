"""PHP probe end to end: live attach with `rasp-attach` to real PHP processes (CLI, `php -S`,
php-fpm), requests on loopback, events asserted in the agent's store."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import http.server
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from injector import attach as attach_mod
from injector.attach_php import ATTACHER, fpm_workers
from injector.detect import detect
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.apps.php import fcgi

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[1] / "apps" / "php" / "app.php"
LOOP = Path(__file__).resolve().parents[1] / "apps" / "php" / "loop.php"
ONESHOT = Path(__file__).resolve().parents[1] / "apps" / "php" / "oneshot.php"
PHP_FPM = "/usr/sbin/php-fpm8.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rasp_attach(pid: int, agent: AgentProc, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RASP_ATTACH, "--pid", str(pid), "--socket", str(agent.socket), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"server exited {proc.returncode}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 15, f"port {port}")


@pytest.fixture
def subreaper():
    """Make this test process the reaper of orphans it causes (the php-fpm watcher that
    `rasp-attach` leaves behind, Frida's daemonized helper): PID 1 here does not reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    yield
    deadline = time.monotonic() + 5  # the watcher exits within 0.1 s of its master
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            continue
        if time.monotonic() > deadline:
            for child in adopted():
                with contextlib.suppress(OSError):
                    os.kill(child, 9)
            deadline = float("inf")
        time.sleep(0.05)


def adopted() -> list[int]:
    me = os.getpid()
    out = []
    for p in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError):
            if (
                p.isdigit()
                and int(Path(f"/proc/{p}/stat").read_bytes().rsplit(b")", 1)[1].split()[1]) == me
            ):
                out.append(int(p))
    return out


@pytest.fixture
def php_server(spawn):
    port = free_port()
    p = spawn(["php", "-S", f"127.0.0.1:{port}", str(APP)])
    wait_port(port, p)
    return p, port


# ----------------------------------------------------------------------------- php -S


def test_builtin_server_events_with_request_context(php_server, agent: AgentProc) -> None:
    proc, port = php_server
    res = rasp_attach(proc.pid, agent)
    assert res.returncode == 0, res.stderr
    assert f"attached: pid {proc.pid} php" in res.stdout
    # a build without mysqli says which hooks it could not find, and installs the rest
    assert "not hooked: mysqli_query" in res.stderr

    # include first: its stack must not depend on a hooked call having run before
    assert http_get(port, "/include?a=" + str(APP.parent / "included.php")) == (200, "included")
    assert http_get(port, "/system?a=echo+hi") == (200, "hi\n")
    assert http_get(port, "/read?a=/etc/hostname")[0] == 200
    assert http_get(port, "/eval?a=return+6*7%3B") == (200, "42")
    assert http_get(port, "/pdo?a=bob") == (200, "none")
    assert http_get(port, "/sqlite?a=alice") == (200, "alice")
    assert http_get(port, "/unserialize?a=i:5;") == (200, "5")

    rows = agent.wait_rows(1, "hook = 'unserialize'")
    events = {e["hook"]: e for e in agent.rows(f"pid = {proc.pid}")}
    ev = events["system"]
    assert ev["kind"] == "process" and ev["args"] == ["echo hi"] and ev["runtime"] == "php"
    assert ev["request"]["method"] == "GET"
    assert ev["request"]["url"] == "/system?a=echo+hi"
    assert ev["request"]["params"] == {"a": ["echo hi"]}
    assert ev["request"]["remote_addr"] == "127.0.0.1"
    assert ev["request"]["headers"]["user-agent"].startswith("Python-urllib")
    assert ev["stack"][0].startswith("{main} (" + str(APP) + ":")
    assert ev["process"]["exe"] == "/usr/bin/php8.2"
    assert events["file_get_contents"]["args"][0] == "/etc/hostname"
    assert events["eval"]["kind"] == "code" and events["eval"]["args"] == ["return 6*7;"]
    assert events["include"]["args"] == [str(APP.parent / "included.php")]
    assert events["include"]["stack"][0].startswith("{main} (" + str(APP) + ":")
    assert events["PDO::query"]["args"] == ["SELECT name FROM t WHERE name = 'bob'"]
    assert events["SQLite3::query"]["kind"] == "sql"
    assert rows[0]["kind"] == "deserialization"
    # the primary script of each request is not an `include` event
    assert all(e["args"] != [str(APP)] for e in agent.rows("hook = 'include'"))


@pytest.fixture
def loopback_http() -> Iterator[int]:
    """A tiny HTTP server on loopback for the app to fetch from (curl tests)."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"fetched {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_curl_exec_reports_the_url_and_ssrf_is_detected(
    php_server, loopback_http: int, agent: AgentProc
) -> None:
    proc, port = php_server
    assert rasp_attach(proc.pid, agent).returncode == 0
    # the URL given to curl_init, and one replaced by curl_setopt / curl_setopt_array
    url1 = f"http://127.0.0.1:{loopback_http}/one"
    url2 = f"http://localhost:{loopback_http}/two?x=1"
    q1, q2 = urllib.parse.quote(url1, safe=""), urllib.parse.quote(url2, safe="")
    assert http_get(port, "/curl?a=" + q1) == (200, "fetched /one")
    assert http_get(port, "/curl_setopt?a=" + q2) == (200, "fetched /two?x=1")
    # fsockopen (a host, not a URL) stays covered too
    assert http_get(port, f"/fsockopen?a=127.0.0.1&b={loopback_http}") == (200, "connected")

    evs = agent.wait_rows(3, "hook IN ('curl_exec', 'fsockopen')")
    by_hook: dict[str, list[dict]] = {}
    for e in evs:
        by_hook.setdefault(e["hook"], []).append(e)
    assert [e["args"] for e in by_hook["curl_exec"]] == [[url1], [url2]]
    assert by_hook["curl_exec"][0]["kind"] == "network"
    assert by_hook["fsockopen"][0]["args"][0] == "127.0.0.1"
    # the URL reached the agent's SSRF detector, tied to the request parameter carrying it
    for e, url in ((by_hook["curl_exec"][0], url1), (by_hook["curl_exec"][1], url2)):
        (det,) = [d for d in e.get("detections", []) if d["rule"] == "ssrf.internal"]
        assert det["param"] == "a" and det["value"] == url
    fs = by_hook["fsockopen"][0]
    assert "ssrf.internal" in [d["rule"] for d in fs.get("detections", [])]


def test_block_policy_fails_the_call_and_other_requests_work(php_server, agent_factory) -> None:
    proc, port = php_server
    a = agent_factory()
    a.policy.write_text(
        "policies:\n"
        "  - id: no-shell-from-web\n"
        "    kind: process\n"
        "    match: {args: 'cat /etc/passwd'}\n"
        "    action: block\n"
        "  - id: no-eval-of-input\n"
        "    hook: eval\n"
        "    match: {args: evil}\n"
        "    action: block\n"
        "  - id: no-remote-include\n"
        "    hook: include\n"
        "    match: {args: included}\n"
        "    action: block\n"
    )
    a.start()
    assert rasp_attach(proc.pid, a).returncode == 0
    # the tables arrive right after the hello; the probe's next heartbeat says they are in force
    wait_for(lambda: a.control("ps")[0]["policy"], 10, "block table in force")

    status, body = http_get(port, "/system?a=cat+/etc/passwd")
    assert status == 500
    assert body == "error: Exception: Rampart blocked system by policy no-shell-from-web"
    assert http_get(port, "/system?a=echo+fine") == (200, "fine\n")
    assert http_get(port, "/ok") == (200, "ok")
    # eval and include fail the same way, before compiling
    assert http_get(port, "/eval?a=return+%27evil%27%3B") == (
        500,
        "error: Exception: Rampart blocked eval by policy no-eval-of-input",
    )
    assert http_get(port, "/eval?a=return+%27good%27%3B") == (200, "good")
    status, body = http_get(port, "/include?a=" + str(APP.parent / "included.php"))
    assert (status, body) == (
        500,
        "error: Exception: Rampart blocked include by policy no-remote-include",
    )
    assert http_get(port, "/ok") == (200, "ok")
    blocked = a.wait_rows(3, "blocked = 1")
    assert blocked[0]["hook"] == "system" and blocked[0]["policy_id"] == "no-shell-from-web"
    assert blocked[0]["args"] == ["cat /etc/passwd"]


def test_ignore_policy_filters_in_the_probe(php_server, agent_factory) -> None:
    proc, port = php_server
    a = agent_factory()
    a.policy.write_text(
        "policies:\n"
        "  - id: hostname-reads-are-fine\n"
        "    hook: file_get_contents\n"
        "    match: {args: ^/etc/hostname$}\n"
        "    action: ignore\n"
    )
    a.start()
    assert rasp_attach(proc.pid, a).returncode == 0
    wait_for(lambda: a.control("ps")[0]["policy"], 10, "tables in force")
    assert http_get(port, "/read?a=/etc/hostname")[0] == 200
    assert http_get(port, "/read?a=/etc/os-release")[0] == 200
    assert http_get(port, "/system?a=echo+after")[0] == 200
    a.wait_rows(1, "hook = 'system'")
    reads = [e["args"] for e in a.rows("hook = 'file_get_contents'")]
    assert reads == [["/etc/os-release"]]


def test_attach_twice_is_a_no_op_and_frida_leaves_nothing(subreaper, php_server, agent) -> None:
    proc, port = php_server
    started = time.time()
    first = rasp_attach(proc.pid, agent)
    assert first.returncode == 0, first.stderr
    again = rasp_attach(proc.pid, agent)
    assert again.returncode == 0 and again.stdout.startswith("already attached")
    assert http_get(port, "/system?a=echo+once") == (200, "once\n")
    agent.wait_rows(1, "hook = 'system'")
    time.sleep(0.3)
    assert len(agent.rows("hook = 'system'")) == 1, "hooks were installed once"
    # no helper process left running and no helper dir nobody runs from
    for d in glob.glob("/tmp/frida-*"):
        if os.stat(d).st_mtime < started:
            continue  # older than this test: not ours to judge
        users = [
            p
            for p in os.listdir("/proc")
            if p.isdigit() and os.path.realpath(f"/proc/{p}/exe").startswith(d + "/")
        ]
        assert users, f"{d} left behind"
        for p in users:  # a helper of another Frida user on this host, never ours
            with contextlib.suppress(OSError):
                assert b"RAMPART_FRIDA_OWNER" not in Path(f"/proc/{p}/environ").read_bytes()


def test_app_keeps_serving_when_the_agent_goes_away(php_server, agent) -> None:
    proc, port = php_server
    assert rasp_attach(proc.pid, agent).returncode == 0
    agent.stop()
    for _ in range(5):
        assert http_get(port, "/system?a=echo+alone") == (200, "alone\n")
    agent.start()  # same store and socket
    # attaching again injects nothing: the attacher finds the running probe and pokes it,
    # which reconnects at once (instead of at the end of its backoff) with a fresh hello
    again = rasp_attach(proc.pid, agent)
    assert again.returncode == 0, again.stderr
    assert any(r["pid"] == proc.pid and r["state"] == "connected" for r in agent.control("ps"))
    assert http_get(port, "/system?a=echo+back") == (200, "back\n")
    ev = agent.wait_rows(1, "hook = 'system' AND json_extract(event, '$.args[0]') = 'echo back'")
    assert ev[0]["pid"] == proc.pid
    time.sleep(0.3)
    assert len(agent.rows("hook = 'system'")) == 1, "one probe, hooks installed once"


# ----------------------------------------------------------------------------- php CLI


def test_cli_script_and_attacher_errors(spawn, agent) -> None:
    p = spawn(["php", str(LOOP)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    res = rasp_attach(p.pid, agent)
    assert res.returncode == 0, res.stderr
    rows = agent.wait_rows(1, "hook = 'file_get_contents'")
    assert rows[0]["args"] == [str(LOOP)] and not rows[0].get("request")
    assert rows[0]["runtime_version"] == "8.2.36" or rows[0]["runtime_version"].startswith("8.")
    assert rows[0]["stack"][0].startswith("{main} (" + str(LOOP))

    # the attacher's own failure: the process is gone by the time Frida gets to it
    q = spawn(["php", str(LOOP)], stdout=subprocess.PIPE)
    assert q.stdout is not None and q.stdout.readline().strip() == b"ready"
    det = detect(q.pid)
    q.kill()
    q.wait()
    with pytest.raises(attach_mod.AttachError) as err:
        ATTACHER.attach(det, agent.socket, 5)
    assert err.value.code == attach_mod.EXIT_PROCESS and f"pid {q.pid}" in err.value.reason
    assert p.poll() is None


ARGS = Path(__file__).resolve().parents[1] / "apps" / "php" / "args.php"


def _args_events(spawn, agent: AgentProc, native: bool) -> list[tuple[str, list, list]]:
    p = spawn(["php", str(ARGS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == b"ready"
    env = {**os.environ, "RASP_PHP_NATIVE": "1" if native else "0"}
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(p.pid), "--socket", str(agent.socket)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "collector failed" not in res.stderr  # the C collector compiled (when asked for)
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == b"done"
    rows = agent.wait_rows(8, f"pid = {p.pid}")
    return [(e["hook"], e["args"], e["stack"]) for e in rows]


def test_native_and_js_readers_report_the_same_args_and_stacks(spawn, agent) -> None:
    # the C collector (the default) and the JS readers (RASP_PHP_NATIVE=0, also the fallback
    # when the CModule cannot compile) on the same awkward calls
    native = _args_events(spawn, agent, native=True)
    js = _args_events(spawn, agent, native=False)
    assert native == js
    by_hook = {}
    for hook, args, stack in native:
        by_hook.setdefault(hook, []).append((args, stack))
    (odd, stack), (long_arg, _) = by_hook["file_get_contents"]
    # bytes that are not UTF-8 (and a UTF-16 surrogate's encoding) become U+FFFD, one a byte
    assert odd == [
        '/nonexistent/\ufffd\ufffd "quoted" back\\slash \x01\t\n é ✓ \ufffd\ufffd\ufffd 😀'
    ]
    assert long_arg == ["a" * 4096]  # capped
    assert stack[0] == f"Reader::read ({ARGS}:7)" and stack[1] == f"calls ({ARGS}:11)"
    assert stack[2].startswith(f"{{main}} ({ARGS}:")
    assert by_hook["exec"][0][0] == ["true", "", ""]  # references to an empty array, to null
    assert by_hook["file"][0][0] == ["/nonexistent", "-5"]
    assert by_hook["fopen"][0][0] == ["/nonexistent", "r", "1.5"]
    assert by_hook["unserialize"][0][0] == ["i:7;", "A B"]
    assert by_hook["include"][0] == (
        [str(ARGS.parent / "included.php")],
        [f"calls ({ARGS}:17)", stack[2]],
    )
    assert by_hook["eval"][0][0] == ["return 1;"]


FORK = Path(__file__).resolve().parents[1] / "apps" / "php" / "fork.php"


def test_pcntl_fork_children_never_hang_and_run_unprobed(spawn, agent) -> None:
    # A Frida script does not follow fork(): a child inherits the hooks but not Frida's
    # thread, and a lock a Frida thread held at the fork stays locked in it. Before the fork
    # guard (docs/php-probe.md, "fork"), a child entering a hook hung now and then: 51 of
    # 6,000 in a stress run of this victim, so about 97% of runs of this test saw one. Now a
    # child's hooks go straight to PHP's originals: every child exits 0 (strict: a hung one
    # is killed after 10 s and fails the test), none is reported, and the parent, busy
    # reporting through all the forks, keeps reporting.
    n = 400
    p = spawn(["php", str(FORK), str(n), "8"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == b"ready"
    res = rasp_attach(p.pid, agent)
    assert res.returncode == 0, res.stderr
    p.stdin.write(b"go\n")
    p.stdin.flush()
    lines = []
    while not lines or not lines[-1].startswith("forked "):
        lines.append(p.stdout.readline().decode().strip())
    assert lines == [f"forked {n} ok {n}"], lines  # no "hung PID" line, every child exited 0
    # the parent's probe still reports. Its busy loop may have filled the bounded queue
    # (drops are counted, by design): one more call each time until one gets through.
    final = "json_extract(event, '$.args[0]') = '/etc/os-release'"

    def reported() -> bool:
        p.stdin.write(b"again\n")
        p.stdin.flush()
        assert p.stdout.readline().decode().strip() == "parent ok"
        time.sleep(0.2)
        return bool(agent.rows(final))

    wait_for(reported, 30, "an event of the parent after the forks")
    assert {r["pid"] for r in agent.rows()} == {p.pid}, "only the parent reports"
    # the children's own calls (/etc/hostname) went unprobed
    assert not agent.rows("json_extract(event, '$.args[0]') = '/etc/hostname'")
    assert [r["pid"] for r in agent.control("ps") if r["state"] == "connected"] == [p.pid]


FORKWAIT = Path(__file__).resolve().parents[1] / "apps" / "php" / "forkwait.php"


def patched_code(pid: int) -> list[str]:
    """Where the code a process runs differs from the file it is mapped from (inline hooks):
    "path+offset" for each differing stretch of its file-backed executable mappings."""
    out = []
    with open(f"/proc/{pid}/mem", "rb") as mem, open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) != 6 or "x" not in f[1] or not f[5].startswith("/"):
                continue  # anonymous, or Frida's agent (a deleted memfd)
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            mem.seek(lo)
            now = mem.read(hi - lo)
            with open(f[5], "rb") as fh:
                fh.seek(int(f[2], 16))
                orig = fh.read(hi - lo)
            if now != orig:
                first = next(i for i, (a, b) in enumerate(zip(now, orig, strict=False)) if a != b)
                out.append(f"{f[5]}+{int(f[2], 16) + first:#x}")
    return out


def test_forked_child_runs_no_frida_code(spawn, agent, tmp_path: Path) -> None:
    # The deterministic half of the fork fix (the stress half is the test above): in a child
    # of a probed process, the code Frida patched (exit, _exit, abort, signal, sigaction,
    # ld.so's _dl_debug_state, php_request_startup) is the original again, so neither its
    # exit, its dlclose nor its signal set-up can enter Frida; the parent keeps its hooks.
    go = tmp_path / "go"
    p = spawn(["php", str(FORKWAIT), str(go)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == b"ready"
    assert patched_code(p.pid) == []  # nothing patched before the attach
    assert rasp_attach(p.pid, agent).returncode == 0
    parent = patched_code(p.pid)
    assert any("libc.so" in x for x in parent) and any("php" in x for x in parent), parent
    p.stdin.write(b"go\n")
    p.stdin.flush()
    line = p.stdout.readline().decode().split()
    assert line[0] == "child", line
    child = int(line[1])
    try:
        assert patched_code(child) == []
        assert patched_code(p.pid) == parent
    finally:
        go.touch()  # the child exits either way
    assert p.stdout.readline().decode().strip() == "child exit 0"
    assert p.stdout.readline().decode().strip() == "parent ok"
    agent.wait_rows(1, "json_extract(event, '$.args[0]') = '/etc/os-release'")
    assert {r["pid"] for r in agent.rows()} == {p.pid}
    assert not agent.rows("json_extract(event, '$.args[0]') = '/etc/hostname'")


def test_events_queued_at_exit_are_sent(spawn, agent) -> None:
    # the sink runs and the process exits before Frida's thread would send: the probe sends
    # what is queued from PHP's shutdown, then says exit
    p = spawn(["php", str(ONESHOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    assert rasp_attach(p.pid, agent).returncode == 0
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.close()
    assert p.wait(10) == 0
    ev = agent.wait_rows(1, "hook = 'file_get_contents'")
    assert ev[0]["pid"] == p.pid and ev[0]["args"] == ["/etc/hostname"]
    row = wait_for(lambda: [r for r in agent.control("ps") if r["state"] == "exited"], 10, "exit")
    assert row[0]["reason"] == "php shutdown"


# ----------------------------------------------------------------------------- php-fpm


@pytest.fixture
def fpm(spawn, tmp_path):
    port = free_port()
    conf = tmp_path / "fpm.conf"
    conf.write_text(
        "[global]\n"
        f"error_log = {tmp_path / 'fpm.log'}\n"
        f"pid = {tmp_path / 'fpm.pid'}\n"
        "[www]\n"
        f"listen = 127.0.0.1:{port}\n"
        "pm = static\n"
        "pm.max_children = 2\n"
        # a worker exits after 50 requests (its last events go out at exit)
        "pm.max_requests = 50\n"
    )
    master = spawn([PHP_FPM, "-F", "-R", "-y", str(conf)])
    wait_port(port, master)
    wait_for(lambda: len(fpm_workers(master.pid)) == 2, 10, "two workers")
    yield master, port
    # SIGTERM: the master stops its workers and waits for them (a SIGKILL would orphan them)
    master.terminate()
    master.wait(20)


def fpm_get(port: int, op: str, a: str = "") -> fcgi.Response:
    return fcgi.request(("127.0.0.1", port), str(APP), {"op": op, "a": a})


def test_fpm_master_workers_and_later_workers(subreaper, fpm, agent, tmp_path, monkeypatch) -> None:
    master, port = fpm
    watch_log = tmp_path / "watch.log"
    monkeypatch.setenv("RASP_PHP_WATCH_LOG", str(watch_log))
    first = set(fpm_workers(master.pid))
    res = rasp_attach(master.pid, agent)
    assert res.returncode == 0, res.stderr
    rows = {r["pid"]: r for r in agent.control("ps")}
    assert master.pid in rows and rows[master.pid]["hooks"] == 0  # the master hooks nothing
    assert first <= set(rows), "every worker there at attach time has its probe"

    for i in range(4):
        r = fpm_get(port, "system", f"echo fpm{i}")
        assert r.status == 200 and r.text == f"fpm{i}\n", r.text + r.stderr.decode()
    early = agent.wait_rows(
        4, "hook = 'system' AND json_extract(event, '$.args[0]') LIKE 'echo fpm%'"
    )
    assert {e["pid"] for e in early} <= first
    # the master replaces workers that die; the watcher attaches the new ones
    for w in first:
        os.kill(w, 9)
    wait_for(
        lambda: len(set(fpm_workers(master.pid)) - first) == 2, 10, "the master forks new workers"
    )
    later = set(fpm_workers(master.pid))
    try:
        wait_for(
            lambda: later <= {r["pid"] for r in agent.control("ps") if r["state"] == "connected"},
            20,
            "later workers attached",
        )
    except AssertionError as e:
        log = watch_log.read_text() if watch_log.exists() else "no watch log"
        raise AssertionError(log) from e
    for i in range(2):
        assert fpm_get(port, "system", f"echo late{i}").text == f"late{i}\n"
    events = agent.wait_rows(
        2, "hook = 'system' AND json_extract(event, '$.args[0]') LIKE 'echo late%'"
    )
    assert {e["pid"] for e in events} <= later
    ev = events[0]
    assert ev["request"]["method"] == "GET" and ev["request"]["remote_addr"] == "127.0.0.1"
    assert ev["request"]["params"]["op"] == ["system"]
    assert ev["process"]["exe"] == PHP_FPM
    assert ev["stack"][0].startswith("{main} (" + str(APP))
