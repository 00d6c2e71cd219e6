"""Typed hooks: what the SDK's sync loop tells features and services.

The SDK owns the sync loop (see docs/hooks.md). Each round it publishes what it
saw as typed events, in order (to-device first, then each room's memberships,
state and timeline, then events decrypted late)::

    from datarooms.sdk.hooks import MembershipChanged, Phase

    def on_member(change: MembershipChanged) -> None:
        if change.own and change.membership == "invite":
            ...

    client.hooks.on(MembershipChanged, on_member)                      # after the commit
    client.hooks.on(MembershipChanged, on_member, phase=Phase.TRANSACTION)

Two phases:

- ``Phase.TRANSACTION``: the handler runs **inside** the index transaction that
  writes the batch and the sync position, after the batch is written (the index
  already shows it) and before the position is. It must be synchronous and quick
  (no I/O but the index: its own index writes join the same transaction). If it
  raises, the whole batch is rolled back, the position does not move, and the
  same batch is fetched and processed again on the next round: nothing is lost,
  and the handler sees the batch again (so it must be idempotent).
- ``Phase.AFTER`` (the default): the handler (sync or async) runs once the batch
  and its position are committed, outside the sync lock, before the next round.
  If it raises, the error is logged with the handler's name and the loop goes on:
  the batch is not retried. A crash between the commit and the handler loses that
  call: anything that must not be lost belongs in ``Phase.TRANSACTION``. An after
  handler must not wait for a later sync round (it would wait on itself): start a
  task for that.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from datarooms.errors import DataroomsError
from datarooms.sdk.timeline import RoomEvent

log = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    #: Inside the sync transaction, before the sync position is persisted.
    TRANSACTION = "transaction"
    #: After the batch and its position are committed.
    AFTER = "after"


@dataclass(frozen=True)
class MembershipChanged:
    """A member event of a room: this device's own user or another one.

    Our own invites come from the sync's ``invite`` section (``event_id`` is None
    there: invite state is stripped), our own leaves, kicks and bans from its
    ``leave`` section, everything else from the joined rooms' state and timeline.
    A full-state sync (``open()`` does one) reports every current membership again.
    """

    room_id: str
    user_id: str
    #: ``join``, ``invite``, ``leave``, ``ban`` or ``knock``.
    membership: str
    #: Who sent the event: the inviter of an invite, the kicker of a kick.
    sender: str
    event_id: str | None
    #: The membership before this event, when the server told.
    prev_membership: str | None = None
    reason: str | None = None
    #: It is about this device's own user.
    own: bool = False


@dataclass(frozen=True)
class StateChanged:
    """A room state event, published after it is in the local index."""

    room_id: str
    event_type: str
    state_key: str
    content: dict[str, Any]
    sender: str
    event_id: str | None


@dataclass(frozen=True)
class RoomEventReceived:
    """A timeline event of a joined room, decrypted where this device could."""

    event: RoomEvent
    #: It was decrypted after it arrived (its key came later), not in its own round.
    late: bool = False

    @property
    def room_id(self) -> str:
        return self.event.room_id


@dataclass(frozen=True)
class ToDeviceReceived:
    """A to-device event: in the clear (e.g. key verification) or decrypted by Olm.

    Room keys (``m.room_key``, ``m.forwarded_room_key``) are already stored when
    this is published; their ``session_key`` is not passed on.
    """

    type: str
    sender: str
    content: dict[str, Any] = field(default_factory=dict)
    #: It came Olm-encrypted and was decrypted on this device.
    encrypted: bool = False


HookEvent = MembershipChanged | StateChanged | RoomEventReceived | ToDeviceReceived
E = TypeVar("E", MembershipChanged, StateChanged, RoomEventReceived, ToDeviceReceived)
Handler = Callable[[Any], Any]


class HookError(DataroomsError):
    """A hook handler failed inside the sync transaction: the batch was not persisted."""

    errcode = "DR_HOOK_FAILED"


def _name(handler: Handler) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


@dataclass(frozen=True)
class Subscription:
    """What :meth:`Hooks.on` returns; call :meth:`cancel` (or the hooks' ``off``) to stop."""

    hooks: Hooks
    kind: type
    handler: Handler
    phase: Phase

    def cancel(self) -> None:
        self.hooks.off(self)


class Hooks:
    """``client.hooks``: subscribe handlers to the sync loop's typed events."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def on(
        self, kind: type[E], handler: Callable[[E], Any], *, phase: Phase | str = Phase.AFTER
    ) -> Subscription:
        """Call ``handler(event)`` for every event of type ``kind``; see the module doc."""
        if kind not in (MembershipChanged, StateChanged, RoomEventReceived, ToDeviceReceived):
            raise TypeError(f"{kind!r} is not a hook event type")
        phase = Phase(phase)
        if phase is Phase.TRANSACTION and inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"{_name(handler)} is async: handlers inside the sync transaction must be "
                "synchronous (subscribe it with phase=Phase.AFTER, or start a task from it)"
            )
        sub = Subscription(self, kind, handler, phase)
        self._subs.append(sub)
        return sub

    def off(self, subscription: Subscription) -> None:
        if subscription in self._subs:
            self._subs.remove(subscription)

    def wants(self, phase: Phase) -> bool:
        return any(s.phase is phase for s in self._subs)

    def _for(self, event: HookEvent, phase: Phase) -> list[Subscription]:
        return [s for s in self._subs if s.phase is phase and isinstance(event, s.kind)]

    def run_transaction(self, events: Iterable[HookEvent]) -> None:
        """Run the in-transaction handlers; the first failure raises :class:`HookError`."""
        for event in events:
            for sub in self._for(event, Phase.TRANSACTION):
                try:
                    result = sub.handler(event)
                except Exception as exc:
                    log.error(
                        "a sync hook failed inside the sync transaction; the batch is "
                        "rolled back and will be retried",
                        exc_info=True,
                        extra={"hook": _name(sub.handler), "event": type(event).__name__},
                    )
                    raise HookError(
                        f"the sync hook {_name(sub.handler)} failed on "
                        f"{type(event).__name__}: {exc}; the sync batch was not persisted and "
                        "will be retried"
                    ) from exc
                if inspect.isawaitable(result):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    raise HookError(
                        f"the sync hook {_name(sub.handler)} returned an awaitable inside the "
                        "sync transaction; in-transaction handlers must be synchronous"
                    )

    async def run_after(self, events: Iterable[HookEvent]) -> None:
        """Run the after-commit handlers; a failure is logged and the others still run."""
        for event in events:
            for sub in self._for(event, Phase.AFTER):
                try:
                    result = sub.handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.error(
                        "a sync hook failed after the batch was committed (not retried)",
                        exc_info=True,
                        extra={"hook": _name(sub.handler), "event": type(event).__name__},
                    )


__all__ = [
    "HookError",
    "HookEvent",
    "Hooks",
    "MembershipChanged",
    "Phase",
    "RoomEventReceived",
    "StateChanged",
    "Subscription",
    "ToDeviceReceived",
]
