"""The CPython probe's C accelerator (rampart_probe/_accel, rasp/python/native/rampart_accel.c)
against its pure-Python path, in real interpreters: the same calls give the same events
(args, stack frames, request context), blocks still block, detection in block mode, quotas
shared by both paths, filters, agent gone / queue full -> drop and count; an internal error
turns it off and the Python path takes over; a build that fails to load leaves the Python
path; interpreters it was not built for use the Python path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.pyprobe import interpreter

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = REPO / "rasp" / "python"
CHECK = REPO / "tests" / "apps" / "python" / "probe_accel_check.py"
BUILT = sorted((PROBE_DIR / "rampart_probe").glob("_accel.cpython-311*.so"))


def run(exe: str, probe_dir: Path, work: Path, *extra: str, accel: bool = True) -> dict:
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env["RAMPART_PYTHON_ACCEL"] = "1" if accel else "0"
    res = subprocess.run(
        [exe, str(CHECK), str(probe_dir), str(work), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.replace(str(work), "WORK"))


def check_semantics(out: dict) -> None:
    """What both paths must do, whichever runs."""
    assert out["away"] == {"queued": 0, "dropped_by": {"agent_away": 1}}
    assert out["muted_queued"] == 0
    b = out["block"]
    assert b["system"] == "Rampart blocked os.system by policy no-forbidden"
    assert not b["system_ran"] and b["allowed_rc"] == 0
    assert b["sql"] == "Rampart blocked sqlite3.Cursor.execute by policy no-drop"
    assert b["table_left"] == 1 and b["blocked"] == 2
    assert [e[2] for e in b["events"]] == ["no-forbidden", None, None, "no-drop", None]
    assert out["detect"] == "Rampart blocked os.system by policy cmdi.input"
    assert out["detect_events"] == [
        ["os.system", ["true x;true"], "cmdi.input"],
        ["os.system", ["true"], None],
    ]
    assert out["quota"] == {"queued": 3, "dropped_by": {"quota": 1}}
    assert out["filter"] == {
        "events": [["true "], ["/nonexistent/x"]],
        "dropped_by": {"filter": 1},
    }
    assert out["queue_full"] == {"queue_full": 1}
    first_round, in_request, depths = out["events"]
    events = first_round + in_request + depths
    hooks = [e[0] for e in events]
    assert hooks.count("os.system") == 6 and hooks.count("sqlite3.Cursor.execute") == 6
    assert hooks.count("sqlite3.Cursor.executemany") == 3
    assert "subprocess.Popen" in hooks and "pickle.find_class" in hooks
    assert not any(e[2] and str(e[2][0]).endswith("mod.py") and e[2][1] == "r" for e in events)
    popen = next(e for e in events if e[0] == "subprocess.Popen")
    assert popen[2][:2] == ["true", "arg one"] and len(popen[2][2]) == 4096
    first = events[0]
    assert first[:5] == ["os.system", "process", ["true"], None, None]
    assert first[5][0].startswith("calls (") and "probe_accel_check.py" in first[5][0]
    assert all(e[4] is None for e in first_round)
    req = {
        "method": "GET",
        "url": "http://t/x?q=1",
        "remote_addr": "127.0.0.1",
        "params": {"q": ["1"]},
        "headers": {"user-agent": "check", "host": "t"},
    }
    assert in_request and all(e[4] == req for e in in_request + depths)
    assert all(len(e[5]) >= 2 for e in in_request)
    # per-hook depth: open capped at 2 frames, os.system none
    assert all(len(e[5]) == 2 for e in depths if e[0] == "open")
    assert all(e[5] == [] for e in depths if e[0] == "os.system")


@pytest.mark.skipif(not BUILT, reason="the accelerator is not built (make setup)")
def test_accelerator_gives_the_python_paths_events(tmp_path: Path) -> None:
    on = run(sys.executable, PROBE_DIR, tmp_path / "on")
    off = run(sys.executable, PROBE_DIR, tmp_path / "off", accel=False)
    assert on["accel"] == "loaded" and on["active"] and on["c_emit"] and on["c_sql"]
    assert off["accel"] == "disabled" and not off["active"] and not off["c_emit"]
    assert not off["c_sql"]
    assert on["stack_same"] is True
    check_semantics(on)
    check_semantics(off)
    for key in ("events", "block", "detect_events", "quota", "filter", "queue_full", "away"):
        assert on[key] == off[key], key


@pytest.mark.skipif(not BUILT, reason="the accelerator is not built (make setup)")
def test_system_python_loads_the_same_build(tmp_path: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3")
    ver = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if ver != "True":
        pytest.skip("/usr/bin/python3 is not 3.11")
    out = run("/usr/bin/python3", PROBE_DIR, tmp_path / "sys")
    assert out["accel"] == "loaded" and out["active"] and out["stack_same"] is True
    check_semantics(out)


@pytest.mark.skipif(not BUILT, reason="the accelerator is not built (make setup)")
def test_internal_error_turns_it_off_and_the_python_path_takes_over(tmp_path: Path) -> None:
    f = run(sys.executable, PROBE_DIR, tmp_path / "fault", "fault")["fault"]
    assert f["rc"] == [0, 0]  # the app's calls went on
    assert not f["active"] and f["status"].startswith("failed: RuntimeError")
    assert f["python_hook"] and f["emit_is_python"] and f["stack_is_python"]
    assert f["first"] == ["os.system"]  # the failing call itself reported once, by Python
    assert f["later"] == ["os.system", "sqlite3.Cursor.execute"]
    assert f["failed_once"] == ["accelerator"] and f["dropped_by"] == {"error": 1}


def test_a_build_that_fails_to_load_leaves_the_python_path(tmp_path: Path) -> None:
    copy = tmp_path / "probe"
    shutil.copytree(PROBE_DIR / "rampart_probe", copy / "rampart_probe")
    for so in copy.glob("rampart_probe/_accel*.so"):
        so.unlink()
    suffix = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    (copy / "rampart_probe" / f"_accel{suffix}").write_bytes(b"\x7fELF not really a library")
    out = run(sys.executable, copy, tmp_path / "bad")
    assert out["accel"].startswith("unavailable: ImportError") and not out["active"]
    check_semantics(out)


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_other_interpreters_use_the_python_path(version: str, tmp_path: Path) -> None:
    exe = interpreter(version)
    if exe is None:
        pytest.skip(f"no CPython {version} here")
    out = run(exe, PROBE_DIR, tmp_path / "other")
    assert out["accel"].startswith("unavailable") and not out["active"]
    check_semantics(out)


ENCODE = r"""
import json, random, sys
sys.path.insert(0, sys.argv[1])
from rampart_probe import _accel, core, wire
rnd = random.Random(7)
alphabet = ["a", "Z", "0", " ", '"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f",
            "é", "€", "\u2028", "😀", "\udcff", "\ud800", "/", "<", "'"]
