"""The settings registry: precedence, errors with their source, and docs in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_agent.settings import Settings, describe, load_settings, markdown_table
from host_agent.yamlfile import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_match_the_design() -> None:
    s = load_settings(environ={})
    assert s.socket == Path("/run/rampart/probe.sock")
    assert s.store == Path("/var/lib/rampart/events.db")
    assert s.max_frame == 1 << 20
    assert s.auto_attach == []  # opt-in, as in Elkeid
    assert s.driver == "auto" and "fork" not in s.driver_events and "open" not in s.driver_events


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("socket: /a.sock\nstore_batch: 10\nmax_frame: 4096\n")
    s = load_settings(
        cfg,
        {"socket": Path("/c.sock"), "store": None},
        environ={"RAMPART_SOCKET": "/b.sock", "RAMPART_STORE_BATCH": "20"},
    )
    assert s.socket == Path("/c.sock")  # flag beats env beats file
    assert s.store_batch == 20  # env beats file
    assert s.max_frame == 4096  # file beats default
    assert s.store == Path("/var/lib/rampart/events.db")  # a None flag is "not given"


def test_config_path_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stdout: true\n")
    assert load_settings(environ={"RAMPART_CONFIG": str(cfg)}).stdout is True


def test_env_parsing() -> None:
    s = load_settings(
        environ={
            "RAMPART_SDK_UIDS": "0, 33",
            "RAMPART_SOCKET_MODE": "0660",
            "RAMPART_STDOUT": "yes",
        }
    )
    assert s.sdk_uids == [0, 33] and s.socket_mode == 0o660 and s.stdout is True
    env = {"RAMPART_AUTO_ATTACH": "python,jvm", "RAMPART_ATTACH_INCLUDE": '[{"cmdline": "app"}]'}
    assert load_settings(environ=env).auto_attach == [
        "python",
        "jvm",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RAMPART_MAX_FRAME": "big"}, "RAMPART_MAX_FRAME: Input should be a valid integer"),
        (
            {"RAMPART_MAX_FRAME": "10"},
            "RAMPART_MAX_FRAME: Input should be greater than or equal to 1024",
        ),
        (
            {"RAMPART_AUTO_ATTACH": "python,ruby"},
            "RAMPART_AUTO_ATTACH: Value error, unknown runtime 'ruby'",
        ),
        ({"RAMPART_LOG_LEVEL": "loud"}, "RAMPART_LOG_LEVEL: Input should be"),
        ({"RAMPART_DRIVER": "maybe"}, "RAMPART_DRIVER: Input should be 'auto', 'on' or 'off'"),
        (
            {"RAMPART_DRIVER_EVENTS": "execve,kexec"},
            "RAMPART_DRIVER_EVENTS: Value error, unknown driver event 'kexec'; choose from",
        ),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    assert str(err.value).startswith(message)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--store-batch: "):
        load_settings(overrides={"store_batch": 0}, environ={})


def test_bad_file_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("socket: /x\n\nconn_rate: 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert str(err.value).startswith(
        f"{cfg}:3: conn_rate: Input should be greater than or equal to 1"
    )
    cfg.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    assert markdown_table() in text, "run: .venv/bin/python -m host_agent.settings"
    for name, env, _default, _desc in describe():
        assert f"`{name}`" in text, f"docs/configuration.md misses {name}"
        assert f"`{env}`" in text
    assert set(Settings.model_fields) == {r[0] for r in describe()}


def test_auto_attach_needs_include_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(overrides={"auto_attach": ["python"]}, environ={})
    assert str(err.value).startswith("--auto-attach: auto_attach names runtimes but attach_include")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("auto_attach: [python]\nattach_include:\n  - {cmdline: x, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert str(err.value).startswith(f"{cfg}:2: attach_include: Value error, rule 0: unknown field")
    with pytest.raises(ConfigError, match="RAMPART_ATTACH_INCLUDE: invalid JSON"):
        load_settings(environ={"RAMPART_ATTACH_INCLUDE": "[{oops"})
