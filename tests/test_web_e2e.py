"""The --web door end to end: the real twistd, real sockets, a Python WebSocket client."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from tests.e2e_support import HOST, ClientFactory, ServerFactory, set_nick
from tests.test_client_e2e import _make_certificate
from tests.ws_support import WsClient

WEB = ("--web", f"tcp:0:interface={HOST}")


def test_a_websocket_user_and_an_nc_user_chat_in_one_room(
    start_server: ServerFactory, connect: ClientFactory
):
    server = start_server(*WEB)
    web = WsClient(server.web_port(), "web")
    assert web.accepted
    welcome = web.expect_type("welcome")
    assert welcome["format"] == "json"
    web.say("/nick webby")
    web.expect_type("nick", new="webby")
    web.say("/join #tea")
    web.expect_type("current", room="#tea")
    nc = connect(server, "nc")
    set_nick(nc, "ncat")
    nc.say("/join #tea")
    web.expect_type("join", room="#tea", nick="ncat")
    nc.say("hello <img src=x onerror=alert(1)>")
    said = web.expect_type("message", room="#tea", nick="ncat")
    assert said["text"] == "hello <img src=x onerror=alert(1)>"
    web.say("hi from the browser")
    nc.expect("[#tea] <webby> hi from the browser")
    web.say("/msg ncat psst")
    nc.expect("psst")
    web.close(1001)  # a closed tab: gone at once, and the room is told
    nc.expect("webby lost connection (connection closed)")


def test_the_page_and_its_headers_come_from_the_same_port(start_server: ServerFactory):
    server = start_server(*WEB)
    port = server.web_port()
    try:
        urllib.request.urlopen(f"http://{HOST}:{port}/ws", timeout=5)
        raise AssertionError("a plain GET of /ws should not succeed")
    except urllib.error.HTTPError as e:
        assert e.code == 426
        assert "content-security-policy" in {k.lower() for k in e.headers}


def test_a_page_of_another_site_cannot_open_the_socket(start_server: ServerFactory):
    server = start_server(*WEB, "--web-origin", "https://chat.example.com")
    port = server.web_port()
    evil = WsClient(port, "evil", origin="https://evil.example")
    assert evil.status == 403
    assert b"another site" in evil.rejection_body()
    assert WsClient(port, "listed", origin="https://chat.example.com").accepted
    assert WsClient(port, "same").accepted
    assert "a page of https://evil.example may not connect" in server.log()


def test_wss_on_an_ssl_endpoint(start_server: ServerFactory, tmp_path):
    key, cert, trust = _make_certificate(tmp_path)
    server = start_server("--web", f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}")
    context = ssl.create_default_context(cafile=str(trust / "ca.pem"))
    web = WsClient(server.web_port(), "tls", tls=context)
    assert web.accepted
    web.expect_type("welcome")
    web.say("/ping over-tls")
    web.expect_type("pong", token="over-tls")


def test_the_limits_count_both_doors(start_server: ServerFactory, connect: ClientFactory):
    server = start_server(*WEB, "--max-per-address", "2")
    port = server.web_port()
    nc = connect(server, "nc")
    first = WsClient(port, "first")
    assert first.accepted
    third = WsClient(port, "third")
    third.expect_closed()
    assert third.closed is not None and third.closed.code == 1013
    assert third.closed.reason == "refused: too many connections from your address (at most 2)"
    nc.close()
    first.close()
