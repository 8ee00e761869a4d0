"""Detectors in the running agent: events with request context get detections and alerts."""

from __future__ import annotations

import json

import msgspec

from rasp.protocol.schema import Request
from tests.agentproc import AgentProc


def _req(**params: str) -> Request:
    return Request(
        method="GET",
        url="http://127.0.0.1:8000/search",
        remote_addr="127.0.0.1:40000",
        params={k: [v] for k, v in params.items()},
    )


def test_attacks_in_context_are_detected_benign_traffic_is_not(agent: AgentProc) -> None:
    with agent.probe(runtime="python") as p:
        p.hello()
        inj = "x' OR '1'='1"
        p.trace("sqlite3.Cursor.execute", "sql", [f"SELECT * FROM users WHERE name = '{inj}'"],
                request=_req(name=inj))  # fmt: skip
        p.trace("sqlite3.Cursor.execute", "sql", ["SELECT * FROM users WHERE name = 'alice'"],
                request=_req(name="alice"))  # fmt: skip
        p.trace(
            "os.system", "process", ["ping -c1 127.0.0.1; id"], request=_req(host="127.0.0.1; id")
        )
        p.trace(
            "open", "file", ["/srv/files/../../etc/passwd", "r"], request=_req(f="../../etc/passwd")
        )
        p.trace("socket.getaddrinfo", "dns", ["metadata.google.internal", "80"],
                request=_req(host="metadata.google.internal"))  # fmt: skip
        p.trace("open", "file", ["/srv/files/report.pdf", "r"], request=_req(f="report.pdf"))
        rows = agent.wait_rows(6)
    found = [[d["rule"] for d in r.get("detections", [])] for r in rows]
    assert found == [["sqli.input"], [], ["cmdi.input"], ["path.traversal"], ["ssrf.internal"], []]
    sqli = rows[0]["detections"][0]
    assert sqli["param"] == "name" and sqli["value"] == "x' OR '1'='1"
    assert sqli["severity"] == "critical" and sqli["technique"] == "T1190"
    assert rows[0]["alerts"] == ["sqli.input"]
    assert "alerts" not in rows[1]
    stats = agent.control("stats")
    assert stats["detections"] == {
        "sqli.input": 1,
        "cmdi.input": 1,
        "path.traversal": 1,
        "ssrf.internal": 1,
    }
    assert stats["alerted"] == 4
    # the indexed column lets `events` and SQL find them
    res = agent.cli("events", "--store", str(agent.store), "--json", "--kind", "sql")
    assert '"sqli.input"' in res.stdout


