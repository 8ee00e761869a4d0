"""Hook modules, one per hooked API family. Each exposes `NAME`, `install(probe) -> [hook]`
(the hook names it covers) and `uninstall()`; both are idempotent, and a module that fails to
install is left out (its hooks are listed as missing), never fatal. Adding a hook touches
its module, this registry and its test (docs/python-probe.md)."""

from __future__ import annotations

#: import paths of the hook modules, installed in this order
MODULES = (
    "rampart_probe.hooks.audit",  # PEP 578 audit events: process, file, network, dns, code, ...
    "rampart_probe.hooks.dbapi",  # sqlite3 (and DB-API drivers) execute/executemany -> sql
    "rampart_probe.hooks.sqldrivers",  # psycopg2, psycopg 3, pymysql, MySQLdb -> sql
    "rampart_probe.hooks.web",  # request context: WSGI, Flask, http.server
)
