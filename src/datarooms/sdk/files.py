"""Files in a data room: encrypted attachments sent as standard ``m.file`` messages.

The transfer and the cryptography (EncryptedFile v2: AES-256-CTR, SHA-256 of
the ciphertext checked before anything is returned) live in
:mod:`datarooms.sdk.attachments`; this module ties them to rooms. Any Matrix client that
supports encrypted attachments (Element, matrix-js-sdk) can open these files.
"""

from __future__ import annotations

import builtins
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nio import MegolmEvent

from datarooms._store.index import FileRow
from datarooms.errors import NotFoundError, ValidationError
from datarooms.sdk.attachments import (
    EncryptedFile,
    download_decrypted,
    download_decrypted_bytes,
    upload_encrypted,
)
from datarooms.sdk.timeline import error_from_response, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FileRef:
    room_id: str
    event_id: str
    name: str
    size: int
    mimetype: str
    file: EncryptedFile


class Files:
    """``client.files``: put a file into a room, get it back verified."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client

    async def put(
        self,
        room_id: str,
        source: Path | str | bytes,
        *,
        filename: str | None = None,
        mimetype: str | None = None,
        progress: Progress | None = None,
    ) -> FileRef:
        """Encrypt and upload ``source`` (streamed), then send it as an ``m.file`` event."""
        if isinstance(source, str):
            source = Path(source)
        if isinstance(source, Path):
            if not source.is_file():
                raise ValidationError(f"{source} is not a readable file")
            filename = filename or source.name
        name = filename or "data.bin"
        mime = mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream"
        await self._c.ensure_room(room_id)
        # The file name goes only into the encrypted event, never to the media
        # repository in the clear.
        uploaded = await upload_encrypted(
            self._c.homeserver_url, self._c.access_token, source, progress=progress
        )
        content: dict[str, Any] = {
            "msgtype": "m.file",
            "body": name,
            "filename": name,
            "info": {"size": uploaded.size, "mimetype": mime},
            "file": uploaded.file.to_json(),
        }
        event_id = await self._c.send(room_id, "m.room.message", content)
        self._c.index.add_file(
            FileRow(
                event_id,
                room_id,
                name[:255],
                uploaded.size,
                mime[:255],
                self._c.user_id,
                int(time.time() * 1000),
                uploaded.file.url,
            )
        )
        return FileRef(room_id, event_id, name, uploaded.size, mime, uploaded.file)

    def list(self, room_id: str) -> builtins.list[FileRow]:
        """The files of a room this device has seen (from its index), oldest first."""
        return self._c.index.files(room_id)

    async def ref(self, room_id: str, event_id: str) -> FileRef:
        """The file an event carries (the event is fetched and decrypted)."""
        await self._c.ensure_room(room_id)
        resp = await self._c.nio.room_get_event(room_id, event_id)
        if is_error(resp):
            raise error_from_response(resp, f"reading event {event_id}")
        event = resp.event
        if isinstance(event, MegolmEvent):
            event.room_id = room_id
            try:
                event = self._c.nio.decrypt_event(event)
            except Exception as exc:
                raise NotFoundError(
                    f"cannot decrypt {event_id}: this device has no key for it ({exc})"
                ) from None
        content = getattr(event, "source", {}).get("content", {})
        if (
            content.get("msgtype") not in ("m.file", "m.image", "m.video", "m.audio")
            or "file" not in content
        ):
            raise NotFoundError(f"event {event_id} does not carry an encrypted file")
        info = content.get("info") or {}
        return FileRef(
            room_id,
            event_id,
            str(content.get("filename") or content.get("body") or "file"),
            int(info.get("size", 0)),
            str(info.get("mimetype", "application/octet-stream")),
            EncryptedFile.from_json(content["file"]),
        )

    async def get(
        self,
        room_id: str,
        event_id: str,
        dest: Path | str,
        *,
        progress: Progress | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Download, verify and decrypt into ``dest`` (a directory or a file path).

        The file appears at ``dest`` only if its SHA-256 matched; a tampered file
        raises :class:`datarooms.sdk.attachments.TamperedFileError` and writes nothing.
        Into a directory, the file takes the sender's name made safe (:func:`safe_name`):
        a hidden name (``.bashrc``) is refused, and so is an existing file, unless
        ``overwrite``.
        """
        ref = await self.ref(room_id, event_id)
        target = Path(dest)
        if target.is_dir():
            name = safe_name(ref.name)
            if name.startswith(".") and not overwrite:
                raise ValidationError(
                    f"the sender named the file {name!r}, a hidden file; give a file name "
                    "to save it as, or force it"
                )
            target = target / name
        if target.exists() and not overwrite:
            raise ValidationError(f"{target} exists; give another name, or force to replace it")
        return await download_decrypted(
            self._c.homeserver_url, self._c.access_token, ref.file, target, progress=progress
        )

    async def read(self, room_id: str, event_id: str) -> bytes:
        """Download, verify and decrypt a small file into memory."""
        ref = await self.ref(room_id, event_id)
        return await download_decrypted_bytes(
            self._c.homeserver_url, self._c.access_token, ref.file
        )


def safe_name(name: str) -> str:
    """A file name chosen by a sender, made safe to create in a directory: its last path
    component, without control characters; ``file.bin`` if nothing usable is left."""
    base = "".join(ch for ch in Path(name.replace("\\", "/")).name if ch.isprintable())
    return base if base not in ("", ".", "..") else "file.bin"
