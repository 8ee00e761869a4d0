"""How the block-mode rules of a Go process become the kernel check's table
(rasp/golang/detectcfg.py): pure logic; the check itself runs in
tests/integration/test_go_detect_corpus.py and test_go_probe.py."""

from __future__ import annotations

import ctypes

from rasp.golang.detectcfg import kernel_detect, literal_path
from rasp.golang.hooks import HOOKS
from rasp.golang.records import RULES, go_detect_cfg, go_event
from rasp.protocol.schema import DetectExempt, DetectRule


def test_literal_request_paths_only() -> None:
    assert literal_path("^/write$") == ("/write", False)
    assert literal_path("^/admin/") == ("/admin/", True)
    assert literal_path(r"^/a\.php$") == ("/a.php", False)
    assert literal_path("/write") is None  # unanchored: a search anywhere
    assert literal_path("^/api/v[12]/") is None
    assert literal_path("^/" + "x" * 80) is None  # longer than the kernel's buffer


def test_rules_and_exemptions_in_the_kernel_table() -> None:
    kd = kernel_detect(
        [
            DetectRule(rule="sqli.input", exempt=[DetectExempt(request_path="^/admin/")]),
            DetectRule(rule="sqli.stacked"),  # no kernel check: left to the agent, silently
            DetectRule(rule="cmdi.input", exempt=[DetectExempt(args="^echo ")]),
            DetectRule(rule="path.traversal", exempt=[DetectExempt(request_path="^/write$")]),
            DetectRule(rule="ssrf.internal"),
        ]
    )
    assert kd.rules == ["sqli.input", "path.traversal", "ssrf.internal"]
    assert len(kd.notes) == 1 and kd.notes[0].startswith("cmdi.input: not blocked")
    cfg = kd.config()
    assert isinstance(cfg, go_detect_cfg)
    codes = {r: c for c, r in RULES.items()}
    assert cfg.rules == sum(1 << codes[r] for r in kd.rules)
    assert cfg.nexempt == 2
    ex = {bytes(e.path).rstrip(b"\0"): (e.rules, e.prefix, e.len) for e in cfg.ex[:2]}
    assert ex == {
        b"/admin/": (1 << codes["sqli.input"], 1, 7),
        b"/write": (1 << codes["path.traversal"], 0, 6),
    }


def test_no_rule_no_table_and_too_many_exemptions() -> None:
    assert kernel_detect([]).config() is None
    many = [DetectExempt(request_path=f"^/p{i}$") for i in range(5)]
    kd = kernel_detect([DetectRule(rule="sqli.input", exempt=many)])
    assert kd.rules == [] and "more than 4 exemptions" in kd.notes[0]


def test_layout_the_bpf_side_relies_on() -> None:
    # gorasp.h: hook (u16), rule (u8), blocked (u8) share the old u32 hook's place
    assert go_event.hook.size == 2 and go_event.rule.offset == go_event.hook.offset + 2
    assert go_event.blocked.offset == go_event.hook.offset + 3
    assert go_event.num.offset == go_event.nstr.offset + 4
    # go_net.bpf.c: DialContext's address is read as host:port, lookupIPAddr's as a host
    programs = {h.name: h.program for h in HOOKS}
    assert programs["net.(*Dialer).DialContext"] == "go_dial"
    assert programs["net.(*Resolver).lookupIPAddr"] == "go_lookup_ip"
    assert ctypes.sizeof(go_detect_cfg) == 8 + 4 * (16 + 64)
