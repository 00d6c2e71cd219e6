"""Cancellation-safe asyncio helpers for the telemetry writer's and reader's tasks.

On Python 3.11, ``asyncio.wait_for(aw, timeout)`` loses a cancellation that
arrives just as ``aw`` completes: it returns ``aw``'s result instead of raising
``CancelledError`` (CPython gh-86296, fixed in 3.12). A background loop that
waits with it can so survive ``task.cancel()`` and run on, and whoever awaits
the cancelled task (``close()``) waits forever. These helpers avoid that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: How long ``close()`` waits for its tasks to stop before giving up on them.
STOP_TIMEOUT_S = 10.0
_RECANCEL_S = 1.0


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; True if it is set.

    A cancellation always propagates (unlike with ``asyncio.wait_for`` on 3.11).
    """
    if timeout is None:
        await event.wait()
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[None]], *, timeout: float = STOP_TIMEOUT_S
) -> None:
    """Cancel ``tasks`` and wait until they have stopped, at most ``timeout`` seconds.

    A task that swallows its cancellation (third-party code may) is cancelled
    again every second. One still running after ``timeout`` is logged as an
    error and left behind: closing never hangs. A task's own failure is logged.
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            log.error(
                "telemetry tasks did not stop when cancelled; leaving them behind",
                extra={"tasks": sorted(t.get_name() for t in pending), "timeout_s": timeout},
            )
            break
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL_S, left))
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error(
                "a telemetry task had failed",
                extra={"task": t.get_name(), "error": repr(t.exception())},
            )
