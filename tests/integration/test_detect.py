"""Runtime detection against real processes of every supported runtime.

The victims start once per module and in parallel (a JVM compiling its source-file program
takes a second or two); each test then only reads /proc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from injector.detect import (
    GO_BUILDINFO_MAGIC,
    Detection,
    NotSupported,
    detect,
    go_buildinfo_version,
    jvm_attach_refusal,
    scan,
)
from injector.process import ProcessError, ProcessGone

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLEEPER_JAVA = REPO / "tests" / "apps" / "jvm" / "Sleeper.java"
# fixture types (tests/conftest.py)
Spawn = Callable[..., subprocess.Popen[bytes]]
GoBuild = Callable[..., Path]

PY_SLEEP = "import time\nwhile True: time.sleep(1)"
PHP = shutil.which("php")
DEBIAN_PYTHON = "/usr/bin/python3"


def _wait_for(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _maps_contain(pid: int, needle: bytes) -> bool:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return needle in f.read()


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _drop_section_headers(src: Path, dst: Path) -> None:
    """Copy an ELF64 binary without its section header table, as `sstrip` leaves it: the
    kernel loads programs by their program headers, so it still runs."""
    elf = bytearray(src.read_bytes())
    assert elf[:5] == b"\x7fELF\x02"  # ELF64
    elf[0x28:0x30] = bytes(8)  # e_shoff
    elf[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    dst.write_bytes(elf)
    dst.chmod(0o755)


@pytest.fixture(scope="module")
def victims(
    spawn_module: Spawn, go_build: GoBuild, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, int]:
    """name -> pid of one live process per case, all started before any is waited for."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # slowest first, so they start up while the rest is prepared
    procs["jvm"] = spawn_module(["java", str(SLEEPER_JAVA)])
    procs["jvm-no-attach"] = spawn_module(
        ["java", "-XX:+DisableAttachMechanism", str(SLEEPER_JAVA)]
    )
    procs["python-venv"] = spawn_module([sys.executable, "-c", PY_SLEEP])
    procs["python-debian"] = spawn_module([DEBIAN_PYTHON, "-c", PY_SLEEP])
    # Debian's interpreter (libpython linked in statically) under a name that says nothing:
    # what an application embedding CPython looks like. It still finds its stdlib through the
    # compiled-in prefix, and the -c program needs only builtins.
    renamed = tmp_path_factory.mktemp("renamed")
    shutil.copy2(os.path.realpath(DEBIAN_PYTHON), renamed / "appserver")
    procs["python-embedded"] = spawn_module([str(renamed / "appserver"), "-c", PY_SLEEP])
    # the venv's interpreter, renamed: when it is built with a shared libpython (pyenv's is,
    # and finds it through an absolute RUNPATH) only the mapped library gives it away
    shutil.copy2(os.path.realpath(sys.executable), renamed / "worker")
    procs["python-libpython"] = spawn_module([str(renamed / "worker"), "-c", PY_SLEEP])
    procs["nodejs"] = spawn_module(["node", "-e", "setInterval(() => {}, 1000)"])
    if PHP:
        procs["php"] = spawn_module([PHP, "-r", "while (true) { sleep(1); }"])
    procs["sleep"] = spawn_module(["sleep", "100"])
    procs["golang"] = spawn_module([str(go_build("sleeper"))])
    procs["golang-stripped"] = spawn_module([str(go_build("sleeper", stripped=True))])
    no_sections = renamed / "sleeper-no-sections"
    _drop_section_headers(go_build("sleeper", stripped=True), no_sections)
    procs["golang-no-sections"] = spawn_module([str(no_sections)])

    for name in ("jvm", "jvm-no-attach"):
        pid = procs[name].pid
        _wait_for(f"libjvm.so in {name}'s maps", lambda pid=pid: _maps_contain(pid, b"libjvm.so"))
    for name, proc in procs.items():
        assert proc.poll() is None, f"victim {name} exited with {proc.returncode}"
    return {name: proc.pid for name, proc in procs.items()}


def _detect(victims: dict[str, int], name: str) -> Detection:
    d = detect(victims[name])
    assert d.pid == victims[name]
    assert d.nspid == d.pid  # no pid namespace here
    return d


# --- python -------------------------------------------------------------------------------------


