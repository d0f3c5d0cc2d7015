"""A worker process of ``--workers N``: one whole node on the sockets its parent bound.

Started by ``supervisor.Supervisor`` as ``python -m twisted_chat.workers``.  It parses
the parent's own arguments again, so it builds exactly the services one process would
(chat, backplane link, heartbeat sweep, limits), except that each listener accepts on
an inherited socket instead of binding one.  Its log goes to the parent as one JSON
event per line on stdout; its stdin is a pipe from the parent, whose end means the
parent is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any, cast

from twisted.internet import error, fdesc
from twisted.internet import main as reasons
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import ILogObserver, Logger, globalLogBeginner, jsonFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.tap import Options, build_node
from twisted_chat.workers.supervisor import CONFIG_ENV

log = Logger(namespace="twisted_chat.workers")


def client_share(total: int, workers: int, number: int) -> int:
    """Worker ``number``'s part of ``--max-clients``: the parts add up to ``total`` and
    differ by at most one."""
    return total // workers + (1 if number <= total % workers else 0)


def stream_observer(out: IO[str]) -> ILogObserver:
    """Our log as JSON events on ``out``, for the parent to put in its own.  A failure
    goes as its traceback text: its exception does not survive JSON.  Once ``out`` is
    broken (the parent is gone) events are dropped: nobody is left to read them."""
    as_json = jsonFileLogObserver(out)
    broken = False

    def observe(event: dict[str, Any]) -> None:
        nonlocal broken
        if broken:
            return
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            event = dict(event)
            del event["log_failure"]
            event["log_format"] = (event.get("log_format") or "") + "\n{traceback}"
            event["traceback"] = failure.getTraceback()
        try:
            as_json(event)
        except OSError:
            broken = True

    return cast(ILogObserver, observe)


@implementer(IReadDescriptor)
class ParentWatch:
    """Reads a pipe from the parent, which never writes to it: its end (or an error)
    means the parent is gone, whatever ended it, and ``gone`` is called.

    The reactor lets go of every reader when it stops, calling ``connectionLost`` too:
    take this one out of the reactor before that (see ``main``).
    """

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self.fd = fd
        self.gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "ParentWatch"

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return reasons.CONNECTION_LOST
        return None if data else reasons.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        # Also called straight away by the reactor when the pipe hangs up.
        self.gone()


def main(environ: MutableMapping[str, str] = os.environ) -> None:
    config = json.loads(environ.pop(CONFIG_ENV))
    number, workers = int(config["worker"]), int(config["workers"])
    # Ctrl-C in a terminal signals the whole foreground group: let it reach only the
    # parent, which stops its workers in order.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    globalLogBeginner.beginLoggingTo([stream_observer(sys.stdout)])

    from twisted.internet import reactor

    options = Options()
    options.parseOptions(config["argv"])  # the parent's; they passed there
    options["max-clients"] = client_share(options["max-clients"], workers, number)
    sockets = {option: (int(fd), int(family)) for option, (fd, family) in config["sockets"].items()}
    node = build_node(options, reactor, sockets)

    def parent_gone() -> None:
        log.warn("worker {worker}: the parent process is gone; stopping", worker=number)
        with contextlib.suppress(error.ReactorNotRunning):
            reactor.stop()

    watch = ParentWatch(0, parent_gone)
    reactor.addReader(watch)
    reactor.addSystemEventTrigger("before", "shutdown", reactor.removeReader, watch)
    log.info(
        "worker {worker} of {workers} (pid {pid}) starting; at most {max_clients} clients here",
        worker=number, workers=workers, pid=os.getpid(), max_clients=options["max-clients"],
    )  # fmt: skip
    node.privilegedStartService()
    node.startService()
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    reactor.run()
