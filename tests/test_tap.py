"""twistd options: defaults, endpoint parsing, and clean usage errors."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceCollection

from twisted_chat import tap
from twisted_chat.service import ChatService


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    o = parse()
    assert o["port"] == "9999" and o["endpoint-description"] == "tcp:9999"
    assert o["heartbeat-interval"] == 10.0 and o["heartbeat-timeout"] == 30.0
    assert o["sweep-interval"] == 1.0 and o["max-line"] == 2048


@pytest.mark.parametrize(
    "port,description",
    [
        ("9999", "tcp:9999"),
        (" 8000 ", "tcp:8000"),
        ("tcp:9999:interface=127.0.0.1", "tcp:9999:interface=127.0.0.1"),
        (r"tcp6:9999:interface=\:\:1", r"tcp6:9999:interface=\:\:1"),
        ("unix:/tmp/chat.sock", "unix:/tmp/chat.sock"),
    ],
)
def test_port_forms(port, description):
    assert parse("--port", port)["endpoint-description"] == description


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "nonsense:1"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--port", "tcp:99999"],
        ["--port", "tcp:notaport"],
        ["--port", "tcp6:9999:interface=::1"],
        ["--heartbeat-interval", "abc"],
        ["--heartbeat-interval", "0"],
        ["--heartbeat-timeout", "-1"],
        ["--heartbeat-timeout", "nan"],
        ["--heartbeat-interval", "30", "--heartbeat-timeout", "10"],
        ["--max-line", "10"],
        ["--max-line", "big"],
        ["--flush-interval", "-0.1"],
        ["--flush-interval", "2"],
        ["--flush-interval", "soon"],
        ["--summarize-above", "0"],
        ["--summary-interval", "0"],
    ],
)
def test_bad_values_are_usage_errors(args):
    with pytest.raises(tap.OptionError) as info:
        parse(*args)
    assert str(info.value.code).startswith("twistd groupchat: error: --")
    assert "\n" not in str(info.value.code)


def test_make_service_builds_core_then_listener():
    services = list(IServiceCollection(tap.makeService(parse("--port", "tcp:0"))))
    assert isinstance(services[0], ChatService)
    assert isinstance(services[1], tap.ListenerService)
    assert services[0].heartbeat.timeout == 30.0


def test_plugin_is_thin_and_names_tap_module():
    import importlib

    plugin = importlib.import_module("twisted.plugins.groupchat")
    assert plugin.groupchat.tapname == "groupchat"
    assert plugin.groupchat.module == "twisted_chat.tap"
