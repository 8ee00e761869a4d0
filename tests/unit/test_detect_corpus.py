"""The shared in-probe detection corpus (rasp/protocol/vectors/detect.json): the CPython
probe's block-mode checks return each case's verdict, and the agent's detectors (which run
after the fact and record what was blocked) report the same rule on every blocking case."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

import msgspec
import pytest

from host_agent.detectors import Detectors
from host_agent.rules import glob_regex, loads_rules
from host_agent.yamlfile import ConfigError

REPO = Path(__file__).resolve().parents[2]
CORPUS = json.loads((REPO / "rasp" / "protocol" / "vectors" / "detect.json").read_text())
sys.path.insert(0, str(REPO / "rasp" / "python"))

from rampart_probe import detect  # noqa: E402

CASES = CORPUS["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_python_probe_check_gives_the_corpus_verdict(case: dict) -> None:
    table = detect.DetectTable(case.get("detect", CORPUS["default_detect"]))
    got = table.check(case["kind"], case["hook"], case["args"], case["request"])
    assert got == case["expect"]


@pytest.mark.parametrize("case", [c for c in CASES if c["expect"]], ids=lambda c: c["name"])
def test_agent_detectors_agree_on_every_blocking_case(case: dict) -> None:
    found = Detectors().check(case["kind"], case["hook"], case["args"], case["request"])
    assert case["expect"] in [f.rule for f in found]


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["expect"] is None and "detect" not in c],
    ids=lambda c: c["name"],
)
def test_agent_detectors_agree_on_every_passing_case(case: dict) -> None:
    """Without exemptions or a narrower rule set, a case the probe lets through is one the
    agent does not report under any of the block-mode rules either."""
    found = Detectors().check(case["kind"], case["hook"], case["args"], case["request"])
    assert not {f.rule for f in found} & set(detect.RULE_KINDS)


def test_no_request_params_no_input_rule() -> None:
    table = detect.DetectTable(CORPUS["default_detect"])
    assert table.check("sql", "x", ["SELECT 'a' OR 1=1"], {"url": "/", "params": {}}) is None


def test_every_rule_and_kind_is_covered() -> None:
    assert {c["expect"] for c in CASES} >= set(detect.RULE_KINDS)
    assert {c["kind"] for c in CASES} >= {"sql", "process", "file", "network", "dns"}


@pytest.mark.parametrize(
    ("glob", "name"),
    [
        ("/srv/app/tmp/*", "/srv/app/tmp/a/b"),
        ("/srv/app/tmp/*", "/srv/app/tmpx"),
        ("/usr/bin/python3*", "/usr/bin/python3.11"),
        ("/usr/bin/python3*", "/usr/bin/python"),
        ("a[!x]c?", "abcd"),
        ("a[!x]c?", "axcd"),
        ("a[b", "a[b"),
        ("x.y+(z)", "x.y+(z)"),
        ("x.y", "xzy"),
    ],
)
def test_whitelist_globs_become_regexes_that_match_what_fnmatch_does(glob: str, name: str) -> None:
    """Path globs travel to probes as regexes (Python, Java and JS read them alike)."""
    assert bool(re.search(glob_regex(glob), name)) == fnmatch.fnmatchcase(name, glob)


def test_block_mode_rules_carry_their_whitelist_as_exemptions() -> None:
    rules = loads_rules(
        "rules:\n"
        "  - {id: sqli.input, action: block}\n"
        "  - {id: cmdi.input, action: block, enabled: false}\n"
        "  - {id: path.traversal, action: alert}\n"
        "whitelist:\n"
        "  - {rule: sqli.input, request_path: ^/admin/}\n"
        "  - {rule: '*', process: /usr/bin/node*, args: x}\n"
        "  - {rule: path.traversal, path: /tmp/*}\n"
    )
    got = [msgspec.to_builtins(r) for r in rules.detect_rules("/usr/bin/python3.11")]
    assert got == [{"rule": "sqli.input", "exempt": [{"request_path": "^/admin/"}]}]
    # an unknown exe keeps the process-scoped entry, without its condition (wider, never
    # narrower than the agent's whitelist)
    got = [msgspec.to_builtins(r) for r in rules.detect_rules("")]
    assert got[0]["exempt"] == [{"request_path": "^/admin/"}, {"args": "x"}]
    with pytest.raises(ConfigError, match="cannot block"):
        loads_rules("rules:\n  - {id: ssrf.scheme, action: block}\n")
