"""The interactive terminal: a prompt_toolkit line editor on Twisted's asyncio reactor.

Incoming lines are printed above the prompt (``patch_stdout``), so what the user is typing
is never garbled; the prompt shows the current room and nickname.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style
from twisted.internet import defer

from twisted_chat.client.app import ClientApp
from twisted_chat.client.render import Fragments, SeenLines, render
from twisted_chat.core.sanitize import clean_text

STYLE = Style.from_dict(
    {
        "time": "ansibrightblack",
        "room": "ansibrightblack",
        "system": "ansiyellow",
        "status": "ansibrightred",
        "private": "ansimagenta bold",
        "error": "ansired bold",
        # Earlier lines (history): muted, between dim rules, apart from live ones.
        "history-rule": "ansibrightblack italic",
        "history": "ansibrightblack",
        "history-nick": "dim",
        "history-private": "ansimagenta dim",
        "prompt": "bold",
    }
)


class Terminal:
    def __init__(self, app: ClientApp) -> None:
        self.app = app
        # The typed line is erased on Enter: echo() shows it again, formatted like the rest.
        self.prompt_session: PromptSession[str] = PromptSession(
            key_bindings=_keys(), erase_when_done=True
        )
        app.interactive = True
        app.on_output(self.show_event)
        app.on_status(self.show_status)
        app.session.on_fatal.append(self._stop_prompt)
        # Our own lines are shown as they go out (the server does not echo them): under
        # the name and in the room they are really sent with, never before.
        app.session.on_sent.append(self.echo)
        # What is on screen already: a room's history replayed on a rejoin shows only
        # the lines missed while away.
        self.seen = SeenLines()

    def _stop_prompt(self, message: str) -> None:
        if self.prompt_session.app.is_running:
            self.prompt_session.app.exit(exception=EOFError())

    def prompt(self) -> FormattedText:
        s = self.app.session
        room = clean_text(s.current or "-")
        nick = clean_text(s.nick or s.wanted_nick or "")
        state = "" if s.protocol is not None else "(offline)"
        text = " ".join(part for part in (f"[{room}]", nick, state) if part)
        return FormattedText([("class:prompt", f"{text}> ")])

    def _print(self, fragments: Fragments) -> None:
        print_formatted_text(FormattedText(fragments), style=STYLE)
        app = self.prompt_session.app
        if app.is_running:
            app.invalidate()

    def show_event(self, event: dict[str, Any], me: str | None) -> None:
        if event.get("type") == "history":
            unseen = self.seen.unseen(event)
            if unseen is None:
                return
            event = unseen
        else:
            self.seen.note(event, me)
        fragments = render(event, me)
        if fragments is not None:
            self._print(fragments)
        elif self.prompt_session.app.is_running:
            self.prompt_session.app.invalidate()

    def show_status(self, text: str) -> None:
        self._print([("class:time", time.strftime("%H:%M ")), ("class:status", f"** {text}")])

    def echo(self, line: str) -> None:
        """Show our own message as it is sent: the server does not send it back to us."""
        if line.startswith("/me "):
            kind, text = "action", line[4:]
        elif line.startswith("//") or not line.startswith("/"):
            kind, text = "message", line[1:] if line.startswith("//") else line
        else:
            return
        s = self.app.session
        event = {
            "type": kind,
            "ts": time.time(),
            "room": s.current or "-",
            "nick": s.nick or "?",
            "text": text,
        }
        self.seen.note_own(s.current, None, s.nick or "?", text)
        fragments = render(event, s.nick)
        if fragments is not None:
            self._print(fragments)

    async def run(self) -> None:
        with patch_stdout(raw=True):
            while True:
                try:
                    line = await self.prompt_session.prompt_async(self.prompt)
                except (EOFError, KeyboardInterrupt):
                    break
                line = line.rstrip()
                if not line.strip():
                    continue
                if line.split(" ", 1)[0].lower() == "/quit":
                    self.app.session.quit(line[5:].strip())
                    break
                session = self.app.session
                if session.send(line) and session.protocol is None:
                    waiting = session.pending
                    self.show_status(
                        "not connected: your line will be sent when the connection is back"
                        + (f" ({waiting} lines waiting)" if waiting > 1 else "")
                    )


def _keys() -> KeyBindings:
    """Ctrl-C clears a half-typed line (as in a shell); on an empty line it leaves."""
    keys = KeyBindings()

    @keys.add("c-c")
    def _(event: KeyPressEvent) -> None:
        buffer = event.app.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return keys


async def run_terminal(app: ClientApp) -> None:
    """Runs under Twisted: the prompt loop is an asyncio task, awaited as a Deferred."""
    terminal = Terminal(app)
    app.start()
    # Ctrl-C is a key here (clear the line, or leave on an empty one). But each line
    # printed above the prompt puts the terminal in cooked mode for a moment, and a
    # Ctrl-C typed then would arrive as SIGINT and end the client: ignore the signal
    # while the prompt runs; the key binding does the rest.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        await defer.Deferred.fromFuture(asyncio.ensure_future(terminal.run()))
    finally:
        signal.signal(signal.SIGINT, previous)
    terminal.show_status("leaving")
    await app.stop()
    if app.session.fatal is not None:
        raise SystemExit(1)
