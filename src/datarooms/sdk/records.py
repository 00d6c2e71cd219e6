"""Records: typed, versioned, end-to-end encrypted key/value data in a room.

``put`` sends one ``io.datarooms.record`` event (encrypted with Megolm); each put
of a key is a new version and history is kept. Values may be validated against
a JSON Schema the room publishes in its state (``io.datarooms.schema``).
Everything invalid is rejected before anything is sent.

A put is idempotent: pass ``txn_id`` (or let one be generated) and a retry with
the same id never makes a second version; the homeserver deduplicates the
transaction and every reader's index keeps one version per ``txn``.

A put returns only after the Megolm session that encrypted it is in this
device's persistent crypto store (nio saves a session when it creates it,
before its first use).

Reads come from the local index, which sync keeps current; the first read of a
room on a new device pages in the room's history first.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema import Draft202012Validator

from datarooms import events as ev
from datarooms._store.index import Record, SyncBatch
from datarooms.errors import HomeserverError, NotFoundError, ValidationError
from datarooms.sdk.rooms import state_path
from datarooms.sdk.timeline import error_from_response, is_error

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_TXN = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError("a record key must be a non-empty string")
    if len(key) > ev.MAX_KEY_LENGTH:
        raise ValidationError(f"record key is longer than {ev.MAX_KEY_LENGTH} characters")
    if _CONTROL.search(key):
        raise ValidationError("a record key may not contain control characters")
    return key


def encode_value(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"the value is not JSON-serialisable: {exc}") from None


class Records:
    """``client.records``: put, get, history, twin state, time ranges."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client

    # -- schemas -------------------------------------------------------------

    async def publish_schema(self, room_id: str, name: str, schema: dict[str, Any]) -> None:
        """Publish a JSON Schema (draft 2020-12) under ``name`` in the room's state.

        State is not encrypted: the schema is visible to the homeserver (the data is not).
        """
        if not _SCHEMA_NAME.match(name):
            raise ValidationError(
                f"invalid schema name {name!r}: 1-128 of letters, digits, '.', '_', '-'"
            )
        if not isinstance(schema, dict):
            raise ValidationError("a schema must be a JSON object")
        try:
            Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValidationError(
                f"schema {name!r} is not a valid JSON Schema: {exc.message}"
            ) from None
        await self._c.ensure_room(room_id)
        resp = await self._c.nio.room_put_state(room_id, ev.SCHEMA, {"schema": schema}, name)
        if is_error(resp):
            raise error_from_response(resp, f"publishing schema {name!r} in {room_id}")
        # Read our own write: keep the index current without waiting for sync.
        self._c.index.apply(
            SyncBatch(
                [],
                [],
                [],
                [(room_id, ev.SCHEMA, name, {"schema": schema}, self._c.user_id)],
                [],
                [],
            )
        )

    async def schema(self, room_id: str, name: str) -> dict[str, Any]:
        """The room's schema ``name``, from the local index, else from the homeserver."""
        cached = self._c.index.state(room_id, ev.SCHEMA, name)
        if cached is None:
            async with self._c.http() as http:
                try:
                    cached = await http.request("GET", state_path(room_id, ev.SCHEMA, name))
                except HomeserverError as exc:
                    if exc.errcode == "M_NOT_FOUND":
                        raise NotFoundError(
                            f"room {room_id} publishes no schema named {name!r}; "
                            "publish it first with publish_schema()"
                        ) from None
                    raise
        schema = cached.get("schema") if isinstance(cached, dict) else None
        if not isinstance(schema, dict):
            raise ValidationError(f"the room's schema {name!r} is malformed")
        return schema

    # -- writes ---------------------------------------------------------------

    async def put(
        self,
        room_id: str,
        key: str,
        value: Any,
        *,
        schema: str | None = None,
        txn_id: str | None = None,
    ) -> Record:
        """Write a new version of ``key``. Returns it once the homeserver has it."""
        validate_key(key)
        encoded = encode_value(value)
        if schema is not None:
            await self._validate(room_id, schema, value)
        txn = txn_id or uuid.uuid4().hex
        if not _TXN.match(txn):
            raise ValidationError("txn_id must be 1-128 of letters, digits, '.', '_', '~', '-'")
        content: dict[str, Any] = {"key": key, "value": value, "txn": txn}
        if schema is not None:
            content["schema"] = schema
        size = len(encoded.encode()) + len(key.encode()) + len(txn) + 64
        if size > ev.MAX_RECORD_BYTES:
            raise ValidationError(
                f"record {key!r} is {size} bytes; the limit is {ev.MAX_RECORD_BYTES} bytes "
                "(Matrix caps events at 64 KiB including encryption overhead). "
                "Store large data as a file (client.files.put) and reference it."
            )
        event_id = await self._c.send(room_id, ev.RECORD, content, txn_id=txn)
        record = Record(
            room_id=room_id,
            key=key,
            value=value,
            event_id=event_id,
            sender=self._c.user_id,
            ts=int(time.time() * 1000),
            txn=txn,
            schema=schema,
        )
        self._c.index.add_records([record])
        latest = self._c.index.latest(room_id, key)
        return latest if latest and latest.event_id == event_id else record

    async def _validate(self, room_id: str, schema_name: str, value: Any) -> None:
        schema = await self.schema(room_id, schema_name)
        errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "(the value)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ValidationError(
                f"value does not match schema {schema_name!r} at {where}: {first.message}{more}"
            )

    # -- reads ----------------------------------------------------------------

    async def _ready(self, room_id: str, progress: Callable[[int], None] | None = None) -> None:
        if self._c.index.gaps(room_id):
            await self._c.fill_gaps(room_id, progress)

    async def get(self, room_id: str, key: str) -> Record:
        """The latest version of ``key``. Raises :class:`NotFoundError` if there is none."""
        validate_key(key)
        await self._ready(room_id)
        record = self._c.index.latest(room_id, key)
        if record is None:
            raise NotFoundError(f"room {room_id} has no record {key!r} (readable by this device)")
        return record

    async def twin(self, room_id: str) -> dict[str, Any]:
        """The twin's current state: ``{key: latest value}``."""
        await self._ready(room_id)
        return self._c.index.twin_values(room_id)

    async def latest(self, room_id: str) -> dict[str, Record]:
        """Like :meth:`twin`, with each key's full latest record."""
        await self._ready(room_id)
        return self._c.index.twin(room_id)

    async def history(
        self,
        room_id: str,
        key: str,
        *,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Record]:
        """Every version of ``key`` (server time in ms for ``since``/``until``)."""
        validate_key(key)
        await self._ready(room_id)
        return self._c.index.history(
            room_id, key, since=since, until=until, limit=limit, newest_first=newest_first
        )

    async def between(
        self, room_id: str, since: int, until: int, *, limit: int = 1000
    ) -> list[Record]:
        """All records written in ``[since, until)`` (ms since the epoch, server time)."""
        if since > until:
            raise ValidationError("since must not be after until")
        await self._ready(room_id)
        return self._c.index.between(room_id, since, until, limit=limit)

    async def backfill(self, room_id: str, progress: Callable[[int], None] | None = None) -> int:
        """Page in all history this device has not indexed yet; return events read."""
        return await self._c.fill_gaps(room_id, progress)


__all__ = ["Record", "Records", "encode_value", "validate_key"]
