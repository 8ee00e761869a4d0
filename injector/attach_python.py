"""Live attach to CPython 3.8-3.13: pyinjector loads `rampart_pyinject.so` into the target,
whose constructor starts a thread that takes the GIL and runs a bootstrap importing
`rampart_probe` from rasp/python and calling `rampart_probe.attach(socket)`.

Passing the parameters (probe directory, agent socket) without leaving a file behind: the
bootstrap is written into a per-attach copy of the .so (over a placeholder array, located by
its ELF symbol), in a private directory beside the agent socket (mode 0700, owned by the
target's uid so its dlopen can read it; the target must reach the socket's directory anyway).
The copy is unlinked, and its directory removed, as soon as pyinjector returns: by then the
constructor has copied the bootstrap into memory, and a mapped library survives its unlink.

Attaching to a process that already runs the probe is a no-op at the orchestration level
(injector/attach.py asks the agent first); if the probe runs but is not connected, the
bootstrap finds it in sys.modules and makes it reconnect with `already_running: true`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

from injector.attach import EXIT_DENIED, EXIT_FAIL, EXIT_PROCESS, AttachError
from injector.detect import Detection
from injector.process import ProcessError, read_process

REPO = Path(__file__).resolve().parents[1]
PROBE_DIR = REPO / "rasp" / "python"
LIBRARY = REPO / "build" / "python" / "rampart_pyinject.so"
SYMBOL = "rampart_bootstrap"
BOOTSTRAP_SIZE = 16384  # rampart_bootstrap[] in rasp/python/native/rampart_pyinject.c

# Runs in the target's __main__ thread state but in a namespace of its own (nothing is left
# in the app's __main__), and never raises into the app: a failure only means no hello,
# which rasp-attach reports as a timeout. Kept to Python 3.8 syntax.
_BOOTSTRAP = """\
import sys
try:
    m = sys.modules.get("rampart_probe")
    if m is None:
        import importlib.util
        d = {probe_pkg!r}
        spec = importlib.util.spec_from_file_location(
            "rampart_probe", d + "/__init__.py", submodule_search_locations=[d])
        m = importlib.util.module_from_spec(spec)
        sys.modules["rampart_probe"] = m
        try:
            spec.loader.exec_module(m)
        except BaseException:
            sys.modules.pop("rampart_probe", None)
            raise
    m.attach({socket!r})
except Exception:
    pass
"""


def bootstrap_code(socket: Path, probe_dir: Path = PROBE_DIR) -> str:
    body = _BOOTSTRAP.format(probe_pkg=str(probe_dir / "rampart_probe"), socket=str(socket))
    return f"exec({body!r}, {{'__name__': '__rampart_bootstrap__'}})\n"


def _placeholder_offset(data: bytes) -> int:
    import io

    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
    if symtab is None:
        raise AttachError(EXIT_FAIL, f"{LIBRARY}: no symbol table")
    syms = symtab.get_symbol_by_name(SYMBOL)
    if not syms:
        raise AttachError(EXIT_FAIL, f"{LIBRARY}: no symbol {SYMBOL}")
    addr = syms[0]["st_value"]
    for sec in elf.iter_sections():
        if (
            sec["sh_type"] == "SHT_PROGBITS"
            and sec["sh_addr"] <= addr < sec["sh_addr"] + sec["sh_size"]
        ):
            return sec["sh_offset"] + addr - sec["sh_addr"]
    raise AttachError(EXIT_FAIL, f"{LIBRARY}: {SYMBOL} is not in a file-backed section")


def library_with(code: str, library: Path = LIBRARY) -> bytes:
    """The injector library with `code` written over its placeholder."""
    try:
        data = bytearray(library.read_bytes())
    except FileNotFoundError:
        raise AttachError(EXIT_FAIL, f"{library} is missing: run `make setup`") from None
    raw = code.encode()
    if len(raw) >= BOOTSTRAP_SIZE:
        raise AttachError(EXIT_FAIL, "bootstrap too long (socket or probe path too long)")
    off = _placeholder_offset(bytes(data))
    data[off : off + BOOTSTRAP_SIZE] = raw + b"\0" * (BOOTSTRAP_SIZE - len(raw))
    return bytes(data)


class PythonAttacher:
    runtime = "python"

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        import pyinjector

        try:
            info = read_process(target.pid)
        except ProcessError as e:
            raise AttachError(EXIT_PROCESS, str(e)) from None
        image = library_with(bootstrap_code(Path(os.path.abspath(socket))))
        private = Path(tempfile.mkdtemp(prefix=".rampart-attach-", dir=Path(socket).parent))
        try:
            so = private / "rampart_pyinject.so"
            fd = os.open(so, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500)
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            if info.uid not in (-1, os.geteuid()):
                # the target's dlopen runs as the target: let that uid, and only it, read it
                os.chown(private, info.uid, info.gid)
                os.chown(so, info.uid, info.gid)
            try:
                pyinjector.inject(target.pid, str(so))
            except pyinjector.api.LinuxInjectorPermissionError as e:
                raise AttachError(
                    EXIT_DENIED, f"pid {target.pid}: permission denied ({e.error_str})"
                ) from None
            except pyinjector.api.InjectorError as e:
                raise AttachError(
                    EXIT_FAIL, f"pid {target.pid}: injection failed in {e.func_name}: {e.error_str}"
                ) from None
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        raise AttachError(EXIT_FAIL, "detach for python is done by the agent's exit frame")


ATTACHER = PythonAttacher()
