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


def test_a_history_file_that_cannot_be_used_stops_the_start_with_one_clear_line(
    start_server: ServerFactory, tmp_path
):
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"not a database at all " * 200)
    for path in (str(corrupt), "/proc/groupchat/history.sqlite3"):
        server = start_server("--history", path, wait=False)
        assert server.wait_exit(20) != 0
        log = server.log()
        assert f"--history: cannot use history file {path}" in log, log
        assert "--history none" in log and "Traceback" not in log, log


def test_a_second_server_on_the_same_history_file_is_refused_at_start(
    start_server: ServerFactory, tmp_path
):
    path = str(tmp_path / "shared.sqlite3")
    first = start_server("--history", path)
    second = start_server("--history", path, wait=False)
    assert second.wait_exit(20) != 0
    assert f"history file {path} is in use by another groupchat server" in second.log()
    assert first.proc.poll() is None  # the first goes on
