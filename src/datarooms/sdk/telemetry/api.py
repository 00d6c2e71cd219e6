"""``Telemetry``: durable, encrypted, batched time series on a device's data rooms."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from datarooms.errors import DataroomsError, ValidationError
from datarooms.ids import room_id as check_room_id
from datarooms.sdk.telemetry.index import TelemetryIndex
from datarooms.sdk.telemetry.model import (
    Bucket,
    Sample,
    SampleLike,
    SeriesInfo,
    group_samples,
    now_ms,
)
from datarooms.sdk.telemetry.outbox import Durability, Outbox, OutboxFullError, marshal_rows
from datarooms.sdk.telemetry.reader import TelemetryReader
from datarooms.sdk.telemetry.writer import TelemetryWriter, WriterConfig, WriterStats

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

#: Samples a single outbox row holds (bigger appends are split into rows).
_ROW_SAMPLES = 10_000
#: Bigger appends are checked in a worker thread, not on the event loop.
_OFFLOAD_SAMPLES = 5_000


@dataclass(frozen=True)
class TelemetryConfig(WriterConfig):
    """Writer settings (see :class:`WriterConfig`) plus the outbox's."""

    #: Unacknowledged samples the outbox holds at most (its disk use is bounded too).
    max_outbox_samples: int = 2_000_000
    #: When the outbox is full: ``"block"`` the appender until there is room, or
    #: ``"raise"`` :class:`OutboxFullError`.
    when_full: Literal["block", "raise"] = "block"
    #: ``"full"``: an append is on disk (fsync) when it returns; ``"process"``: it
    #: survives the process being killed, not a power cut (no fsync per commit).
    durability: Durability = "full"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.when_full not in ("block", "raise"):
            raise ValidationError(f"when_full must be 'block' or 'raise', got {self.when_full!r}")
        if self.max_outbox_samples < self.max_batch_samples:
            raise ValidationError("max_outbox_samples must be at least max_batch_samples")


@dataclass(frozen=True)
class TelemetryStatus:
    """The writer's state: what is waiting, what was sent, what is wrong."""

    stream: str
    unsealed_samples: int
    unacked_samples: int
    in_flight: int
    acked_samples: int
    acked_batches: int
    blocked_rooms: dict[str, str]
    last_error: str | None


