"""Optional logins, checked by Twisted cred checkers (``--auth``, see ``strcred``).

Several ``--auth`` options are combined: a login succeeds when any checker accepts it.
The file checker compares bytes and the memory checker str, so both are offered.

Two defences against password guessing live here.  ``LoginThrottle`` slows down and
then refuses repeated failures per address and per login name, across connections
(a connection's own three attempts are the protocol's business).  And a failure is
answered a fixed time after the password check starts, whatever the name, so timing
tells nothing about which names exist or where they are in the password file.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from twisted_chat.core.errors import LoginFailed, LoginRefused
from twisted_chat.core.moderation import network_key

MAX_ATTEMPTS = 3
# Longer than any check takes (a dict lookup, or a hash callback): every failure is
# answered exactly this long after its check began.
FAILURE_FLOOR = 0.25
MAX_KEYS = 10_000  # per table: addresses, names, trusted (address, name) pairs
TRUST_FOR = 7 * 24 * 3600.0


# -- the throttle: a pure rule, told the time ------------------------------------------


@dataclass(frozen=True)
class ThrottleRule:
    """How one kind of key (an address, a login name) is slowed down, then refused.

    Failures leak away, one every ``forgive_every`` seconds, so an occasional typo is
    soon forgotten.  With ``n`` recent failures (attempts still being checked count, so
    parallel connections gain nothing), an attempt waits nothing while ``n < free``,
    else ``base_delay * 2 ** (n - free)`` capped at ``max_delay``; from
    ``n >= refuse_after`` attempts are refused for ``refuse_for`` seconds, unchecked.
    """

    free: int
    max_delay: float
    refuse_after: int
    refuse_for: float
    forgive_every: float
    base_delay: float = 1.0

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** min(failures - self.free, 64))


# One address: three free tries, then 1, 2, 4, 8, 16, 16, 16 s; the tenth recent failure
# shuts it out for 5 minutes.  One failure is forgiven a minute, so it comes back with
# five (4 s delays) and six more shut it out again: about 6 guesses per 6 minutes,
# under 70 an hour (it was 480 in 8.7 s).
ADDRESS_RULE = ThrottleRule(
    free=3, max_delay=16.0, refuse_after=10, refuse_for=300.0, forgive_every=60.0
)
# One name, from addresses not known for it: this is what slows guessing spread over
# many addresses, and an attacker can trigger it, so it stays mild: five free tries,
# delays of 1, 2, then 4 s, and at twenty recent failures a refusal of one minute (one
# failure is forgiven every 10 s).  About 6 guesses a minute per name, however many
# addresses guess it; a user's own known addresses are exempt.
NAME_RULE = ThrottleRule(
    free=5, max_delay=4.0, refuse_after=20, refuse_for=60.0, forgive_every=10.0
)


@dataclass(frozen=True)
class Verdict:
    """The throttle's answer to one attempt; hand it back with the outcome.

    ``scope`` names the counter ("address" or "name") that set the delay or the
    refusal, and ``failures`` its recent failures.
    """

    address: str  # the keys the attempt is counted under
    name: str
    delay: float = 0.0
    refused_for: float = 0.0  # > 0: refused; it may try again after this many seconds
    scope: str = "address"
    failures: int = 0
    counts_name: bool = False  # False for an address trusted for this name

    @property
    def refused(self) -> bool:
        return self.refused_for > 0


class _Counter:
    """A leaky count of failures, the attempts in progress, and a refusal's end."""

    __slots__ = ("level", "pending", "refused_until", "stamp")

    def __init__(self, now: float) -> None:
        self.level = 0.0
        self.stamp = now
        self.pending = 0
        self.refused_until = -math.inf

    def _leak(self, now: float, rule: ThrottleRule) -> None:
        if now > self.stamp:
            self.level = max(0.0, self.level - (now - self.stamp) / rule.forgive_every)
            self.stamp = now

    def recent(self, now: float, rule: ThrottleRule) -> int:
        """Failures not yet forgiven (a part counts as one), plus attempts in progress."""
        self._leak(now, rule)
        return math.ceil(self.level - 1e-9) + self.pending

    def fail(self, now: float, rule: ThrottleRule) -> None:
        self._leak(now, rule)
        self.level += 1.0
        self.pending = max(0, self.pending - 1)

    def idle(self, now: float, rule: ThrottleRule) -> bool:
        return self.recent(now, rule) == 0 and self.refused_until <= now


