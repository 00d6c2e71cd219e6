"""The telemetry writer: seals outbox rows into batches and sends them, pipelined.

Two tasks on the client's event loop:

- the **sealer** turns pending outbox rows into batches, when a room has
  ``max_batch_samples`` waiting or the oldest waiting sample is
  ``flush_interval`` old (or on :meth:`TelemetryWriter.flush`). Encoding and
  compression run in a worker thread.
- the **sender** keeps up to ``max_in_flight`` batches on the way to the
  homeserver. Each is an ``io.datarooms.telemetry.batch`` event, encrypted by
  the room's Megolm session and sent with the transaction id
  ``drtlm.<stream>.<seq>``; a payload larger than ``inline_max_bytes`` is first
  uploaded as encrypted media and the event references it. A batch leaves the
  outbox only when the homeserver has answered with its event id.

Failures: transient ones (the homeserver unreachable or restarting, 5xx,
timeouts, 429 after nio's own ``retry_after_ms`` waits) are retried with capped
exponential backoff, forever, with the same transaction id. Permanent ones (no
permission to write the room, not a member) park the room's batches in the
outbox, retried every ``blocked_retry_s``; :meth:`status` and :meth:`flush`
report them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    ValidationError,
)
from datarooms.sdk.attachments import upload_encrypted
from datarooms.sdk.telemetry._aio import cancel_and_wait, wait_event
from datarooms.sdk.telemetry.encoding import ENCODING, SeriesKey, encode_batch
from datarooms.sdk.telemetry.outbox import Outbox, SealedBatch
from datarooms.sdk.telemetry.schema import INLINE_LIMIT_BYTES, INLINE_MAX_BYTES, TELEMETRY_BATCH

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient
    from datarooms.sdk.telemetry.outbox import Grouped

log = logging.getLogger(__name__)

_PERMANENT = {"M_FORBIDDEN", "M_NOT_FOUND", "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_BAD_JSON"}
_LATENCY_KEEP = 200_000


@dataclass(frozen=True)
class WriterConfig:
    """How the writer batches and sends. Every field has a sensible default."""

    #: Seal a batch when the oldest unsent sample is this old (seconds).
    flush_interval: float = 0.5
    #: ... or when this many samples of one room are waiting.
    max_batch_samples: int = 50_000
    #: Compressed payloads up to this size go inline in the event; larger as media.
    inline_max_bytes: int = INLINE_MAX_BYTES
    #: Batches on their way to the homeserver at once.
    max_in_flight: int = 4
    #: zlib level for payloads (1 fastest .. 9 smallest). 4 is within 5% of 6's size
    #: on sensor data at half the CPU.
    compression_level: int = 4
    #: First and largest pause between retries of a failed send (seconds).
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    #: How often a room refused for good (no access) is tried again (seconds).
    blocked_retry_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0.01 <= self.flush_interval <= 3600:
            raise ValidationError("flush_interval must be between 0.01 and 3600 seconds")
        if not 1 <= self.max_batch_samples <= 1_000_000:
            raise ValidationError("max_batch_samples must be between 1 and 1,000,000")
        if not 1_000 <= self.inline_max_bytes <= INLINE_LIMIT_BYTES:
            raise ValidationError(
                f"inline_max_bytes must be between 1,000 and {INLINE_LIMIT_BYTES:,} "
                "(Matrix limits an event to 65,536 bytes after encryption)"
            )
        if not 1 <= self.max_in_flight <= 64:
            raise ValidationError("max_in_flight must be between 1 and 64")
        if not 1 <= self.compression_level <= 9:
            raise ValidationError("compression_level must be between 1 and 9")


@dataclass
class WriterStats:
    """What the writer has done since it started (this process)."""

    acked_samples: int = 0
    acked_batches: int = 0
    inline_batches: int = 0
    media_batches: int = 0
    payload_bytes: int = 0
    retries: int = 0
    #: (seconds from append to acknowledgement, samples) per appended row.
    latencies: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_KEEP), repr=False
    )

    def latency_percentile(self, p: float) -> float | None:
        """Sample-weighted percentile of append-to-acknowledgement time, in seconds."""
        items = sorted(self.latencies)
        total = sum(n for _, n in items)
        if not total:
            return None
        want = p / 100 * total
        seen = 0
        for lat, n in items:
            seen += n
            if seen >= want:
                return lat
        return items[-1][0]


@dataclass(frozen=True)
class WriterStatus:
    unsealed_samples: int
    unacked_samples: int
    in_flight: int
    blocked_rooms: dict[str, str]
    last_error: str | None


SeriesColumns = list[tuple[SeriesKey, list[int], list[float]]]


def merge_rows(groups: list[Grouped]) -> tuple[SeriesColumns, int, int, int]:
    """Merge pending rows (oldest first) into series; returns (series, n, t0, t1)."""
    merged: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for g in groups:
        for key, (ts, vals) in g.items():
            col = merged.get(key)
            if col is None:
                merged[key] = (list(ts), list(vals))
            else:
                col[0].extend(ts)
                col[1].extend(vals)
    series = [(SeriesKey(k[0], k[1]), ts, vals) for k, (ts, vals) in merged.items()]
    n = sum(len(ts) for _, ts, _ in series)
    t0 = min(min(ts) for _, ts, _ in series)
    t1 = max(max(ts) for _, ts, _ in series)
    return series, n, t0, t1


class TelemetryWriter:
    """Runs on the client's event loop; :class:`datarooms.sdk.telemetry.Telemetry` owns it."""

    def __init__(self, client: DataroomsClient, outbox: Outbox, config: WriterConfig) -> None:
        self._c = client
        self.outbox = outbox
        self.config = config
        self.stats = WriterStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seal_wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        # Batches acknowledged in the outbox whose stats are not recorded yet: flush()
        # counts them as unacknowledged, so it never returns between the two.
        self._recording: set[int] = set()
        self._blocked: dict[str, tuple[float, str]] = {}  # room -> (retry at, why)
        self._flush_upto = 0
        self._last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self.outbox.on_commit = self.notify
        self._tasks = [
            asyncio.create_task(self._seal_loop(), name="telemetry-sealer"),
            asyncio.create_task(self._send_loop(), name="telemetry-sender"),
        ]
        if self.outbox.unacked_samples:
            log.info(
                "resuming telemetry from the outbox",
                extra={"samples": self.outbox.unacked_samples, "stream": self.outbox.stream},
            )

    async def close(self) -> None:
        """Stop sealing and sending. Unsent samples stay in the outbox for the next start."""
        if self._closed:
            return
        self._closed = True
        self.outbox.on_commit = None
        await cancel_and_wait(self._tasks + list(self._in_flight.values()))
        self._tasks = []
        self._in_flight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def notify(self) -> None:
        """Wake the sealer (thread-safe): new rows were committed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._seal_wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._seal_wake.set)

    def status(self) -> WriterStatus:
        now = time.monotonic()
        return WriterStatus(
            unsealed_samples=self.outbox.unsealed_samples,
            unacked_samples=self.outbox.unacked_samples,
            in_flight=len(self._in_flight),
            blocked_rooms={r: why for r, (at, why) in self._blocked.items() if at > now},
            last_error=self._last_error,
        )

    # -- flushing ------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every sample appended before this call is acknowledged.

        Raises :class:`AccessDeniedError` (or the error that blocks it) if a room
        with samples to flush refuses them, and ``TimeoutError`` after ``timeout``.
        """
        if not self._tasks:
            raise DataroomsError("the telemetry writer is not running; call start() first")
        target_row = self.outbox.last_row_id
        self._flush_upto = max(self._flush_upto, target_row)
        self._seal_wake.set()

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        (self.outbox.min_pending_id() or target_row + 1) > target_row
                        or self._raise_blocked()
                    )
                )
            target_seq = self.outbox.max_sealed_seq()
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        min(
                            [*self.outbox.unacked_seqs(), *self._recording],
                            default=target_seq + 1,
                        )
                        > target_seq
                        or self._raise_blocked()
                    )
                )

        async with asyncio.timeout(timeout):
            await wait()

    def _raise_blocked(self) -> bool:
        now = time.monotonic()
        rooms = self.outbox.rooms()
        for room, (at, why) in self._blocked.items():
            if at > now and room in rooms:
                raise AccessDeniedError(
                    f"{rooms[room]} telemetry samples for {room} cannot be sent: {why}. "
                    "They stay in the outbox; fix access or discard them "
                    "(Telemetry.discard(room))"
                )
        return False

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- sealing ---------------------------------------------------------------------------

    async def _seal_loop(self) -> None:
        cfg = self.config
        while True:
            self._seal_wake.clear()
            ob = self.outbox
            oldest = ob.oldest_unsealed_at
            now = time.time()
            due = ob.unsealed_samples > 0 and (
                ob.unsealed_samples >= cfg.max_batch_samples
                or oldest is None
                or now - oldest >= cfg.flush_interval
                or (self._flush_upto and (ob.min_pending_id() or 0) <= self._flush_upto)
            )
            if due:
                try:
                    sealed = await asyncio.to_thread(self._seal_one)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # an outbox that cannot be written: say so, retry
                    self._last_error = f"sealing a batch failed: {exc}"
                    log.error("sealing a telemetry batch failed", extra={"error": str(exc)})
                    await asyncio.sleep(1.0)
                    continue
                if sealed is not None:
                    self._send_wake.set()
                    await self._notify_changed()
                else:  # nothing to seal after all (rows discarded meanwhile): recount
                    await asyncio.to_thread(self.outbox.resync)
                    await asyncio.sleep(0.01)
                continue
            timeout = None
            if ob.unsealed_samples > 0 and oldest is not None:
                timeout = max(0.0, oldest + cfg.flush_interval - now)
            await wait_event(self._seal_wake, timeout)

    def _seal_one(self) -> SealedBatch | None:
        taken = self.outbox.take_unsealed(self.config.max_batch_samples)
        if taken is None:
            return None
        room, ids, groups, origins = taken
        series, n, t0, t1 = merge_rows(groups)
        payload, count = encode_batch(series, level=self.config.compression_level)
        if count != n:  # cannot happen; never seal a batch that lies about its size
            raise DataroomsError(f"encoding lost samples: {count} of {n}")
        return self.outbox.seal(room, ids, n, t0, t1, payload, origins)

    # -- sending ---------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        cfg = self.config
        while True:
            self._send_wake.clear()
            free = cfg.max_in_flight - len(self._in_flight)
            now = time.monotonic()
            skip = {r for r, (at, _) in self._blocked.items() if at > now}
            if free > 0:
                batches = await asyncio.to_thread(
                    self.outbox.sealed_batches,
                    free,
                    exclude=set(self._in_flight),
                    skip_rooms=skip,
                )
                for b in batches:
                    task = asyncio.create_task(self._send_batch(b), name=f"telemetry-send-{b.seq}")
                    self._in_flight[b.seq] = task
                    task.add_done_callback(functools.partial(self._done, b.seq))
            timeout = None
            if skip:
                timeout = max(0.05, min(at for at, _ in self._blocked.values()) - now)
            await wait_event(self._send_wake, timeout)

    def _done(self, seq: int, _task: object = None) -> None:
        self._in_flight.pop(seq, None)
        self._send_wake.set()

    async def _send_batch(self, batch: SealedBatch) -> None:
        cfg = self.config
        delay = cfg.retry_initial_s
        stream = self.outbox.stream
        media = batch.file is not None or len(batch.payload) > cfg.inline_max_bytes
        file_json = batch.file
        while True:
            try:
                if media and file_json is None:
                    file_json = await self._upload(batch)
                content = self._content(batch, stream, file_json if media else None)
                await self._c.send(
                    batch.room_id, TELEMETRY_BATCH, content, txn_id=batch.txn_id(stream)
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = _describe(exc)
                if _is_too_large(exc) and not media:
                    media = True  # a homeserver with a smaller event limit: go via media
                    continue
                if _is_permanent(exc):
                    self._blocked[batch.room_id] = (time.monotonic() + cfg.blocked_retry_s, why)
                    self._last_error = f"{batch.room_id}: {why}"
                    log.error(
                        "telemetry for a room is refused; keeping it in the outbox",
                        extra={"room_id": batch.room_id, "error": why, "seq": batch.seq},
                    )
                    await self._notify_changed()
                    return
                self.stats.retries += 1
                self._last_error = why
                log.warning(
                    "sending a telemetry batch failed; retrying",
                    extra={
                        "room_id": batch.room_id,
                        "seq": batch.seq,
                        "error": why,
                        "delay_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, cfg.retry_max_s)
        self._blocked.pop(batch.room_id, None)
        self._recording.add(batch.seq)
        try:
            origins = await asyncio.to_thread(self.outbox.ack, batch.seq)
            self._record(batch, origins, media)
        finally:
            self._recording.discard(batch.seq)
        await self._notify_changed()

    def _record(self, batch: SealedBatch, origins: list[tuple[float, int]], media: bool) -> None:
        now = time.time()
        st = self.stats
        st.acked_batches += 1
        st.acked_samples += batch.n
        st.payload_bytes += len(batch.payload)
        if media:
            st.media_batches += 1
        else:
            st.inline_batches += 1
        st.latencies.extend((max(0.0, now - at), n) for at, n in origins)

    async def _upload(self, batch: SealedBatch) -> str:
        """Upload the payload as encrypted media and remember the file in the outbox."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        uploaded = await upload_encrypted(
            self._c.homeserver_url, self._c.access_token, batch.payload, session=self._session
        )
        file_json = json.dumps(uploaded.file.to_json())
        await asyncio.to_thread(self.outbox.set_file, batch.seq, file_json)
        return file_json

    @staticmethod
    def _content(batch: SealedBatch, stream: str, file_json: str | None) -> dict[str, Any]:
        content: dict[str, Any] = {
            "v": 1,
            "stream": stream,
            "seq": batch.seq,
            "n": batch.n,
            "t0": batch.t0,
            "t1": batch.t1,
            "enc": ENCODING,
        }
        if file_json is None:
            content["data"] = base64.b64encode(batch.payload).decode("ascii").rstrip("=")
        else:
            content["file"] = json.loads(file_json)
            content["size"] = len(batch.payload)
        return content


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DataroomsError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, (AccessDeniedError, NotFoundError)):
        return True
    if isinstance(exc, HomeserverError):
        return exc.errcode in _PERMANENT
    return False


def _is_too_large(exc: BaseException) -> bool:
    return isinstance(exc, HomeserverError) and exc.errcode == "M_TOO_LARGE"
