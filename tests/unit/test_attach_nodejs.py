"""Pure logic of the Node attacher: which node options the target runs with."""

from __future__ import annotations

from injector.attach_nodejs import _hex_addr, inspector_options, node_options


def test_disable_sigusr1_on_the_command_line_or_in_node_options() -> None:
    o = inspector_options(["node", "--disable-sigusr1", "app.js"], {})
    assert o.disable_sigusr1 and o.where == "--disable-sigusr1 in the command line"
    o = inspector_options(
        ["node", "app.js"], {"NODE_OPTIONS": "--max-old-space-size=64 --disable-sigusr1"}
    )
    assert o.disable_sigusr1 and "NODE_OPTIONS" in o.where


def test_options_after_the_script_belong_to_the_app() -> None:
    o = inspector_options(["node", "app.js", "--disable-sigusr1", "--inspect-port=1"], {})
    assert not o.disable_sigusr1 and o.port is None
    # a value taken by an option is not the script
    opts = node_options(["node", "-r", "x.js", "--inspect-port", "9333", "app.js"], {})
    assert ("--inspect-port=9333", "the command line") in opts


def test_inspector_port_forms() -> None:
    assert inspector_options(["node", "--inspect-port=9333", "a.js"], {}).port == 9333
    assert inspector_options(["node", "--inspect=127.0.0.1:9444", "a.js"], {}).port == 9444
    assert inspector_options(["node", "--inspect-brk=9555", "a.js"], {}).port == 9555
    assert inspector_options(["node", "a.js"], {"NODE_OPTIONS": "--inspect-port=0"}).port == 0
    assert inspector_options(["node", "--inspect", "a.js"], {}).port is None


def test_proc_net_addresses() -> None:
    assert _hex_addr("0100007F") == "127.0.0.1"
    assert _hex_addr("00000000000000000000000001000000") == "::1"
