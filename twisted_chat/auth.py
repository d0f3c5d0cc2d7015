"""Optional logins, checked by Twisted cred checkers (``--auth``, see ``strcred``).

Several ``--auth`` options are combined: a login succeeds when any checker accepts it.
The file checker compares bytes and the memory checker str, so both are offered.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

from twisted_chat.errors import ChatError

MAX_ATTEMPTS = 3


class LoginFailed(ChatError):
    code = "login-failed"


class LoginInUse(ChatError):
    code = "login-in-use"


class LoginRequired(ChatError):
    code = "login-required"


class Authenticator:
    log = Logger()

    def __init__(
        self, checkers: Sequence[ICredentialsChecker], attempts: int = MAX_ATTEMPTS
    ) -> None:
        self.checkers = list(checkers)
        self.attempts = attempts

    async def check(self, name: str, password: str) -> str:
        """The login name when some checker accepts it; ``LoginFailed`` otherwise.

        The failure never says whether the name exists.
        """
        candidates = [
            UsernamePassword(name.encode("utf-8"), password.encode("utf-8")),
            # The memory: checker stores str and compares str (its type hints say bytes).
            UsernamePassword(name, password),  # type: ignore[arg-type]
        ]
        for checker in self.checkers:
            for credentials in candidates:
                try:
                    await defer.maybeDeferred(checker.requestAvatarId, credentials)
                except UnauthorizedLogin:
                    continue
                except Exception:
                    self.log.failure("checker {checker!r} failed", checker=checker)
                    continue
                return name
        raise LoginFailed("wrong name or password")
