"""Fixtures shared by the whole suite.

- `spawn` / `spawn_module`: start real victim processes and always kill *and reap* them.
  PID 1 on our test machines does not reap orphans, so a child we forget to wait for stays a
  zombie for the life of the machine and shows up in every later host scan.
- `go_build`: build a Go victim from tests/apps/golang/<app> once per session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_APPS = REPO / "tests" / "apps"
BUILD = REPO / "build" / "tests"  # gitignored


class Spawner:
    """Starts subprocesses and, on close(), SIGKILLs and waits every one it started.

    Children get stdin/stdout/stderr on /dev/null unless the caller passes its own: a victim
    writing into a pipe nobody reads would block once the 64 KiB pipe buffer is full."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        for stream in ("stdin", "stdout", "stderr"):
            kwargs.setdefault(stream, subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kwargs)  # returns after the exec (or raises)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            proc.wait(timeout=30)
            # a JVM killed with SIGKILL leaves its HotSpot attach socket behind (the JVM removes
            # it only on a normal exit): the test made it, the test removes it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/.java_pid{proc.pid}")
        self._procs.clear()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """`spawn([argv...], **popen_kwargs) -> Popen`; killed and reaped after the test."""
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.close()


@pytest.fixture(scope="module")
def spawn_module() -> Iterator[Spawner]:
    """As `spawn`, but the processes live until the end of the test module, so a module can
    start its victims once and in parallel (JVM start-up dominates otherwise)."""
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.close()


GoBuild = Callable[..., Path]


@pytest.fixture(scope="session")
def go_build() -> GoBuild:
    """`go_build("sleeper", stripped=False) -> Path`: builds tests/apps/golang/<app> into
    build/tests/ on first use in the session and returns the binary.

    CGO_ENABLED=0 gives a static binary (how most Go services ship, and nothing of Go shows in
    /proc/<pid>/maps); GOFLAGS=-mod=mod lets the build work without a vendor dir or go.sum.
    `stripped` links with -s -w (no symbol table, no DWARF), as release builds often do.
    `cgo=True` builds with CGO_ENABLED=1 (dynamically linked against libc, as the default
    `go build` does where a C compiler is present). `go="1.19"` builds with that older
    toolchain (Debian's golang-1.19-go, /usr/lib/go-1.19/bin/go, from scripts/apt-packages.txt)
    instead of the machine's `go`."""
    default_go = shutil.which("go")
    if default_go is None:
        pytest.fail("`go` not on PATH: run `make setup`")
    built: dict[tuple[str, bool, bool, str], Path] = {}

    def build(app: str, *, stripped: bool = False, cgo: bool = False, go: str = "") -> Path:
        if (app, stripped, cgo, go) in built:
            return built[(app, stripped, cgo, go)]
        toolchain = f"/usr/lib/go-{go}/bin/go" if go else default_go
        if not os.access(toolchain, os.X_OK):
            pytest.fail(f"{toolchain} not installed: run `make setup`")
        BUILD.mkdir(parents=True, exist_ok=True)
        suffix = ("-stripped" if stripped else "") + ("-cgo" if cgo else "")
        out = BUILD / (app + suffix + (f"-go{go}" if go else ""))
        # build under a private name then rename: parallel pytest workers may build the same
        # app, and a worker must never exec a half-written binary
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        argv = [toolchain, "build", "-o", str(tmp)]
        if stripped:
            argv.append("-ldflags=-s -w")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "1" if cgo else "0"}
        if go:  # its own GOROOT, whatever the environment says for the machine's go
            env.pop("GOROOT", None)
        result = subprocess.run(
            [*argv, "."],
            cwd=TEST_APPS / "golang" / app,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"go build of {app} failed:\n{result.stderr}")
        tmp.replace(out)
        built[(app, stripped, cgo, go)] = out
        return out

    return build
