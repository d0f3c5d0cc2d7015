"""``twistd -n groupchat --metrics``: known things done over real sockets, then the
counts scraped from ``/metrics`` over HTTP, and ``/healthz``."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_support import HOST, ChatClient, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(path: Path) -> int:
    assert wait_until(path.exists, 15.0), "no metrics port file"
    m = re.fullmatch(r"tcp:127\.0\.0\.1:(\d+)", path.read_text().strip())
    assert m, path.read_text()
    return int(m.group(1))


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["content-type"], answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read().decode()


def scrape(port: int) -> Samples:
    status, content_type, text = get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def test_metrics_count_what_happened(start_server, connect, tmp_path):
    port_file = tmp_path / "metrics-port"
    server = start_server(
        "--metrics", f"tcp:0:interface={HOST}", "--metrics-port-file", str(port_file),
        "--history", "none",
    )  # fmt: skip
    port = metrics_port(port_file)
    assert get(port, "/healthz")[::2] == (200, "ok\n")
    assert get(port, "/nothing")[0] == 404
    clients = [connect(server, name) for name in ("a", "b", "c", "d")]
    for client in clients:
        client.barrier()
    before = scrape(port)
    assert at(before, "groupchat_connections", door="line") == 4
    assert at(before, "groupchat_members") == 4
    assert at(before, "groupchat_rooms") == 1
    a, b, c, d = clients
    for i in range(10):
        a.say(f"message {i}")
    b.say(f"/msg {a.nick} hello")
    b.barrier()
    for client in clients:
        client.barrier()  # whatever a and b caused has been delivered
    after = scrape(port)
    room = at(after, "groupchat_messages_received_total", kind="room")
    assert room - at(before, "groupchat_messages_received_total", kind="room") == 10
    assert at(after, "groupchat_messages_received_total", kind="private") == 1
    delivered = at(after, "groupchat_deliveries_total") - at(before, "groupchat_deliveries_total")
    assert delivered == 10 * 3 + 2  # the room's three others; the PM's recipient and copy
    assert at(after, "groupchat_received_bytes_total") > at(
        before, "groupchat_received_bytes_total"
    )
    assert at(after, "groupchat_sent_bytes_total") > at(before, "groupchat_sent_bytes_total")
    assert at(after, "groupchat_command_seconds_count") >= 1  # timed now and then
    c.say("/quit done")
    c.expect_closed()
    d.reset()
    assert wait_until(
        lambda: at(scrape(port), "groupchat_disconnects_total", reason="lost") == 1, 5.0
    )
    final = scrape(port)
    assert at(final, "groupchat_disconnects_total", reason="quit") == 1
    assert at(final, "groupchat_connections", door="line") == 2
    assert at(final, "groupchat_connections_accepted_total", door="line") == 4
    assert at(final, "groupchat_members") == 2
    assert wait_until(lambda: at(scrape(port), "groupchat_reactor_lag_seconds_count") >= 1, 5.0)


def test_refusals_are_counted(start_server, connect, tmp_path):
    port_file = tmp_path / "metrics-port"
    server = start_server(
        "--metrics", f"tcp:0:interface={HOST}", "--metrics-port-file", str(port_file),
        "--history", "none", "--max-per-address", "1",
    )  # fmt: skip
    port = metrics_port(port_file)
    connect(server, "first")
    second = ChatClient.connect(server.port, "second")
    second.expect("!!! refused: too many connections from your address (at most 1)")
    second.close()
    samples = scrape(port)
    assert at(samples, "groupchat_disconnects_total", reason="refused") == 1
    assert at(samples, "groupchat_connections_accepted_total", door="line") == 1
