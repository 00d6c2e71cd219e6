"""The CLI's devices, held open by ``datarooms up`` between commands.

A ``datarooms put`` process that opens its E2EE device itself spends most of a
second importing matrix-nio and catching up before it does 25 ms of work. While
the platform runs, the record and message commands (``put``, ``get``,
``history``, ``send``) instead ask it, over the Unix socket ``run/cli.sock``, to
run them on the CLI device it keeps open: the process imports neither nio nor
the SDK and exits in a fraction of a second. Without a platform (or with
``DATAROOMS_CLI_DEVICE=local``) the command opens the device itself, as before.

The rules that keep this as safe as the in-process path:

- Who may ask: the socket lives in the private run directory and each
  connection's peer must be this user (``SO_PEERCRED``), the same people who can
  read the device's files anyway.
- The platform uses its copy only while no other process has the device open
  (it opens the store exclusively, see :meth:`DataroomsClient.open`): a command
  that opens the device itself first asks the platform to let go of it
  (``release``) and opens it shared; while such a command runs, the platform
  declines and the command runs in its own process, as commands always could.
- Each request catches up with the homeserver first (an incremental sync), so a
  served ``get`` sees what a process would have seen.
- A request is either declined before anything was done (the command then runs
  in-process) or run; if the connection breaks after it was sent, the command
  fails saying it may have been applied, and never runs twice.

The operations themselves (:data:`OPERATIONS`) are the one implementation of
those commands: the in-process path runs the same functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datarooms.errors import DataroomsError

if TYPE_CHECKING:
    from datarooms.account import Credentials
    from datarooms.config import Settings
    from datarooms.sdk.client import DataroomsClient
    from datarooms.services.platform import PlatformContext

log = logging.getLogger(__name__)

#: The socket's name in the run directory.
SOCKET_NAME = "cli.sock"
#: A request holds at most this much (a record value is at most an event, 64 KiB).
MAX_REQUEST = 1 << 20
#: ``DATAROOMS_CLI_DEVICE=local``: every command opens the device itself.
ENV_MODE = "DATAROOMS_CLI_DEVICE"
PROTOCOL = 1


def socket_path(settings: Settings) -> Path:
    return settings.run_dir / SOCKET_NAME


# -- the operations: one implementation, served or in-process ---------------------


async def _put(c: DataroomsClient, a: dict[str, Any]) -> Any:
    rid = await c.rooms.resolve(a["room"])
    rec = await c.records.put(
        rid, a["key"], a["value"], schema=a.get("schema"), txn_id=a.get("txn")
    )
    return {"key": a["key"], "version": rec.version, "event_id": rec.event_id}


async def _get(c: DataroomsClient, a: dict[str, Any]) -> Any:
    rid = await c.rooms.resolve(a["room"])
    if a.get("key") is None:
        return {k: r.to_json() for k, r in (await c.records.latest(rid)).items()}
    return (await c.records.get(rid, a["key"])).to_json()


async def _history(c: DataroomsClient, a: dict[str, Any]) -> Any:
    rid = await c.rooms.resolve(a["room"])
    return [r.to_json() for r in await c.records.history(rid, a["key"], limit=a.get("limit"))]


async def _send(c: DataroomsClient, a: dict[str, Any]) -> Any:
    rid = await c.rooms.resolve(a["room"])
    return await c.messages.send(rid, a["text"])


#: What the platform runs for the CLI: name -> (client, arguments) -> a JSON result.
OPERATIONS: dict[str, Callable[[DataroomsClient, dict[str, Any]], Awaitable[Any]]] = {
    "put": _put,
    "get": _get,
    "history": _history,
    "send": _send,
}


# -- the client half (light: imported by the CLI) -------------------------------------


class Declined(Exception):
    """The platform did not run the request (none runs, or it will not now): run it here."""


def call(settings: Settings, creds: Credentials, op: str, args: dict[str, Any]) -> Any:
    """Run ``op`` on the platform's copy of this account's CLI device.

    Raises :class:`Declined` if nothing was done (run it in-process then), the
    command's own error (a :class:`DataroomsError`) if it failed there.
    """
    if os.environ.get(ENV_MODE, "").strip().lower() == "local":
        raise Declined("DATAROOMS_CLI_DEVICE=local")
    path = socket_path(settings)
    request = {
        "v": PROTOCOL,
        "op": op,
        "args": args,
        "credentials": creds.to_json(),
        "trust": settings.trust_policy,
    }
    body = json.dumps(request, ensure_ascii=False).encode() + b"\n"
    if len(body) > MAX_REQUEST:
        raise Declined("too large to send to the platform")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        try:
            s.connect(str(path))
        except OSError as exc:  # no platform, or one that is gone: nothing was sent
            raise Declined(str(exc)) from None
        s.settimeout(300.0)
        s.sendall(body)
        reply = _read_line(s)
    except (OSError, ValueError) as exc:
        raise DataroomsError(
            f"the platform stopped answering while it ran `{op}` ({exc}); it may or may "
            "not have been done: check, then run it again (a put with --txn is safe to repeat)"
        ) from None
    finally:
        s.close()
    status = reply.get("status")
    if status == "ok":
        return reply.get("result")
    if status == "declined":
        raise Declined(str(reply.get("reason", "")))
    raise DataroomsError(str(reply.get("message") or "the platform failed to run the command"))


def release(settings: Settings, user_id: str) -> None:
    """Ask the platform to close its copy of ``user_id``'s CLI device (if it has one), so
    that this process can open the device itself. Quietly nothing if no platform runs."""
    path = socket_path(settings)
    if not path.exists():
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        s.connect(str(path))
        s.settimeout(60.0)
        s.sendall(json.dumps({"v": PROTOCOL, "op": "release", "user_id": user_id}).encode() + b"\n")
        _read_line(s)
    except (OSError, ValueError):
        pass
    finally:
        s.close()


def _read_line(s: socket.socket) -> dict[str, Any]:
    chunks: list[bytes] = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    data = b"".join(chunks)
    if not data.endswith(b"\n"):
        raise ValueError("the connection closed before the answer")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("not an answer")
    return reply


# -- the server half (in `datarooms up`) -------------------------------------------------


@dataclass
class _Held:
    client: DataroomsClient
    key: tuple[str, str, str]


class CliDeviceService:
    """Serves the CLI's record and message commands on ``run/cli.sock``."""

    name = "cli"

    def __init__(self, *, uid: int | None = None) -> None:
        #: The only user whose processes may ask (this process's by default).
        self.uid = os.getuid() if uid is None else uid
        self._server: asyncio.AbstractServer | None = None
        self._settings: Settings | None = None
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._path: Path | None = None
        self._homeserver_url = ""

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        self._settings = platform.settings
        self._homeserver_url = platform.homeserver_url
        path = socket_path(platform.settings)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a killed run's; we hold the platform's lock
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=MAX_REQUEST + 1
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._path = path
        return {"socket": str(path)}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        for user_id in list(self._held):
            await self._close(user_id)

    def _lock(self, user_id: str) -> asyncio.Lock:
        return self._locks.setdefault(user_id, asyncio.Lock())

    async def _close(self, user_id: str) -> None:
        held = self._held.pop(user_id, None)
        if held is not None:
            await held.client.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer)
            writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        # Read the request before answering even a refusal: closing with unread data
        # resets the connection, and the asker would lose the answer.
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            return {"status": "declined", "reason": "request too large"}
        sock = writer.get_extra_info("socket")
        if sock is None or _peer_uid(sock) != self.uid:
            return {"status": "error", "message": "refused: not this platform's user"}
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or request.get("v") != PROTOCOL:
                raise ValueError
        except ValueError:
            return {"status": "declined", "reason": "not a request this platform understands"}
        op = request.get("op")
        if op == "release":
            user_id = str(request.get("user_id", ""))
            async with self._lock(user_id):
                await self._close(user_id)
            return {"status": "ok", "result": None}
        fn = OPERATIONS.get(str(op))
        args = request.get("args")
        creds_json = request.get("credentials")
        if fn is None or not isinstance(args, dict) or not isinstance(creds_json, dict):
            return {"status": "declined", "reason": f"unknown operation {op!r}"}
        from datarooms.account import Credentials

        try:
            creds = Credentials(
                **{k: str(creds_json.get(k, "")) for k in Credentials.__dataclass_fields__}
            )
        except TypeError:
            return {"status": "declined", "reason": "bad credentials"}
        if not creds.user_id:
            return {"status": "declined", "reason": "no user id"}
        assert self._settings is not None
        if self._settings.homeserver.mode == "embedded":  # as the CLI's own path does
            creds = replace(creds, homeserver_url=self._homeserver_url)
        trust = str(request.get("trust") or "cross-signed")
        async with self._lock(creds.user_id):
            try:
                client = await self._client(creds, trust)
            except DeviceBusy as exc:
                return {"status": "declined", "reason": str(exc)}
            except DataroomsError as exc:
                return {"status": "error", "message": exc.message}
            try:
                await client.sync_once()
                return {"status": "ok", "result": await fn(client, args)}
            except DataroomsError as exc:
                return {"status": "error", "message": exc.message}
            except (KeyError, TypeError) as exc:
                return {"status": "error", "message": f"bad arguments for {op}: {exc}"}
            except Exception as exc:  # the device may be in a bad state: open it afresh
                log.exception("CLI %s failed", op)
                await self._close(creds.user_id)
                return {"status": "error", "message": f"{op} failed: {type(exc).__name__}"}

    async def _client(self, creds: Credentials, trust: str) -> DataroomsClient:
        key = (creds.homeserver_url, trust, creds.access_token or creds.password)
        held = self._held.get(creds.user_id)
        if held is not None and held.key == key and not held.client.closed:
            return held.client
        await self._close(creds.user_id)
        from datarooms.errors import DeviceBusyError
        from datarooms.sdk.client import DataroomsClient
        from datarooms.services.platform import device_store_dir

        assert self._settings is not None
        try:
            client = await DataroomsClient.open(
                creds,
                device_store_dir(self._settings, creds.user_id),
                device_name="datarooms CLI",
                trust=trust,  # type: ignore[arg-type]
                rooms_from_index=True,
                share="exclusive",
            )
        except DeviceBusyError:
            raise DeviceBusy("a datarooms process has this device open") from None
        client.rooms.roomsbot_url = self._settings.roomsbot.url or self._settings.running_url(
            "roomsbot"
        )
        self._held[creds.user_id] = _Held(client, key)
        return client


class DeviceBusy(Exception):
    pass


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


if TYPE_CHECKING:  # a Service of the platform
    from datarooms.services.platform import Service

    _: Service = CliDeviceService()


__all__ = [
    "OPERATIONS",
    "CliDeviceService",
    "Declined",
    "call",
    "release",
    "socket_path",
]
