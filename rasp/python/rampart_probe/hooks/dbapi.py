"""SQL through DB-API drivers -> kind `sql`. No audit event carries the statement, so
these are wrappers.

sqlite3 (all supported versions): `Connection` and `Cursor` are C types whose methods cannot
be replaced, so `sqlite3.connect` is wrapped to pass a `factory` subclass whose `cursor()`
returns a `Cursor` subclass with `execute`/`executemany`/`executescript` reporting first.
`Connection.execute` (and friends) are re-spelled as `self.cursor().execute(...)`,
their documented meaning, so they report through the same path. `sqlite3.connect` is also
replaced where an app bound it by name before the attach. Connections opened before the
attach report through their trace callback (`sqlite3.Connection.trace`, observe only).
"""

from __future__ import annotations

from .. import accel, patching

NAME = "dbapi"
TRACE_HOOK = "sqlite3.Connection.trace"
HOOKS = (
    "sqlite3.Cursor.execute",
    "sqlite3.Cursor.executemany",
    "sqlite3.Cursor.executescript",
    TRACE_HOOK,
)
_probe = None
_subclasses: dict = {}


def _emit(hook: str, sql, params=None) -> None:
    probe = _probe
    if probe is None or not probe.enabled:
        return
    args = [sql] if params is None else [sql, repr(params)[:4096]]
    try:
        probe.emit(hook, "sql", args)
    except PermissionError:
        raise  # RampartBlocked: a block policy refused the statement
    except Exception as e:
        probe.hooks_disabled.add(hook)
        probe.hook_failed(hook, e)


def _cursor_class(base):
    cls = _subclasses.get(base)
    if cls is not None:
        return cls

    class RampartCursor(base):
        def execute(self, sql, parameters=(), /):
            _emit("sqlite3.Cursor.execute", sql, parameters if parameters else None)
            return base.execute(self, sql, parameters)

        def executemany(self, sql, seq_of_parameters, /):
            _emit("sqlite3.Cursor.executemany", sql)
            return base.executemany(self, sql, seq_of_parameters)

        def executescript(self, sql_script, /):
            _emit("sqlite3.Cursor.executescript", sql_script)
            return base.executescript(self, sql_script)

    if accel.active():
        # the same methods in C (rampart_accel.c, SqlMethod): no Python frame per statement
        m = accel.mod
        RampartCursor.execute = m.sql_method(base.execute, "sqlite3.Cursor.execute", 0)
        RampartCursor.executemany = m.sql_method(base.executemany, "sqlite3.Cursor.executemany", 1)
        RampartCursor.executescript = m.sql_method(
            base.executescript, "sqlite3.Cursor.executescript", 2
        )
    RampartCursor.__name__ = base.__name__
    RampartCursor.__qualname__ = base.__qualname__
    _subclasses[base] = RampartCursor
    return RampartCursor


def _connection_class(base, sqlite3):
    cls = _subclasses.get(base)
    if cls is not None:
        return cls

    plain = None  # the wrapped sqlite3.Cursor, made on first use

    class RampartConnection(base):
        def cursor(self, factory=None):
            if factory is None:
                factory = sqlite3.Cursor
            try:
                factory = _cursor_class(factory) if isinstance(factory, type) else factory
            except TypeError:
                pass  # a final class: leave it unwrapped
            return base.cursor(self, factory)

        # The C shortcuts make their cursor without calling self.cursor() (3.11 calls
        # pysqlite_connection_cursor_impl directly), so they are re-spelled here as the
        # documented equivalent: a new cursor, then its method.
        # (base.cursor with the wrapped class is what self.cursor() does, one frame less)
        def execute(self, sql, parameters=(), /):
            nonlocal plain
            if plain is None:
                plain = _cursor_class(sqlite3.Cursor)
            return base.cursor(self, plain).execute(sql, parameters)

        def executemany(self, sql, seq_of_parameters, /):
            return self.cursor().executemany(sql, seq_of_parameters)

        def executescript(self, sql_script, /):
            return self.cursor().executescript(sql_script)

    RampartConnection.__name__ = base.__name__
    RampartConnection.__qualname__ = base.__qualname__
    _subclasses[base] = RampartConnection
    return RampartConnection


def _patch_sqlite3(sqlite3) -> None:
    original = sqlite3.connect

    def connect(*args, **kwargs):
        try:
            if len(args) > 5:
                base = args[5]
                args = (*args[:5], _connection_class(base, sqlite3), *args[6:])
            else:
                base = kwargs.get("factory") or sqlite3.Connection
                kwargs["factory"] = _connection_class(base, sqlite3)
        except Exception:
            pass
        return original(*args, **kwargs)

    connect.__doc__ = original.__doc__
    connect.__name__ = "connect"
    patching.replace(sqlite3, "connect", connect, rebind=True)
    _trace_existing(sqlite3)
    dbapi2 = getattr(sqlite3, "dbapi2", None)
    if dbapi2 is not None and getattr(dbapi2, "connect", None) is original:
        patching.replace(dbapi2, "connect", connect)


def _trace_existing(sqlite3) -> None:
    """Connections opened before the attach are C objects the wrappers never see: their
    statements are reported through the connection's trace callback (observe only: the
    callback runs as the statement executes, too late to refuse it). Found with one
    gc.get_objects() scan at install time; it replaces a trace callback the app set itself,
    which has no getter to chain to."""
    import gc

    ours = tuple(_subclasses.values())
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection) and not isinstance(obj, ours):
            try:
                obj.set_trace_callback(_on_trace)
            except Exception:
                pass  # closed, or used by another thread: leave it


def _on_trace(statement) -> None:
    probe = _probe
    if probe is None or not probe.enabled:
        return
    try:
        probe.emit(TRACE_HOOK, "sql", [statement])
    except Exception as e:  # a trace callback cannot refuse the statement anyway
        if not isinstance(e, PermissionError):
            probe.hooks_disabled.add(TRACE_HOOK)
            probe.hook_failed(TRACE_HOOK, e)


def install(probe) -> list:
    global _probe
    _probe = probe
    patching.when_imported("sqlite3", _patch_sqlite3)
    return list(HOOKS)


def uninstall() -> None:
    global _probe
    _probe = None
