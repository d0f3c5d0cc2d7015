"""Logins: throttled per address and per name, and failures answered in constant time.

Everything runs on a ``task.Clock``: a Deferred is driven by advancing the clock to its
next delayed call, so the time an answer took is exact and no test sleeps.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, task
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from twisted_chat.core.errors import LoginFailed, LoginRefused
from twisted_chat.rules.login import (
    MAX_KEYS,
    Authenticator,
    LoginThrottle,
    _duration,
    network_key,
)

FLOOR = 0.25
HOME = "192.0.2.7"
ATTACKER = "198.51.100.66"


def memory_auth(clock: task.Clock, **kwargs: Any) -> Authenticator:
    # The memory: checker stores str (see auth.py); bytes for its declared types.
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser("alice", "secret")  # type: ignore[arg-type]
    return Authenticator([checker], clock, **kwargs)


def settle(clock: task.Clock, d: defer.Deferred[Any]) -> tuple[float, Any]:
    """Advance to each next delayed call until ``d`` fires: (seconds taken, outcome)."""
    start = clock.seconds()
    while not d.called:
        calls = clock.getDelayedCalls()
        assert calls, "no answer and nothing scheduled"
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    box: list[Any] = []
    d.addBoth(box.append)
    outcome = box[0]
    return clock.seconds() - start, outcome.value if isinstance(outcome, Failure) else outcome


def start(auth: Authenticator, name: str, password: str, address: str) -> defer.Deferred[str]:
    return defer.ensureDeferred(auth.check(name, password, address))


def ask(
    auth: Authenticator, clock: task.Clock, name: str, password: str, address: str = ATTACKER
) -> tuple[float, Any]:
    return settle(clock, start(auth, name, password, address))


def failed_after(answer: tuple[float, Any]) -> float:
    """How long a ``LoginFailed`` answer took."""
    took, error = answer
    assert isinstance(error, LoginFailed), error
    return took


# -- the rule ---------------------------------------------------------------------------


def test_rule_three_free_failures_then_doubling_delays_then_refusal_for_5_minutes():
    throttle = LoginThrottle()
    delays = []
    for _ in range(10):
        verdict = throttle.attempt(ATTACKER, "alice", 0.0)
        delays.append(verdict.delay)
        throttle.failed(verdict, 0.0)
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 16, 16]
    refused = throttle.attempt(ATTACKER, "bob", 0.0)
    assert (refused.refused_for, refused.scope, refused.failures) == (300.0, "address", 10)
    assert throttle.attempt(ATTACKER, "bob", 299.0).refused
    back = throttle.attempt(ATTACKER, "bob", 300.0)  # five failures forgiven meanwhile
    assert not back.refused and back.delay == 4


def test_ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4():
    assert network_key("2001:db8::1") == network_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert network_key("2001:db8:0:1::1") != network_key("2001:db8::1")
    assert network_key("::ffff:192.0.2.1") == "192.0.2.1" == network_key("192.0.2.1")
    assert network_key("unix socket") == "unix socket"
    throttle = LoginThrottle()
    for host in range(10):
        verdict = throttle.attempt(f"2001:db8::{host + 1:x}", f"user{host}", 0.0)
        throttle.failed(verdict, 0.0)
    assert throttle.attempt("2001:db8::99", "someone", 0.0).refused


def test_memory_stays_bounded_under_100000_addresses_and_names():
    throttle = LoginThrottle()
    for i in range(100_000):
        verdict = throttle.attempt(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", f"u{i}", i * 1e-3)
        throttle.failed(verdict, i * 1e-3)
    assert len(throttle.addresses) <= MAX_KEYS and len(throttle.names) <= MAX_KEYS
    full = len(throttle.addresses)
    for i in range(1000):  # an hour later everything is forgiven: new keys sweep old ones
        throttle.attempt(f"172.16.{i >> 8}.{i & 255}", "x", 4000.0)
    assert len(throttle.addresses) < full - 500


def test_durations_are_said_in_whole_units_rounded_up():
    assert _duration(300) == "5 minutes"
    assert _duration(282.75) == "5 minutes"
    assert _duration(60) == "1 minute"
    assert _duration(61) == "2 minutes"
    assert _duration(30) == "30 seconds"
    assert _duration(0.4) == "1 second"


# -- the authenticator on a clock ---------------------------------------------------------


def test_delays_are_waited_on_the_clock_and_failures_take_the_floor():
    clock = task.Clock()
    auth = memory_auth(clock)
    for _ in range(3):
        assert failed_after(ask(auth, clock, "alice", "nope")) == FLOOR
    d = start(auth, "alice", "nope", ATTACKER)
    clock.advance(1.0 + FLOOR - 0.01)
    assert not d.called  # 1 s delay, then the check, then the floor
    clock.advance(0.01)
    assert isinstance(settle(clock, d)[1], LoginFailed)
    took, login = ask(auth, clock, "alice", "secret")
    assert (took, login) == (2.0, "alice")  # a 2 s delay, and a success skips the floor
    assert clock.getDelayedCalls() == []


def test_a_wrong_then_right_password_in_one_connection_and_success_clears_the_address():
    clock = task.Clock()
    auth = memory_auth(clock)
    took, error = ask(auth, clock, "alice", "nope", HOME)
    assert (took, type(error), error.message) == (FLOOR, LoginFailed, "wrong name or password")
    ask(auth, clock, "alice", "nope", HOME)
    assert ask(auth, clock, "alice", "secret", HOME) == (0.0, "alice")
    for _ in range(3):  # the two failures were cleared: three free ones again
        assert ask(auth, clock, "alice", "nope", HOME)[0] == FLOOR


def test_refused_after_ten_failures_even_in_parallel_with_a_message_and_log_lines():
    clock = task.Clock()
    auth = memory_auth(clock)
    with capturedLogs() as events:
        pending = [start(auth, "alice", f"guess{i}", ATTACKER) for i in range(10)]
        took, refused = ask(auth, clock, "alice", "secret")  # parallel connections gain nothing
        assert took == 0 and isinstance(refused, LoginRefused)
        assert refused.code == "login-refused"
        assert refused.message == (
            "too many failed logins from your address; try again in 5 minutes"
        )
        outcomes = [settle(clock, d) for d in pending]
    assert all(isinstance(error, LoginFailed) for _, error in outcomes)
    assert clock.seconds() == 16 + FLOOR  # they waited 0, 0, 0, 1, 2, 4, 8, 16, 16, 16 s
    assert isinstance(ask(auth, clock, "bob", "x")[1], LoginRefused)  # any name, any password
    delayed = [e for e in events if "delaying" in e["log_format"]]
    assert [e["delay"] for e in delayed] == [1, 2, 4, 8, 16, 16, 16]
    refusal = next(e for e in events if "refused" in e["log_format"])
    assert (refusal["address"], refusal["name"], refusal["failures"]) == (ATTACKER, "alice", 10)
    assert refusal["delay"] == 300


def test_the_address_is_let_back_in_after_the_stated_five_minutes():
    clock = task.Clock()
    auth = memory_auth(clock)
    for _ in range(10):
        verdict = auth.throttle.attempt(ATTACKER, "alice", 0.0)
        auth.throttle.failed(verdict, 0.0)
    assert isinstance(ask(auth, clock, "alice", "secret")[1], LoginRefused)
    clock.advance(299)
    assert isinstance(ask(auth, clock, "alice", "secret")[1], LoginRefused)
    clock.advance(1)
    assert ask(auth, clock, "alice", "secret") == (4.0, "alice")  # five not yet forgiven
    assert ask(auth, clock, "alice", "nope")[0] == FLOOR  # the success cleared the rest


def test_a_persistent_guesser_gets_under_70_guesses_an_hour():
    clock = task.Clock()
    auth = memory_auth(clock)
    checked = refused = 0
    while clock.seconds() < 3600:
        outcome = ask(auth, clock, "alice", f"guess{checked}")[1]
        if isinstance(outcome, LoginRefused):
            refused += 1
            clock.advance(1.0)  # it reconnects and tries again at once
        else:
            checked += 1
    assert checked < 70 and refused > 1000  # unthrottled, it was 480 in 8.7 s


def test_failures_on_a_name_never_delay_the_address_it_logged_in_from():
    clock = task.Clock()
    auth = memory_auth(clock)
    assert ask(auth, clock, "alice", "secret", HOME) == (0.0, "alice")
    guesses = [  # 20 guesses at "alice" at once, from 7 addresses
        start(auth, "alice", f"guess{n}", f"203.0.113.{n % 7}") for n in range(20)
    ]
    elsewhere = ask(auth, clock, "ALICE", "secret", "192.0.2.200")[1]
    assert isinstance(elsewhere, LoginRefused)
    assert elsewhere.message == "too many failed logins for this name; try again in 1 minute"
    assert ask(auth, clock, "alice", "secret", HOME) == (0.0, "alice")  # known: not delayed
    assert failed_after(ask(auth, clock, "Alice", "nope", HOME)) == FLOOR  # nor its typos
    assert all(isinstance(settle(clock, d)[1], LoginFailed) for d in guesses)
    clock.advance(60 - clock.seconds())  # a name is refused for at most a minute
    assert ask(auth, clock, "alice", "secret", "192.0.2.200") == (4.0, "alice")


def test_a_sequential_guesser_at_one_name_from_many_addresses_is_slowed_then_refused():
    clock = task.Clock()
    auth = memory_auth(clock)
    took = []
    for n in range(60):
        answer = ask(auth, clock, "alice", f"guess{n}", f"203.0.113.{n // 3}")
        if isinstance(answer[1], LoginRefused):
            break
        took.append(failed_after(answer))
    assert took[:7] == [FLOOR] * 5 + [1 + FLOOR, 2 + FLOOR] and set(took[7:]) == {4 + FLOOR}
    assert answer[1].message.endswith("for this name; try again in 1 minute")


def test_a_cancelled_attempt_still_counts_as_a_failure():
    clock = task.Clock()
    auth = memory_auth(clock)
    for _ in range(3):
        ask(auth, clock, "alice", "nope")
    d = start(auth, "alice", "nope", ATTACKER)  # delayed 1 s
    d.cancel()
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    counter = auth.throttle.addresses.counters[ATTACKER]
    assert (
        counter.pending == 0 and counter.recent(clock.seconds(), auth.throttle.addresses.rule) == 4
    )
    assert clock.getDelayedCalls() == []


# -- the password file ---------------------------------------------------------------------


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    lines = [f"user{i:04d}:pw{i:04d}" for i in range(1, 2999)]
    path.write_bytes("\n".join(["first:pw-first", *lines, "last:pw-last", ""]).encode())
    return path


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch, users: Path) -> list[str]:
    """Every time the password file is opened."""
    seen: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(users):
            seen.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return seen


def test_a_3000_line_file_answers_unknown_first_and_last_names_alike(users, opens):
    clock = task.Clock()
    auth = Authenticator([FilePasswordDB(str(users))], clock)
    answers = [ask(auth, clock, name, "wrong", f"10.0.0.{n}") for n, name in enumerate(
        ["nobody", "first", "last", "user1500"]
    )]  # fmt: skip
    assert {(took, type(e), e.message) for took, e in answers} == {
        (FLOOR, LoginFailed, "wrong name or password")
    }
    assert ask(auth, clock, "first", "pw-first", "10.0.1.1") == (0.0, "first")
    assert ask(auth, clock, "last", "pw-last", "10.0.1.2") == (0.0, "last")
    assert len(opens) == 1  # read once, not once per attempt


def test_the_file_is_read_again_only_when_it_changes(users, opens):
    clock = task.Clock()
    auth = Authenticator([FilePasswordDB(str(users))], clock)
    assert ask(auth, clock, "first", "pw-first", HOME)[1] == "first"
    assert ask(auth, clock, "last", "pw-last", HOME)[1] == "last"
    assert len(opens) == 1
    users.write_bytes(users.read_bytes().replace(b"first:pw-first", b"first:new-pw"))
    assert isinstance(ask(auth, clock, "first", "pw-first", HOME)[1], LoginFailed)
    assert ask(auth, clock, "first", "new-pw", HOME)[1] == "first"
    assert len(opens) == 2
    info = users.stat()
    os.utime(users, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # touched
    assert ask(auth, clock, "first", "new-pw", HOME)[1] == "first"
    assert len(opens) == 3


def test_a_hash_callback_is_honoured_and_unknown_names_do_the_same_work(tmp_path: Path):
    def digest(password: bytes) -> bytes:
        return hashlib.sha256(password).hexdigest().encode()

    path = tmp_path / "hashed.txt"
    path.write_bytes(b"alice:" + digest(b"secret") + b"\nbob:" + digest(b"hunter2") + b"\n")
    calls: list[bytes] = []

    def hash(username: bytes, password: bytes, stored: bytes) -> bytes:
        calls.append(username)
        return digest(password)

    clock = task.Clock()
    auth = Authenticator([FilePasswordDB(str(path), hash=hash)], clock)
    assert ask(auth, clock, "alice", "secret", HOME)[1] == "alice"
    assert failed_after(ask(auth, clock, "alice", "hunter2", HOME)) == FLOOR
    assert isinstance(ask(auth, clock, "mallory", "secret", HOME)[1], LoginFailed)
    assert calls == [b"alice", b"alice", b"mallory"]


def test_a_case_insensitive_file_matches_any_case(users):
    clock = task.Clock()
    auth = Authenticator([FilePasswordDB(str(users), caseSensitive=False)], clock)
    assert ask(auth, clock, "LAST", "pw-last", HOME)[1] == "LAST"
    assert isinstance(ask(auth, clock, "LAST", "PW-LAST", HOME)[1], LoginFailed)


def test_a_missing_file_refuses_everyone_and_says_so_once(users, logged_errors):
    logged_errors.expected = True
    clock = task.Clock()
    auth = Authenticator([FilePasswordDB(str(users))], clock)
    assert ask(auth, clock, "first", "pw-first", HOME)[1] == "first"
    users.unlink()
    with capturedLogs() as events:
        for _ in range(2):
            assert isinstance(ask(auth, clock, "first", "pw-first", HOME)[1], LoginFailed)
    assert [e["log_format"] for e in events if "cannot read" in e["log_format"]] == [
        "cannot read logins from {filename}: {e}"
    ]


def test_logins_go_through_a_cred_portal_and_the_chat_realm():
    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin
    from zope.interface import Interface

    from twisted_chat.rules.login import ChatRealm, ILoginName

    clock = task.Clock()
    auth = memory_auth(clock)
    d = auth.portal.login(UsernamePassword(b"alice", b"secret"), None, ILoginName)
    interface, avatar, logout = settle(clock, d)[1]
    assert (interface, avatar) == (ILoginName, "alice")
    wrong = auth.portal.login(UsernamePassword(b"alice", b"nope"), None, ILoginName)
    assert isinstance(settle(clock, wrong)[1], UnauthorizedLogin)

    class IOther(Interface):
        pass

    with pytest.raises(NotImplementedError):
        ChatRealm().requestAvatar(b"alice", None, IOther)