def text():
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
prefix = core.Probe("/nonexistent", "sdk").trace_prefix()
same = unsupported = 0
for i in range(3000):
    req = None if i % 3 == 0 else {
        "method": "GET", "url": text(), "remote_addr": "127.0.0.1",
        "params": {text(): [text(), text()] for _ in range(rnd.randint(0, 3))},
        "headers": {"user-agent": text()},
    }
    entry = (1764000000.123 + i, text(), "file", [text() for _ in range(rnd.randint(0, 4))],
             None if i % 5 else text(), req, [text() for _ in range(rnd.randint(0, 5))])
    c = _accel.encode_event(prefix, entry)
    py = wire.encode_trace(prefix, *core._event(entry))
    assert c == py, (entry, c, py)
    same += 1
# the same stack again (from the C stack cache), and the same list with one frame changed
st = ["f (a.py:1)", "g (b\\\"q.py:2)", "\udcff (c.py:3)"]
for i in range(4):
    entry = (1764000000.5, "open", "file", ["/x"], None, None, list(st))
    assert _accel.encode_event(prefix, entry) == wire.encode_trace(prefix, *core._event(entry))
    same += 1
    st[1] = st[1] if i % 2 else "h (d.py:%d)" % i
# what it leaves to Python: a float arg, a list subclass
class L(list):
    pass
for odd in ([1.5], L(["x"])):
    if _accel.encode_event(prefix, (1.0, "h", "k", odd, None, None, [])) is None:
        unsupported += 1
print(json.dumps({"same": same, "unsupported": unsupported}))
"""


@pytest.mark.skipif(not BUILT, reason="the accelerator is not built (make setup)")
def test_c_trace_encoder_gives_the_python_encoders_bytes() -> None:
    res = subprocess.run(
        [sys.executable, "-c", ENCODE, str(PROBE_DIR)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout) == {"same": 3004, "unsupported": 2}
