"""Detectors in the running agent: events with request context get detections and alerts."""

from __future__ import annotations

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
