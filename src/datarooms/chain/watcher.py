"""The chain watcher: every entity registered on the chain, handed to a handler exactly once.

How it stays complete and cheap, against the devchain or a real node alike:

1. **Subscribe first** on the node's websocket to ``ENTITY_CREATED_QUERY``; new entities
   are handled as soon as their block is committed.
2. **Then backfill** with ``tx_search`` from the last fully processed height + 1 up to the
   node's current height. The subscription was opened before the height was read, so
   every block is covered by one or the other (blocks covered by both are handled once:
   the handler is idempotent and the watcher remembers what it handled).
3. **Catch up periodically** the same way (every ``catchup_interval`` seconds). A
   websocket can drop events silently (CometBFT does so for slow clients), so only
   ``tx_search`` moves the persisted height: it is advanced to ``h`` only once every
   entity at heights ``<= h`` has been handled, *after* handling, never before.
4. **On any failure** (node unreachable, socket dropped, subscription cancelled) it
   reconnects with exponential backoff and starts again at 1.

Malformed events are skipped with a reason (see :mod:`datarooms.chain.entity`). A
handler that raises :class:`EntityRejected` skips that entity for good; any other
failure (the homeserver down, say) is retried with backoff, and holds the persisted
height back until it succeeds, without holding back the entities after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import aiohttp

from datarooms.chain.entity import ENTITY_CREATED_QUERY, ChainEntity, SkippedEvent, parse_tx_events
from datarooms.chain.errors import ChainError
from datarooms.chain.rpc import CometRpc, Subscription, TxResult
from datarooms.errors import DataroomsError

log = logging.getLogger(__name__)

EntityHandler = Callable[[ChainEntity], Awaitable[None]]
SkipHandler = Callable[[SkippedEvent], None]

_TRANSIENT = (DataroomsError, aiohttp.ClientError, OSError, TimeoutError)
_DONE_MEMORY = 200_000


class EntityRejected(Exception):
    """Raised by a handler when an entity can never be handled; the watcher skips it."""


class CursorStore(Protocol):
    """Where the watcher keeps the last fully processed height."""

    def load_height(self) -> int | None: ...

    def save_height(self, height: int) -> None: ...


class MemoryCursor:
    """A cursor kept in memory (tests, one-off runs)."""

    def __init__(self, height: int | None = None) -> None:
        self.height = height

    def load_height(self) -> int | None:
        return self.height

    def save_height(self, height: int) -> None:
        self.height = height


@dataclass
class WatcherStatus:
    connected: bool = False
    #: Every entity at this height and below has been handled (persisted).
    height: int = 0
    chain_height: int = 0
    chain_id: str | None = None
    handled: int = 0
    skipped: int = 0
    retries: int = 0
    reconnects: int = 0
    pending: int = 0
    last_error: str | None = None
    last_skip: str | None = None


class _Watermark:
    """The highest height ``h`` such that every tx at heights ``<= h`` is done."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.pending: Counter[int] = Counter()
        self.fetched_through = base

    def add(self, height: int) -> None:
        self.pending[height] += 1

    def done(self, height: int) -> None:
        self.pending[height] -= 1
        if self.pending[height] <= 0:
            del self.pending[height]

    def safe(self) -> int:
        limit = self.fetched_through
        if self.pending:
            limit = min(limit, min(self.pending) - 1)
        return max(self.base, limit)


