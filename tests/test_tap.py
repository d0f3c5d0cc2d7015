"""twistd options: defaults, endpoint parsing, and clean usage errors."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceCollection

from tests.test_history_store import sync_run
from twisted_chat import tap
from twisted_chat.core.names import skeleton
from twisted_chat.core.service import ChatService


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """History is on by default, in a file of the working directory."""
    monkeypatch.chdir(tmp_path)


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    o = parse()
    assert o["port"] == "9999" and o["doors"]["port"][1] == "tcp:9999"
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
    assert parse("--port", port)["doors"]["port"][1] == description


@pytest.mark.parametrize(
    "port,backlog",
    [
        ("9999", tap.LISTEN_BACKLOG),
        (r"tcp6:9999:interface=\:\:1", tap.LISTEN_BACKLOG),
        ("unix:/tmp/chat.sock", tap.LISTEN_BACKLOG),
        ("tcp:9999:backlog=7", 7),  # the operator's own choice stands
    ],
)
def test_listen_queue_outlasts_an_accept_pause(port, backlog):
    assert parse("--port", port)["doors"]["port"][0]._backlog == backlog


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
        ["--max-clients", "abc"],
        ["--max-rooms", "0"],
        ["--register-timeout", "0"],
        ["--idle-warning", "20"],
        ["--sweep-interval", "100"],
        ["--web", "tcp:99999"],
        ["--web", "nonsense:1"],
        ["--web-origin", "chat.example.com"],
        ["--web-origin", "https://chat.example.com/path"],
        ["--history-replay", "201"],
        ["--history-keep", "0"],
        ["--history", "h.sqlite3", "--backplane", "redis://127.0.0.1:6379"],
        ["--history-private"],
        ["--history-private", "--history", "none", "--auth", "memory:al:pw"],
        ["--history-private", "--auth", "memory:al:pw", "--backplane", "redis://127.0.0.1:6379"],
    ],
)
def test_bad_values_are_usage_errors(args):
    with pytest.raises(tap.OptionError) as info:
        parse(*args)
    assert str(info.value.code).startswith("twistd groupchat: error: --")
    assert "\n" not in str(info.value.code)


def test_make_service_builds_history_core_then_listener():
    services = list(IServiceCollection(tap.makeService(parse("--port", "tcp:0"))))
    assert isinstance(services[0], tap.HistoryService)
    assert isinstance(services[1], ChatService)
    assert isinstance(services[2], tap.ListenerService)
    assert services[1].heartbeat.timeout == 30.0


def test_web_adds_a_second_listener_on_the_same_rules_and_origins_repeat():
    from twisted_chat.doors.web import WebSite

    options = parse(
        "--port", "tcp:0", "--web", "tcp:0",
        "--web-origin", "https://A.example", "--web-origin", "http://b.example:8080/",
    )  # fmt: skip
    assert options["web-origin"] == ["https://a.example", "http://b.example:8080"]
    services = list(IServiceCollection(tap.makeService(options)))
    line, web = (s for s in services if isinstance(s, tap.ListenerService))
    assert isinstance(web.factory, WebSite) and web.web and not line.web
    assert web.factory.rules is line.factory.rules  # type: ignore[attr-defined]
    assert parse()["doors"]["web"] == (None, "")  # no web client unless asked


def test_history_is_on_by_default_in_the_working_directory_and_a_bad_file_is_one_line(
    tmp_path,
):
    assert parse()["history"] == str(tmp_path / tap.HISTORY_FILE)
    assert parse("--history", "none")["history"] is None
    networked = parse("--backplane", "redis://127.0.0.1:6379")
    assert networked["history"] is None and networked["network-history"]  # kept in Redis
    assert not parse("--backplane", "redis://127.0.0.1:6379", "--history", "none")[
        "network-history"
    ]
    assert not parse()["network-history"]
    assert parse("--history", "rel.db")["history"] == str(tmp_path / "rel.db")
    services = list(
        IServiceCollection(tap.makeService(parse("--port", "tcp:0", "--history", "none")))
    )
    assert not any(isinstance(s, tap.HistoryService) for s in services)
    assert not next(s for s in services if isinstance(s, ChatService)).history.enabled
    path = tmp_path / "h.sqlite3"
    options = parse("--port", "tcp:0", "--history", str(path), "--history-replay", "5")
    services = list(IServiceCollection(tap.makeService(options)))
    (kept,) = [s for s in services if isinstance(s, tap.HistoryService)]
    chat = next(s for s in services if isinstance(s, ChatService))
    assert chat.history.replay == 5 and path.exists()  # checked, not opened: no thread yet
    assert kept.store._loop is None and not chat.history.private
    options = parse("--port", "tcp:0", "--history-private", "--auth", "memory:al:pw")
    chat = next(
        s for s in IServiceCollection(tap.makeService(options)) if isinstance(s, ChatService)
    )
    assert chat.history.private
    path = tmp_path / "corrupt.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(tap.OptionError) as info:
        tap.makeService(parse("--port", "tcp:0", "--history", str(path)))
    assert str(path) in str(info.value.code) and "\n" not in str(info.value.code)


def test_plugin_is_thin_and_names_tap_module():
    import importlib

    plugin = importlib.import_module("twisted.plugins.groupchat")
    assert plugin.groupchat.tapname == "groupchat"
    assert plugin.groupchat.module == "twisted_chat.tap"


def test_messages_read_like_sentences():
    def message(*args: str) -> str:
        with pytest.raises(tap.OptionError) as info:
            parse(*args)
        return info.value.message

    assert message("--max-line", "99999999") == "--max-line must be between 64 and 1048576 bytes"
    assert message("--max-clients", "abc") == (
        "--max-clients must be a whole number of connections, not 'abc'"
    )
    assert message("--idle-warning", "20") == (
        "--idle-warning must be at most half of --heartbeat-timeout (15 s), not 20"
    )
    assert message("--port", "systemd:domain=INET:index=0") == (
        "--port 'systemd:domain=INET:index=0' is not usable: no such socket was passed to "
        "this process"
    )


def test_idle_warning_defaults_to_five_seconds_or_half_a_short_timeout():
    assert parse()["idle-warning"] == 5.0
    short = parse("--heartbeat-interval", "1", "--heartbeat-timeout", "3")
    assert short["idle-warning"] == 1.5


def test_version_names_groupchat(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--version")
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("groupchat 0.1.0 (Twisted ")


def test_accounts_that_can_never_log_in_are_named_at_start(tmp_path):
    from typing import cast

    from twisted.logger import ILogObserver, globalLogPublisher

    users = tmp_path / "users.txt"
    users.write_text("alice:pw\nadmin:pw\nguest3:pw\nAIice:pw\n")
    seen: list[dict] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        tap.makeService(parse("--port", "tcp:0", "--auth", f"file:{users}"))
    finally:
        globalLogPublisher.removeObserver(observer)
    named = [e.get("name") for e in seen if "can never log in" in e.get("log_format", "")]
    assert named == ["admin", "guest3"]
    alike = [(e["first"], e["name"]) for e in seen if "look alike" in e.get("log_format", "")]
    assert alike == [("alice", "AIice")]


def test_unknown_options_and_missing_socket_folders_are_one_line():
    with pytest.raises(tap.OptionError) as info:
        parse("--bogus")
    assert info.value.message == "option --bogus not recognized"
    with pytest.raises(tap.OptionError) as info:
        parse("--port", "unix:/nonexistent/dir/chat.sock")
    assert info.value.message.endswith("there is no folder /nonexistent/dir")


def test_with_a_backplane_history_goes_to_redis_with_the_same_options():
    from twisted_chat.backplane.history import NetworkHistory
    from twisted_chat.backplane.redis import RedisLink

    options = parse(
        "--port", "tcp:0", "--backplane", "redis://127.0.0.1:6379",
        "--history-keep", "300", "--history-days", "2", "--history-replay", "7",
    )  # fmt: skip
    services = list(IServiceCollection(tap.makeService(options)))
    chat = next(s for s in services if isinstance(s, ChatService))
    link = next(s for s in services if isinstance(s, RedisLink))
    assert not any(isinstance(s, tap.HistoryService) for s in services)
    assert isinstance(chat.history, NetworkHistory) and chat.history.replay == 7
    assert link.node.history is chat.history and chat.history.reader is link
    assert (link.history_keep, link.history_days) == (300, 2.0)


def test_operators_need_logins_and_reach_the_core(tmp_path):
    with pytest.raises(tap.OptionError) as info:
        parse("--operator", "chief")
    assert "--operator needs --auth" in str(info.value.code)
    with pytest.raises(tap.OptionError) as info:
        parse("--operator", "guest7", "--auth", "memory:chief:pw")
    assert "--operator 'guest7'" in str(info.value.code)
    options = parse("--port", "tcp:0", "--auth", "memory:chief:pw:al:pw", "--operator", "chief")
    chat = next(
        s for s in IServiceCollection(tap.makeService(options)) if isinstance(s, ChatService)
    )
    assert chat.moderator.operators == frozenset({skeleton("chief")})  # look-alikes too


def test_server_bans_outlive_the_server_in_the_history_file_or_a_file_of_their_own(tmp_path):
    from twisted_chat.core.moderation import ServerBan, parse_network

    def started(*args: str) -> ChatService:
        services = list(IServiceCollection(tap.makeService(parse("--port", "tcp:0", *args))))
        for s in services:
            if isinstance(s, tap.HistoryService):
                s.store._run = sync_run  # the writer's work done at once, no thread
                s.store.open()
        return next(s for s in services if isinstance(s, ChatService))

    for args in ((), ("--history", "none")):
        chat = started(*args)
        chat.moderator.server_bans.add(ServerBan(parse_network("192.0.2.0/24"), "chief", "spam"))
        history = chat.history
        if history.enabled:
            from twisted_chat.history import StoredHistory

            assert isinstance(history, StoredHistory)
            history.store.close()
        again = started(*args)
        assert [str(n) for n in again.moderator.server_bans.bans] == ["192.0.2.0/24"]
        if again.history.enabled:
            again.history.store.close()  # type: ignore[attr-defined]
    assert (tmp_path / "groupchat-bans.json").exists()  # with history off


def test_nagle_leaves_tcp_nodelay_unset_on_each_connection():
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    class TCPish(StringTransport):
        def __init__(self) -> None:
            super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
            self.nodelay: list[bool] = []

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay.append(enabled)

    for args, expected in ((("--port", "tcp:0"), [True]), (("--port", "tcp:0", "--nagle"), [])):
        services = list(IServiceCollection(tap.makeService(parse(*args))))
        (line,) = (s for s in services if isinstance(s, tap.ListenerService))
        transport = TCPish()
        protocol = line.factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        protocol.makeConnection(transport)
        assert transport.nodelay == expected, args
        protocol.connectionLost(Failure(ConnectionDone()))
