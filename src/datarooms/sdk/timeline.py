"""The event model shared by the SDK's parts: timeline events, records, times, error mapping."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from datarooms._store.index import Record
from datarooms.errors import AccessDeniedError, HomeserverError, NotFoundError, ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomEvent:
    """A timeline event as this device sees it (decrypted where it could be)."""

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    ts: int
    #: It came encrypted over the wire.
    encrypted: bool
    #: False if it is still encrypted here (no key yet).
    decrypted: bool = True
    state_key: str | None = None

    @property
    def body(self) -> str | None:
        body = self.content.get("body")
        return body if isinstance(body, str) else None

    @property
    def relates_to(self) -> dict[str, Any]:
        rel = self.content.get("m.relates_to")
        return rel if isinstance(rel, dict) else {}


@dataclass(frozen=True)
class TimelinePage:
    """Events of a timeline read, oldest first, and whether more matched beyond them."""

    events: list[RoomEvent]
    more: bool


# -- times ------------------------------------------------------------------------

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_time(value: str | int, name: str = "it", *, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch, from what people and agents write for a time.

    The SDK's one reading of a time (the CLI and the MCP tools both call it):

    - a non-negative integer, or a string of digits: milliseconds since the epoch;
    - ISO 8601 (``2025-05-01T12:00:00Z``, ``2025-05-01T12:00:00.5+02:00``); without a
      zone it is UTC;
    - ``now``, or relative to now: ``-500ms``, ``-15m``, ``-1.5h``, ``-7d``, ``-2w``.

    ``name`` names the argument in the error (``since``, ``samples[0].ts``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError(f"{name} must be a time (ISO 8601 text or milliseconds)")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(f"{name} must not be negative")
        return value
    text = value.strip()
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"cannot read the time {value!r}: {name} must be an ISO 8601 time such as "
            "2025-05-01T12:00:00Z, milliseconds since the epoch, now, or relative to now "
            "(-15m, -2h, -7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def iso_time(ms: int) -> str:
    """``ms`` since the epoch as ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def record_from_event(room_id: str, source: dict[str, Any], decrypted: bool) -> Record | None:
    if not decrypted:
        log.warning("ignoring an unencrypted record event", extra={"event_id": source["event_id"]})
        return None
    content = source.get("content") or {}
    key, txn = content.get("key"), content.get("txn")
    if not isinstance(key, str) or not key or not isinstance(txn, str) or "value" not in content:
        log.warning("ignoring a malformed record event", extra={"event_id": source["event_id"]})
        return None
    schema = content.get("schema")
    return Record(
        room_id=room_id,
        key=key,
        value=content["value"],
        event_id=source["event_id"],
        sender=source.get("sender", ""),
        ts=int(source.get("origin_server_ts", 0)),
        txn=txn,
        schema=schema if isinstance(schema, str) else None,
    )


def room_event(
    room_id: str, source: dict[str, Any], *, encrypted: bool, decrypted: bool = True
) -> RoomEvent:
    content = source.get("content")
    return RoomEvent(
        room_id=room_id,
        event_id=source["event_id"],
        sender=source.get("sender", ""),
        type=source.get("type", ""),
        content=content if isinstance(content, dict) else {},
        ts=int(source.get("origin_server_ts", 0)),
        encrypted=encrypted,
        decrypted=decrypted,
        state_key=source.get("state_key"),
    )


def from_nio_event(room_id: str, event: Any) -> RoomEvent | None:
    """A nio timeline event (decrypted by nio where it could be) as a RoomEvent."""
    from nio import MegolmEvent

    source = getattr(event, "source", None)
    if not isinstance(source, dict) or "event_id" not in source:
        return None
    undecrypted = isinstance(event, MegolmEvent)
    return room_event(
        room_id,
        source,
        encrypted=undecrypted or bool(getattr(event, "decrypted", False)),
        decrypted=not undecrypted,
    )


def error_from_response(resp: Any, what: str) -> Exception:
    """Turn a nio error response into our exception, with a message that says what failed."""
    code = getattr(resp, "status_code", None)
    msg = getattr(resp, "message", "") or ""
    if code == "M_FORBIDDEN":
        return AccessDeniedError(f"{what} is not allowed: {msg}")
    if code == "M_NOT_FOUND":
        return NotFoundError(f"{what}: not found: {msg}")
    return HomeserverError(f"{what} failed: {code}: {msg}", errcode=code)


def is_error(resp: Any) -> bool:
    from nio import ErrorResponse

    return isinstance(resp, ErrorResponse)
