"""The sinks the CPython test apps reach from request input, shared by the Flask app and the
plain http.server app. Stdlib only (http_server_app.py runs under any CPython 3.8-3.13).

Names bound before any attach on purpose (`from os import system`, `from sqlite3 import
connect`): the probe must see calls through references taken before it was loaded.
Every function returns text; a refused call raises PermissionError (Rampart's block).
"""

import base64
import os
import pickle
import subprocess
import urllib.request
from os import system
from sqlite3 import connect

DB = None
#: opened at start, before any attach: the probe reaches it only through its trace callback
EARLY_DB = connect(":memory:", check_same_thread=False)
EARLY_DB.execute("CREATE TABLE items (name TEXT)")


def _db():
    global DB
    if DB is None:
        DB = connect(":memory:", check_same_thread=False)
        DB.execute("CREATE TABLE users (name TEXT, role TEXT)")
        DB.executemany("INSERT INTO users VALUES (?, ?)", [("alice", "admin"), ("bob", "user")])
    return DB


def run_command(cmd: str) -> str:
    rc = system(cmd + " > /dev/null 2>&1")
    out = subprocess.run(["/bin/echo", cmd], capture_output=True, text=True, check=True)
    return f"rc={rc} out={out.stdout.strip()}"


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read(100)


def write_file(path: str, data: str) -> str:
    with open(path, "w") as f:
        f.write(data)
    return f"wrote {len(data)}"


def list_dir(path: str) -> str:
    return ",".join(sorted(os.listdir(path))[:20])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read(100).decode()


def sql(name: str) -> str:
    # string concatenation on purpose: the classic injection sink
    rows = _db().execute("SELECT name, role FROM users WHERE name = '" + name + "'").fetchall()
    return repr(rows)


def sql_early(name: str) -> str:
    rows = EARLY_DB.execute("SELECT name FROM items WHERE name = '" + name + "'").fetchall()
    return repr(rows)


def unpickle(b64: str) -> str:
    return repr(pickle.loads(base64.b64decode(b64)))


def evaluate(expr: str) -> str:
    return repr(eval(expr))


def bench(name: str) -> str:
    """What bench/python_overhead.py loads: one file read and one SQL query per request."""
    with open("/etc/hostname") as f:
        host = f.read(64).strip()
    rows = _db().execute("SELECT role FROM users WHERE name = ?", (name,)).fetchall()
    return f"{host} {rows!r}"


#: path -> (function, parameter names)
ROUTES = {
    "/cmd": (run_command, ("c",)),
    "/read": (read_file, ("path",)),
    "/write": (write_file, ("path", "data")),
    "/ls": (list_dir, ("path",)),
    "/fetch": (fetch, ("url",)),
    "/sql": (sql, ("name",)),
    "/sql-early": (sql_early, ("name",)),
    "/pickle": (unpickle, ("b64",)),
    "/eval": (evaluate, ("expr",)),
    "/bench": (bench, ("name",)),
}
