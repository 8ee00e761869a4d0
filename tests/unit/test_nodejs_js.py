"""The Node probe's own tests (`node --test rasp/nodejs/test/`): framing against the shared
vectors, policy tables, blocking and self-disabling hooks inside a real node process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parents[2] / "rasp" / "nodejs" / "test"


def test_node_test_suite_passes() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not on PATH: run `make setup`")
    res = subprocess.run(
        [node, "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=120
    )
    summary = [line for line in res.stdout.splitlines() if line.startswith(("# pass", "# fail"))]
    failed = [line for line in res.stdout.splitlines() if line.startswith("not ok")]
    assert res.returncode == 0, "\n".join(failed) + "\n" + res.stdout[-3000:] + res.stderr[-2000:]
    assert summary and summary[-1] == "# fail 0"
