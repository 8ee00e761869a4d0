"""Policy loading errors (file and line), matching, uuids, per-runtime tables."""

from __future__ import annotations

import pytest

from host_agent.policy import empty, load_policy, loads_policy
from host_agent.yamlfile import ConfigError

GOOD = """\
policies:
  - id: no-shell
    runtime: [python, php]
    kind: process
    match: {args: "(^|/)(sh|bash)\\\\b", stack: "views\\\\.py"}
    action: block
  - id: tmp
    hook: open
    match: {args: "^/tmp/"}
    action: ignore
  - id: any-sql
    kind: sql
    action: alert
"""


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("policies:\n  - id: a\n    action: nope\n", 3, "policies.0.action: Input should be"),
        ("policies:\n  - action: block\n", 2, "policies.0.id: Field required"),
        ("policies:\n  - id: 'has space'\n    action: block\n", 2, "policies.0.id: String should"),
        ("policies:\n  - id: a\n    action: alert\n    kind: weird\n", 4, "policies.0.kind"),
        ("policies:\n  - id: a\n    action: alert\n    runtime: ruby\n", 4, "policies.0.runtime"),
        ("policies:\n  - id: a\n    action: alert\n    match: {args: '[a-'}\n", 4, "invalid regex"),
        (
            "policies:\n  - id: a\n    action: alert\n    match: {argz: x}\n",
            4,
            "unknown field 'argz'",
        ),
        ("policies:\n  - id: a\n    action: alert\n    colour: red\n", 4, "unknown field 'colour'"),
        (
            "policies:\n  - id: a\n    action: alert\n  - id: a\n    action: block\n",
            4,
            "duplicate policy id 'a'",
        ),
        (
            "policies:\n  - id: a\n    action: alert\n    action: block\n",
            4,
            "duplicate key 'action'",
        ),
        ("policies: [\n", 2, "invalid YAML"),
        ("policies: 7\n", 1, "policies: Input should be a valid list"),
        ("- just a list\n", 1, "must be a mapping"),
        ("quotas:\n  - {hook: open, per_minute: -5}\n", 2, "quotas.0.per_minute"),
    ],
)
def test_bad_policy_names_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads_policy(text, "p.yaml")
    assert err.value.line == line, str(err.value)
    assert reason in err.value.reason
    assert str(err.value).startswith(f"p.yaml:{line}: ")
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_policy(tmp_path / "none.yaml")


def test_matching_by_runtime_kind_hook_args_and_stack() -> None:
    ps = loads_policy(GOOD)
    ev = ps.evaluate
    assert ev("python", "process", "os.system", ["bash -c id"], ["x(views.py:3)"]) == (
        False,
        ["no-shell"],
    )
    assert ev("python", "process", "os.system", ["bash -c id"], ["x(other.py:3)"]) == (False, [])
    assert ev("jvm", "process", "x", ["bash"], ["views.py"]) == (False, [])
    assert ev("php", "process", "system", ["/bin/sh"], ["views.py"]) == (False, ["no-shell"])
    assert ev("python", "process", "os.system", ["bashful"], ["views.py"]) == (False, [])
    assert ev("nodejs", "file", "open", ["/tmp/a"], []) == (True, [])
    assert ev("nodejs", "file", "fs.open", ["/tmp/a"], []) == (False, [])
    assert ev("golang", "sql", "database/sql.(*DB).QueryContext", ["select 1"], []) == (
        False,
        ["any-sql"],
    )


def test_uuid_follows_content_not_formatting() -> None:
    a = loads_policy(GOOD)
    b = loads_policy("# a comment\n" + GOOD.replace("    action: alert", "    action:   alert"))
    assert a.uuid == b.uuid
    c = loads_policy(GOOD.replace("any-sql", "all-sql"))
    assert c.uuid != a.uuid
    assert empty().uuid == loads_policy("").uuid


def test_frames_for_a_runtime() -> None:
    ps = loads_policy(GOOD)
    flt, blk, quota = ps.frames_for("python")
    assert [r.policy_id for r in blk.data.blocks] == ["no-shell"]
    assert blk.data.blocks[0].runtime == ["python", "php"]
    assert [r.policy_id for r in flt.data.filters] == ["tmp"]
    assert [(q.hook, q.per_minute) for q in quota.data.quotas] == [("*", 12000)]
    _f, jblk, _q = ps.frames_for("jvm")
    assert jblk.data.blocks == []
    assert {blk.data.uuid, flt.data.uuid, quota.data.uuid} == {ps.uuid}


def test_explicit_default_quota_replaces_the_builtin_one() -> None:
    ps = loads_policy(
        "quotas:\n  - {per_minute: 50}\n  - {hook: open, runtime: jvm, per_minute: 1}\n"
    )
    (_f, _b, q) = ps.frames_for("python")
    assert [(x.hook, x.per_minute) for x in q.data.quotas] == [("*", 50)]
    (_f, _b, q) = ps.frames_for("jvm")
    assert [(x.hook, x.per_minute) for x in q.data.quotas] == [("*", 50), ("open", 1)]