class Telemetry:
    """``client.telemetry``: append samples durably, query them, follow them live.

    Writing: :meth:`append` / :meth:`append_many` (async) and
    :meth:`append_sync` / :meth:`append_many_sync` (any thread) return once the
    samples are durably in this device's outbox; the writer (started by
    :meth:`start` or the first async append) batches, encrypts and sends them.

    Reading: :meth:`query`, :meth:`aggregate` and :meth:`series` answer from
    the local telemetry index, catching the room up first; :meth:`subscribe`
    streams samples live; :meth:`follow` keeps a room's index current.
    """

    def __init__(
        self,
        client: DataroomsClient,
        config: TelemetryConfig | None = None,
        *,
        directory: Path | str | None = None,
    ) -> None:
        self._c = client
        self.config = config or TelemetryConfig()
        self.directory = Path(directory) if directory else Path(client.store_dir) / "telemetry"
        self._outbox: Outbox | None = None
        self._writer: TelemetryWriter | None = None
        self._index: TelemetryIndex | None = None
        self._reader: TelemetryReader | None = None
        self._open_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._row_samples = min(_ROW_SAMPLES, self.config.max_batch_samples)
        self._closed = False

    async def __aenter__(self) -> Telemetry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- life cycle ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DataroomsError("this Telemetry is closed")

    def _ensure_outbox(self) -> Outbox:
        self._check_open()
        with self._open_lock:
            if self._outbox is None:
                self._outbox = Outbox(
                    self.directory / "outbox.db",
                    max_samples=self.config.max_outbox_samples,
                    durability=self.config.durability,
                )
            return self._outbox

    async def start(self) -> None:
        """Start the writer: send what the outbox holds (from earlier runs too) and new samples.

        Also keeps the client syncing, so the writer learns about readers' new devices.
        """
        outbox = await asyncio.to_thread(self._ensure_outbox)
        if self._writer is None:
            self._loop = asyncio.get_running_loop()
            self._writer = TelemetryWriter(self._c, outbox, self.config)
            self._writer.start()
            self._c.start_sync()

    def _ensure_reader(self) -> TelemetryReader:
        self._check_open()
        if self._reader is None:
            self._index = TelemetryIndex(self.directory / "index.db")
            self._reader = TelemetryReader(self._c, self._index)
        return self._reader

    @property
    def index(self) -> TelemetryIndex:
        """The local telemetry index (opened on first use)."""
        self._ensure_reader()
        assert self._index is not None
        return self._index

    async def close(self) -> None:
        """Stop writing and reading. Samples not yet sent stay in the outbox for next time."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            await self._reader.close()
        if self._outbox is not None:
            await asyncio.to_thread(self._outbox.close)
        if self._index is not None:
            self._index.close()

    # -- writing -----------------------------------------------------------------------

    async def append(
        self,
        room_id: str,
        metric: str,
        value: float,
        *,
        ts: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Append one sample (``ts``: ms since the epoch, default now). Durable on return."""
        await self.append_many(room_id, [(now_ms() if ts is None else ts, metric, value, tags)])

    async def append_many(self, room_id: str, samples: Iterable[SampleLike]) -> int:
        """Append samples (each a :class:`Sample`, a ``(ts, metric, value[, tags])`` tuple
        or a mapping). All or nothing; durable on return. Returns how many.
        """
        check_room_id(room_id)
        if self._writer is None:
            await self.start()
        if isinstance(samples, Collection) and len(samples) > _OFFLOAD_SAMPLES:
            rows = await asyncio.to_thread(self._rows, samples)
        else:
            rows = self._rows(samples)
        n = sum(k for k, _ in rows)
        if not n:
            return 0
        outbox = self._ensure_outbox()
        if not outbox.reserve(n, block=False):
            if self.config.when_full == "raise":
                raise self._full_error(outbox)
            await asyncio.to_thread(outbox.reserve, n, block=True)
        try:
            future = outbox.submit(room_id, rows, n)
        except BaseException:
            outbox.release(n)
            raise
        await asyncio.wrap_future(future)
        return n

    def append_sync(
        self,
        room_id: str,
        metric: str,
        value: float,
        *,
        ts: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`append` for synchronous code, from any thread but the event loop's."""
        self.append_many_sync(room_id, [(now_ms() if ts is None else ts, metric, value, tags)])

    def append_many_sync(self, room_id: str, samples: Iterable[SampleLike]) -> int:
        """:meth:`append_many` for synchronous code, from any thread but the event loop's.

        Blocks until the samples are durable (and, with ``when_full="block"``,
        while the outbox is full). The writer must run (:meth:`start`) for them
        to be sent; until then they wait in the outbox.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            raise DataroomsError(
                "append_sync() was called on the event loop's thread, where it would block "
                "the loop; use `await telemetry.append(...)` there"
            )
        check_room_id(room_id)
        rows = self._rows(samples)
        n = sum(k for k, _ in rows)
        if not n:
            return 0
        outbox = self._ensure_outbox()
        if not outbox.reserve(n, block=self.config.when_full == "block"):
            raise self._full_error(outbox)
        try:
            future = outbox.submit(room_id, rows, n)
        except BaseException:
            outbox.release(n)
            raise
        future.result()
        return n

    def _rows(self, samples: Iterable[SampleLike]) -> list[tuple[int, bytes]]:
        return [(k, marshal_rows(g)) for k, g in group_samples(samples, self._row_samples)]

    def _full_error(self, outbox: Outbox) -> OutboxFullError:
        return OutboxFullError(
            f"the telemetry outbox holds {outbox.unacked_samples:,} unacknowledged samples, "
            f"its limit (max_outbox_samples={outbox.max_samples:,}): the homeserver is "
            "unreachable or not keeping up. Retry later, or use when_full='block'"
        )

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every sample appended before this call is acknowledged by the homeserver."""
        if self._writer is None:
            await self.start()
        assert self._writer is not None
        await self._writer.flush(timeout)

    def status(self) -> TelemetryStatus:
        outbox = self._ensure_outbox()
        w = self._writer
        ws = w.status() if w is not None else None
        stats = w.stats if w is not None else WriterStats()
        return TelemetryStatus(
            stream=outbox.stream,
            unsealed_samples=outbox.unsealed_samples,
            unacked_samples=outbox.unacked_samples,
            in_flight=ws.in_flight if ws else 0,
            acked_samples=stats.acked_samples,
            acked_batches=stats.acked_batches,
            blocked_rooms=ws.blocked_rooms if ws else {},
            last_error=ws.last_error if ws else None,
        )

    @property
    def stats(self) -> WriterStats:
        """Counters and append-to-acknowledgement latencies of this process's writer."""
        return self._writer.stats if self._writer is not None else WriterStats()

    async def discard(self, room_id: str) -> int:
        """Drop every sample of ``room_id`` not yet acknowledged; returns how many."""
        outbox = self._ensure_outbox()
        return await asyncio.to_thread(outbox.discard_room, check_room_id(room_id))

    # -- reading -----------------------------------------------------------------------

    async def catch_up(self, room_id: str) -> int:
        """Index every batch of the room this device can read (a new device backfills the
        room's whole history). Returns samples added."""
        return await self._ensure_reader().catch_up(check_room_id(room_id))

    backfill = catch_up

    def follow(self, room_id: str) -> None:
        """Keep the room's index current in the background, live."""
        self._ensure_reader().follow(check_room_id(room_id))

    async def _ready(self, room_id: str, catch_up: bool) -> TelemetryIndex:
        reader = self._ensure_reader()
        check_room_id(room_id)
        if catch_up and not (reader.following(room_id) and reader.caught_up_once(room_id)):
            await reader.catch_up(room_id)
        # The room's retention policy applies to what this device keeps, too: raw
        # samples past it go (their per-minute rollups stay).
        cutoff = self._c.retention.raw_telemetry_cutoff(room_id)
        if cutoff is not None:
            await asyncio.to_thread(self.index.prune_raw, room_id, cutoff)
        return self.index

    async def query(
        self,
        room_id: str,
        metric: str,
        *,
        since: int = 0,
        until: int | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 1000,
        newest_first: bool = False,
        catch_up: bool = True,
    ) -> list[Sample]:
        """Raw samples of ``metric`` with ``since <= ts < until`` (ms), in time order.

        With ``tags``, only series whose tags include them. ``catch_up`` first
        indexes what the homeserver has that this device has not (not needed
        for a followed room).
        """
        index = await self._ready(room_id, catch_up)
        end = until if until is not None else 2**53
        return await asyncio.to_thread(
            index.samples,
            room_id,
            metric,
            since=since,
            until=end,
            tags=tags,
            limit=limit,
            newest_first=newest_first,
        )

    async def aggregate(
        self,
        room_id: str,
        metric: str,
        *,
        since: int,
        until: int,
        step: int,
        tags: Mapping[str, str] | None = None,
        catch_up: bool = True,
    ) -> list[Bucket]:
        """Count, min, max, mean and last per ``step`` ms bucket from ``since`` to ``until``."""
        index = await self._ready(room_id, catch_up)
        return await asyncio.to_thread(
            index.aggregate, room_id, metric, since=since, until=until, step=step, tags=tags
        )

    async def series(
        self, room_id: str, metric: str | None = None, *, catch_up: bool = True
    ) -> list[SeriesInfo]:
        """The series (metric + tags) of a room, with counts and time spans."""
        index = await self._ready(room_id, catch_up)
        return [info for _, info in index.series(room_id, metric)]

    async def subscribe(
        self,
        room_id: str,
        *,
        metric: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Sample]:
        """Samples as they arrive in the room (from now on), decrypted and indexed."""
        reader = self._ensure_reader()
        async for sample in reader.subscribe(check_room_id(room_id), metric=metric, tags=tags):
            yield sample
