"""`rasp-attach --pid PID`: attach a probe to a running process, live.

Prints what was attached and exits 0, or one line saying why not and a non-zero code
(docs/cli.md): 3 no such process / zombie, 4 agent not running, 5 timeout, 6 not a
supported runtime (or no attacher for it yet), 7 permission denied, 1 anything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from host_agent.settings import load_settings
from host_agent.yamlfile import ConfigError
from injector.attach import EXIT_FAIL, AttachError, attach, identify
from injector.attach import detach as detach_probe

RUNTIME_CHOICES = ["auto", "python", "jvm", "golang", "nodejs", "php"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pid", type=click.IntRange(min=1), required=True, help="process to attach to")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True)
@click.option("--socket", type=click.Path(path_type=Path), help="agent socket")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="agent config")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--detach", is_flag=True, help="unload the probe where the runtime allows it")
@click.option("--detect-only", is_flag=True, help="only report which runtime the pid runs")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option(
    "--layers",
    type=click.Choice(["all", "js"]),
    default="all",
    show_default=True,
    help="nodejs: all = JS layer + Frida native layer; js = the JS layer alone",
)
def cli(
    pid: int,
    runtime: str,
    socket: Path | None,
    config: Path | None,
    timeout: float,
    detach: bool,
    detect_only: bool,
    as_json: bool,
    layers: str,
) -> None:
    """Attach a Rampart probe to a running process without restarting it."""
    if layers == "js":
        from injector.attach_nodejs import ATTACHER as node_attacher

        node_attacher.layers = ("js",)
    try:
        settings = load_settings(config, {"socket": socket})
    except ConfigError as e:
        click.echo(f"rasp-attach: {e}", err=True)
        sys.exit(2)
    try:
        if detect_only:
            det = identify(pid, runtime)
            result = {
                "pid": pid,
                "runtime": det.runtime,
                "version": det.version,
                "evidence": det.evidence,
                "exe": det.exe,
            }
            message = f"pid {pid} runs {det.runtime} {det.version} ({det.evidence})"
        elif detach:
            det = detach_probe(pid, runtime, settings.socket, timeout)
            result = {"pid": pid, "runtime": det.runtime, "detached": True}
            message = f"detached: pid {pid} {det.runtime} {det.version}"
        else:
            outcome = attach(pid, runtime, settings.socket, timeout)
            det, probe = outcome.detection, outcome.probe
            result = {
                "pid": pid,
                "runtime": det.runtime,
                "version": det.version,
                "already": outcome.already,
                "probe": probe,
            }
            verb = "already attached" if outcome.already else "attached"
            message = (
                f"{verb}: pid {pid} {det.runtime} {probe.get('runtime_version') or det.version}, "
                f"probe {probe.get('probe_version', '?')}, {probe.get('hooks', 0)} hooks"
            )
            if probe.get("missing"):  # Go: functions not in this binary (not linked in)
                message += f"; not in the binary: {', '.join(probe['missing'])}"
    except AttachError as e:
        if as_json:
            click.echo(json.dumps({"pid": pid, "error": e.reason, "exit": e.code}))
        else:
            click.echo(f"rasp-attach: {e.reason}", err=True)
        sys.exit(e.code)
    except Exception as e:  # one line, not a traceback, for anything unforeseen
        click.echo(f"rasp-attach: pid {pid}: {type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_FAIL)
    click.echo(json.dumps(result) if as_json else message)


def main() -> None:
    cli(prog_name="rasp-attach")


if __name__ == "__main__":
    main()
