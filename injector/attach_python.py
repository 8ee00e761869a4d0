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

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

from injector import container
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


def _write_image(so: Path, image: bytes, uid: int, gid: int) -> None:
    fd = os.open(so, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500)
    with os.fdopen(fd, "wb") as f:
        f.write(image)
        if uid not in (-1, os.geteuid()):
            os.fchown(f.fileno(), uid, gid)


def _inject(pid: int, library: str) -> None:
    import pyinjector

    try:
        # pyinjector.inject() checks the path with our view of the file system; the
        # injector itself only needs realpath(3) to succeed here (see _attach_foreign)
        with pyinjector.api.attach(pid) as injector:
            injector.inject(library.encode())
    except pyinjector.api.LinuxInjectorPermissionError as e:
        raise AttachError(EXIT_DENIED, f"pid {pid}: permission denied ({e.error_str})") from None
    except pyinjector.api.InjectorError as e:
        raise AttachError(
            EXIT_FAIL, f"pid {pid}: injection failed in {e.func_name}: {e.error_str}"
        ) from None


class PythonAttacher:
    runtime = "python"

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        try:
            info = read_process(target.pid)
            foreign = container.is_foreign(target.pid)
        except (ProcessError, container.ContainerError) as e:
            raise AttachError(EXIT_PROCESS, str(e)) from None
        socket = Path(os.path.abspath(socket))
        if foreign:
            self._attach_foreign(target, info.uid, info.gid, socket)
            return
        image = library_with(bootstrap_code(socket))
        private = Path(tempfile.mkdtemp(prefix=".rampart-attach-", dir=socket.parent))
        try:
            so = private / "rampart_pyinject.so"
            _write_image(so, image, info.uid, info.gid)
            if info.uid not in (-1, os.geteuid()):
                # the target's dlopen runs as the target: let that uid, and only it, read it
                os.chown(private, info.uid, info.gid)
            _inject(target.pid, str(so))
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _attach_foreign(self, target: Detection, uid: int, gid: int, socket: Path) -> None:
        """A target in another root / mount namespace (injector/container.py): the probe
        package and the agent socket are placed where its own paths resolve."""
        try:
            placed = container.place(
                target.pid, {"rampart_probe": PROBE_DIR / "rampart_probe"}, socket
            )
        except container.ContainerError as e:
            raise AttachError(EXIT_FAIL, str(e)) from None
        image = library_with(bootstrap_code(Path(placed.socket(socket)), Path(placed.inside)))
        so_name = "rampart_pyinject.so"
        inside = f"{placed.inside}/{so_name}"
        # the injector resolves the path with realpath(3) in *our* namespace before the
        # target dlopens it in its own: the same path must exist here while it injects
        mirror = Path(placed.inside)
        mirrored = False
        try:
            _write_image(Path(placed.host) / so_name, image, uid, gid)
            try:
                mirror.mkdir(mode=0o700)
                mirrored = True
                (mirror / so_name).touch(mode=0o400, exist_ok=False)
            except FileExistsError:
                # our /tmp is the target's: the file is there already, as long as it is ours
                if not os.path.samefile(mirror, placed.host):
                    raise AttachError(
                        EXIT_FAIL, f"pid {target.pid}: {mirror} exists here; not injecting"
                    ) from None
            _inject(target.pid, inside)
        except OSError as e:
            raise AttachError(
                EXIT_FAIL, f"pid {target.pid}: cannot place the library: {e}"
            ) from None
        finally:
            if mirrored:
                shutil.rmtree(mirror, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(Path(placed.host) / so_name)  # mapped by now; nothing left behind

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        raise AttachError(EXIT_FAIL, "detach for python is done by the agent's exit frame")


ATTACHER = PythonAttacher()
