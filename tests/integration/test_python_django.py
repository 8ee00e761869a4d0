"""Django under gunicorn with the CPython probe attached live: request context set at
Django's WSGI entry (`WSGIHandler.__call__`) on events from views, query and form input."""

from __future__ import annotations

import os

import pytest

from tests.agentproc import AgentProc, wait_for
from tests.integration.pyprobe import children, events, get, rasp_attach, start_gunicorn

pytestmark = pytest.mark.integration


def test_django_gunicorn_events_carry_request_context(spawn, agent: AgentProc, tmp_path) -> None:
    pytest.importorskip("django", reason="django is a dev extra (pip install -e '.[dev]')")
    env = dict(os.environ, DJANGO_DB=str(tmp_path / "db.sqlite3"))
    master, port = start_gunicorn(spawn, app="tests.apps.python.django_app:application", env=env)
    (worker,) = wait_for(lambda: children(master.pid), 10, "gunicorn worker")
    rasp_attach(agent, worker)

    assert get(port, "/cmd", c="id")[0] == 200
    (ev,) = events(agent, worker, "os.system")
    req = ev["request"]
    assert req["method"] == "GET" and req["url"] == f"http://127.0.0.1:{port}/cmd?c=id"
    assert req["params"] == {"c": ["id"]} and req["remote_addr"] == "127.0.0.1"
    assert req["headers"]["user-agent"] == "rampart-test"
    assert any(f.startswith("cmd (") and "django_app.py" in f for f in ev["stack"])

    # a form POST through Django's own sqlite3 connection: params hold the form fields, and
    # Django still reads the body (the view answers with the rows it found)
    status, body = get(port, "/orm", form={"name": "x' OR '1'='1"})
    assert status == 200 and body == "[]", body
    sql = wait_for(
        lambda: [
            e
            for e in agent.rows("pid = ? AND kind = 'sql'", (worker,))
            if "FROM people WHERE" in e["args"][0]
        ],
        15,
        "the ORM query's event",
    )
    assert sql[0]["hook"] == "sqlite3.Cursor.execute"
    assert sql[0]["request"]["method"] == "POST"
    assert sql[0]["request"]["params"] == {"name": ["x' OR '1'='1"]}
    assert [d["rule"] for d in sql[0].get("detections", [])] == ["sqli.input"]
    assert worker in children(master.pid)
