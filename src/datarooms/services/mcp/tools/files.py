"""Tools for files: upload and download (encrypted attachments)."""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from mcp.types import BlobResourceContents, EmbeddedResource, TextContent
from pydantic import Field

from datarooms.errors import ValidationError
from datarooms.sdk.attachments import download_decrypted, download_decrypted_bytes
from datarooms.sdk.files import safe_name
from datarooms.services.mcp.tools._common import EventArg, RoomArg, ToolBase


class FileTools(ToolBase):
    """Files (AES-256-CTR attachments, SHA-256 checked)."""

    async def upload_file(
        self,
        room: RoomArg,
        path: Annotated[
            str | None, Field(description="File to upload, relative to the agent's files directory")
        ] = None,
        content_base64: Annotated[
            str | None, Field(description="Or the file's bytes, base64-encoded (small files only)")
        ] = None,
        filename: Annotated[str | None, Field(description="Name to give the file")] = None,
        mimetype: Annotated[str | None, Field(description="e.g. application/pdf")] = None,
    ) -> dict[str, Any]:
        """Encrypt and upload a file into a room (AES-256-CTR, SHA-256 checked by readers).
        Give either `path` (inside the agent's files directory) or `content_base64`."""
        if (path is None) == (content_base64 is None):
            raise ValidationError("give exactly one of path or content_base64")
        source: Path | bytes
        if path is not None:
            source = self.rt.policy.file_path(path, purpose="uploading from a path")
            if not source.is_file():
                raise ValidationError(f"{path!r} is not a file in the agent's files directory")
        else:
            assert content_base64 is not None
            cap = self.rt.settings.max_inline_file_bytes
            if len(content_base64) > (cap * 4) // 3 + 4:
                raise ValidationError(
                    f"content_base64 is over the inline limit of {cap} bytes; upload from a path"
                )
            try:
                source = base64.b64decode(content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValidationError("content_base64 is not valid base64") from None
        rid = await self.rt.room(room, sends=True)
        ref = await self._c.files.put(rid, source, filename=filename, mimetype=mimetype)
        return {
            "room_id": rid,
            "event_id": ref.event_id,
            "name": ref.name,
            "size": ref.size,
            "mimetype": ref.mimetype,
        }

    async def download_file(
        self,
        room: RoomArg,
        event_id: EventArg,
        save_as: Annotated[
            str | None,
            Field(
                description="Save into the agent's files directory under this relative path, "
                "instead of returning the content"
            ),
        ] = None,
        overwrite: Annotated[
            bool, Field(description="Replace an existing file at save_as")
        ] = False,
    ) -> list[TextContent | EmbeddedResource]:
        """Download, verify (SHA-256) and decrypt a file from a room. Small files come back
        as an embedded resource (base64); larger ones must be saved with `save_as`."""
        target = None
        if save_as is not None:
            target = self.rt.policy.file_path(save_as, purpose="saving a file")
        rid = await self.rt.room(room)
        ref = await self._c.files.ref(rid, event_id)
        meta = {
            "room_id": rid,
            "event_id": event_id,
            "name": ref.name,
            "size": ref.size,
            "mimetype": ref.mimetype,
        }
        if target is not None:
            if target.is_dir():
                target = self.rt.policy.file_path(
                    str(target / safe_name(ref.name)), purpose="saving a file"
                )
            if target.exists() and not overwrite:
                raise ValidationError(f"{save_as!r} exists; pass overwrite=true to replace it")
            target.parent.mkdir(parents=True, exist_ok=True)
            await download_decrypted(self._c.homeserver_url, self._c.access_token, ref.file, target)
            meta["saved_to"] = str(target)
            return [TextContent(type="text", text=json.dumps(meta))]
        data = await self.read_file_bytes(rid, event_id)
        mime = ref.mimetype or mimetypes.guess_type(ref.name)[0] or "application/octet-stream"
        meta["size"] = len(data)
        return [
            TextContent(type="text", text=json.dumps(meta)),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(
                    uri=file_uri(rid, event_id),
                    mime_type=mime,
                    blob=base64.b64encode(data).decode(),
                ),
            ),
        ]

    async def read_file_bytes(self, rid: str, event_id: str) -> bytes:
        """A file's bytes, refused above the inline cap (checked while downloading)."""
        ref = await self._c.files.ref(rid, event_id)
        cap = self.rt.settings.max_inline_file_bytes
        if ref.size and ref.size > cap:
            raise ValidationError(
                f"the file is {ref.size} bytes, over the inline limit of {cap} bytes; "
                "download it with save_as into the agent's files directory"
            )
        try:
            return await download_decrypted_bytes(
                self._c.homeserver_url, self._c.access_token, ref.file, max_size=cap
            )
        except ValidationError:
            raise ValidationError(
                f"the file is over the inline limit of {cap} bytes; download it with save_as "
                "into the agent's files directory"
            ) from None


def file_uri(room_id: str, event_id: str) -> str:
    return f"datarooms://rooms/{quote(room_id, safe='')}/files/{quote(event_id, safe='')}"
