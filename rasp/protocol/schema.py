"""The wire schema: every message that crosses the probe socket, as msgspec Structs.

This module is the single definition of the protocol. The JSON Schema in `schema.json`
is generated from it (`make protocol-schema`), and the vectors in `vectors/` are checked
against it; probes in other languages are tested against those vectors.

Frames are tagged by `message_type`. Frames from a probe carry the full envelope
(pid, runtime, versions, time); frames from the agent carry only `message_type` and `data`.
Unknown fields are ignored, so a newer probe can add fields without breaking an older agent;
unknown message types are refused (see docs/protocol.md).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

PROTOCOL_VERSION = 1

#: Runtimes, spelled as they appear in events (design §4).
RUNTIMES = ("python", "jvm", "golang", "nodejs", "php")
#: Event kinds (design §4).
KINDS = (
    "process",
    "file",
    "network",
    "dns",
    "sql",
    "code",
    "deserialization",
    "naming",
    "classload",
    "library",
)


class MessageType(IntEnum):
    EXIT = 0
    HEARTBEAT = 1
    TRACE = 2
    CONFIG = 3
    FILTER = 6
    BLOCK = 7
    QUOTA = 8
    ERROR = 99
    HELLO = 100
    CONTROL_REQUEST = 200
    CONTROL_REPLY = 201


Runtime = Literal["python", "jvm", "golang", "nodejs", "php"]
Kind = Literal[
    "process",
    "file",
    "network",
    "dns",
    "sql",
    "code",
    "deserialization",
    "naming",
    "classload",
    "library",
]
Pid = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Count = Annotated[int, Meta(ge=0)]
ShortStr = Annotated[str, Meta(max_length=256)]
Uuid = Annotated[str, Meta(max_length=64)]
Regex = Annotated[str, Meta(max_length=4096)]


# --------------------------------------------------------------------------- data payloads


class Request(Struct, omit_defaults=True):
    """HTTP request context of the call, when the probe knows it."""

    method: str = ""
    url: str = ""
    remote_addr: str = ""
    #: query + form parameters; a name may repeat (a=1&a=2), so values are lists
    params: dict[str, list[str]] = {}
    headers: dict[str, str] = {}


class TraceData(Struct, omit_defaults=True):
    """One hooked call (design §4). The agent adds ts, process and the envelope fields."""

    hook: Annotated[str, Meta(min_length=1, max_length=256)]
    kind: Kind
    args: list[str] = []
    stack: list[str] = []
    blocked: bool = False
    policy_id: str | None = None
    request: Request | None = None
    ret: str | None = None
    class_id: int | None = None
    method_id: int | None = None


class HelloData(Struct, omit_defaults=True):
    """First frame of every probe connection."""

    #: "attached": injected by rasp-attach / auto-attach; "sdk": the app started the probe itself
    mode: Literal["attached", "sdk"]
    hooks: list[ShortStr] = []
    #: pid inside the probe's own pid namespace, when it differs from the host pid
    nspid: Pid | None = None
    #: the probe was already running (a reconnect, or a second attach that did nothing)
    already_running: bool = False
    protocol_version: int = PROTOCOL_VERSION


class HeartbeatData(Struct, omit_defaults=True, frozen=True):
    sent: Count = 0
    dropped: Count = 0
    blocked: Count = 0
    #: drop counts by reason: queue_full, agent_away, quota, filter, error, ...
    dropped_by: dict[str, Count] = {}
    #: uuid of each policy table in force in the probe: config, filter, block, quota
    policies: dict[str, Uuid] = {}
    queue: Count = 0


class ExitData(Struct, omit_defaults=True, frozen=True):
    reason: str = ""


class RuleMatch(Struct, omit_defaults=True, frozen=True):
    #: regex searched in the event's args joined by a single space
    args: Regex | None = None
    #: regex searched in each stack frame
    stack: Regex | None = None


class Rule(Struct, omit_defaults=True):
    """One policy rule as pushed to probes (filter and block tables)."""

    policy_id: Annotated[str, Meta(min_length=1, max_length=256)]
    runtime: list[Runtime] | None = None
    kind: Kind | None = None
    hook: str | None = None
    match: RuleMatch = RuleMatch()


class ConfigData(Struct, omit_defaults=True):
    uuid: Uuid
    #: hooks the probe must switch off (audit hooks that cannot be removed are muted)
    hooks_disabled: list[str] = []
    stack_depth: Annotated[int, Meta(ge=0, le=256)] | None = None
    settings: dict[str, Any] = {}


class FilterData(Struct, omit_defaults=True):
    """Events matching any rule are dropped in the probe (policy action `ignore`)."""

    uuid: Uuid
    filters: list[Rule] = []


#: detection rules probes check on the app's thread today (docs/detection.md, "Block mode");
#: a probe ignores an id it does not know, so the agent may add rules before every probe has
#: their checks
DETECT_RULES = ("sqli.input", "sqli.stacked", "cmdi.input", "path.traversal", "ssrf.internal")


class DetectExempt(Struct, omit_defaults=True, frozen=True):
    """A whitelist entry, as a probe applies it: all its conditions must hold."""

    #: regex searched in the request URL's path
    request_path: Regex | None = None
    #: regex searched in the event's args joined by a single space
    args: Regex | None = None
    #: regex matched against the first argument (a file path); the agent writes globs as
    #: anchored regexes
    path: Regex | None = None


class DetectRule(Struct, omit_defaults=True, frozen=True):
    """A detection rule in block mode: the probe runs its in-probe check on events that have
    request context and refuses the call on a finding, unless an exemption holds."""

    rule: Annotated[str, Meta(min_length=1, max_length=64)]
    exempt: list[DetectExempt] = []


class BlockData(Struct, omit_defaults=True):
    """Calls matching any rule are refused in the probe before the sink runs."""

    uuid: Uuid
    blocks: list[Rule] = []
    #: detection rules in block mode (a probe that does not know the field ignores it, and
    #: blocks on policies only)
    detect: list[DetectRule] = []


class Quota(Struct, omit_defaults=True):
    #: a hook name, or "*" for every hook without its own line
    hook: Annotated[str, Meta(min_length=1, max_length=256)]
    per_minute: Count


class QuotaData(Struct, omit_defaults=True):
    uuid: Uuid
    quotas: list[Quota] = []


class ErrorData(Struct, omit_defaults=True):
    """Sent by the agent just before it closes a connection it refuses."""

    code: str
    reason: str


class ControlRequestData(Struct, omit_defaults=True):
    id: int
    command: Annotated[str, Meta(min_length=1, max_length=64)]
    args: dict[str, Any] = {}


class ControlReplyData(Struct, omit_defaults=True):
    id: int
    ok: bool
    result: Any = None
    error: str | None = None


# --------------------------------------------------------------------------- frames


class _ProbeEnvelope(Struct, omit_defaults=True, kw_only=True):
    pid: Pid
    runtime: Runtime
    runtime_version: ShortStr = ""
    probe_version: ShortStr = ""
    #: event time, ms since the epoch
    time: Count = 0


class Hello(_ProbeEnvelope, tag_field="message_type", tag=int(MessageType.HELLO), kw_only=True):
    data: HelloData


class Heartbeat(
    _ProbeEnvelope, tag_field="message_type", tag=int(MessageType.HEARTBEAT), kw_only=True
):
    data: HeartbeatData = HeartbeatData()


class Trace(_ProbeEnvelope, tag_field="message_type", tag=int(MessageType.TRACE), kw_only=True):
    data: TraceData


class ProbeExit(_ProbeEnvelope, tag_field="message_type", tag=int(MessageType.EXIT), kw_only=True):
    data: ExitData = ExitData()


class ControlRequest(Struct, tag_field="message_type", tag=int(MessageType.CONTROL_REQUEST)):
    data: ControlRequestData


class Config(Struct, tag_field="message_type", tag=int(MessageType.CONFIG)):
    data: ConfigData


class Filter(Struct, tag_field="message_type", tag=int(MessageType.FILTER)):
    data: FilterData


class Block(Struct, tag_field="message_type", tag=int(MessageType.BLOCK)):
    data: BlockData


class QuotaFrame(Struct, tag_field="message_type", tag=int(MessageType.QUOTA)):
    data: QuotaData


class AgentExit(Struct, tag_field="message_type", tag=int(MessageType.EXIT)):
    data: ExitData = ExitData()


class Error(Struct, tag_field="message_type", tag=int(MessageType.ERROR)):
    data: ErrorData


class ControlReply(Struct, tag_field="message_type", tag=int(MessageType.CONTROL_REPLY)):
    data: ControlReplyData


#: What a peer may send to the agent: probe frames, and control requests (root only).
ToAgent = Hello | Heartbeat | Trace | ProbeExit | ControlRequest
#: What the agent sends to a peer.
FromAgent = Config | Filter | Block | QuotaFrame | AgentExit | Error | ControlReply

PROBE_FRAMES = (Hello, Heartbeat, Trace, ProbeExit)
