"""The shared detection corpus (rasp/protocol/vectors/detect.json) through the Go probe's
in-kernel check: each case is a real request to the real Go app (tests/apps/golang/vulnapp,
its corpus handler), whose sink of the case's kind runs with the case's argument under the real
uprobes; the verdict is the one the BPF program wrote into the sink's record (and a blocked
request gets no response: the handler panicked at the sink). Cases the Go check cannot
express are skipped with the reason (docs/go-probe.md, "Blocking on detections")."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rasp.golang import offsets as field_offsets
from rasp.golang import symbols
from rasp.golang.detectcfg import kernel_detect
from rasp.golang.hooks import ALL_SYMBOLS, HOOKS
from rasp.golang.records import RULES, decode
from rasp.golang.uprobes import GoUprobes
from rasp.protocol.schema import DetectExempt, DetectRule
from tests.conftest import REPO, GoBuild

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uprobes need root")

CORPUS = json.loads((REPO / "rasp" / "protocol" / "vectors" / "detect.json").read_text())

#: cases the bounded kernel check cannot express, and why
NOT_IN_KERNEL = {
    "sql_stacked_policy": "sqli.stacked has no kernel check (it needs no request; the agent "
    "detects it)",
    "sql_backslash_sqlite_is_data": "database/sql does not say which dialect the driver speaks: "
    "the check reads the query both ways (as the agent does for unknown drivers), so a "
    "backslash is an escape in one reading",
    "sql_whitelist_all_conditions": "an exemption with an `args` regex cannot be applied in the "
    "kernel: the rule is left to the agent for that process (never blocked there), so the "
    "finding is not blocked",
    "cmd_brings_the_shell": "a parameter that spells the shell itself (`sh -c id;id` split "
    "into argv) is not matched: the check looks for the value in the `sh -c` script",
}
SHELL_HOOKS = {"os.system", "child_process.exec", "system"}


def _go_args(case: dict[str, Any]) -> list[str]:
    """The case's argument as the Go sink of its kind takes it."""
    args, kind = case["args"], case["kind"]
    if kind == "process" and case["hook"] in SHELL_HOOKS:
        return ["sh", "-c", args[0]]
    if kind == "network":  # DialContext takes host:port (http.Client makes it from the URL)
        a = args[0]
        if "://" in a:
            u = urllib.parse.urlsplit(a)
            host = f"[{u.hostname}]" if ":" in (u.hostname or "") else u.hostname
            return [f"{host}:{u.port or 80}"]
        return [a]
    return list(args)


def _rules(case: dict[str, Any]) -> list[DetectRule]:
    specs = case.get("detect", CORPUS["default_detect"])
    return [
        DetectRule(rule=s["rule"], exempt=[DetectExempt(**e) for e in s.get("exempt", [])])
        for s in specs
    ]


@pytest.fixture(scope="module")
def probed_app(go_build: GoBuild, spawn_module: Any, tmp_path_factory: Any) -> Iterator[tuple]:
    binary = go_build("vulnapp")
    cwd: Path = tmp_path_factory.mktemp("corpus")
    proc = spawn_module([str(binary)], stdout=subprocess.PIPE, cwd=cwd)
    port = int(proc.stdout.readline().split()[1])
    info = symbols.inspect(binary, ALL_SYMBOLS)
    offs = field_offsets.resolve(info.path, 26, info.has_dwarf)
    by_hook = {}  # first symbol found wins (an inlined wrapper: os.Rename -> os.rename)
    for i, h in enumerate(HOOKS):
        found = [info.offsets[s] for s in h.symbols if s in info.offsets]
        if found:
            by_hook[i] = found[0]
    up = GoUprobes()
    up.load()
    try:
        res = up.attach(proc.pid, f"/proc/{proc.pid}/exe", by_hook, offs.values)
        assert res.attached and not res.failed, res
        yield up, proc, port
    finally:
        up.stop()


def _records(up: GoUprobes, kind: str, timeout: float = 5) -> list[Any]:
    kinds = {"network": {"network", "dns"}}.get(kind, {kind})
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while time.monotonic() < deadline:
        up.flush()
        for raw in up.take():
            e, _, _ = decode(raw)
            if e.hook and HOOKS[e.hook].kind in kinds:
                got.append(e)
        if got:
            time.sleep(0.05)  # a dial's lookup and connect records may come in two
            up.flush()
            for raw in up.take():
                e, _, _ = decode(raw)
                if e.hook and HOOKS[e.hook].kind in kinds:
                    got.append(e)
            return got
        time.sleep(0.02)
    return got


@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["name"] for c in CORPUS["cases"]])
def test_corpus_case_in_the_kernel(probed_app: tuple, case: dict[str, Any]) -> None:
    if case["name"] in NOT_IN_KERNEL:
        pytest.skip(NOT_IN_KERNEL[case["name"]])
    up, proc, port = probed_app
    up.take()  # nothing left over from the previous case
    up.set_detect(proc.pid, kernel_detect(_rules(case)).config())
    url = urllib.parse.urlsplit(case["request"]["url"])
    query = urllib.parse.urlencode(case["request"].get("params", {}), doseq=True)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{url.path or '/'}?{query}",
        headers={
            "X-Corpus-Kind": case["kind"],
            "X-Corpus-Args": json.dumps(_go_args(case)),
            **({"X-Corpus-Rename": "1"} if "rename" in case["hook"] else {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, body = r.status, r.read().decode()
    except (ConnectionError, urllib.error.URLError) as e:
        status, body = 0, repr(e)
    records = _records(up, case["kind"])
    assert records, f"no sink record for {case['name']} ({status} {body})"
    verdicts = {RULES[e.rule] for e in records if e.blocked}
    expect = case["expect"]
    if expect is None:
        assert verdicts == set() and status == 200, (verdicts, status, body)
    else:
        assert verdicts == {expect} and status == 0, (verdicts, status, body)
    assert proc.poll() is None