def test_detectors_can_be_switched_off(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_DETECTORS": "false"}).start()
    with a.probe() as p:
        p.hello()
        p.trace("os.system", "process", ["ls; id"], request=_req(d="; id"))
        (row,) = a.wait_rows(1)
    assert "detections" not in row and "alerts" not in row


RULES = """\
rules:
  - {id: sqli.stacked, enabled: false}
  - {id: path.sensitive, severity: high}
whitelist:
  - rule: sqli.input
    request_path: ^/admin/console
    reason: the admin SQL console runs what admins type
"""


def test_rules_file_overrides_whitelist_and_aggregated_alerts(agent_factory) -> None:
    a = agent_factory()
    rules = a.dir / "rules.yaml"
    rules.write_text(RULES)
    a.extra_args = ["--rules", str(rules)]
    a.start()
    inj = "1 OR 1=1"
    with a.probe() as p:
        p.hello()
        for _ in range(3):  # the same attack three times: one alert row, count 3
            p.trace("sqlite3.Cursor.execute", "sql", [f"SELECT * FROM t WHERE id = {inj}"],
                    request=_req(id=inj))  # fmt: skip
        admin = Request(method="POST", url="http://127.0.0.1/admin/console", params={"q": [inj]})
        p.trace(
            "sqlite3.Cursor.execute", "sql", [f"SELECT * FROM t WHERE id = {inj}"], request=admin
        )
        p.trace("sqlite3.Cursor.execute", "sql", ["SELECT 1; DELETE FROM t"])  # rule disabled
        p.trace("open", "file", ["/proc/self/environ", "r"], request=_req(x="abc"))
        rows = a.wait_rows(6)
    assert [[d["rule"] for d in r.get("detections", [])] for r in rows] == [
        ["sqli.input"], ["sqli.input"], ["sqli.input"], [], [], ["path.sensitive"],
    ]  # fmt: skip
    assert rows[5]["detections"][0]["severity"] == "high"  # overridden from medium
    stats = a.control("stats")
    assert stats["whitelisted"] == {"sqli.input": 1}

    res = a.cli("alerts", "--store", str(a.store), "--json")
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    by_rule = {x["rule"]: x for x in alerts}
    assert set(by_rule) == {"sqli.input", "path.sensitive"}
    sqli = by_rule["sqli.input"]
    assert sqli["count"] == 3 and sqli["pid"] == p.pid and sqli["severity"] == "critical"
    assert sqli["signature"] == "GET /search id -> sqlite3.Cursor.execute"
    # the alert carries its first event: request, stack and process tree
    assert sqli["event"]["request"]["params"] == {"id": [inj]}
    assert sqli["event"]["process"]["pid_tree"].startswith(f"{p.pid}.")
    table = a.cli("alerts", "--store", str(a.store))
    assert "sqli.input" in table.stdout and "critical" in table.stdout


def test_bad_rules_file(agent_factory, tmp_path) -> None:
    bad = tmp_path / "rules.yaml"
    # only the rules probes carry a check for may block (docs/detection.md, "Block mode")
    bad.write_text("rules:\n  - id: path.sensitive\n    action: block\n")
    a = agent_factory(args=["--rules", str(bad)])
    a.start(wait=False)
    assert a.proc.wait(30) == 2
    assert f"{bad}:2: rules.0: Value error, rule 'path.sensitive' cannot block" in a.log_text()
    # at reload, a bad file keeps the rules in force
    good = agent_factory(args=["--rules", str(bad)])
    bad.write_text(RULES)
    good.start()
    bad.write_text("whitelist:\n  - rule: nope.rule\n    args: x\n")
    res = good.cli("policy", "reload", "--socket", str(good.socket))
    assert res.returncode == 1
    assert "unknown rule 'nope.rule'" in res.stderr and "the rules in force stay" in res.stderr


BLOCK_RULES = """\
rules:
  - {id: sqli.input, action: block}
  - {id: path.traversal, action: block}
  - {id: cmdi.input, action: block, enabled: false}
whitelist:
  - {rule: sqli.input, request_path: ^/admin/}
  - {rule: "*", process: /no/such/program, args: x}
  - {rule: path.traversal, path: /srv/app/tmp/*}
"""


def _block_frame(p) -> dict:
    """The block table the agent pushed after the hello (filter, block, quota come in order)."""
    while True:
        msg = p.recv(timeout=10)
        if msg.__class__.__name__ == "Block":
            return msgspec.to_builtins(msg.data)


def test_block_mode_rules_are_pushed_with_their_exemptions(agent_factory, tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BLOCK_RULES)
    a = agent_factory(args=["--rules", str(rules)]).start()
    with a.probe(runtime="python") as p:
        p.hello()
        block = _block_frame(p)
        assert block["detect"] == [
            # the entry for another program is left out; the glob became an anchored regex
            {"rule": "path.traversal", "exempt": [{"path": "^\\/srv\\/app\\/tmp\\/[\\s\\S]*$"}]},
            {"rule": "sqli.input", "exempt": [{"request_path": "^/admin/"}]},
        ]
        first_uuid = block["uuid"]
        assert first_uuid
        # a reload pushes the new rules to connected probes, under a new uuid
        rules.write_text("rules:\n  - {id: ssrf.internal, action: block}\n")
        res = a.cli("policy", "reload", "--socket", str(a.socket))
        assert res.returncode == 0, res.stderr
        block = _block_frame(p)
        assert block["detect"] == [{"rule": "ssrf.internal"}]
        assert block["uuid"] != first_uuid
        # and without block rules the block table is the policy's alone again
        rules.write_text("rules: []\n")
        assert a.cli("policy", "reload", "--socket", str(a.socket)).returncode == 0
        block = _block_frame(p)
        assert "detect" not in block or block["detect"] == []
