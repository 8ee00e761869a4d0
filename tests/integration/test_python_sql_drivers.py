"""The CPython probe's DB-API wrappers for psycopg2, psycopg 3, pymysql and mysqlclient
against real PostgreSQL and MariaDB servers (private instances, Unix sockets only): live
attach into tests/apps/python/db_app.py, injections from request input, events, detections
and block policies asserted in the agent's store and in the servers' statement logs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.agentproc import AgentProc, wait_for
from tests.integration import dbservers
from tests.integration.pyprobe import APPS, events, get, rasp_attach

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INJECTION = "alice' OR '1'='1"
#: the hook of each route: the driver's module first, so the detector picks the dialect
ROUTES = {
    "/pg2": "psycopg2.extensions.cursor.execute",
    "/pg2-early": "psycopg2.extensions.cursor.execute",
    "/pg3": "psycopg.Cursor.execute",
    "/pymysql": "pymysql.cursors.Cursor.execute",
    "/mysqldb": "MySQLdb.cursors.BaseCursor.execute",
}
BLOCK_POLICY = """\
policies:
  - id: no-sql-tautology
    runtime: python
    kind: sql
    match: {args: "OR '1'='1"}
    action: block
"""


def _seed_postgres(srv: dbservers.DbServer) -> None:
    import psycopg2

    conn = psycopg2.connect(host=str(srv.root), user="rampart", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE app")
    conn.close()
    conn = psycopg2.connect(host=str(srv.root), user="rampart", dbname="app")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE users (name text, role text)")
        cur.execute("INSERT INTO users VALUES ('alice', 'admin'), ('bob', 'user')")
    conn.close()


def _seed_mariadb(srv: dbservers.DbServer) -> None:
    import pymysql

    conn = pymysql.connect(unix_socket=str(srv.socket), user="root")
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE app")
        cur.execute("CREATE TABLE app.users (name varchar(64), role varchar(64))")
        cur.execute("INSERT INTO app.users VALUES ('alice', 'admin'), ('bob', 'user')")
    conn.commit()
    conn.close()


@pytest.fixture(scope="session")
def databases() -> Iterator[dict]:
    """Both servers for the whole session, seeded with `app.users`."""
    if dbservers.postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries absent (apt: postgresql, via make setup)")
    if dbservers.mariadb_bin() is None:
        pytest.skip("mariadbd absent (apt: mariadb-server, via make setup)")
    pg = dbservers.start_postgres()
    try:
        my = dbservers.start_mariadb()
    except BaseException:
        pg.stop()
        raise
    try:
        _seed_postgres(pg)
        _seed_mariadb(my)
        yield {"pg": pg, "my": my}
    finally:
        my.stop()
        pg.stop()


def _start_app(spawn, dbs: dict):
    env = dict(os.environ)
    env.update(
        PGHOST=str(dbs["pg"].root),
        PGPORT="5432",
        PGUSER="rampart",
        PGDATABASE="app",
        MYSQL_SOCKET=str(dbs["my"].socket),
    )
    p = spawn([sys.executable, str(APPS / "db_app.py")], stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline().decode()
    assert line.startswith("ready "), line
    return p, int(line.split()[1])


def test_each_driver_reports_sql_with_request_context_and_sqli(
    spawn, agent: AgentProc, databases
) -> None:
    p, port = _start_app(spawn, databases)
    out = rasp_attach(agent, p.pid)
    assert out["probe"]["mode"] == "attached"

    for route in ROUTES:
        status, body = get(port, route, name=INJECTION)
        assert status == 200 and "bob" in body, (route, body)  # the injection worked
        status, body = get(port, route, name="bob")
        assert status == 200 and "alice" not in body, (route, body)

    injected = "SELECT name, role FROM users WHERE name = '" + INJECTION + "'"
    by_hook: dict = {}
    for hook in set(ROUTES.values()):
        n = 4 if hook.startswith("psycopg2") else 2  # /pg2 and /pg2-early share the hook
        by_hook[hook] = [e for e in events(agent, p.pid, hook, n) if "users" in e["args"][0]]
    for route, hook in ROUTES.items():
        evs = [e for e in by_hook[hook] if e["request"]["url"].split("?")[0].endswith(route)]
        bad = [e for e in evs if e["args"][0] == injected]
        good = [e for e in evs if e["args"][0].endswith("'bob'")]
        assert len(bad) == 1 and len(good) == 1, (route, evs)
        ev = bad[0]
        assert ev["kind"] == "sql" and not ev["blocked"]
        assert ev["request"]["method"] == "GET"
        assert ev["request"]["params"] == {"name": [INJECTION]}
        assert ev["request"]["remote_addr"] == "127.0.0.1"
        assert any(f.split(" ")[0] in ("pg2", "pg2_early", "pg3", "py_mysql", "mysqldb")
                   for f in ev["stack"]), ev["stack"]  # fmt: skip
        # the detector read the statement in the driver's dialect and saw the injection
        assert [d["rule"] for d in ev.get("detections", [])] == ["sqli.input"], ev
        assert ev["detections"][0]["param"] == "name"
        assert not good[0].get("detections")

    # executemany: one event for the statement, none for the rows pymysql runs through
    # execute internally
    status, body = get(port, "/pymysql-many", name="carol")
    assert status == 200 and body == "inserted 2", body
    (many,) = events(agent, p.pid, "pymysql.cursors.Cursor.executemany")
    assert many["args"] == ["INSERT INTO users (name, role) VALUES (%s, %s)"]
    assert many["request"]["params"] == {"name": ["carol"]}
    assert not [
        e for e in agent.rows("pid = ?", (p.pid,)) if e["args"][0].startswith("INSERT INTO users")
        and e["hook"] != "pymysql.cursors.Cursor.executemany"
    ]  # fmt: skip
    assert p.poll() is None


def test_block_policy_stops_the_statement_before_the_server_sees_it(
    spawn, agent_factory, databases
) -> None:
    agent = agent_factory()
    agent.policy.write_text(BLOCK_POLICY)
    agent.start()
    p, port = _start_app(spawn, databases)
    rasp_attach(agent, p.pid)
    wait_for(lambda: get(port, "/pg2", name=INJECTION)[0] == 403, 10, "block in force")

    marker = "zed' OR '1'='1"  # a statement text no other test sends
    for route, hook in ROUTES.items():
        status, body = get(port, route, name=marker)
        assert status == 403, (route, body)
        assert f"Rampart blocked {hook} by policy no-sql-tautology" in body
        assert get(port, route, name="bob")[0] == 200  # other statements still run
    blocked = agent.wait_rows(
        len(ROUTES), "pid = ? AND blocked = 1 AND event LIKE '%zed%'", (p.pid,)
    )
    assert {e["hook"] for e in blocked} == set(ROUTES.values())
    assert all(e["policy_id"] == "no-sql-tautology" for e in blocked)
    assert all(e["request"]["params"] == {"name": [marker]} for e in blocked)
    # neither server ever received the refused statement; the benign ones it did
    for srv in databases.values():
        logged = srv.statements()
        assert "WHERE name = 'bob'" in logged
        assert "zed" not in logged, srv.kind
