"""The detectors against the payload corpus in tests/data/detectors/ (pure logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from host_agent.detectors import Detectors
from host_agent.detectors.sql import check as sql_check
from host_agent.detectors.ssrf import parse_ip
from rasp.protocol.schema import Request

DATA = Path(__file__).resolve().parents[1] / "data" / "detectors"


def corpus(name: str, part: str) -> list[dict[str, Any]]:
    return yaml.safe_load((DATA / f"{name}.yaml").read_text())[part]


def request(params: dict[str, str]) -> Request:
    return Request(
        method="GET", url="http://127.0.0.1/x", params={k: [v] for k, v in params.items()}
    )


def rules(kind: str, hook: str, args: list[str], params: dict[str, str]) -> list[str]:
    return [f.rule for f in Detectors().check(kind, hook, args, request(params))]


@pytest.mark.parametrize("case", corpus("sqli", "attacks"), ids=lambda c: c["query"][:60])
def test_sqli_attacks(case: dict) -> None:
    assert case["expect"] in rules("sql", "execute", [case["query"]], case["params"])


@pytest.mark.parametrize("case", corpus("sqli", "benign"), ids=lambda c: c["query"][:60])
def test_sqli_benign(case: dict) -> None:
    assert rules("sql", "execute", [case["query"]], case["params"]) == []


@pytest.mark.parametrize("case", corpus("cmdi", "attacks"), ids=lambda c: c["args"][-1][:50])
def test_cmdi_attacks(case: dict) -> None:
    assert rules("process", case["hook"], case["args"], case["params"]) == ["cmdi.input"]


@pytest.mark.parametrize("case", corpus("cmdi", "benign"), ids=lambda c: c["args"][-1][:50])
def test_cmdi_benign(case: dict) -> None:
    assert rules("process", case["hook"], case["args"], case["params"]) == []


@pytest.mark.parametrize("case", corpus("path", "attacks"), ids=lambda c: c["args"][0][:50])
def test_path_attacks(case: dict) -> None:
    assert rules("file", "open", case["args"], case["params"]) == [case["expect"]]


@pytest.mark.parametrize("case", corpus("path", "benign"), ids=lambda c: c["args"][0][:50])
def test_path_benign(case: dict) -> None:
    assert rules("file", "open", case["args"], case["params"]) == []


@pytest.mark.parametrize("case", corpus("ssrf", "attacks"), ids=lambda c: c["args"][0][:50])
def test_ssrf_attacks(case: dict) -> None:
    assert rules(case["kind"], "connect", case["args"], case["params"]) == [case["expect"]]


@pytest.mark.parametrize("case", corpus("ssrf", "benign"), ids=lambda c: c["args"][0][:50])
def test_ssrf_benign(case: dict) -> None:
    assert rules(case["kind"], "connect", case["args"], case["params"]) == []


def test_no_request_no_input_correlation() -> None:
    d = Detectors()
    assert d.check("process", "os.system", ["ls; id"], None) == []
    assert d.check("file", "open", ["/etc/passwd"], None) == []
    # SQL token policies do not need a request
    assert [f.rule for f in d.check("sql", "execute", ["SELECT 1; DROP TABLE t"], None)] == [
        "sqli.stacked"
    ]


@pytest.mark.parametrize(
    ("text", "ip"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("::1", "::1"),
        ("example.org", None),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
    ],
)
def test_ip_spellings(text: str, ip: str | None) -> None:
    got = parse_ip(text)
    assert (str(got) if got else None) == ip


def test_sql_check_finds_input_case_insensitively() -> None:
    q = "SELECT a FROM t WHERE id = 1 UNION SELECT password FROM users"
    (f,) = sql_check(q, request({"id": "1 union select password from users"}))
    assert f.rule == "sqli.input" and f.param == "id"


@pytest.mark.parametrize("case", corpus("path", "writes"), ids=lambda c: c["args"][0][-30:])
def test_script_writes(case: dict) -> None:
    got = rules("file", case["hook"], case["args"], case["params"])
    assert got == ([case["expect"]] if case["expect"] else [])


@pytest.mark.parametrize("case", corpus("deser", "attacks"), ids=lambda c: c["args"][-1][-40:])
def test_deserialization_and_jndi_attacks(case: dict) -> None:
    got = Detectors().check(case["kind"], case["hook"], case["args"], None, case.get("stack", []))
    assert [f.rule for f in got] == [case["expect"]]


@pytest.mark.parametrize("case", corpus("deser", "benign"), ids=lambda c: c["args"][-1][-40:])
def test_deserialization_and_jndi_benign(case: dict) -> None:
    assert (
        Detectors().check(case["kind"], case["hook"], case["args"], None, case.get("stack", []))
        == []
    )
