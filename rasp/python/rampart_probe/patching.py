"""Attribute patching that also reaches names an app bound before the attach, and
post-import hooks for modules imported after it. Stdlib only (no wrapt inside targets).

- `replace(owner, name, new)` swaps an attribute and remembers the original, so
  `restore_all()` undoes it; `rebind=True` also replaces the original object wherever a
  loaded module bound it by name (`from sqlite3 import connect`), which a plain attribute
  patch misses.
- `when_imported(name, fn)` runs `fn(module)` now if `name` is loaded, else right after the
  module finishes executing, through a finder placed first on `sys.meta_path`.
"""

from __future__ import annotations

import sys
import threading

_patches: list = []  # (owner, name, original, new, rebound modules)
_lock = threading.RLock()


def _is_probe_module(name: str) -> bool:
    return name == "rampart_probe" or name.startswith("rampart_probe.")


def replace(owner, name: str, new, rebind: bool = False) -> None:
    with _lock:
        original = getattr(owner, name)
        if getattr(original, "__rampart_original__", None) is not None:
            return  # already ours
        try:
            new.__rampart_original__ = original
        except (AttributeError, TypeError):
            pass
        setattr(owner, name, new)
        rebound = []
        if rebind:
            for modname, mod in list(sys.modules.items()):
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict) or _is_probe_module(modname) or mod is owner:
                    continue
                for key, value in list(d.items()):
                    if value is original:
                        d[key] = new
                        rebound.append((d, key))
        _patches.append((owner, name, original, new, rebound))


def restore_all() -> None:
    with _lock:
        while _patches:
            owner, name, original, new, rebound = _patches.pop()
            if getattr(owner, name, None) is new:
                setattr(owner, name, original)
            for d, key in rebound:
                if d.get(key) is new:
                    d[key] = original


class _Loader:
    """Wraps a loader: runs the callbacks after the module's code has run."""

    def __init__(self, loader, callbacks) -> None:
        self.__dict__["_loader"] = loader
        self.__dict__["_callbacks"] = callbacks

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        # the module is loaded under its spec's original loader, as if we were never there
        try:
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        except Exception:
            pass
        _run(self._callbacks, module)


def _run(callbacks, module) -> None:
    for fn in list(callbacks):
        try:
            fn(module)
        except Exception:
            pass  # a patch that fails leaves the module unpatched, never the import broken


class _Finder:
    def __init__(self) -> None:
        self.watch: dict = {}
        self.local = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        callbacks = self.watch.get(fullname)
        if not callbacks or getattr(self.local, "busy", False):
            return None
        self.local.busy = True
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        except Exception:
            return None
        finally:
            self.local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, callbacks)
        return spec


_finder = _Finder()


def when_imported(name: str, fn) -> None:
    with _lock:
        mod = sys.modules.get(name)
        spec = getattr(mod, "__spec__", None)
        if mod is not None and not getattr(spec, "_initializing", False):
            _run([fn], mod)
            return
        _finder.watch.setdefault(name, []).append(fn)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def stop_watching() -> None:
    with _lock:
        _finder.watch.clear()
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
