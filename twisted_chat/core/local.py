"""The seams of ``core/interfaces.py`` for one process: dictionaries and a loop.

Each is what ``ChatService`` used inline before the seams existed, so one node costs
what it did.  A backplane replaces them, not the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from twisted_chat.core.errors import NoHistory
from twisted_chat.core.interfaces import (
    IDelivery,
    IHistory,
    INetwork,
    INickRegistry,
    IParticipant,
    IRoomDirectory,
)
from twisted_chat.core.names import could_be_nick, skeletons

if TYPE_CHECKING:
    from twisted_chat.core.events import Event
    from twisted_chat.core.service import Member, Room


@implementer(INickRegistry)
class LocalNicks(dict[str, Any]):
    """Every key of every held nickname, to its holder: a name is free when none of its
    keys is here."""

    def owner(self, nick: str) -> Member | None:
        if not could_be_nick(nick):
            return None
        for key in skeletons(nick):
            member = self.get(key)
            if member is not None:
                return member
        return None

    def claim(self, nick: str, holder: Member) -> None:
        for key in skeletons(nick):
            self[key] = holder

    def release(self, nick: str, holder: Member) -> None:
        for key in skeletons(nick):
            if self.get(key) is holder:
                del self[key]


@implementer(IRoomDirectory)
class LocalRooms(dict[str, "Room"]):
    """Rooms by key; each room's members are its own ordered dict."""

    def find(self, key: str) -> Room | None:
        return self.get(key)

    def create(self, key: str, name: str) -> Room:
        from twisted_chat.core.service import Room

        room = self[key] = Room(name, key=key)
        return room

    def remove(self, key: str) -> None:
        self.pop(key, None)

    def count(self) -> int:
        return len(self)

    def rooms(self) -> Iterable[Room]:
        return self.values()

    def enter(self, room: Room, member: Member) -> None:
        room.members[member] = None
        room.version += 1

    def leave(self, room: Room, member: Member) -> None:
        room.members.pop(member, None)
        room.version += 1


@implementer(IDelivery)
class LocalDelivery:
    """Straight to each member's participant.

    ``gather``, when a front door sets it, takes a room broadcast for the room's members
    it serves at once (its batcher writes them in one loop) and returns the members
    left to hand it to one by one.
    """

    log = Logger()
    gather: Callable[[Room, Event, Member | None], list[Member]] | None = None

    def fanout(
        self, members: Iterable[Member], event: Event, exclude: Member | None
    ) -> list[Member]:
        failed = []
        for member in list(members):
            if member is exclude:
                continue
            try:
                member.participant.deliver(event)
            except Exception:
                self.log.failure(
                    "delivering {type} to {nick} failed", type=event.type, nick=member.nick
                )
                failed.append(member)
        return failed

    def broadcast(self, room: Room, event: Event, exclude: Member | None) -> list[Member]:
        gather = self.gather
        if gather is None:
            return self.fanout(room.members, event, exclude)
        rest = gather(room, event, exclude)
        return self.fanout(rest, event, exclude) if rest else []


@implementer(INetwork)
class Alone:
    """No other nodes: nothing to ask, nobody to tell."""

    id = ""

    def arbitrates(self) -> bool:
        return False

    def claim(self, nick: str, member_id: int) -> Deferred[bool] | None:
        return None

    def unclaim(self, nick: str, member_id: int) -> None:
        pass

    def guest_number(self) -> int | None:
        return None

    def arrived(self, member: Member) -> None:
        pass

    def joined(self, member: Member, room: str) -> None:
        pass

    def parted(self, member: Member, room: str, reason: str) -> None:
        pass

    def talked(self, member: Member, event: Event) -> None:
        pass

    def whispered(self, member: Member, target: Member, event: Event) -> None:
        pass

    def renamed(self, member: Member, old: str) -> None:
        pass

    def left(self, member: Member, kind: str, reason: str, after: float) -> None:
        pass

    def operated(self, member: Member, action: str, **data: Any) -> None:
        pass

    def moderated(self, member: Member, action: str, **data: Any) -> bool:
        return False

    def keep_room(self, key: str, state: str | None, born: str) -> None:
        pass


@implementer(IParticipant)
class Remote:
    """A member connected to another node, as this node's rooms hold it.

    Its own node shows it everything; here it only takes up its place in rooms and in
    the nickname registry, so every delivery to it does nothing. (``--metrics`` makes
    it count them, to count deliveries to this node's members only.)
    """

    def deliver(self, event: Event) -> None:
        pass

    def close(self, final: Event | None) -> None:
        pass

    def set_format(self, name: str) -> None:
        pass

    def nudge(self) -> None:
        pass


REMOTE = Remote()


@implementer(IHistory)
class Forgetful:
    """No history: nothing kept, nothing shown on join."""

    enabled = False
    replay = 0
    private = False

    def record(
        self,
        key: str,
        ts: float,
        kind: str,
        nick: str,
        text: str,
        to: str | None = None,
        ident: int | None = None,
    ) -> None:
        pass

    def recent(self, key: str, n: int) -> tuple[Sequence[Any], bool]:
        return (), False

    def mark(self, key: str) -> int:
        return 0

    def before(self, key: str, before_id: int, n: int) -> Deferred[tuple[Sequence[Any], bool]]:
        return fail(NoHistory("this server keeps no history"))
