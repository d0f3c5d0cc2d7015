"""History end to end: the real twistd, stopped with SIGTERM and started again."""

from __future__ import annotations

from tests.e2e_support import ClientFactory, ServerFactory, set_nick


def test_what_was_said_is_shown_to_a_joiner_after_a_restart(
    start_server: ServerFactory, connect: ClientFactory, tmp_path
):
    path = str(tmp_path / "history.sqlite3")
    server = start_server("--history", path)
    alice = connect(server, "alice")
    set_nick(alice, "alice")
    alice.say("/join #tea")
    alice.expect("*** Now talking in #tea")
    alice.say("first <b>words</b>")
    alice.say("/me pours tea")
    alice.barrier()
    server.stop()  # SIGTERM: what is pending is written
    assert "Server Shut Down." in server.log()
    again = start_server("--history", path)
    bob = connect(again, "bob")
    bob.say("/join #tea")
    bob.expect("*** [#tea] earlier messages (2), times in UTC:")
    assert bob.expect("<alice>").endswith("<alice> first <b>words</b>")
    assert bob.expect("* alice").endswith("* alice pours tea")
    bob.expect("*** [#tea] end of earlier messages")
    bob.expect("*** Now talking in #tea")
