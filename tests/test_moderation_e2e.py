"""Moderation end to end: the real twistd with logins and a server operator, over real
sockets; a server ban outlives a restart; the counts show on /metrics."""

from __future__ import annotations

from pathlib import Path

from tests.e2e_support import HOST, ChatClient, ServerFactory, ServerProcess
from tests.test_metrics_e2e import at, metrics_port, scrape

opened: list[ChatClient] = []


def logged_in(server: ServerProcess, name: str) -> ChatClient:
    client = ChatClient.connect(server.port, name)
    opened.append(client)
    client.expect(lambda line: "needs a login" in line)
    client.say(f"/login {name} pw-{name}")
    client.expect(f"*** Welcome to groupchat 0.1.0, {name}!")
    client.expect("*** Now talking in #lobby")
    return client


def test_an_operator_keeps_a_room_civil_and_bans_a_network_for_good(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{n}:pw-{n}\n" for n in ("chief", "alice", "bob", "troll")))
    port_file = tmp_path / "metrics-port"
    history = str(tmp_path / "history.sqlite3")  # where the bans are kept, for the restart
    options = ("--auth", f"file:{users}", "--operator", "chief", "--history", history, "--metrics",
               f"tcp:0:interface={HOST}", "--metrics-port-file", str(port_file))  # fmt: skip
    server = start_server(*options)
    alice, bob, troll = (logged_in(server, n) for n in ("alice", "bob", "troll"))
    alice.say("/join #tea")
    alice.expect("*** Now talking in #tea")
    alice.say("/topic oolong only")
    alice.expect("*** [#tea] alice set the topic: oolong only")
    for client in (bob, troll):
        client.say("/join #tea")
        client.expect("*** [#tea] Topic: oolong only (set by alice ")
        client.expect("*** Now talking in #tea")
    bob.say("/who")
    bob.expect("*** [#tea] 3 here: @alice, bob, troll")

    alice.say("/mute troll")
    troll.expect("*** [#tea] alice muted troll")
    troll.say("buy cheap tea")
    troll.expect("!!! not-allowed: you are muted in #tea: you can read, not talk")
    alice.say("/kick troll go away")
    bob.expect("*** [#tea] troll left (kicked by alice: go away)")
    troll.expect("*** [#tea] troll left (kicked by alice: go away)")
    bob.barrier()
    assert bob.count("buy cheap tea") == 0

    # The server operator, from outside the room: a notice, then a ban of a network.
    chief = logged_in(server, "chief")
    chief.say("/wall tea break at 4")
    bob.expect("*** Notice from chief (server operator): tea break at 4")
    chief.say("/gban 192.0.2.0/24 known spammers")
    chief.expect("*** banned 192.0.2.0/24 from the server; 0 disconnected")
    chief.say("/kill troll enough")
    troll.expect("*** Disconnected: disconnected by server operator chief: enough")
    samples = scrape(metrics_port(port_file))
    assert at(samples, "groupchat_disconnects_total", reason="kicked") == 1
    assert at(samples, "groupchat_disconnects_total", reason="killed") == 1

    # The server ban is kept: after a restart it is still there.
    server.stop()
    again = start_server(*options)
    chief = logged_in(again, "chief")
    chief.say("/gbans")
    chief.expect("*** Server bans: 192.0.2.0/24 (by chief: known spammers)")
    bob = logged_in(again, "bob")
    bob.say("/gbans")
    bob.expect("!!! not-allowed: only server operators may do that (--operator)")
    for client in opened:
        client.close()