def test_python_venv_interpreter(victims: dict[str, int]) -> None:
    d = _detect(victims, "python-venv")
    assert d.runtime == "python"
    assert d.exe == os.path.realpath(sys.executable)
    assert d.evidence.startswith("exe name python")
    # pyenv-built: versions/3.11.7/ in the path gives the full version
    assert d.version.startswith("3.11")
    if "/.pyenv/versions/" in d.exe:
        assert d.version == ".".join(map(str, sys.version_info[:3]))


def test_python_debian_static_libpython(victims: dict[str, int]) -> None:
    d = _detect(victims, "python-debian")
    assert d.runtime == "python"
    assert d.exe == os.path.realpath(DEBIAN_PYTHON)
    assert d.evidence == f"exe name {os.path.basename(d.exe)}"
    # read from the exported Py_Version constant; the test (not the detector) may run the binary
    full = _output(DEBIAN_PYTHON, "-c", "import platform; print(platform.python_version())")
    assert d.version.startswith("3.11")
    assert d.version == full


def test_python_embedded_found_by_exported_symbol(victims: dict[str, int]) -> None:
    d = _detect(victims, "python-embedded")
    assert d.runtime == "python"
    assert d.evidence == "exports PyRun_SimpleString"
    assert d.version.startswith("3.11.")


def test_python_found_by_mapped_libpython(victims: dict[str, int]) -> None:
    pid = victims["python-libpython"]
    if not _maps_contain(pid, b"/libpython"):
        pytest.skip(f"{sys.executable} has libpython linked in statically")
    d = detect(pid)
    assert d.runtime == "python"
    assert d.evidence.startswith("libpython3.11.so")
    assert d.evidence.endswith(" mapped")
    assert d.version.startswith("3.11")


# --- jvm ----------------------------------------------------------------------------------------


def test_jvm(victims: dict[str, int]) -> None:
    d = _detect(victims, "jvm")
    assert d.runtime == "jvm"
    assert d.evidence == "libjvm.so mapped"
    assert d.version.startswith("17")
    assert d.refusal == ""


def test_jvm_with_attach_disabled_is_detected_with_a_refusal(victims: dict[str, int]) -> None:
    d = _detect(victims, "jvm-no-attach")
    assert d.runtime == "jvm"
    assert d.version.startswith("17")
    assert "DisableAttachMechanism" in d.refusal


@pytest.mark.parametrize(
    ("cmdline", "environ", "refused"),
    [
        (["java", "-cp", "app.jar", "Main"], {}, False),
        (["java", "-XX:+DisableAttachMechanism", "Main"], {}, True),
        # the last occurrence wins
        (["java", "-XX:+DisableAttachMechanism", "-XX:-DisableAttachMechanism", "Main"], {}, False),
        # after the main class / -jar it is the application's argument, not a JVM option
        (["java", "Main", "-XX:+DisableAttachMechanism"], {}, False),
        (["java", "-jar", "app.jar", "-XX:+DisableAttachMechanism"], {}, False),
        # an option value that looks like a class name does not end the option scan
        (["java", "-cp", "lib", "-XX:+DisableAttachMechanism", "Main"], {}, True),
        (["java", "Main"], {"JAVA_TOOL_OPTIONS": "-Xmx1g -XX:+DisableAttachMechanism"}, True),
        (["java", "Main"], {"JDK_JAVA_OPTIONS": "-XX:+DisableAttachMechanism"}, True),
        # command line beats JAVA_TOOL_OPTIONS; _JAVA_OPTIONS beats the command line
        (
            ["java", "-XX:-DisableAttachMechanism", "Main"],
            {"JAVA_TOOL_OPTIONS": "-XX:+DisableAttachMechanism"},
            False,
        ),
        (
            ["java", "-XX:-DisableAttachMechanism", "Main"],
            {"_JAVA_OPTIONS": "-XX:+DisableAttachMechanism"},
            True,
        ),
    ],
)
def test_jvm_attach_refusal_option_order(
    cmdline: list[str], environ: dict[str, str], refused: bool
) -> None:
    assert bool(jvm_attach_refusal(cmdline, environ)) is refused


# --- golang -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_version() -> str:
    return _output("go", "env", "GOVERSION")


def test_golang(victims: dict[str, int], go_version: str) -> None:
    d = _detect(victims, "golang")
    assert d.runtime == "golang"
    assert d.evidence == ".gopclntab section"
    assert d.version == go_version


def test_golang_stripped(victims: dict[str, int], go_version: str) -> None:
    d = _detect(victims, "golang-stripped")
    assert d.runtime == "golang"
    # -s -w drops .symtab and DWARF but the linker keeps both Go sections
    assert d.evidence in (".gopclntab section", ".go.buildinfo section")
    assert d.version == go_version


