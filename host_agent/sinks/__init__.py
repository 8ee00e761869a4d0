"""Event sinks: SQLite store (default), JSON lines file, stdout."""

from __future__ import annotations

from host_agent.settings import Settings
from host_agent.sinks.base import Sink, SinkRunner, StoredEvent
from host_agent.sinks.sqlite import SqliteSink
from host_agent.sinks.stream import JsonLinesSink, StdoutSink


def build(settings: Settings) -> list[Sink]:
    """The sinks the settings ask for; the SQLite store is always there."""
    sinks: list[Sink] = [SqliteSink(settings.store, settings.alert_window_s * 1000)]
    if settings.jsonl is not None:
        sinks.append(JsonLinesSink(settings.jsonl))
    if settings.stdout:
        sinks.append(StdoutSink())
    return sinks


__all__ = ["Sink", "SinkRunner", "StoredEvent", "build"]
