"""The shared in-probe detection corpus (rasp/protocol/vectors/detect.json) run by each
runtime's own check, in its own runtime: the JVM probe's `Detect` (through `DetectCheck` in the
agent jar). CPython's is in tests/unit/test_detect_corpus.py; the block path end to end, with
real apps, is the matrix's block mode (tests/integration/test_attack_matrix.py)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import REPO
from tests.integration.test_jvm_probe import AGENT_JAR

CORPUS = REPO / "rasp" / "protocol" / "vectors" / "detect.json"
N_CASES = len(json.loads(CORPUS.read_text())["cases"])


def test_jvm_detect_gives_every_corpus_verdict() -> None:
    res = subprocess.run(
        ["java", "-cp", str(AGENT_JAR), "rampart.jvm.DetectCheck", str(CORPUS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{N_CASES} passed, 0 failed" in res.stdout and "FAIL" not in res.stdout