def test_golang_without_section_headers(victims: dict[str, int], go_version: str) -> None:
    d = _detect(victims, "golang-no-sections")
    assert d.runtime == "golang"
    assert d.evidence == "Go buildinfo in data segment"
    assert d.version == go_version


def _buildinfo_blob(binary: Path) -> bytes:
    with open(binary, "rb") as f:
        section = ELFFile(f).get_section_by_name(".go.buildinfo")
        assert section is not None
        return section.data()


def test_go_buildinfo_parser(go_build: GoBuild, go_version: str) -> None:
    blob = _buildinfo_blob(go_build("sleeper"))
    assert blob.startswith(GO_BUILDINFO_MAGIC)
    assert go_buildinfo_version(blob) == go_version
    # the whole binary is not a blob: the magic must be at offset 0
    assert go_buildinfo_version(b"\0" * 16 + blob) == ""


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        GO_BUILDINFO_MAGIC,  # truncated header
        GO_BUILDINFO_MAGIC + b"\x08\x02" + b"\0" * 16,  # header only, no version
        GO_BUILDINFO_MAGIC + b"\x08\x02" + b"\0" * 16 + b"\x08go1",  # version cut short
        GO_BUILDINFO_MAGIC + b"\x08\x02" + b"\0" * 16 + b"\xff" * 12,  # runaway uvarint
        GO_BUILDINFO_MAGIC + b"\x08\x02" + b"\0" * 16 + b"\x04go\x001",  # not printable
        GO_BUILDINFO_MAGIC + b"\x08\x00" + b"\0" * 16 + b"\x08go1.17.1",  # Go < 1.18 pointers
        os.urandom(4096),
    ],
)
def test_go_buildinfo_parser_rejects_garbage(blob: bytes) -> None:
    assert go_buildinfo_version(blob) == ""


# --- nodejs, php --------------------------------------------------------------------------------


def test_nodejs(victims: dict[str, int]) -> None:
    d = _detect(victims, "nodejs")
    assert d.runtime == "nodejs"
    assert d.evidence == "exe name node"
    assert d.version == _output("node", "--version").removeprefix("v")


@pytest.mark.skipif(PHP is None, reason="php is not installed (make setup installs php-cli)")
def test_php(victims: dict[str, int]) -> None:
    d = _detect(victims, "php")
    assert d.runtime == "php"
    assert d.evidence.startswith("exe name php")
    assert d.version.startswith("8.2")


# --- not a runtime, gone, zombie ----------------------------------------------------------------


def test_unsupported_process(victims: dict[str, int]) -> None:
    with pytest.raises(NotSupported) as err:
        detect(victims["sleep"])
    exe = os.path.realpath(shutil.which("sleep") or "sleep")
    assert err.value.pid == victims["sleep"]
    assert "not a supported runtime" in err.value.reason
    assert exe in str(err.value)


def test_kernel_thread_is_not_supported() -> None:
    with open("/proc/2/comm") as f:
        if f.read().strip() != "kthreadd":
            pytest.skip("pid 2 is not kthreadd in this pid namespace")
    with pytest.raises(NotSupported, match="kernel thread"):
        detect(2)


def test_reaped_pid_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ProcessGone):
        detect(proc.pid)


def test_zombie() -> None:
    proc = subprocess.Popen(["true"])
    try:
        _wait_for("the child to become a zombie", lambda: _proc_state(proc.pid) == "Z")
        with pytest.raises(ProcessError) as err:
            detect(proc.pid)
        assert not isinstance(err.value, ProcessGone)
        assert "zombie" in err.value.reason
    finally:
        proc.wait()


# --- scan ---------------------------------------------------------------------------------------


def test_scan_finds_the_victims(victims: dict[str, int]) -> None:
    scan()  # warm the per-binary cache, as a daemon's periodic scan would be
    started = time.perf_counter()
    found = {d.pid: d for d in scan()}
    elapsed = time.perf_counter() - started
    assert found[victims["python-venv"]].runtime == "python"
    assert found[victims["nodejs"]].runtime == "nodejs"
    assert found[victims["jvm"]].runtime == "jvm"
    assert found[victims["golang"]].runtime == "golang"
    assert victims["sleep"] not in found
    assert os.getpid() not in found
    assert elapsed < 1.0, f"scan of {len(os.listdir('/proc'))} /proc entries took {elapsed:.2f}s"