class ChainWatcher:
    """Watches one node for entity registrations; run it with :meth:`run` or :meth:`start`."""

    def __init__(
        self,
        rpc: CometRpc,
        cursor: CursorStore,
        handler: EntityHandler,
        *,
        on_skip: SkipHandler | None = None,
        query: str = ENTITY_CREATED_QUERY,
        concurrency: int = 12,
        start_height: int = 0,
        catchup_interval: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_pending: int = 512,
    ) -> None:
        self.rpc = rpc
        self.query = query
        self._cursor = cursor
        self._handler = handler
        self._on_skip = on_skip
        self._start_height = start_height
        self._catchup_interval = catchup_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._work = asyncio.Semaphore(concurrency)
        self._room = asyncio.Semaphore(max_pending)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self._skips_seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._height: int | None = cursor.load_height()
        self.status = WatcherStatus(height=self._height or 0)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self.run(), name="chain-watcher")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        tasks = [*self._tasks, *self._inflight.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.status.connected = False

    async def run(self) -> None:
        """Watch until cancelled; reconnect with backoff after every failure."""
        backoff = self._backoff_initial
        while True:
            self._session_was_healthy = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (ChainError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.status.last_error = str(exc)
                log.warning("chain watcher disconnected; reconnecting", extra={"error": str(exc)})
            except Exception as exc:
                self.status.last_error = f"internal error: {exc!r}"
                log.exception("chain watcher failed; restarting it")
            self.status.connected = False
            self.status.reconnects += 1
            if self._session_was_healthy:
                backoff = self._backoff_initial
            await asyncio.sleep(backoff * (0.75 + random.random() / 2))
            backoff = min(backoff * 2, self._backoff_max)

    _session_was_healthy = False

    async def _session(self) -> None:
        async with self.rpc.subscribe(self.query) as sub:
            self.status.connected = True
            live = asyncio.create_task(self._consume(sub), name="chain-watcher-live")
            try:
                while True:
                    await self._catch_up()
                    self._session_was_healthy = True
                    done, _ = await asyncio.wait({live}, timeout=self._catchup_interval)
                    if done:
                        live.result()  # re-raise why the subscription ended
                        raise ChainError("the subscription ended")
            finally:
                live.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await live

    # -- live events -------------------------------------------------------------

    async def _consume(self, sub: Subscription) -> None:
        async for tx in sub:
            if self._height is not None and tx.height <= self._height:
                continue
            await self._submit(tx, None)

    # -- backfill ----------------------------------------------------------------

    async def _catch_up(self) -> None:
        status = await self.rpc.status()
        sync = status.get("sync_info") or {}
        node = status.get("node_info") or {}
        top = int(sync.get("latest_block_height") or 0)
        self.status.chain_height = top
        self.status.chain_id = str(node.get("network") or "") or None
        if self._height is None:
            if self._start_height < 0:
                self._save(top)
            else:
                self._save(max(0, self._start_height - 1))
        base = self._height or 0
        if top <= base:
            return
        mark = _Watermark(base)
        batch: list[asyncio.Task[None]] = []
        async for page in self.rpc.search_pages(self.query, min_height=base + 1, max_height=top):
            for tx in page:
                mark.add(tx.height)
                batch.append(await self._submit(tx, mark))
            mark.fetched_through = max(mark.fetched_through, page[-1].height - 1)
            self._save(mark.safe())
        await asyncio.gather(*batch)
        mark.fetched_through = top
        self._save(mark.safe())

    # -- processing --------------------------------------------------------------

    async def _submit(self, tx: TxResult, mark: _Watermark | None) -> asyncio.Task[None]:
        await self._room.acquire()
        task = asyncio.create_task(self._handle_tx(tx, mark))
        self._tasks.add(task)
        self.status.pending = len(self._tasks)

        def _finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._room.release()
            self.status.pending = len(self._tasks)

        task.add_done_callback(_finished)
        return task

    async def _handle_tx(self, tx: TxResult, mark: _Watermark | None) -> None:
        try:
            if tx.code != 0:
                return  # a failed tx created nothing
            parsed = parse_tx_events(tx.height, tx.hash, tx.events)
            for skipped in parsed.skipped:
                self._skip(skipped)
            chain_id = self.status.chain_id
            await asyncio.gather(
                *(
                    self._entity(replace(e, chain_id=chain_id) if chain_id else e)
                    for e in parsed.entities
                )
            )
        finally:
            if mark is not None:
                mark.done(tx.height)

    async def _entity(self, entity: ChainEntity) -> None:
        if entity.did in self._done:
            return
        running = self._inflight.get(entity.did)
        if running is None:
            running = asyncio.create_task(self._handle_entity(entity))
            self._inflight[entity.did] = running
            running.add_done_callback(lambda _t: self._inflight.pop(entity.did, None))
        await asyncio.shield(running)

    async def _handle_entity(self, entity: ChainEntity) -> None:
        attempt = 0
        while True:
            try:
                async with self._work:
                    await self._handler(entity)
            except EntityRejected as exc:
                self._skip(
                    SkippedEvent(entity.height, entity.tx_hash, f"entity {entity.did}: {exc}")
                )
                break
            except asyncio.CancelledError:
                raise
            except _TRANSIENT as exc:
                attempt += 1
                self.status.retries += 1
                delay = min(self._backoff_max, self._backoff_initial * 2 ** min(attempt, 8))
                log.warning(
                    "handling an entity failed; will retry",
                    extra={
                        "entity": entity.did,
                        "attempt": attempt,
                        "error": str(exc),
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                continue
            except Exception as exc:
                log.exception(
                    "handling an entity failed unexpectedly; skipping it",
                    extra={"entity": entity.did},
                )
                self._skip(
                    SkippedEvent(
                        entity.height,
                        entity.tx_hash,
                        f"entity {entity.did}: internal error: {exc!r}",
                    )
                )
                break
            else:
                self.status.handled += 1
                break
        self._remember(entity.did)

    def _remember(self, did: str) -> None:
        self._done[did] = None
        if len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)

    def _skip(self, skipped: SkippedEvent) -> None:
        key = f"{skipped.tx_hash}\0{skipped.reason}"
        if key in self._skips_seen:
            return  # the same event, seen again live and by a backfill
        self._skips_seen[key] = None
        if len(self._skips_seen) > _DONE_MEMORY:
            self._skips_seen.popitem(last=False)
        self.status.skipped += 1
        self.status.last_skip = skipped.reason
        log.warning(
            "skipped a chain event",
            extra={"height": skipped.height, "tx": skipped.tx_hash, "reason": skipped.reason},
        )
        if self._on_skip is not None:
            try:
                self._on_skip(skipped)
            except Exception:
                log.exception("recording a skipped event failed")

    def _save(self, height: int) -> None:
        if self._height is not None and height <= self._height:
            return
        self._cursor.save_height(height)
        self._height = height
        self.status.height = height

    @property
    def height(self) -> int | None:
        """The last fully processed height (None before the first catch-up)."""
        return self._height
