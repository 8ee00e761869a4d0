"""SQL through the PostgreSQL and MySQL/MariaDB DB-API drivers -> kind `sql`.

Each hook name starts with the driver's module, so the agent's SQL detector reads string
literals with the driver's dialect (host_agent/detectors/sql.py: `psycopg` -> standard,
`mysql` -> backslash escapes). Every driver is patched when it is imported, or at once if
the app imported it before the attach.

- pymysql, mysqlclient (`MySQLdb`), psycopg 3: cursors are Python classes, so `execute` and
  `executemany` are replaced on the class that defines them. That covers cursors of
  connections opened before the attach, and subclasses (DictCursor, SSCursor, ...).
- psycopg2: `cursor` is a C type whose methods cannot be replaced. `psycopg2.connect` is
  wrapped to pass a `connection_factory` subclass (of the app's own factory, if it gave one)
  whose `cursor()` hands out a subclass of the requested cursor class that reports first;
  `connect` is also replaced where a module bound it by name. Connections opened before the
  attach get the same cursor subclass as their `cursor_factory`, so their cursors made
  afterwards report too (a cursor object the app already holds does not).

A driver's `executemany` may call `execute` once per row (pymysql, MySQLdb): a per-thread
flag keeps that one statement one event. Block rules raise RampartBlocked before the driver
sends anything.
"""

from __future__ import annotations

import importlib
import threading

from .. import patching

NAME = "sqldrivers"
PSYCOPG2 = ("psycopg2.extensions.cursor.execute", "psycopg2.extensions.cursor.executemany")
PSYCOPG = ("psycopg.Cursor.execute", "psycopg.Cursor.executemany")
PSYCOPG_ASYNC = ("psycopg.AsyncCursor.execute", "psycopg.AsyncCursor.executemany")
PYMYSQL = ("pymysql.cursors.Cursor.execute", "pymysql.cursors.Cursor.executemany")
MYSQLDB = ("MySQLdb.cursors.BaseCursor.execute", "MySQLdb.cursors.BaseCursor.executemany")
HOOKS = PSYCOPG2 + PSYCOPG + PSYCOPG_ASYNC + PYMYSQL + MYSQLDB
PARAMS_MAX = 4096

_probe = None
_subclasses: dict = {}


class _State(threading.local):
    inner = False  # inside a reported executemany: its per-row execute calls are not events


_tls = _State()


def _text(query, cursor) -> object:
    """The statement as text: psycopg 3 composes `sql.SQL` objects against a connection."""
    if query.__class__ is str or isinstance(query, (bytes, bytearray)):
        return query
    as_string = getattr(query, "as_string", None)
    if as_string is not None:
        try:
            return as_string(cursor)
        except Exception:
            pass
    return query


def _emit(hook: str, query, params, cursor) -> None:
    probe = _probe
    if probe is None or not probe.enabled:
        return
    try:
        sql = _text(query, cursor)
        args = [sql] if params is None else [sql, repr(params)[:PARAMS_MAX]]
        probe.emit(hook, "sql", args)
    except PermissionError:
        raise  # RampartBlocked: a block policy refused the statement
    except Exception as e:
        probe.hooks_disabled.add(hook)
        probe.hook_failed(hook, e)


def _query_params(args, kwargs, names):
    query = args[0] if args else kwargs.get("query", kwargs.get("operation"))
    if len(args) > 1:
        return query, args[1]
    for n in names:
        if n in kwargs:
            return query, kwargs[n]
    return query, None


def _execute_wrapper(original, hook: str):
    def execute(self, *args, **kwargs):
        if not _tls.inner:
            query, params = _query_params(args, kwargs, ("args", "params", "vars", "parameters"))
            _emit(hook, query, params if params else None, self)
        return original(self, *args, **kwargs)

    return execute


def _executemany_wrapper(original, hook: str):
    def executemany(self, *args, **kwargs):
        if _tls.inner:
            return original(self, *args, **kwargs)
        query = args[0] if args else kwargs.get("query")
        _emit(hook, query, None, self)
        _tls.inner = True
        try:
            return original(self, *args, **kwargs)
        finally:
            _tls.inner = False

    return executemany


def _async_wrapper(original, hook: str, many: bool):
    async def call(self, *args, **kwargs):
        query, params = _query_params(args, kwargs, ("params",))
        _emit(hook, query, None if many or not params else params, self)
        return await original(self, *args, **kwargs)

    return call


def _patch_class(cls, execute_hook: str, many_hook: str, is_async: bool = False) -> None:
    for attr, hook, many in (("execute", execute_hook, False), ("executemany", many_hook, True)):
        original = cls.__dict__.get(attr)
        if original is None or getattr(original, "__rampart_original__", None) is not None:
            continue
        if is_async:
            new = _async_wrapper(original, hook, many)
        elif many:
            new = _executemany_wrapper(original, hook)
        else:
            new = _execute_wrapper(original, hook)
        new.__name__ = attr
        new.__qualname__ = f"{cls.__qualname__}.{attr}"
        new.__doc__ = original.__doc__
        patching.replace(cls, attr, new)


