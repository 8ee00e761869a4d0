"""The policy's kernel subset: validation, and the compiler into the kernel's tables."""

from __future__ import annotations

import ctypes
import ipaddress
from pathlib import Path

import pytest

from host_agent.enforce import (
    AF_INET,
    AF_INET6,
    NET_RULES,
    PREFIXES,
    KernelEnforcer,
    RpeEvent,
    cgroup2_root,
    compile_policy,
    runtime_bit,
)
from host_agent.policy import loads_policy
from host_agent.yamlfile import ConfigError

BASE = """
policies:
  - id: no-meta
    kind: network
    action: block
    match: {dest: [127.0.0.0/24, "::1"], port: [80, 8080]}
  - id: no-shell
    runtime: [golang, python]
    kind: process
    action: block
    match: {name: [sh, bash], path: [/usr/bin/nc], path_prefix: [/tmp/]}
  - id: regex-only
    kind: process
    action: block
    match: {args: "curl"}
  - id: watch
    kind: network
    action: alert
"""


def test_compiles_every_kernel_field() -> None:
    c = compile_policy(loads_policy(BASE), ["golang"])
    assert c.ids == ["", "no-meta", "no-shell"]
    assert c.in_probe_only == ["regex-only"]  # a regex rule stays with the probes
    # IPv4 /24: once as IPv4, once v4-mapped for IPv6 sockets; ::1 once; x 2 ports each
    assert len(c.net) == 6
    v4 = [r for r in c.net if r.family == AF_INET]
    assert {(r.port, r.prefixlen) for r in v4} == {(80, 24), (8080, 24)}
    assert v4[0].addr[:4] == bytes([127, 0, 0, 0]) and v4[0].policy == 1 and v4[0].runtimes == 0
    mapped = [r for r in c.net if r.family == AF_INET6 and r.prefixlen == 96 + 24]
    assert ipaddress.IPv6Address(mapped[0].addr).ipv4_mapped == ipaddress.IPv4Address("127.0.0.0")
    lo6 = [r for r in c.net if r.family == AF_INET6 and r.prefixlen == 128]
    assert lo6[0].addr == ipaddress.IPv6Address("::1").packed
    mask = runtime_bit("golang") | runtime_bit("python")
    assert c.names == {"sh": (2, mask), "bash": (2, mask)}
    assert c.paths == {"/usr/bin/nc": (2, mask)}
    assert c.prefixes == [("/tmp/", 2, mask)]
    assert c.unscoped == []


def test_no_port_means_any_and_scope_is_reported() -> None:
    c = compile_policy(
        loads_policy(
            "policies:\n  - id: a\n    runtime: jvm\n    kind: network\n    action: block\n"
            "    match: {dest: [10.0.0.0/8]}\n"
        ),
        ["golang"],
    )
    assert [r.port for r in c.net] == [0, 0]
    assert c.unscoped == ["a"]  # jvm is not kernel-enforced by setting: said, not refused


def test_kernel_rules_are_not_pushed_to_probes_nor_matched_in_the_agent() -> None:
    p = loads_policy(BASE)
    frames = p.frames_for("python")
    blocks = frames[1].data.blocks
    assert [b.policy_id for b in blocks] == ["regex-only"]
    # the kernel already enforced it: no second (alert) hit here; plain alert rules still match
    hits = p.evaluate("golang", "network", "kernel.connect", ["127.0.0.1:80"], [])[1]
    assert hits == ["watch"]


def test_limits_refuse_the_whole_policy() -> None:
    many = ", ".join(f"127.0.{i}.0/24" for i in range(NET_RULES // 2 + 1))
    with pytest.raises(ConfigError, match="more than 64 destination rules"):
        compile_policy(
            loads_policy(
                f"policies:\n  - id: big\n    kind: network\n    action: block\n"
                f"    match: {{dest: [{many}]}}\n"
            ),
            ["golang"],
        )
    prefixes = ", ".join(f"/p{i}/" for i in range(PREFIXES + 1))
    with pytest.raises(ConfigError, match="policy 'pre': more than 8 exec path prefixes"):
        compile_policy(
            loads_policy(
                f"policies:\n  - id: pre\n    kind: process\n    action: block\n"
                f"    match: {{path_prefix: [{prefixes}]}}\n"
            ),
            ["golang"],
        )


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("kind: process\n    action: block\n    match: {dest: [1.2.3.4]}", "needs kind: network"),
        ("kind: network\n    action: block\n    match: {name: [sh]}", "needs kind: process"),
        ("kind: network\n    action: alert\n    match: {dest: ['::1']}", "action: block only"),
        (
            "kind: network\n    action: block\n    match: {dest: ['::1'], args: x}",
            "cannot run the args/stack regexes",
        ),
        ("kind: network\n    action: block\n    match: {dest: [300.1.1.1]}", "not a CIDR"),
        ("kind: network\n    action: block\n    match: {dest: ['::1'], port: [0]}", "out of range"),
        ("kind: network\n    action: block\n    match: {port: [80]}", "needs match.dest"),
        ("kind: process\n    action: block\n    match: {name: [a/b]}", "without '/'"),
        ("kind: process\n    action: block\n    match: {path: [sh]}", "an absolute path"),
        (
            "kind: process\n    hook: os.system\n    action: block\n    match: {name: [sh]}",
            "no hook",
        ),
        (
            "runtime: golang\n    kind: file\n    action: block\n    match: {args: passwd}",
            "blocked by the kernel only",
        ),
    ],
)
def test_bad_kernel_rules_name_file_and_line(policy: str, error: str) -> None:
    text = f"policies:\n  - id: ok\n    action: alert\n  - id: bad\n    {policy}\n"
    with pytest.raises(ConfigError, match=error) as e:
        loads_policy(text, "p.yaml")
    assert str(e.value).startswith("p.yaml:")
    assert "policies.1" in str(e.value)


def test_regex_block_rules_for_probe_runtimes_stay_in_probe() -> None:
    # python blocks in-process: a regex block rule for it is fine (not refused)
    p = loads_policy(
        "policies:\n  - id: r\n    runtime: python\n    kind: process\n    action: block\n"
        "    match: {args: sh}\n"
    )
    assert compile_policy(p, ["python"]).in_probe_only == ["r"]


def test_without_the_object_the_enforcer_is_off_with_a_reason(tmp_path: Path) -> None:
    e = KernelEnforcer(object_path=tmp_path / "missing.bpf.o")
    assert e.start(None) == "off"
    assert "not found" in e.reason or "root" in e.reason
    assert e.stats()["mechanism"] == "off"
    e.stop()  # idempotent, nothing to undo


def test_record_layout_and_cgroup_root(tmp_path: Path) -> None:
    assert ctypes.sizeof(RpeEvent) == 8 * 2 + 4 * 8 + 2 * 2 + 4 + 16 + 16 + 256 + 512
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "35 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_root(str(info)) == Path("/sys/fs/cgroup/unified")
    info.write_text("30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert cgroup2_root(str(info)) is None
