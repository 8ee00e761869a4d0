"""The one registry of agent settings.

Every setting has a YAML key in the config file and an env var `RAMPART_<NAME>`; the command
line overrides both, env overrides the file, the file overrides the defaults. Errors name
their source: `config.yaml:12: store_batch: ...`, `RAMPART_MAX_FRAME: ...`, `--socket: ...`.
docs/configuration.md lists them (a test keeps it in step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from driver.programs import DEFAULT_STORED, EVENT_NAMES
from host_agent.yamlfile import ConfigError, load, pydantic_error
from rasp.protocol import DEFAULT_MAX_FRAME, RUNTIMES

ENV_PREFIX = "RAMPART_"
DEFAULT_SOCKET = Path("/run/rampart/probe.sock")
DEFAULT_STORE = Path("/var/lib/rampart/events.db")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    socket: Path = Field(DEFAULT_SOCKET, description="Unix socket probes and the CLI connect to")
    socket_mode: int = Field(
        0o666,
        ge=0,
        le=0o777,
        description="mode of the socket file; probes run as app users, so all may connect "
        "(each peer is then checked with SO_PEERCRED)",
    )
    store: Path = Field(DEFAULT_STORE, description="SQLite event store (WAL mode)")
    store_batch: int = Field(2000, ge=1, le=100_000, description="max events per store transaction")
    store_flush_ms: int = Field(
        100, ge=1, le=60_000, description="max delay before a batch is written"
    )
    jsonl: Path | None = Field(None, description="also append every event to this JSON lines file")
    stdout: bool = Field(False, description="also print every event as one JSON line on stdout")
    policy: Path | None = Field(
        None, description="policy file (YAML) loaded at start and on SIGHUP"
    )
    max_frame: int = Field(
        DEFAULT_MAX_FRAME, ge=1024, le=64 << 20, description="largest frame accepted, in bytes"
    )
    hello_timeout: float = Field(
        10.0, gt=0, description="seconds a new connection may wait before its first frame"
    )
    idle_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds a probe may stay silent (no heartbeat) before it is dropped",
    )
    conn_rate: int = Field(
        200_000,
        ge=1,
        description="frames/s one connection may send; above it the agent stops reading from "
        "that peer until its budget refills (the probe's queue then drops and counts)",
    )
    queue_limit: int = Field(
        100_000,
        ge=100,
        description="events waiting for the sinks; above it the agent stops reading from probes",
    )
    max_conns_per_uid: int = Field(
        1024,
        ge=1,
        description="open connections one non-root uid may hold (one per probe process)",
    )
    sdk_allow: bool = Field(True, description="accept probes that announce themselves as SDK")
    sdk_uids: list[int] = Field(
        default_factory=list, description="if not empty, only these uids may connect as SDK probes"
    )
    detectors: bool = Field(
        True, description="run the attack detectors (SQLi, command injection, traversal, SSRF)"
    )
    rules: Path | None = Field(
        None, description="detection rules file (overrides, whitelist), reloaded with the policy"
    )
    alert_window_s: int = Field(
        60,
        ge=1,
        description="alerts of one rule, process and request signature within this "
        "many seconds are counted in one alert row",
    )
    arg_cap: int = Field(4096, ge=16, description="characters kept per argument")
    args_max: int = Field(64, ge=1, description="arguments kept per event")
    stack_max: int = Field(32, ge=0, description="stack frames kept per event")
    auto_attach: list[str] = Field(
        default_factory=list,
        description="runtimes to attach automatically (off when empty; needs attach_include)",
    )
    attach_include: list[dict[str, Any]] = Field(
        default_factory=list,
        description="auto-attach only processes matching one of these rules: {exe: glob, "
        "cmdline: regex, user: name|uid, container: glob, cgroup: glob, pid: int}; all fields "
        "of a rule must match. Required with auto_attach",
    )
    attach_exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="never auto-attach processes matching one of these"
    )
    attach_settle_s: dict[str, float] = Field(
        default_factory=lambda: {
            "jvm": 2.0,
            "python": 0.5,
            "nodejs": 0.5,
            "php": 0.5,
            "golang": 0.5,
        },
        description="seconds after exec before a runtime is attached (a JVM still starting "
        "must not get SIGQUIT)",
    )
    attach_retries: int = Field(3, ge=0, le=20, description="attach attempts before giving up")
    attach_timeout_s: float = Field(30.0, gt=0, description="an attach helper is killed after this")
    attach_rescan_s: float = Field(10.0, gt=0, description="period of the /proc rescan")
    attach_memory_mb: int = Field(256, ge=16, description="memory cap of an attach helper")
    attach_cpu_percent: int = Field(50, ge=1, le=100, description="CPU cap of an attach helper")
    attach_command: list[str] = Field(
        default_factory=list,
        description="attach helper command (default: this installation's rasp-attach); "
        "it gets --pid, --socket, --timeout and --json",
    )
    jvm_transport: Literal["auto", "fifo"] = Field(
        "auto",
        description="how attached JVMs reach the agent: auto = the Unix socket on JDK 16+, a "
        "FIFO pair bound to the pid on JDK 8-15; fifo = the FIFO pair on every JDK",
    )
    driver: Literal["auto", "on", "off"] = Field(
        "auto",
        description="eBPF driver: auto = on when root with BTF, else /proc (one log line says "
        "why); on = refuse to start without it; off = /proc only",
    )
    driver_events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STORED),
        description="driver events stored (docs/driver.md); execve, fork, exit and prctl are "
        "always collected for the process cache",
    )
    driver_open_paths: list[str] = Field(
        default_factory=lambda: [
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/sudoers",
            "/etc/ld.so.preload",
            "/root/.ssh/",
            "/etc/ssh/ssh_host_",
        ],
        description="with the `open` event on: opens of paths under these prefixes are stored "
        "whatever their flags (at most 8, absolute, < 64 bytes); writes are stored anywhere. "
        "Without eBPF (fanotify fallback): writes under these prefixes only",
    )
    driver_ringbuf_kb: int = Field(
        8192, ge=4, le=1 << 20, description="driver ring buffer size (rounded up to a power of 2)"
    )
    driver_object: Path | None = Field(
        None, description="BPF object to load (default: build/bpf/rampart.bpf.o of this checkout)"
    )
    enforce: Literal["auto", "lsm", "cgroup", "off"] = Field(
        "auto",
        description="kernel blocking for protected processes (docs/enforcement.md): auto = BPF "
        "LSM where the kernel loads it, else cgroup connect/sendmsg + exec tracepoint; lsm or "
        "cgroup = only that; off. Without BPF the agent runs on without it (one log line)",
    )
    kernel_enforce: list[str] = Field(
        default_factory=lambda: ["golang"],
        description="runtimes whose attached processes are put under kernel enforcement "
        "(golang has no in-process blocking; others opt in)",
    )
    proc_cache_size: int = Field(
        32768, ge=64, description="processes the cache keeps (exited ones are evicted first)"
    )
    proc_cache_keep_s: float = Field(
        60.0, ge=0, description="seconds an exited process stays in the cache"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="agent log level (stderr)"
    )

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> Any:
        # "0660" in YAML or env is meant as octal, as chmod reads it
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip(), 8)
        return v

    @field_validator("attach_include", "attach_exclude")
    @classmethod
    def _attach_rules(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from host_agent.autoattach import check_rule  # the matcher owns its own schema

        for i, rule in enumerate(v):
            problem = check_rule(rule)
            if problem:
                raise ValueError(f"rule {i}: {problem}")
        return v

    @model_validator(mode="after")
    def _auto_attach_is_scoped(self) -> Settings:
        # opt-in twice over, as in Elkeid: runtimes *and* include rules, never "everything"
        if self.auto_attach and not self.attach_include:
            raise ValueError(
                "auto_attach names runtimes but attach_include has no rules: "
                "say which processes to attach (exe, cmdline, user, container, cgroup, pid)"
            )
        return self

    @field_validator("driver_events")
    @classmethod
    def _driver_events(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if e not in EVENT_NAMES]
        if bad:
            raise ValueError(
                f"unknown driver event {bad[0]!r}; choose from {', '.join(EVENT_NAMES)}"
            )
        return v

    @field_validator("driver_open_paths")
    @classmethod
    def _open_paths(cls, v: list[str]) -> list[str]:
        if len(v) > 8:
            raise ValueError("at most 8 prefixes")
        for p in v:
            if not p.startswith("/") or len(p.encode()) >= 64:
                raise ValueError(f"{p!r}: an absolute path prefix of less than 64 bytes")
        return v

    @field_validator("auto_attach", "kernel_enforce")
    @classmethod
    def _runtimes(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in RUNTIMES]
        if bad:
            raise ValueError(f"unknown runtime {bad[0]!r}; choose from {', '.join(RUNTIMES)}")
        return v


LIST_FIELDS = {n for n, f in Settings.model_fields.items() if "list[" in str(f.annotation)}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for name in Settings.model_fields:
        var = env_name(name)
        if var in environ:
            raw = environ[var]
            value: Any = raw
            if raw.lstrip().startswith(("[", "{")):
                # structured settings (attach rules, settle delays) are given as JSON
                try:
                    value = json.loads(raw)
                except ValueError as e:
                    raise ConfigError(var, f"invalid JSON: {e}") from None
            elif name in LIST_FIELDS:
                value = [x.strip() for x in raw.split(",") if x.strip()]
            out[name] = (var, value)
    return out


def load_settings(
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < config file < RAMPART_* env < overrides (CLI flags, None = unset)."""
    environ = os.environ if environ is None else environ
    if config is None and environ.get(ENV_PREFIX + "CONFIG"):
        config = environ[ENV_PREFIX + "CONFIG"]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    lines: dict = {}
    source = ""
    if config is not None:
        source = str(config)
        data, lines = load(config)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, "must be a mapping of setting: value", 1)
        values.update(data)
        origin.update({k: "file" for k in data})
    for name, (var, value) in _from_env(environ).items():
        values[name] = value
        origin[name] = var
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            origin[name] = "--" + name.replace("_", "-")
    try:
        return Settings(**values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        if not first["loc"]:
            # a rule across settings (auto_attach needs attach_include): name every source
            sources = sorted({origin.get(n, "") for n in ("auto_attach", "attach_include")} - {""})
            where = ", ".join(s if s != "file" else source for s in sources) or "settings"
            raise ConfigError(where, first["msg"].removeprefix("Value error, ")) from None
        field = str(first["loc"][0])
        where = origin.get(field, "file")
        if where == "file":
            raise pydantic_error(source, lines, err, noun="setting") from None
        raise ConfigError(where, f"{first['msg']}") from None


def describe() -> list[tuple[str, str, str, str]]:
    """(setting, env var, default, description) rows for docs and `rasp-agent config`."""
    rows = []
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        if name == "socket_mode":
            default = oct(default).replace("0o", "0")
        rows.append((name, env_name(name), str(default), f.description or ""))
    return rows


def markdown_table() -> str:
    rows = ["| setting | env var | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{n}` | `{e}` | `{d}` | {desc} |" for n, e, d, desc in describe()]
    return "\n".join(rows)


if __name__ == "__main__":
    # python -m host_agent.settings: rewrite the settings table in docs/configuration.md
    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    text = doc.read_text()
    start = text.index("| setting | env var |")
    end = text.index("\n\n", start)
    doc.write_text(text[:start] + markdown_table() + text[end:])