# ---------------------------------------------------------------- pure-Python drivers


def _patch_pymysql(pymysql) -> None:
    cursors = importlib.import_module("pymysql.cursors")
    _patch_class(cursors.Cursor, *PYMYSQL)


def _patch_mysqldb(mysqldb) -> None:
    cursors = importlib.import_module("MySQLdb.cursors")
    _patch_class(cursors.BaseCursor, *MYSQLDB)


def _patch_psycopg(psycopg) -> None:
    # server-side cursors define their own execute (DECLARE ... CURSOR): same hook names,
    # the dialect is what the detector needs
    for name in ("Cursor", "ServerCursor"):
        cls = getattr(psycopg, name, None)
        if cls is not None:
            _patch_class(cls, *PSYCOPG)
    for name in ("AsyncCursor", "AsyncServerCursor"):
        cls = getattr(psycopg, name, None)
        if cls is not None:
            _patch_class(cls, *PSYCOPG_ASYNC, is_async=True)


# ---------------------------------------------------------------- psycopg2 (C types)


def _pg2_cursor_class(base):
    cls = _subclasses.get(base)
    if cls is not None or getattr(base, "__rampart__", False):
        return cls or base
    execute_hook, many_hook = PSYCOPG2

    class RampartCursor(base):
        __rampart__ = True

        def execute(self, query, vars=None):
            if not _tls.inner:
                _emit(execute_hook, query, vars if vars else None, self)
            return base.execute(self, query, vars)

        def executemany(self, query, vars_list):
            if _tls.inner:
                return base.executemany(self, query, vars_list)
            _emit(many_hook, query, None, self)
            _tls.inner = True
            try:
                return base.executemany(self, query, vars_list)
            finally:
                _tls.inner = False

    RampartCursor.__name__ = base.__name__
    RampartCursor.__qualname__ = base.__qualname__
    RampartCursor.__module__ = base.__module__
    _subclasses[base] = RampartCursor
    return RampartCursor


def _pg2_connection_class(base, default_cursor):
    cls = _subclasses.get(base)
    if cls is not None or getattr(base, "__rampart__", False):
        return cls or base

    class RampartConnection(base):
        __rampart__ = True

        def cursor(self, *args, **kwargs):
            try:
                if len(args) > 1:  # cursor(name, cursor_factory, ...)
                    args = (args[0], _pg2_cursor_class(args[1]), *args[2:])
                else:
                    factory = kwargs.get("cursor_factory") or self.cursor_factory
                    kwargs["cursor_factory"] = _pg2_cursor_class(factory or default_cursor)
            except TypeError:
                pass  # a factory that is not a class: leave it unwrapped
            return base.cursor(self, *args, **kwargs)

    RampartConnection.__name__ = base.__name__
    RampartConnection.__qualname__ = base.__qualname__
    RampartConnection.__module__ = base.__module__
    _subclasses[base] = RampartConnection
    return RampartConnection


def _patch_psycopg2(psycopg2) -> None:
    ext = importlib.import_module("psycopg2.extensions")
    original = psycopg2.connect

    def connect(*args, **kwargs):
        try:
            if len(args) > 1:  # connect(dsn, connection_factory, ...)
                factory = _pg2_connection_class(args[1] or ext.connection, ext.cursor)
                args = (args[0], factory, *args[2:])
            else:
                base = kwargs.get("connection_factory") or ext.connection
                kwargs["connection_factory"] = _pg2_connection_class(base, ext.cursor)
        except Exception:
            pass
        return original(*args, **kwargs)

    connect.__doc__ = original.__doc__
    connect.__name__ = "connect"
    patching.replace(psycopg2, "connect", connect, rebind=True)
    _pg2_existing(ext)


def _pg2_existing(ext) -> None:
    """Connections opened before the attach: their default cursor class becomes ours."""
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, ext.connection) and not getattr(type(obj), "__rampart__", False):
            try:
                obj.cursor_factory = _pg2_cursor_class(obj.cursor_factory or ext.cursor)
            except Exception:
                pass  # closed: leave it


def install(probe) -> list:
    global _probe
    _probe = probe
    patching.when_imported("psycopg2", _patch_psycopg2)
    patching.when_imported("psycopg", _patch_psycopg)
    patching.when_imported("pymysql", _patch_pymysql)
    patching.when_imported("MySQLdb", _patch_mysqldb)
    return list(HOOKS)


def uninstall() -> None:
    global _probe
    _probe = None
