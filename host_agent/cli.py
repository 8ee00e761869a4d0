"""`rasp-agent`: run the daemon, query the store, list probes, manage the policy.

Every command that talks to a running agent takes `--socket`; every command takes
`--config`; `--json` always means one JSON object per line. Exit codes: 0 ok, 1 failure,
2 bad usage / bad config or policy file, 4 no agent running on the socket.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from host_agent.settings import Settings, describe, load_settings
from host_agent.yamlfile import ConfigError
from rasp.protocol.client import AgentUnavailable, ControlError, control

EXIT_FAIL, EXIT_USAGE, EXIT_NO_AGENT = 1, 2, 4

# piped output (scripts, less) gets wide lines rather than tables squeezed to 80 columns
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def fail(message: str, code: int = EXIT_FAIL) -> NoReturn:
    click.echo(f"rasp-agent: {message}", err=True)  # one line, never wrapped
    sys.exit(code)


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        return load_settings(ctx.obj.get("config"), overrides)
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)


def call(settings: Settings, command: str, **args: Any) -> Any:
    try:
        return control(settings.socket, command, args)
    except AgentUnavailable as e:
        fail(f"{e} (is `rasp-agent run` running?)", EXIT_NO_AGENT)
    except ControlError as e:
        fail(str(e))


def jsonl(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        click.echo(json.dumps(r, separators=(",", ":"), ensure_ascii=False))


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config file (default: $RAMPART_CONFIG).",
)
socket_option = click.option(
    "--socket",
    type=click.Path(path_type=Path),
    help="agent socket (default /run/rampart/probe.sock)",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="rampart", prog_name="rasp-agent")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Rampart host agent."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


def _sub_config(f: Any) -> Any:
    """Let --config also follow the subcommand (`rasp-agent run --config x`)."""

    def cb(ctx: click.Context, _p: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.ensure_object(dict)
            ctx.obj["config"] = value

    return click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=cb,
        is_eager=True,
        help="YAML config file (default: $RAMPART_CONFIG).",
    )(f)


# ---------------------------------------------------------------------------- run


@cli.command()
@_sub_config
@socket_option
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), help="SQLite store path")
@click.option("--policy", type=click.Path(dir_okay=False, path_type=Path), help="policy file")
@click.option(
    "--rules", type=click.Path(dir_okay=False, path_type=Path), help="detection rules file"
)
@click.option(
    "--jsonl", type=click.Path(dir_okay=False, path_type=Path), help="also write JSON lines here"
)
@click.option("--stdout/--no-stdout", default=None, help="also print events on stdout")
@click.option(
    "--auto-attach", "auto_attach", help="runtimes to attach automatically, e.g. python,jvm"
)
@click.option("--no-auto-attach", is_flag=True, help="never attach automatically")
@click.option(
    "--driver",
    type=click.Choice(["auto", "on", "off"]),
    help="eBPF driver (default auto: on when root with BTF)",
)
@click.option("--no-driver", is_flag=True, help="same as --driver off")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def run(
    ctx: click.Context, no_auto_attach: bool, no_driver: bool, auto_attach: str | None, **opts: Any
) -> None:
    """Run the agent in the foreground (logs on stderr)."""
    from host_agent import daemon

    if no_driver:
        opts["driver"] = "off"
    if no_auto_attach:
        opts["auto_attach"] = []
    elif auto_attach is not None:
        opts["auto_attach"] = [r.strip() for r in auto_attach.split(",") if r.strip()]
    s = settings_from(ctx, **opts)
    logging.basicConfig(
        level=s.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(daemon.run(s))


# ---------------------------------------------------------------------------- events


def _when(ts: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{ts % 1000:03d}"


def _event_row(e: dict[str, Any]) -> list[str]:
    args = " ".join(e.get("args") or [])
    if len(args) > 80:
        args = args[:77] + "..."
    flags = []
    if e.get("blocked"):
        flags.append(f"BLOCKED:{e.get('policy_id')}")
    if e.get("alerts"):
        flags.append("alert:" + ",".join(e["alerts"]))
    if e.get("count", 1) > 1:  # identical kernel records stored as one row (docs/driver.md)
        flags.append(f"x{e['count']} until {_when(e['last_ts'])}")
    return [
        _when(e["ts"]),
        str(e["pid"]),
        e["runtime"],
        e["kind"],
        e["hook"],
        args,
        " ".join(flags),
    ]


@cli.command()
@_sub_config
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), help="SQLite store path")
@click.option("--json", "as_json", is_flag=True, help="one JSON event per line")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--pid", type=int)
@click.option(
    "--runtime",
    type=click.Choice(["python", "jvm", "golang", "nodejs", "php", "kernel"]),
    help="kernel = events of the eBPF driver",
)
@click.option("--kind")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_context
def events(ctx: click.Context, store: Path | None, as_json: bool, follow: bool, **q: Any) -> None:
    """Query stored events (latest LIMIT, oldest first)."""
    from host_agent.store import EventQuery, StoreMissing

    s = settings_from(ctx, store=store)
    query = EventQuery(pid=q["pid"], runtime=q["runtime"], kind=q["kind"], limit=q["limit"])
    try:
        reader = query.open(s.store)
    except StoreMissing as e:
        fail(str(e))
    with reader:
        rows = reader.latest()
        if as_json:
            jsonl(rows)
        else:
            table = Table("time", "pid", "runtime", "kind", "hook", "args", "", box=None)
            for e in rows:
                table.add_row(*_event_row(e))
            out.print(table)
        if not follow:
            return
        try:
            while True:
                time.sleep(0.5)
                for e in reader.newer():
                    if as_json:
                        jsonl([e])
                    else:
                        click.echo("  ".join(_event_row(e)))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return


# ---------------------------------------------------------------------------- alerts


@cli.command()
@_sub_config
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), help="SQLite store path")
@click.option("--json", "as_json", is_flag=True, help="one alert per line, with its first event")
@click.option("--rule", help="only this rule id")
@click.option("--pid", type=int)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_context
def alerts(
    ctx: click.Context, store: Path | None, as_json: bool, rule: str | None, pid: int | None,
    limit: int,
) -> None:  # fmt: skip
    """Detections, aggregated per rule, process and request signature (latest first)."""
    from host_agent.store import StoreMissing, latest_alerts

    s = settings_from(ctx, store=store)
    try:
        rows = latest_alerts(s.store, rule=rule, pid=pid, limit=limit)
    except StoreMissing as e:
        fail(str(e))
    if as_json:
        jsonl(rows)
        return
    table = Table(
        "last", "count", "severity", "rule", "pid", "runtime", "where", "message", box=None
    )
    for a in rows:
        table.add_row(
            _when(a["last_ts"]), str(a["count"]), a["severity"], a["rule"], str(a["pid"]),
            a["runtime"], a["signature"], a["message"],
        )  # fmt: skip
    out.print(table)


# ---------------------------------------------------------------------------- ps


def _ago(ms: int) -> str:
    s = max(0, int(time.time() - ms / 1000))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@cli.command()
@_sub_config
@socket_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
def ps(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """Runtime processes on this host and their probe state."""
    from injector.detect import scan
    from injector.process import container_id

    s = settings_from(ctx, socket=socket)
    rows: list[dict[str, Any]] = []
    known: set[int] = set()
    try:
        rows = control(s.socket, "ps")
        known.add(control(s.socket, "ping")["pid"])  # the agent is not a process to protect
    except (AgentUnavailable, ControlError) as e:
        click.echo(f"rasp-agent: {e}; showing a scan only", err=True)
    known.update(r["pid"] for r in rows)
    for d in scan():
        if d.pid not in known:
            rows.append(
                {
                    "pid": d.pid,
                    "runtime": d.runtime,
                    "runtime_version": d.version,
                    "state": "not attached",
                    "exe": d.exe,
                    "evidence": d.evidence,
                    "container_id": container_id(d.pid),
                }
            )
    rows.sort(key=lambda r: r["pid"])
    if as_json:
        jsonl(rows)
        return
    table = Table(
        "pid", "runtime", "version", "mode", "container", "state", "attach", "since", "events",
        "drops", "exe", box=None,
    )  # fmt: skip
    for r in rows:
        table.add_row(
            str(r["pid"]),
            r["runtime"],
            r.get("runtime_version", ""),
            r.get("mode", ""),
            (r.get("container_id") or "")[:12],
            r["state"],
            r.get("attach_state", ""),
            _ago(r["since"]) if "since" in r else "",
            str(r.get("events", "")),
            str(r.get("drops", "")),
            r.get("exe", ""),
        )
    out.print(table)
    try:
        status = control(s.socket, "stats")
    except (AgentUnavailable, ControlError):
        return
    click.echo(_driver_line(status.get("driver", {})))
    click.echo(_enforce_line(status.get("enforce", {})))


def _enforce_line(e: dict[str, Any]) -> str:
    if e.get("mechanism", "off") == "off":
        return f"enforce: off ({e.get('reason', 'unknown')})"
    blocked = sum(v for k, v in e.get("blocked", {}).items() if k != "ring_drops")
    return (
        f"enforce: {e['mechanism']}, {e.get('protected', 0)} processes protected, "
        f"{len(e.get('policy', {}).get('kernel_policies', []))} kernel policies, "
        f"{blocked} blocked"
    )


def _driver_line(d: dict[str, Any]) -> str:
    cache = d.get("cache", {})
    if d.get("mode") == "proc-connector+fanotify":
        fan = d.get("fanotify", {})
        return (
            f"driver: proc-connector+fanotify ({d.get('reason', '')}): exec/fork/exit, "
            f"exec paths and sensitive writes, {d.get('kernel_drops', 0)} overruns, "
            f"{fan.get('overflows', 0)} fanotify overflows; "
            f"process cache {cache.get('entries', 0)} entries"
        )
    if d.get("mode") == "proc-connector":
        return (
            f"driver: proc-connector ({d.get('reason', '')}): exec/fork/exit only, "
            f"{d.get('kernel_drops', 0)} overruns; process cache {cache.get('entries', 0)} entries"
        )
    if d.get("mode") != "ebpf":
        return f"driver: {d.get('mode', '?')} ({d.get('reason', '')}): process facts from /proc"
    return (
        f"driver: ebpf, {d.get('programs', 0)} programs, {d.get('received', 0)} records, "
        f"{d.get('kernel_drops', 0)} dropped in the kernel, {d.get('stored', 0)} stored rows "
        f"(+{d.get('aggregated', 0)} identical records folded in"
        f"{_storm_line(d)}); process cache {cache.get('entries', 0)} entries"
    )


def _storm_line(d: dict[str, Any]) -> str:
    """What the sinks' backlog cost the store (hostdriver: summary rows, shed records)."""
    out = ""
    if d.get("summarized"):
        out += f", +{d['summarized']} into summary rows"
    shed = d.get("shed") or {}
    if shed:
        out += ", NOT STORED (sinks behind): " + ", ".join(f"{k} {v}" for k, v in shed.items())
    return out


