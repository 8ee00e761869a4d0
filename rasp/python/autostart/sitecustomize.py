"""Start Rampart's CPython probe at interpreter start-up, without changing the app.

    PYTHONPATH=/opt/rampart/rasp/python/autostart RAMPART_PROBE=1 python app.py

`site` imports `sitecustomize` from the first sys.path entry that has one; this one starts
the probe (`rampart_probe.start()`, mode "sdk", socket from RAMPART_SOCKET) when RAMPART_PROBE
is set to a true value, and otherwise does nothing. The probe package is loaded by file
location from the directory beside this one: nothing is added to sys.path. Whatever happens,
the app starts: a failure here is swallowed. A `sitecustomize` this one shadows (later on
sys.path: a venv's, Debian's) still runs, right after. Stdlib only, CPython 3.8+.
"""

import os
import sys


def _truthy(value):
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def _start_probe(here):
    import importlib.util

    if "rampart_probe" in sys.modules:
        sys.modules["rampart_probe"].start()
        return
    pkg = os.path.join(os.path.dirname(here), "rampart_probe")
    spec = importlib.util.spec_from_file_location(
        "rampart_probe", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["rampart_probe"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("rampart_probe", None)
        raise
    module.start()


def _chain(here):
    """Run the sitecustomize this file shadows, if there is one."""
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _main():
    here = os.path.dirname(os.path.abspath(__file__))
    if _truthy(os.environ.get("RAMPART_PROBE")):
        try:
            _start_probe(here)
        except Exception:
            pass  # never keep the app from starting
    try:
        _chain(here)
    except Exception:
        import traceback

        traceback.print_exc()  # the other sitecustomize failed: say so, as site would


_main()
