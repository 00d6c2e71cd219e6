"""The hooks registry: which inbound webhooks exist, where they post, and their secrets.

A hook is one URL, ``/hooks/<hook_id>``, bound to one room. It has its own secret
(shown once, when the hook is added or rotated), a verification method
(:data:`AUTH_METHODS`), a payload format (:data:`FORMATS`) and what it becomes in the
room (:data:`TARGETS`). The registry is a private SQLite file
(``<data_dir>/automation/hooks.db``, mode 0600) shared by the CLI (which manages it)
and the automation service (which reads it on every request, so a rotation or a
removal takes effect at once).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datarooms._db import SQLITE, Database, StoreTarget
from datarooms.config import Settings
from datarooms.errors import NotFoundError, ValidationError
from datarooms.ids import room_id as check_room_id

#: ``token``: the secret as ``Authorization: Bearer`` (what Alertmanager's
#: ``http_config.authorization`` sends) or ``X-Datarooms-Token``; ``github``: GitHub's
#: ``X-Hub-Signature-256`` HMAC of the body; ``hmac``: ``X-Datarooms-Signature:
#: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``, refused outside the
#: replay window and answered once per signature.
AUTH_METHODS = ("token", "github", "hmac")
#: The payload formats understood.
FORMATS = ("alertmanager", "github", "generic")
#: What a request becomes in the room.
TARGETS = ("message", "record", "telemetry")

_HOOK_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

_MIGRATIONS = [
    """
    CREATE TABLE hooks (
        hook_id    TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        format     TEXT NOT NULL,
        auth       TEXT NOT NULL,
        target     TEXT NOT NULL,
        secret     TEXT NOT NULL,
        template   TEXT NOT NULL DEFAULT '',
        mapping    TEXT NOT NULL DEFAULT '{}',
        name       TEXT NOT NULL DEFAULT '',
        created_ms INTEGER NOT NULL,
        rotated_ms INTEGER NOT NULL
    )
    """
]


@dataclass(frozen=True)
class Hook:
    """One inbound webhook. ``secret`` never reaches a log or a listing."""

    hook_id: str
    room_id: str
    format: str
    auth: str
    target: str
    secret: str = field(repr=False)
    #: ``message``: the message template (``${a.b[0]}`` paths into the JSON body);
    #: ``record``: the record key template.
    template: str = ""
    #: ``record``: ``{"value": path}``; ``telemetry``: ``{"each": path, "metric":
    #: template, "value": path, "ts": path, "tags": {name: path}}`` (see formats).
    mapping: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    created_ms: int = 0
    rotated_ms: int = 0

    def public(self) -> dict[str, Any]:
        """The hook as shown by ``datarooms hook list``: everything but the secret."""
        return {
            "hook_id": self.hook_id,
            "name": self.name,
            "room_id": self.room_id,
            "format": self.format,
            "auth": self.auth,
            "target": self.target,
            "template": self.template,
            "mapping": dict(self.mapping),
            "created_ms": self.created_ms,
            "rotated_ms": self.rotated_ms,
        }


def check_hook(
    *, room_id: str, format: str, auth: str, target: str, template: str, mapping: Mapping[str, Any]
) -> None:
    """Refuse a hook that cannot work, with a message that says why."""
    check_room_id(room_id)
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if auth not in AUTH_METHODS:
        raise ValidationError(f"auth must be one of {', '.join(AUTH_METHODS)}, got {auth!r}")
    if target not in TARGETS:
        raise ValidationError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if format == "github" and auth != "github":
        raise ValidationError("a github hook verifies GitHub's X-Hub-Signature-256 (auth github)")
    if format != "generic" and target != "message":
        raise ValidationError(f"a {format} hook posts messages (target message)")
    if target == "record" and not template:
        raise ValidationError("a record hook needs a key template (--template 'device.${id}')")
    if target == "telemetry":
        if not isinstance(mapping.get("value"), str) or not isinstance(mapping.get("metric"), str):
            raise ValidationError(
                'a telemetry hook needs a mapping with "metric" (a template) and "value" '
                '(a JSON path), e.g. {"each": "readings", "metric": "temp", "value": "c"}'
            )
    if len(template) > 4096:
        raise ValidationError("a template is at most 4096 characters")


def registry_path(settings: Settings) -> Path:
    """``<data_dir>/automation/hooks.db``: the hooks and their secrets (mode 0600)."""
    return settings.automation_dir / "hooks.db"


def hook_url(base_url: str, hook_id: str) -> str:
    return f"{base_url.rstrip('/')}/hooks/{hook_id}"


class HookRegistry:
    """The hooks of one data dir (thread-safe; several processes may open it)."""

    #: What ``datarooms migrate-to-postgres`` copies (datarooms._db.copy_store).
    NAME = "automation_hooks"
    MIGRATIONS = _MIGRATIONS
    SEALED = {"hooks": ("secret",)}

    def __init__(self, path: Path | str, target: StoreTarget = SQLITE) -> None:
        self.path = Path(path)
        self._db: Database = target.open(self.NAME, self.path, _MIGRATIONS)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        room_id: str,
        *,
        format: str = "generic",
        auth: str = "token",
        target: str = "message",
        template: str = "",
        mapping: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> Hook:
        """A new hook with a fresh secret (the only time it is returned, with rotate)."""
        mapping = dict(mapping or {})
        check_hook(
            room_id=room_id,
            format=format,
            auth=auth,
            target=target,
            template=template,
            mapping=mapping,
        )
        now = int(time.time() * 1000)
        hook = Hook(
            hook_id=secrets.token_urlsafe(12),
            room_id=room_id,
            format=format,
            auth=auth,
            target=target,
            secret=secrets.token_urlsafe(32),
            template=template,
            mapping=mapping,
            name=name[:200],
            created_ms=now,
            rotated_ms=now,
        )
        with self._lock, self._db.transaction() as db:
            db.execute(
                "INSERT INTO hooks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hook.hook_id,
                    hook.room_id,
                    hook.format,
                    hook.auth,
                    hook.target,
                    db.seal(hook.secret, "secret"),
                    hook.template,
                    json.dumps(mapping),
                    hook.name,
                    now,
                    now,
                ),
            )
        return hook

    def get(self, hook_id: str) -> Hook | None:
        if not _HOOK_ID.match(hook_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM hooks WHERE hook_id = ?", (hook_id,)).fetchone()
        return self._hook(row) if row else None

    def list(self) -> list[Hook]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM hooks ORDER BY created_ms").fetchall()
        return [self._hook(r) for r in rows]

    def rotate(self, hook_id: str) -> Hook:
        """Give the hook a new secret (the old one stops working at once)."""
        secret = secrets.token_urlsafe(32)
        with self._lock, self._db.transaction() as db:
            cur = db.execute(
                "UPDATE hooks SET secret = ?, rotated_ms = ? WHERE hook_id = ?",
                (db.seal(secret, "secret"), int(time.time() * 1000), hook_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no hook {hook_id!r}; see `datarooms hook list`")
        found = self.get(hook_id)
        assert found is not None
        return found

    def remove(self, hook_id: str) -> None:
        with self._lock, self._db.transaction() as db:
            if db.execute("DELETE FROM hooks WHERE hook_id = ?", (hook_id,)).rowcount == 0:
                raise NotFoundError(f"no hook {hook_id!r}; see `datarooms hook list`")

    def _hook(self, row: tuple[Any, ...]) -> Hook:
        return _hook(row, self._db.unseal(row[5], "secret"))


def _hook(row: tuple[Any, ...], secret: str) -> Hook:
    hook_id, room_id, fmt, auth, target, _, template, mapping, name, created, rotated = row
    return Hook(
        hook_id=hook_id,
        room_id=room_id,
        format=fmt,
        auth=auth,
        target=target,
        secret=secret,
        template=template,
        mapping=json.loads(mapping),
        name=name,
        created_ms=created,
        rotated_ms=rotated,
    )
