"""The JVM probe's pure logic (rule matching, table replacement, quotas, config, argument
caps) through its own Java checks: tests/unit/jvm/PolicyCheck.java, compiled against the
agent jar and run as a plain program (no agent, no instrumentation)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from injector.attach_jvm import AGENT_JAR
from tests.conftest import BUILD

pytestmark = pytest.mark.slow  # a JVM start and a javac

CHECK = Path(__file__).resolve().parent / "jvm" / "PolicyCheck.java"


def test_policy_logic_in_the_jvm_probe() -> None:
    assert AGENT_JAR.is_file(), "the agent jar is missing: run `make setup`"
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="policycheck-") as out:
        subprocess.run(
            ["javac", "-cp", str(AGENT_JAR), "-d", out, str(CHECK)],
            check=True,
            timeout=120,
            capture_output=True,
        )
        res = subprocess.run(
            ["java", "-cp", f"{AGENT_JAR}:{out}", "rampart.jvm.PolicyCheck"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith(" 0 failed")
