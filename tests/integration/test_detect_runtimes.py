"""The shared in-probe detection corpus (rasp/protocol/vectors/detect.json) run by each
runtime's own check, in its own runtime: the JVM probe's `Detect` (through `DetectCheck` in the
agent jar), and the PHP probe's checks as php_agent.py loads them (rasp/nodejs/lib/detect.js
wrapped as `RampartDetect`), evaluated by node as a script, not required as a module.
CPython's is in tests/unit/test_detect_corpus.py, Node.js's in rasp/nodejs/test/detect.test.js;
the block path end to end, with real apps, is the matrix's block mode
(tests/integration/test_attack_matrix.py)."""

from __future__ import annotations

import json
import subprocess

from rasp.php.php_agent import detect_source
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


PHP_HARNESS = """
const corpus = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
let failed = 0;
for (const c of corpus.cases) {
  const got = new RampartDetect.DetectTable(c.detect || corpus.default_detect)
    .check(c.kind, c.hook, c.args, c.request);
  if (got !== c.expect) { failed++; console.log('FAIL ' + c.name + ': ' + got); }
}
console.log((corpus.cases.length - failed) + ' passed, ' + failed + ' failed');
"""


def test_php_detect_as_loaded_into_php_gives_every_corpus_verdict(tmp_path) -> None:
    script = tmp_path / "php_detect.js"
    # strict mode opens the PHP probe's script too (php_agent_core.js comes first)
    script.write_text("'use strict';\n" + detect_source() + PHP_HARNESS)
    res = subprocess.run(
        ["node", str(script), str(CORPUS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{N_CASES} passed, 0 failed" in res.stdout, res.stdout
