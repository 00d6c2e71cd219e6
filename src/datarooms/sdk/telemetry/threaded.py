"""Telemetry for synchronous programs: the device and the writer run in a background thread.

::

    from datarooms import Credentials
    from datarooms.sdk.telemetry import TelemetryThread

    with TelemetryThread(Credentials(url, user_id, token), "./sensor-device") as tel:
        while running:
            tel.append(room, "temperature", read_sensor())   # durable on return
        tel.flush(timeout=30)                                # optional
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from datarooms.errors import DataroomsError
from datarooms.sdk.telemetry.api import Telemetry, TelemetryConfig, TelemetryStatus
from datarooms.sdk.telemetry.model import Bucket, Sample, SampleLike

if TYPE_CHECKING:
    from datarooms.account import Credentials
    from datarooms.sdk.client import DataroomsClient

T = TypeVar("T")


class TelemetryThread:
    """A :class:`Telemetry` whose client and event loop live in a daemon thread.

    Every method is synchronous and thread-safe. ``append*`` only write the
    outbox (durable on return) and never wait for the network.
    """

    def __init__(
        self,
        credentials: Credentials,
        store_dir: Path | str,
        config: TelemetryConfig | None = None,
        *,
        start_timeout: float = 120.0,
    ) -> None:
        self._creds = credentials
        self._store = Path(store_dir)
        self._config = config
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: DataroomsClient | None = None
        self._tel: Telemetry | None = None
        self._ready = concurrent.futures.Future[None]()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="datarooms-telemetry", daemon=True)

    def __enter__(self) -> TelemetryThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Open the device and start the writer; raises what opening raised."""
        self._thread.start()
        self._ready.result(self._start_timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from datarooms.sdk.client import DataroomsClient

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._client = await DataroomsClient.open(self._creds, self._store)
            self._tel = Telemetry(self._client, self._config)
            await self._tel.start()
        except BaseException as exc:
            if self._client is not None:
                await self._client.close()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self._tel.close()
            await self._client.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None or not self._thread.is_alive():
            coro.close()
            raise DataroomsError("the telemetry thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def telemetry(self) -> Telemetry:
        if self._tel is None:
            raise DataroomsError("the telemetry thread is not running")
        return self._tel

    def run(self, fn: Callable[[DataroomsClient], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``await fn(client)`` on the telemetry thread (e.g. to create a room)."""
        client = self._client
        if client is None:
            raise DataroomsError("the telemetry thread is not running")

        async def call() -> T:
            return await fn(client)

        return self._call(call(), timeout)

    def append(
        self,
        room_id: str,
        metric: str,
        value: float,
        *,
        ts: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.telemetry.append_sync(room_id, metric, value, ts=ts, tags=tags)

    def append_many(self, room_id: str, samples: Iterable[SampleLike]) -> int:
        return self.telemetry.append_many_sync(room_id, samples)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every sample appended so far is acknowledged by the homeserver."""
        self._call(self.telemetry.flush(timeout))

    def status(self) -> TelemetryStatus:
        return self.telemetry.status()

    def query(self, room_id: str, metric: str, **kwargs: Any) -> list[Sample]:
        """:meth:`Telemetry.query`, synchronously."""
        return self._call(self.telemetry.query(room_id, metric, **kwargs))

    def aggregate(self, room_id: str, metric: str, **kwargs: Any) -> list[Bucket]:
        """:meth:`Telemetry.aggregate`, synchronously."""
        return self._call(self.telemetry.aggregate(room_id, metric, **kwargs))

    def close(self, timeout: float = 60.0) -> None:
        """Stop the writer and close the device; unsent samples stay in the outbox."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
