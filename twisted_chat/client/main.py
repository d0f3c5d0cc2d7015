"""Entry point of ``python -m twisted_chat.client``: options, then one of three modes.

- interactive (stdin is a terminal): a prompt_toolkit line editor, on the asyncio reactor;
- piped (stdin is not a terminal): send each input line, quit cleanly on EOF, exit 0;
- listen (``--listen``): print received messages one per line for scripts.

Scripts (piped and listen) are strict about names: if the server refuses ``--nick`` or
``--room``, they send nothing, quit cleanly and exit 1, rather than speak as a guest.

Known failures become one line on stderr here, at the boundary, and exit status 1.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

from twisted.python import usage

DEFAULT_SERVER = "localhost:9999"


class Options(usage.Options):
    synopsis = "Usage: python -m twisted_chat.client [options]"
    longdesc = (
        "Chat on a groupchat server. Interactive when stdin is a terminal; otherwise each "
        "input line is sent in order and the client quits cleanly at end of input, so "
        "`printf 'build finished\\n' | python -m twisted_chat.client --nick ci --room "
        "'#ops'` is a one-line notifier. A script never speaks under another name: if the "
        "server refuses --nick or --room, nothing is sent and the exit status is 1."
    )
    optParameters: list[Any] = [
        [
            "server",
            "s",
            DEFAULT_SERVER,
            "HOST:PORT, or a Twisted client endpoint description: tcp:HOST:PORT, "
            "tcp6:HOST:PORT, tls:HOST:PORT, unix:PATH.",
        ],
        [
            "nick",
            "n",
            None,
            "Nickname to ask for (default: the guest name the server gives); on a server "
            "with logins, the login name.",
        ],
        [
            "password-file",
            None,
            None,
            "Read the login password from the first line of this file. The environment "
            "variable GROUPCHAT_PASSWORD also works; a password is never an option value, "
            "so it does not show in ps.",
        ],
        ["room", "r", None, "Room to join and talk in (default: #lobby)."],
        [
            "connect-timeout",
            None,
            10.0,
            "Piped and listen modes: give up with exit status 1 when the server cannot be "
            "reached (or lines cannot be delivered) within this many seconds.",
            float,
        ],
    ]
    optFlags: list[Any] = [
        ["listen", "l", "Print received messages one per line (for scripts); do not read stdin."],
        ["json", "j", "Piped and listen modes: print every server event as one JSON line."],
        ["quiet", "q", "Piped mode: print only errors."],
        ["ask-password", "P", "Ask for the login password at start (on the terminal)."],
    ]

    opt_h = usage.Options.opt_help

    def opt_version(self) -> None:
        """Display the groupchat version and exit."""
        from twisted_chat import __version__

        print(f"groupchat client {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        from twisted_chat.core.errors import ChatError
        from twisted_chat.core.names import validate_nick, validate_room

        if self["connect-timeout"] <= 0:
            raise usage.UsageError("--connect-timeout must be greater than 0")
        wants_login = self["ask-password"] or self["password-file"]
        if wants_login and not self["nick"]:
            raise usage.UsageError("a login needs --nick (the login name)")
        try:
            if self["nick"] is not None:
                validate_nick(self["nick"])
            if self["room"] is not None:
                self["room"] = validate_room(self["room"])
        except ChatError as e:
            raise usage.UsageError(e.message) from None


def client_endpoint(reactor: Any, server: str) -> Any:
    """HOST:PORT (IPv4 or IPv6, names resolved either way) or an endpoint description."""
    from twisted.internet import endpoints

    server = server.strip()
    if server.startswith(("tcp:", "tcp6:", "tls:", "ssl:", "unix:")):
        return endpoints.clientFromString(reactor, server)
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", server)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(
            "expected HOST:PORT (port 1 to 65535) or an endpoint description such as "
            "tcp:HOST:PORT, tls:HOST:PORT or unix:PATH"
        )
    return endpoints.HostnameEndpoint(reactor, match.group(1), int(match.group(2)))


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.exit(f"groupchat client: {e} (see --help)")
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not options["listen"]
    options["password"] = _password(options)
    if interactive:
        import asyncio

        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import task

    task.react(_run, (options, interactive))


async def _run(reactor: Any, options: Options, interactive: bool) -> None:
    from twisted_chat.client.app import ClientApp

    try:
        endpoint = client_endpoint(reactor, options["server"])
    except (ValueError, TypeError, ImportError, KeyError, OSError) as e:
        _fail(f"--server {options['server']!r} is not usable: {e}")
    app = ClientApp(reactor, endpoint, options["server"], options["nick"], options["room"])
    app.session.password = options["password"]
    if interactive:
        from twisted_chat.client.terminal import run_terminal

        await run_terminal(app)
        return
    printer = _printer(options)
    app.on_output(printer)
    app.on_status(_status_printer(options))
    if options["json"]:
        # The reason for giving up goes to stderr too, as without --json.
        app.session.on_fatal.append(_say)
    timeout = options["connect-timeout"]
    if options["listen"]:
        code = await app.listen(timeout)
    else:
        code = await app.pipe(timeout)
    if code:
        raise SystemExit(code)


def _printer(options: Options) -> Callable[[dict[str, Any], str | None], None]:
    from twisted_chat.client.render import message_line, plain, render, system_line

    def show(event: dict[str, Any], me: str | None) -> None:
        room = options["room"]
        if options["listen"] and room and event.get("room") not in (None, room):
            return  # --listen --room: that room only (and private messages)
        if options["json"]:
            line: str | None = json.dumps(event, ensure_ascii=False)
        elif options["listen"]:
            if event.get("type") == "welcome" and event.get("restored"):
                # Connection news, beside "reconnecting": back, and under which name.
                sys.stderr.write(f"groupchat client: {system_line(event)}\n")
                sys.stderr.flush()
                return
            line = message_line(event)
        elif options["quiet"] and event.get("type") != "error":
            line = None
        else:
            fragments = render(event, me)
            line = plain(fragments) if fragments is not None else None
        if line is not None:
            stream = (
                sys.stderr if event.get("type") == "error" and not options["json"] else sys.stdout
            )
            stream.write(line + "\n")
            stream.flush()

    return show


def _status_printer(options: Options) -> Callable[[str], None]:
    """Connection news: a JSON ``status`` event with --json, else a line on stderr."""

    def show(text: str) -> None:
        if options["json"]:
            import time

            status = {"type": "status", "ts": round(time.time(), 3), "text": text}
            sys.stdout.write(json.dumps(status) + "\n")
            sys.stdout.flush()
        else:
            sys.stderr.write(f"groupchat client: {text}\n")
            sys.stderr.flush()

    return show


def _password(options: Options) -> str | None:
    """From --password-file, then GROUPCHAT_PASSWORD, then a prompt if asked for."""
    import os

    if options["password-file"]:
        try:
            with open(options["password-file"], encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            sys.exit(f"groupchat client: cannot read --password-file: {e.strerror}")
    if os.environ.get("GROUPCHAT_PASSWORD"):
        return os.environ["GROUPCHAT_PASSWORD"]
    if options["ask-password"]:
        import getpass

        if not sys.stdin.isatty():
            sys.exit(
                "groupchat client: --ask-password needs a terminal; use --password-file "
                "or GROUPCHAT_PASSWORD in scripts"
            )
        try:
            return getpass.getpass(f"password for {options['nick']}: ")
        except (EOFError, KeyboardInterrupt):
            sys.exit("groupchat client: no password given")
    return None


def _say(message: str) -> None:
    sys.stderr.write(f"groupchat client: {message}\n")
    sys.stderr.flush()


def _fail(message: str) -> None:
    _say(message)
    raise SystemExit(1)
