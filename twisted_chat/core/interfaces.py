"""The seams of the chat core.

The core (``ChatService``) knows the people it serves only as ``IParticipant`` providers:
the line protocol is one adapter, a WebSocket adapter or a Redis backplane would be
others.  Nothing behind these interfaces imports a transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted_chat.core.events import Event


class IParticipant(Interface):
    """One connected person, as the core sees them (compare ``iwords.IChatClient``)."""

    def deliver(event: Event) -> None:
        """Show ``event`` to this participant.

        Must return quickly and never wait on the network; may raise, in which case the
        core drops this participant and carries on with everyone else.

        ``event`` may be a ``Batch``: during one input turn the core may append further
        events to it, so an adapter that buffers output must encode it at write time
        (encoding seals it).  The core stops extending it before it delivers anything
        else, so a batch never overtakes a later event.
        """

    def close(final: Event | None) -> None:
        """Send ``final`` (if any) and close the connection.

        The core has already removed the member and told its rooms; the adapter must end
        the connection within a short grace period even if the peer stops reading.
        """

    def set_format(name: str) -> None:
        """Render every later event in the format called ``name`` (``json``, ``text``).

        The core passes on what the member asked for; the renderers are the adapter's,
        so it raises ``UnsupportedFormat("usage: /format json|text")`` for a name it has
        no renderer for, before anything changes.
        """

    def nudge() -> None:
        """The member has been silent for a heartbeat interval.

        An adapter whose peer can answer without its user (a telnet client's timing
        mark, a WebSocket pong) may ask for that answer now; its arrival counts as a sign
        of life like any input.  Others do nothing.  Must not raise for a closed peer.
        """


class IChatService(Interface):
    """The chat core: members, rooms, the nickname registry, fan-out and heartbeats.

    Every command method raises a ``twisted_chat.core.errors.ChatError`` with a message fit for
    the user when the request cannot be served; none of them returns a Deferred.
    """

    members = Attribute("The connected members, in connection order.")

    def connect(participant: IParticipant) -> Any:
        """Admit a participant: assign a guest nickname, greet it, seat it in the lobby.

        Returns the member handle the adapter passes to every later call.
        """

    def touch(member: Any) -> None:
        """Record a sign of life (any input) for the heartbeat rule."""

    def connection_lost(member: Any, reason: str) -> None:
        """The adapter's connection ended; tell the rooms unless already removed."""