class _Table:
    """Counters by key, least recently touched first, at most ``max_keys`` of them.

    Forgotten counters are dropped from the old end as new keys arrive; when the table
    is full the oldest goes anyway.  Flooding it takes ``max_keys`` distinct keys, and
    each address is itself limited.
    """

    __slots__ = ("counters", "max_keys", "rule")

    def __init__(self, rule: ThrottleRule, max_keys: int) -> None:
        self.rule = rule
        self.max_keys = max_keys
        self.counters: OrderedDict[str, _Counter] = OrderedDict()

    def __len__(self) -> int:
        return len(self.counters)

    def get(self, key: str, now: float) -> _Counter:
        counter = self.counters.get(key)
        if counter is not None:
            self.counters.move_to_end(key)
            return counter
        for _ in range(2):  # two per insertion: the table shrinks back after a burst
            oldest = next(iter(self.counters.items()), None)
            if oldest is None or not oldest[1].idle(now, self.rule):
                break
            del self.counters[oldest[0]]
        if self.counters and len(self.counters) >= self.max_keys:
            self.counters.popitem(last=False)
        counter = self.counters[key] = _Counter(now)
        return counter

    def discard_if_idle(self, key: str, now: float) -> None:
        counter = self.counters.get(key)
        if counter is not None and counter.idle(now, self.rule):
            del self.counters[key]


