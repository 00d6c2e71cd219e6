"""What telemetry reads and writes: samples, buckets, series; checking samples at the edge."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from datarooms.errors import ValidationError
from datarooms.sdk.telemetry.encoding import canonical_tags, check_metric, check_ts, check_value

EMPTY_TAGS: Mapping[str, str] = MappingProxyType({})


class Sample(NamedTuple):
    """One time-series sample: ``ts`` in ms since the Unix epoch, a metric, a value, tags."""

    ts: int
    metric: str
    value: float
    tags: Mapping[str, str] = EMPTY_TAGS


@dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregates of one time bucket ``[start, start + step)``."""

    start: int
    count: int
    min: float
    max: float
    mean: float
    #: The value of the latest sample in the bucket, and its time.
    last: float
    last_ts: int


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series (a metric with one set of tags) in a room, as indexed on this device."""

    metric: str
    tags: Mapping[str, str]
    count: int
    first_ts: int
    last_ts: int


#: What ``append_many`` accepts for one sample.
SampleLike = Sample | tuple[Any, ...] | Mapping[str, Any]

Grouped = dict[tuple[str, str], tuple[list[int], list[float]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def group_samples(samples: Iterable[SampleLike], chunk: int) -> list[tuple[int, Grouped]]:
    """Check samples and group them by series, in chunks of at most ``chunk`` samples.

    A sample is a :class:`Sample`, a tuple ``(ts, metric, value[, tags])`` (``ts``
    may be None for now), or a mapping with those keys. Raises
    :class:`ValidationError` naming the first bad sample; nothing is appended then.
    """
    out: list[tuple[int, Grouped]] = []
    # Untagged series are keyed by the metric alone while grouping (cheaper), tagged
    # ones by (metric, tags); _finish gives every key the (metric, tags) form.
    groups: dict[Any, tuple[list[int], list[float]]] = {}
    count = 0
    now: int | None = None
    # Tags by object identity, checked by value (a dict may be mutated between samples).
    tag_cache: dict[int, tuple[dict[str, str], str]] = {}
    for i, s in enumerate(samples):
        try:
            if type(s) is tuple and len(s) == 3:
                ts, metric, value = s
                tags: Any = None
            else:
                ts, metric, value, tags = _unpack(s)
            if ts is None:
                if now is None:
                    now = now_ms()
                ts = now
            elif type(ts) is not int or not 0 <= ts < 2**53:
                ts = check_ts(ts)
            if type(value) is float and value - value == 0.0:
                value = value + 0.0
            else:
                value = check_value(value)
            if tags:
                cached = tag_cache.get(id(tags))
                if cached is not None and cached[0] == tags:
                    tag_json = cached[1]
                else:
                    tag_json = canonical_tags(tags)
                    tag_cache[id(tags)] = (dict(tags), tag_json)
                key: Any = (metric, tag_json)
            else:
                key = metric
            col = groups.get(key)
            if col is None:
                check_metric(metric)
                col = groups[key] = ([], [])
            col[0].append(ts)
            col[1].append(value)
        except ValidationError as exc:
            raise ValidationError(f"sample #{i}: {exc.message}") from None
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"sample #{i} is malformed: {exc}") from None
        count += 1
        if count >= chunk:
            out.append((count, _finish(groups)))
            groups, count = {}, 0
    if count:
        out.append((count, _finish(groups)))
    return out


def _unpack(s: object) -> tuple[Any, Any, Any, Any]:
    if isinstance(s, tuple):
        if len(s) == 3:
            return s[0], s[1], s[2], None
        if len(s) == 4:
            return s[0], s[1], s[2], s[3]
        raise ValidationError(f"a sample tuple is (ts, metric, value[, tags]), got {len(s)} items")
    if isinstance(s, Mapping):
        if "metric" not in s or "value" not in s:
            raise ValidationError("a sample needs 'metric' and 'value'")
        return s.get("ts"), s["metric"], s["value"], s.get("tags")
    raise ValidationError(
        "a sample is a Sample, a (ts, metric, value[, tags]) tuple or a mapping, "
        f"got {type(s).__name__}"
    )


def _finish(groups: dict[Any, tuple[list[int], list[float]]]) -> Grouped:
    return {(k, "") if type(k) is str else k: v for k, v in groups.items()}
