"""The signed-in users' devices: one E2EE device of each user, opened by the dashboard.

A user signing in proves their password to the homeserver (a password login on the
dashboard's device of that user, created on the first sign-in). The device's store is
``<data_dir>/dashboard/devices/<user_id>``: its session, crypto store and index of
decrypted data, private to that user. The device syncs while the user has a session
and is closed when their last session ends. Records it decrypts are pushed to that
user's live streams (server-sent events), never to anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datarooms import events as ev
from datarooms._fs import atomic_write, private_dir
from datarooms.account import Credentials
from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    UnauthorizedError,
    ValidationError,
)
from datarooms.homeserver.api import MatrixApi
from datarooms.ids import room_id as check_room_id
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.hooks import RoomEventReceived, Subscription
from datarooms.sdk.keys import TrustPolicy
from datarooms.services.scaffold import TokenBucket

log = logging.getLogger(__name__)

#: Live events a browser may fall behind by before its stream drops them (it then
#: reloads what it shows).
_QUEUE = 1000
DEVICE_NAME = "datarooms dashboard"


class TooManyAttemptsError(DataroomsError):
    errcode = "M_LIMIT_EXCEEDED"
    http_status = 429


@dataclass
class UserDevice:
    """A signed-in user's device and the live streams of their browsers."""

    client: DataroomsClient
    streams: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    hook: Subscription | None = None

    @property
    def user_id(self) -> str:
        return self.client.user_id

    def push(self, item: dict[str, Any]) -> None:
        for queue in list(self.streams):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(item)

    def on_event(self, change: RoomEventReceived) -> None:
        event = change.event
        if event.type != ev.RECORD or not event.decrypted:
            return
        content = event.content
        if not isinstance(content.get("key"), str) or "value" not in content:
            return
        self.push(
            {
                "type": "record",
                "room_id": event.room_id,
                "key": content["key"],
                "value": content["value"],
                "ts": event.ts,
                "sender": event.sender,
                "event_id": event.event_id,
            }
        )

    def stream(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE)
        self.streams.add(queue)
        return queue

    def joined(self, room: str) -> str:
        """``room`` if this user is joined to it, else :class:`AccessDeniedError`: a page
        of a room the user is not in is never built, whatever the device may hold."""
        room_id = check_room_id(room)
        if not self.client.rooms.is_joined(room_id):
            raise AccessDeniedError(f"{self.user_id} is not a member of {room_id}")
        return room_id


class Devices:
    """Opens, shares and closes the dashboard's device of each signed-in user."""

    def __init__(
        self,
        homeserver_url: str,
        server_name: str,
        root: Path,
        *,
        trust: TrustPolicy = "cross-signed",
    ) -> None:
        self.homeserver_url = homeserver_url
        self.server_name = server_name
        self.root = root
        self.trust = trust
        self._open: dict[str, UserDevice] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Sign-in attempts per account: 10 at once, then one every 6 s (password guessing
        #: through the dashboard is slower than the homeserver's own login limit).
        self._attempts = TokenBucket(rate=1 / 6, burst=10)

    def user_id(self, name: str) -> str:
        """A full user id from what a person typed (``alice`` or ``@alice:server``)."""
        name = name.strip()
        if not name or len(name) > 255 or any(ch.isspace() or not ch.isprintable() for ch in name):
            raise ValidationError("type your Matrix user name (alice or @alice:server)")
        if not name.startswith("@"):
            name = f"@{name}:{self.server_name}"
        if ":" not in name[1:]:
            raise ValidationError(f"{name!r} is not a Matrix user id (@name:server)")
        return name

    def store(self, user_id: str) -> Path:
        return self.root / user_id

    def get(self, user_id: str) -> UserDevice | None:
        return self._open.get(user_id)

    def all(self) -> list[UserDevice]:
        return list(self._open.values())

    async def sign_in(
        self, user_id: str, password: str, recovery_key: str | None = None
    ) -> UserDevice:
        """Check ``password`` with the homeserver, then open (or reuse) the user's device.

        With the account's ``recovery_key``, the device loads the cross-signing and
        backup keys from secret storage: it signs itself (so the user's other devices
        share room keys with it) and reads the history kept in key backup. Without it,
        a device of an account that already has cross-signing keys is not cross-signed
        until another device of the user signs it (``datarooms keys``) or verifies it.
        """
        if not password or len(password) > 1024:
            raise ValidationError("type your password")
        wait = self._attempts.take(user_id)
        if wait:
            raise TooManyAttemptsError(
                f"too many sign-in attempts for {user_id}; try again in {wait:.0f} s"
            )
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            store = self.store(user_id)
            memo = store / "dashboard.json"
            known: str | None = None
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                known = str(json.loads(memo.read_text())["device_id"])
            async with MatrixApi(self.homeserver_url, timeout=15.0) as api:
                try:
                    res = await api.login_password(
                        user_id, password, device_id=known, device_name=DEVICE_NAME
                    )
                except HomeserverError as exc:
                    if exc.errcode in ("M_FORBIDDEN", "M_INVALID_USERNAME", "M_USER_DEACTIVATED"):
                        raise UnauthorizedError(
                            "wrong user name or password", errcode="M_FORBIDDEN"
                        ) from None
                    raise
            if res.get("user_id") != user_id:
                raise UnauthorizedError("wrong user name or password", errcode="M_FORBIDDEN")
            device = self._open.get(user_id)
            if device is not None and not device.client.closed:
                if recovery_key:
                    await device.client.keys.unlock(recovery_key)
                return device
            private_dir(self.root)
            creds = Credentials(
                self.homeserver_url, user_id, str(res["access_token"]), password=password
            )
            client = await DataroomsClient.open(
                creds, store, device_name=DEVICE_NAME, trust=self.trust, share="exclusive"
            )
            try:
                if recovery_key:
                    await client.keys.unlock(recovery_key)
                atomic_write(memo, json.dumps({"device_id": client.device_id}), mode=0o600)
                device = UserDevice(client)
                device.hook = client.hooks.on(RoomEventReceived, device.on_event)
                client.start_sync()
            except BaseException:
                await client.close()
                raise
            self._open[user_id] = device
            log.info(
                "dashboard device open",
                extra={"user_id": user_id, "device_id": client.device_id},
            )
            return device

    async def close(self, user_id: str) -> None:
        device = self._open.pop(user_id, None)
        if device is None:
            return
        if device.hook is not None:
            device.hook.cancel()
        device.push({"type": "signed_out"})
        await device.client.close()

    async def close_all(self) -> None:
        for user_id in list(self._open):
            await self.close(user_id)


__all__ = ["DEVICE_NAME", "Devices", "UserDevice"]
