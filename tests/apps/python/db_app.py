#!/usr/bin/env python3
"""http.server test app that queries real PostgreSQL and MariaDB servers through psycopg2,
psycopg 3, pymysql and mysqlclient (MySQLdb) with request input, concatenated into the SQL
on purpose (the classic injection). Prints "ready PORT" once listening.

Environment: PGHOST (socket dir), PGPORT, PGUSER, PGDATABASE; MYSQL_SOCKET. Each database
has `users (name, role)`. A refused statement (Rampart's block) answers 403.

Routes (query parameter `name`): /pg2, /pg2-early (a psycopg2 connection opened at start,
before any attach), /pg3, /pymysql, /pymysql-many (executemany INSERT), /mysqldb.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, urlsplit

import MySQLdb
import psycopg
import pymysql
from psycopg2 import connect as pg2_connect  # bound by name before any attach, on purpose

PG = {k: os.environ[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")}
MYSQL_SOCKET = os.environ["MYSQL_SOCKET"]
#: opened before any attach: the probe reaches its cursors through its cursor_factory
EARLY_PG2 = pg2_connect(host=PG["PGHOST"], port=PG["PGPORT"], user=PG["PGUSER"], dbname="app")
EARLY_PG2.autocommit = True


def _select(name: str) -> str:
    return "SELECT name, role FROM users WHERE name = '" + name + "'"


def pg2(name: str) -> str:
    conn = pg2_connect(host=PG["PGHOST"], port=PG["PGPORT"], user=PG["PGUSER"], dbname="app")
    try:
        with conn.cursor() as cur:
            cur.execute(_select(name))
            return repr(cur.fetchall())
    finally:
        conn.close()


def pg2_early(name: str) -> str:
    with EARLY_PG2.cursor() as cur:
        cur.execute(_select(name))
        return repr(cur.fetchall())


def pg3(name: str) -> str:
    dsn = "host={PGHOST} port={PGPORT} user={PGUSER} dbname=app".format(**PG)
    with psycopg.connect(dsn) as conn:
        return repr(conn.execute(_select(name)).fetchall())


def _pymysql():
    return pymysql.connect(unix_socket=MYSQL_SOCKET, user="root", database="app")


def py_mysql(name: str) -> str:
    conn = _pymysql()
    try:
        with conn.cursor() as cur:
            cur.execute(_select(name))
            return repr(cur.fetchall())
    finally:
        conn.close()


def pymysql_many(name: str) -> str:
    conn = _pymysql()
    try:
        with conn.cursor() as cur:
            rows = [(name, "guest"), (name + "2", "guest")]
            n = cur.executemany("INSERT INTO users (name, role) VALUES (%s, %s)", rows)
        conn.commit()
        return f"inserted {n}"
    finally:
        conn.close()


def mysqldb(name: str) -> str:
    conn = MySQLdb.connect(unix_socket=MYSQL_SOCKET, user="root", database="app")
    try:
        cur = conn.cursor()
        cur.execute(_select(name))
        return repr(cur.fetchall())
    finally:
        conn.close()


ROUTES = {
    "/pg2": pg2,
    "/pg2-early": pg2_early,
    "/pg3": pg3,
    "/pymysql": py_mysql,
    "/pymysql-many": pymysql_many,
    "/mysqldb": mysqldb,
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/health":
            return self._reply(200, "ok")
        fn = ROUTES.get(url.path)
        if fn is None:
            return self._reply(404, "no route")
        try:
            return self._reply(200, fn(q.get("name", "")))
        except PermissionError as e:
            return self._reply(403, f"blocked: {e}")
        except Exception as e:
            return self._reply(500, f"error: {type(e).__name__}: {e}")


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    print(f"ready {srv.server_address[1]}", flush=True)
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
