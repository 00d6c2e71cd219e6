"""``datarooms telemetry push | query | tail``: thin over the SDK's ``client.telemetry``."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import re
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, TextIO

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from datarooms.cli._common import console, err_console, real_console
from datarooms.cli.data import with_client
from datarooms.errors import ValidationError
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.telemetry.api import Telemetry
from datarooms.sdk.telemetry.model import Sample, SampleLike
from datarooms.sdk.timeline import parse_time as sdk_parse_time

telemetry_app = typer.Typer(
    help="Time-series telemetry: durable, batched, end-to-end encrypted.",
    no_args_is_help=True,
)

RoomArg = Annotated[str, typer.Argument(help="Room id (!...) or alias (#...)")]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", help="Only series with this tag (k=v); repeatable")
]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_READ_LINES = 5_000


def parse_time(text: str, now_ms: int | None = None) -> int:
    """``now``, ``-15m`` / ``-2h`` / ``-7d`` (relative), ms since the epoch, or ISO-8601.

    The SDK's one reading of a time (:func:`datarooms.sdk.timeline.parse_time`).
    """
    return sdk_parse_time(text, now_ms=now_ms)


def parse_duration(text: str) -> int:
    """``500ms``, ``10s``, ``1m``, ``1h`` ... in ms."""
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValidationError(f"cannot read the duration {text!r}: use e.g. 500ms, 10s, 1m, 1h")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_tags(items: list[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"--tag wants key=value, got {item!r}")
        tags[key] = value
    return tags


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# -- reading stdin ---------------------------------------------------------------------


class SampleReader:
    """Samples from CSV or JSON lines, in chunks, with line numbers in every error."""

    def __init__(self, stream: TextIO, fmt: str, *, skip_invalid: bool) -> None:
        if fmt not in ("auto", "csv", "jsonl"):
            raise ValidationError(f"--format must be auto, csv or jsonl, got {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.skip_invalid = skip_invalid
        self.line = 0
        self.skipped = 0
        self._columns: list[str] | None = None
        self._first = True
        self._error: ValidationError | None = None

    def chunk(self, size: int) -> list[SampleLike]:
        """The next samples (at most ``size``); [] at the end. A bad line raises once the
        samples before it have been returned."""
        if self._error is not None:
            raise self._error
        out: list[SampleLike] = []
        for raw in self.stream:
            self.line += 1
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if self._first:
                self._first = False
                if self.fmt == "auto":
                    self.fmt = "jsonl" if text.startswith("{") else "csv"
                if self.fmt == "csv" and text.split(",")[0].strip().lower() in ("ts", "metric"):
                    self._columns = [c.strip() for c in next(csv.reader([text]))]
                    if "metric" not in self._columns or "value" not in self._columns:
                        raise ValidationError(
                            "line 1: a CSV header must name the columns metric and value "
                            "(and optionally ts; other columns become tags)"
                        )
                    continue
            try:
                out.append(self._parse(text))
            except ValidationError as exc:
                if not self.skip_invalid:
                    self._error = ValidationError(f"line {self.line}: {exc.message}")
                    if out:
                        return out
                    raise self._error from None
                self.skipped += 1
                continue
            if len(out) >= size:
                break
        return out

    def _parse(self, text: str) -> SampleLike:
        if self.fmt == "jsonl":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValidationError("a line must be a JSON object {ts, metric, value, tags}")
            if isinstance(obj.get("ts"), str):
                obj["ts"] = parse_time(obj["ts"])
            return obj
        fields = next(csv.reader([text]))
        cols = self._columns or ["ts", "metric", "value"]
        if len(fields) != len(cols):
            raise ValidationError(
                f"expected {len(cols)} columns ({','.join(cols)}), got {len(fields)}"
            )
        row = dict(zip(cols, (f.strip() for f in fields), strict=True))
        ts_text = row.pop("ts", "")
        metric = row.pop("metric")
        try:
            value = float(row.pop("value"))
        except ValueError:
            raise ValidationError("the value is not a number") from None
        ts = parse_time(ts_text) if ts_text else None
        tags = {k: v for k, v in row.items() if v != ""}
        return (ts, metric, value, tags or None)


# -- commands ------------------------------------------------------------------------


@telemetry_app.command("push")
def push(
    ctx: typer.Context,
    room: RoomArg,
    fmt: Annotated[str, typer.Option("--format", help="auto, csv or jsonl")] = "auto",
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip bad lines instead of stopping")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until the homeserver has every sample")] = True,
) -> None:
    """Append samples from stdin (CSV or JSON lines), with progress and rate.

    CSV: a header row names the columns: ts (ms since the epoch or ISO-8601; empty
    or missing = now), metric, value; every other column is a tag. Without a
    header the columns are ts,metric,value. JSON lines: {"ts": ..., "metric": ...,
    "value": ..., "tags": {...}}. Every sample is durable on this device when
    read; the homeserver gets them in batches.
    """
    reader = SampleReader(sys.stdin, fmt, skip_invalid=skip_invalid)

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        tel = Telemetry(c)
        started = time.monotonic()
        appended = 0
        error: ValidationError | None = None
        try:
            await tel.start()
            with _push_progress() as progress:
                task = progress.add_task("pushing", total=None, appended=0, acked=0, rate=0.0)
                while True:
                    try:
                        samples = await asyncio.to_thread(reader.chunk, _READ_LINES)
                    except ValidationError as exc:
                        error = exc
                        break
                    if not samples:
                        break
                    appended += await tel.append_many(rid, samples)
                    elapsed = max(1e-6, time.monotonic() - started)
                    progress.update(
                        task,
                        appended=appended,
                        acked=tel.stats.acked_samples,
                        rate=appended / elapsed,
                    )
                if wait and appended:
                    progress.update(task, description="waiting for the homeserver")
                    flusher = asyncio.ensure_future(tel.flush())
                    while not flusher.done():
                        await asyncio.wait({flusher}, timeout=0.2)
                        progress.update(task, acked=tel.stats.acked_samples)
                    await flusher
                    progress.update(task, acked=tel.stats.acked_samples)
        finally:
            await tel.close()
        elapsed = max(1e-6, time.monotonic() - started)
        note = f", {reader.skipped} invalid lines skipped" if reader.skipped else ""
        done = "acknowledged by the homeserver" if wait else "durable here, sending in background"
        err_console.print(
            f"pushed {appended:,} samples to {rid} in {elapsed:.1f} s "
            f"({appended / elapsed:,.0f} samples/s){note}; {done}"
        )
        if error is not None:
            raise ValidationError(
                f"{error.message}; the {appended:,} samples before it were pushed"
            )

    with_client(ctx, go)


def _push_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[appended]:>12,} appended"),
        TextColumn("{task.fields[rate]:>10,.0f} samples/s"),
        TextColumn("{task.fields[acked]:>12,} acknowledged"),
        TimeElapsedColumn(),
        console=real_console(err_console),
        transient=False,
    )


@telemetry_app.command("query")
def query(
    ctx: typer.Context,
    room: RoomArg,
    metric: Annotated[str, typer.Argument(help="Metric name")],
    since: Annotated[
        str | None, typer.Option(help="Start (inclusive): now, -1h, ms, ISO-8601 [default: all]")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive) [default: no end]")] = None,
    step: Annotated[
        str | None,
        typer.Option(help="Aggregate per bucket (e.g. 1m): count, min, max, mean, last"),
    ] = None,
    tag: TagOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many raw samples")] = 1000,
    newest: Annotated[bool, typer.Option("--newest", help="Newest samples first")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Samples of a metric in a time range, or aggregates per bucket (--step)."""
    tags = parse_tags(tag)
    now = time.time_ns() // 1_000_000
    lo = parse_time(since, now) if since else None
    hi = parse_time(until, now) if until else None
    step_ms = parse_duration(step) if step else None

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        async with Telemetry(c) as tel:
            if step_ms is None:
                rows = await tel.query(
                    rid,
                    metric,
                    since=lo or 0,
                    until=hi,
                    tags=tags or None,
                    limit=limit,
                    newest_first=newest,
                )
                _print_samples(rows, as_json)
                return
            start = lo if lo is not None else now - 3_600_000
            end = hi if hi is not None else now
            buckets = await tel.aggregate(
                rid, metric, since=start, until=end, step=step_ms, tags=tags or None
            )
            if as_json:
                for b in buckets:
                    print(
                        json.dumps(
                            {
                                "start": b.start,
                                "count": b.count,
                                "min": b.min,
                                "max": b.max,
                                "mean": b.mean,
                                "last": b.last,
                                "last_ts": b.last_ts,
                            }
                        ),
                        flush=True,
                    )
                return
            table = Table("bucket start (UTC)", "count", "min", "max", "mean", "last")
            for b in buckets:
                table.add_row(
                    _iso(b.start),
                    str(b.count),
                    f"{b.min:g}",
                    f"{b.max:g}",
                    f"{b.mean:.6g}",
                    f"{b.last:g}",
                )
            console.print(table)

    with_client(ctx, go)