class LoginThrottle:
    """Per address and per login name: how long an attempt waits, or that it is refused.

    Pure: it is told the time and never reads it.  Call ``attempt`` before checking a
    password, then exactly one of ``failed`` or ``succeeded`` with its verdict (unless
    it was refused).  A success clears its address's failures and makes the address
    trusted for that name for ``trust_for`` seconds: a trusted address ignores the
    name's counter, so failures on "alice" from elsewhere never keep alice out.
    """

    def __init__(
        self,
        *,
        key: Callable[[str], str] = str.casefold,
        address_key: Callable[[str], str] = network_key,
        address_rule: ThrottleRule = ADDRESS_RULE,
        name_rule: ThrottleRule = NAME_RULE,
        trust_for: float = TRUST_FOR,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.key = key
        self.address_key = address_key
        self.trust_for = trust_for
        self.max_keys = max_keys
        self.addresses = _Table(address_rule, max_keys)
        self.names = _Table(name_rule, max_keys)
        self.trusted: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> expiry

    def _is_trusted(self, pair: tuple[str, str], now: float) -> bool:
        expiry = self.trusted.get(pair)
        if expiry is None:
            return False
        if expiry <= now:
            del self.trusted[pair]
            return False
        return True

    def attempt(self, address: str, name: str, now: float) -> Verdict:
        """Count an attempt as in progress and say how long it waits, or refuse it."""
        akey, nkey = self.address_key(address), self.key(name)
        counts_name = not self._is_trusted((akey, nkey), now)
        scopes = [("address", self.addresses, akey)]
        if counts_name:
            scopes.append(("name", self.names, nkey))
        found: list[tuple[float, str, int, _Counter]] = []
        for scope, table, key in scopes:
            counter = table.get(key, now)
            failures = counter.recent(now, table.rule)
            if counter.refused_until <= now and failures >= table.rule.refuse_after:
                counter.refused_until = now + table.rule.refuse_for
            if counter.refused_until > now:
                return Verdict(
                    akey,
                    nkey,
                    refused_for=counter.refused_until - now,
                    scope=scope,
                    failures=failures,
                )
            found.append((table.rule.delay(failures), scope, failures, counter))
        for *_, counter in found:
            counter.pending += 1
        delay, scope, failures, _ = max(found, key=lambda f: f[0])  # ties: the address
        return Verdict(akey, nkey, delay, 0.0, scope, failures, counts_name)

    def failed(self, verdict: Verdict, now: float) -> None:
        self.addresses.get(verdict.address, now).fail(now, self.addresses.rule)
        if verdict.counts_name:
            self.names.get(verdict.name, now).fail(now, self.names.rule)

    def succeeded(self, verdict: Verdict, now: float) -> None:
        counter = self.addresses.get(verdict.address, now)
        counter.level = 0.0
        counter.pending = max(0, counter.pending - 1)
        counter.refused_until = -math.inf
        self.addresses.discard_if_idle(verdict.address, now)
        if verdict.counts_name:
            named = self.names.counters.get(verdict.name)
            if named is not None:  # the attempt was no failure: take it back
                named.pending = max(0, named.pending - 1)
                self.names.discard_if_idle(verdict.name, now)
        pair = (verdict.address, verdict.name)
        self.trusted.pop(pair, None)
        self.trusted[pair] = now + self.trust_for  # expiries in order: oldest first
        while self.trusted:
            oldest, expiry = next(iter(self.trusted.items()))
            if expiry > now and len(self.trusted) <= self.max_keys:
                break
            del self.trusted[oldest]


# -- constant-time password file -------------------------------------------------------


@implementer(ICredentialsChecker)
class PasswordFile:
    """A ``FilePasswordDB`` read once into a dict, and again only when the file changes.

    Twisted's checker reads and scans the file on every attempt, so its answer time
    says whether a name exists and on which line.  Here an attempt costs a ``stat``, a
    dict lookup and a ``compare_digest`` (through the ``hash`` callback if there is
    one) against the stored password, or against a stand-in for unknown names.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, db: FilePasswordDB) -> None:
        self.db = db
        self.users: dict[bytes, bytes] = {}
        self.stand_in = b""  # a real stored password: a hash callback does the same work
        self._stamp: tuple[int, int, int] | None = None

    def _refresh(self) -> None:
        try:
            info = os.stat(self.db.filename)
        except OSError as e:
            if self._stamp != (-1, -1, -1):
                self.log.error(
                    "cannot read logins from {filename}: {e}", filename=self.db.filename, e=e
                )
                self._stamp, self.users = (-1, -1, -1), {}
            return
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)  # an edit, or a new file
        if stamp == self._stamp:
            return
        self._stamp = stamp
        users: dict[bytes, bytes] = {}
        try:
            for user, password in self.db._loadCredentials():
                users.setdefault(user, password)  # the first line wins, as in FilePasswordDB
        except UnauthorizedLogin:
            users = {}  # unreadable: FilePasswordDB logged why
        self.users = users
        self.stand_in = next(iter(users.values()), b"")
        self.log.info(
            "read {count} logins from {filename}", count=len(users), filename=self.db.filename
        )

    def _matches(self, username: bytes, password: bytes, stored: bytes) -> bool:
        hash = self.db.hash
        supplied: Any = password if hash is None else hash(username, password, stored)
        if isinstance(supplied, str):
            supplied = supplied.encode("utf-8")
        return isinstance(supplied, bytes) and hmac.compare_digest(supplied, stored)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        self._refresh()
        username, password = credentials.username, credentials.password
        if not isinstance(username, bytes) or not isinstance(password, bytes):
            return defer.fail(UnauthorizedLogin())  # the str form is for the memory checker
        key = username if self.db.caseSensitive else username.lower()
        stored = self.users.get(key)
        if stored is None:
            with contextlib.suppress(Exception):  # the same work, and no answer
                self._matches(username, password, self.stand_in)
            return defer.fail(UnauthorizedLogin())
        if not self._matches(username, password, stored):
            return defer.fail(UnauthorizedLogin())
        return defer.succeed(key)


def _constant_time(checker: ICredentialsChecker) -> ICredentialsChecker:
    return PasswordFile(checker) if isinstance(checker, FilePasswordDB) else checker


def _duration(seconds: float) -> str:
    whole = max(1, math.ceil(seconds - 1e-9))
    if whole < 60:
        return f"{whole} second{'s' if whole != 1 else ''}"
    minutes = math.ceil(whole / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class Authenticator:
    """Checks logins against the ``--auth`` checkers, throttled, in constant time.

    ``clock`` waits the throttle's delays and the failure floor; ``failure_floor`` is
    how long after its check starts a failure is answered (a success is answered at
    once: it tells nothing the client did not know).
    """

    log = Logger()

    def __init__(
        self,
        checkers: Sequence[ICredentialsChecker],
        clock: IReactorTime,
        attempts: int = MAX_ATTEMPTS,
        throttle: LoginThrottle | None = None,
        failure_floor: float = FAILURE_FLOOR,
    ) -> None:
        self.checkers = [_constant_time(c) for c in checkers]
        # Logins go through twisted.cred's portal and the chat's realm, like any cred
        # service; the portal holds one checker per kind of credentials, so the --auth
        # checkers stand behind it as one.
        self.portal = Portal(ChatRealm(), [AnyOf(self.checkers)])
        self.clock = clock
        self.attempts = attempts
        self.throttle = LoginThrottle() if throttle is None else throttle
        self.failure_floor = failure_floor

    def known_names(self) -> list[str]:
        """The login names the checkers can list (password files, memory), for warnings.

        A checker that cannot list its users (PAM, Unix accounts) adds nothing.
        """
        names: list[str] = []
        for checker in self.checkers:
            if isinstance(checker, PasswordFile):
                checker._refresh()
                users: Iterable[bytes | str] = checker.users
            else:
                users = getattr(checker, "users", {})
            for user in users:
                names.append(user.decode("utf-8", "replace") if isinstance(user, bytes) else user)
        return names

    async def check(self, name: str, password: str, address: str) -> str:
        """The login name when some checker accepts it.

        Fails with ``LoginFailed`` on a wrong name or password (never saying which),
        or ``LoginRefused`` when ``address`` or ``name`` failed too often lately.
        """
        verdict = self.throttle.attempt(address, name, self.clock.seconds())
        if verdict.refused:
            self.log.warn(
                "refused login from {address} as {name}: {failures} recent failures by "
                "this {scope}, refused for {delay:.0f} s",
                address=address,
                name=name,
                failures=verdict.failures,
                scope=verdict.scope,
                delay=verdict.refused_for,
            )
            whose = "from your address" if verdict.scope == "address" else "for this name"
            raise LoginRefused(
                f"too many failed logins {whose}; try again in {_duration(verdict.refused_for)}"
            )
        try:
            if verdict.delay > 0:
                self.log.info(
                    "delaying login from {address} as {name} by {delay:g} s: {failures} "
                    "recent failures by this {scope}",
                    address=address,
                    name=name,
                    failures=verdict.failures,
                    scope=verdict.scope,
                    delay=verdict.delay,
                )
                await task.deferLater(self.clock, verdict.delay)
            started = self.clock.seconds()
            accepted = await self._verify(name, password)
        except BaseException:  # cancelled while waiting: still a failure
            self.throttle.failed(verdict, self.clock.seconds())
            raise
        if accepted:
            self.throttle.succeeded(verdict, self.clock.seconds())
            return name
        self.throttle.failed(verdict, self.clock.seconds())
        wait = started + self.failure_floor - self.clock.seconds()
        if wait > 0:
            await task.deferLater(self.clock, wait)
        raise LoginFailed("wrong name or password")

    async def _verify(self, name: str, password: str) -> bool:
        credentials = UsernamePassword(name.encode("utf-8"), password.encode("utf-8"))
        try:
            await self.portal.login(credentials, None, ILoginName)
        except UnauthorizedLogin:
            return False
        return True


class ILoginName(Interface):
    """What a login to the chat yields: the name the member is seated under."""


@implementer(IRealm)
class ChatRealm:
    """The ``twisted.cred`` realm of the chat: an accepted login is its login name.

    Seating under that name is the connection's business once the portal says yes, so
    the avatar is just the name, and logging out needs nothing.
    """

    def requestAvatar(
        self,
        avatarId: Any,  # bytes from file checkers, str from memory: (their stubs say bytes)
        mind: object,
        *interfaces: Any,
    ) -> tuple[Any, str, Callable[[], None]]:
        if ILoginName not in interfaces:
            raise NotImplementedError("the chat only gives login names")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return ILoginName, name, lambda: None


@implementer(ICredentialsChecker)
class AnyOf:
    """Every ``--auth`` checker in turn, as the one checker a portal holds per kind of
    credentials.  A checker that fails unexpectedly is logged and skipped."""

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self.checkers = list(checkers)

    async def _check(self, credentials: IUsernamePassword) -> bytes | str:
        name, password = credentials.username, credentials.password
        candidates = [
            credentials,
            # The memory: checker stores str and compares str (its type hints say bytes).
            UsernamePassword(name.decode("utf-8"), password.decode("utf-8")),  # type: ignore[arg-type]
        ]
        for checker in self.checkers:
            for candidate in candidates:
                try:
                    found = await defer.maybeDeferred(checker.requestAvatarId, candidate)
                except UnauthorizedLogin:
                    continue
                except Exception:
                    self.log.failure("checker {checker!r} failed", checker=checker)
                    continue
                return cast("bytes | str", found)
        raise UnauthorizedLogin("wrong name or password")

    def requestAvatarId(self, credentials: IUsernamePassword) -> Any:
        return defer.ensureDeferred(self._check(credentials))