@cli.command()
@_sub_config
@socket_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@click.pass_context
def status(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """The running agent's counters: probes, pipeline, sinks, driver mode and drops."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "stats")
    if as_json:
        jsonl([res])
        return
    driver = res.pop("driver", {})
    enforce = res.pop("enforce", {})
    for k, v in res.items():
        click.echo(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}")
    click.echo(_driver_line(driver))
    click.echo(_enforce_line(enforce))


# ---------------------------------------------------------------------------- policy


@cli.group()
def policy() -> None:
    """Show, check and reload the policy."""


@policy.command("reload")
@_sub_config
@socket_option
@click.pass_context
def policy_reload(ctx: click.Context, socket: Path | None) -> None:
    """Reload the policy (pushed to every probe) and the rules file, like SIGHUP."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "policy.reload")
    click.echo(res["message"])


@policy.command("show")
@_sub_config
@socket_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def policy_show(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """Print the policy in force in the running agent."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "policy.show")
    if as_json:
        jsonl([res])
        return
    click.echo(f"policy {res['uuid']} from {res['source']}")
    table = Table("id", "action", "runtime", "kind", "hook", "match", box=None)
    for p in res["policies"]:
        rt = p.get("runtime")
        table.add_row(
            p["id"],
            p["action"],
            ",".join(rt) if isinstance(rt, list) else rt or "*",
            p.get("kind") or "*",
            p.get("hook") or "*",
            json.dumps(p.get("match") or {}),
        )
    out.print(table)


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Check a policy file without loading it (exit 2 with file:line on error)."""
    from host_agent.policy import load_policy

    try:
        p = load_policy(file)
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    click.echo(f"{file}: ok, {len(p.policies)} policies, {len(p.quotas)} quotas, uuid {p.uuid}")


# ---------------------------------------------------------------------------- enforce


@cli.group()
def enforce() -> None:
    """Kernel enforcement: status, and protecting a pid by hand (docs/enforcement.md)."""


@enforce.command("status")
@_sub_config
@socket_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def enforce_status(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """The mechanism in force (or why none), the protected processes and block counters."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "enforce.status")
    if as_json:
        jsonl([res])
        return
    click.echo(_enforce_line(res))
    for k in ("lsm", "programs", "cgroup", "blocked", "by_policy", "policy"):
        if res.get(k):
            click.echo(f"{k}: {json.dumps(res[k])}")
    table = Table("pid", "runtime", "explicit", "since", box=None)
    for p in res.get("processes", []):
        table.add_row(str(p["pid"]), p["runtime"], str(p["explicit"]), _ago(p["since"]))
    out.print(table)


@enforce.command("protect")
@_sub_config
@socket_option
@click.argument("pid", type=int)
@click.option(
    "--runtime",
    type=click.Choice(["python", "jvm", "golang", "nodejs", "php"]),
    default="golang",
    show_default=True,
    help="scopes the policies that apply",
)
@click.pass_context
def enforce_protect(ctx: click.Context, socket: Path | None, pid: int, runtime: str) -> None:
    """Put PID under kernel enforcement until `unprotect` or its exit."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "enforce.protect", pid=pid, runtime=runtime)
    click.echo(f"pid {res['pid']} ({res['runtime']}) protected: {res['mechanism']}")


@enforce.command("unprotect")
@_sub_config
@socket_option
@click.argument("pid", type=int)
@click.pass_context
def enforce_unprotect(ctx: click.Context, socket: Path | None, pid: int) -> None:
    """Take PID out of kernel enforcement."""
    s = settings_from(ctx, socket=socket)
    res = call(s, "enforce.unprotect", pid=pid)
    click.echo(f"pid {res['pid']} unprotected")


# ---------------------------------------------------------------------------- config


@cli.command("config")
@_sub_config
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings (defaults < config file < RAMPART_* env)."""
    s = settings_from(ctx)
    values = s.model_dump(mode="json")
    if as_json:
        jsonl([values])
        return
    table = Table("setting", "value", "env", "meaning", box=None)
    for name, env, _default, desc in describe():
        table.add_row(name, json.dumps(values[name]), env, desc)
    out.print(table)


def main() -> None:
    cli(prog_name="rasp-agent")


if __name__ == "__main__":
    main()