def _sample_json(s: Sample) -> str:
    return json.dumps({"ts": s.ts, "metric": s.metric, "value": s.value, "tags": dict(s.tags)})


def _print_samples(rows: list[Sample], as_json: bool) -> None:
    if as_json:
        for s in rows:
            print(_sample_json(s), flush=False)
        sys.stdout.flush()
        return
    table = Table("time (UTC)", "metric", "value", "tags")
    for s in rows:
        tags = ",".join(f"{k}={v}" for k, v in sorted(s.tags.items()))
        table.add_row(_iso(s.ts), s.metric, f"{s.value:g}", tags)
    console.print(table)


@telemetry_app.command("tail")
def tail(
    ctx: typer.Context,
    room: RoomArg,
    metric: Annotated[str | None, typer.Option(help="Only this metric")] = None,
    tag: TagOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Print samples as they arrive in a room, until Ctrl-C."""
    tags = parse_tags(tag)

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Telemetry(c) as tel:

            async def follow() -> None:
                async for s in tel.subscribe(rid, metric=metric, tags=tags or None):
                    if as_json:
                        print(_sample_json(s), flush=True)
                    else:
                        t = ",".join(f"{k}={v}" for k, v in sorted(s.tags.items()))
                        print(f"{_iso(s.ts)}  {s.metric}  {s.value:g}  {t}".rstrip(), flush=True)

            follower = asyncio.create_task(follow())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({follower, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (follower, stopper):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    with_client(ctx, go)


# -- running on its own (until registered in the main CLI) -------------------------------


__all__ = ["SampleReader", "parse_duration", "parse_tags", "parse_time", "telemetry_app"]
