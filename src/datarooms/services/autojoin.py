"""Joining rooms on invite, for the bots: one home for the rule both the state bot and the
claims service follow.

A bot accepts an invite from a user of a homeserver it trusts (its own, the named ones,
and the federation policy's), once per room; others are logged and ignored. Invites come
from the sync's ``MembershipChanged`` hook (after the commit) and, at start, from the
invites the device already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Container
from typing import Any

from datarooms.errors import DataroomsError
from datarooms.ids import server_of
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.hooks import MembershipChanged, Subscription

log = logging.getLogger(__name__)

__all__ = ["AutoJoin"]


class AutoJoin:
    """``join(room_id, inviter)`` each invite of this device from a trusted server."""

    def __init__(
        self,
        client: DataroomsClient,
        trusted: Container[str],
        join: Callable[[str, str], Awaitable[Any]],
        *,
        name: str,
    ) -> None:
        self._c = client
        self._trusted = trusted
        self._join = join
        self._name = name
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tried: set[str] = set()
        self._hook: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._hook = self._c.hooks.on(MembershipChanged, self._on_membership)
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-join")

    async def stop(self) -> None:
        if self._hook is not None:
            self._hook.cancel()
            self._hook = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_membership(self, change: MembershipChanged) -> None:
        """After each sync batch: queue our own new invites."""
        if change.own and change.membership == "invite":
            self._queue.put_nowait((change.room_id, change.sender))

    async def _run(self) -> None:
        for room_id, inviter in self._c.invites().items():
            self._queue.put_nowait((room_id, inviter))
        while True:
            room_id, inviter = await self._queue.get()
            if room_id in self._tried or not inviter:
                continue
            if self._c.membership(room_id) != "invite":
                continue  # joined, declined or withdrawn meanwhile
            self._tried.add(room_id)
            if ":" not in inviter or server_of(inviter) not in self._trusted:
                log.info(
                    "ignoring an invite from an untrusted server",
                    extra={"room": room_id, "inviter": inviter, "bot": self._name},
                )
                continue
            try:
                await self._join(room_id, inviter)
                log.info("joined a room on invite", extra={"room": room_id, "inviter": inviter})
            except DataroomsError as exc:
                log.warning(
                    "could not join a room on invite",
                    extra={"room": room_id, "error": exc.message, "bot": self._name},
                )
