"""The telemetry batch encoding ``dr-tlm1``: columnar, delta-coded, byte-planar, then zlib.

Pure functions, no I/O. The format is specified in docs/telemetry.md so that
any client can decode a batch; this module is the reference implementation.

A batch is a list of *series* (a metric name plus optional string tags), each
with its samples in append order: ``(ts, value)`` pairs, ``ts`` in integer
milliseconds since the Unix epoch, ``value`` an IEEE-754 double. Layout of the
payload before compression (all integers little-endian)::

    magic     4 bytes   b"DRT1"
    hlen      u32       length of the header
    header    hlen      UTF-8 JSON: {"series": [[metric, tags|null, count, scale], ...]}
    ts        8*n       int64 timestamps, delta-coded per series, byte-planar
    values    8*n       per series: scale >= 0: int64 round(v*10**scale), delta-coded;
                        scale == -1: uint64 IEEE-754 bits, XOR-coded; byte-planar

*delta-coded per series*: the first word of a series is the absolute value,
each next word the difference to the previous one. *XOR-coded*: the first word
is the bit pattern, each next the XOR with the previous bit pattern.
*byte-planar*: the ``n`` 8-byte words of a block are stored as 8 planes of ``n``
bytes; plane ``j`` holds byte ``j`` of every word. Regular timestamps and
slowly changing values leave most planes zero, which deflate then removes.

Every step is exact: ``decode_batch(encode_batch(x)) == x`` for finite values
(``-0.0`` is normalised to ``0.0`` on append).
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from operator import and_, mul, sub, truediv, xor
from typing import NamedTuple

from datarooms.errors import ValidationError

#: The ``enc`` value of batches in this format.
ENCODING = "dr-tlm1+zlib"
MAGIC = b"DRT1"

#: Samples in one batch a reader accepts (a writer never makes bigger ones).
MAX_BATCH_SAMPLES = 1_000_000
#: Series in one batch a reader accepts.
MAX_SERIES = 65_536
MAX_METRIC_LENGTH = 255
MAX_TAGS = 32
MAX_TAG_LENGTH = 255
#: Timestamps are milliseconds in ``[0, 2**53)``: exact as a double in any language.
MAX_TS = 2**53 - 1
#: Decimal scales tried for the exact integer coding of values.
MAX_SCALE = 9

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_INT = 2**53
_MASK = 2**64 - 1
_HEADER = struct.Struct("<4sI")
_BIG_ENDIAN = sys.byteorder == "big"
_POW10 = [10.0**k for k in range(MAX_SCALE + 1)]


class SeriesKey(NamedTuple):
    """A metric and its tags (canonical JSON, ``""`` for none): one time series."""

    metric: str
    tags: str = ""

    def tags_dict(self) -> dict[str, str]:
        return dict(json.loads(self.tags)) if self.tags else {}


class SeriesData(NamedTuple):
    """One decoded series: its key and its samples in append order."""

    key: SeriesKey
    ts: list[int]
    values: list[float]


class BatchFormatError(ValidationError):
    """A telemetry batch could not be decoded: it is not valid ``dr-tlm1``."""

    errcode = "DR_BAD_BATCH"


# -- validation used at the edge (append) ---------------------------------------------


def canonical_tags(tags: Mapping[str, str] | None) -> str:
    """Tags as canonical JSON (sorted keys, no spaces), or ``""`` for none."""
    if not tags:
        return ""
    if not isinstance(tags, Mapping):
        raise ValidationError(f"tags must be a mapping of strings, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"a sample has {len(tags)} tags; at most {MAX_TAGS} are allowed")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValidationError(f"tag {k!r}: tag names and values must be strings")
        if not k or len(k) > MAX_TAG_LENGTH or len(v) > MAX_TAG_LENGTH:
            raise ValidationError(
                f"tag {k[:40]!r}: names must be 1-{MAX_TAG_LENGTH} characters and values at "
                f"most {MAX_TAG_LENGTH}"
            )
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_metric(metric: object) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValidationError(f"a metric must be a non-empty string, got {metric!r}")
    if len(metric) > MAX_METRIC_LENGTH:
        raise ValidationError(
            f"metric {metric[:40]!r}... is longer than {MAX_METRIC_LENGTH} characters"
        )
    if _CONTROL.search(metric):
        raise ValidationError(f"metric {metric!r} contains control characters")
    return metric


def check_ts(ts: object) -> int:
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ValidationError(
            f"a timestamp must be an int of milliseconds since the epoch, got {ts!r}"
        )
    if not 0 <= ts <= MAX_TS:
        raise ValidationError(f"timestamp {ts} is out of range [0, 2**53)")
    return int(ts)


def check_value(value: object) -> float:
    """A finite float; ints are converted, ``-0.0`` becomes ``0.0``; bools are refused."""
    t = type(value)
    if t is not float and t is not int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"a sample value must be a number, got {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise ValidationError(f"value {value!r} does not fit a 64-bit float") from None
    if not math.isfinite(v):
        raise ValidationError(f"a sample value must be finite, got {v!r}")
    return v + 0.0


# -- encoding -----------------------------------------------------------------------


def _planar(words: bytes) -> bytes:
    return b"".join(words[j::8] for j in range(8))


def _unplanar(block: bytes | memoryview, n: int) -> bytes:
    out = bytearray(8 * n)
    for j in range(8):
        out[j::8] = block[j * n : (j + 1) * n]
    return bytes(out)


def _deltas(seq: Sequence[int]) -> list[int]:
    if not seq:
        return []
    out = [seq[0]]
    out.extend(map(sub, seq[1:], seq[:-1]))
    return out


def _decimals(v: float) -> int:
    for k in range(MAX_SCALE + 1):
        p = _POW10[k]
        scaled = v * p
        if not -_SAFE_INT < scaled < _SAFE_INT:
            return -1  # too big for an exact integer (and bigger with every k)
        q = round(scaled)
        if q / p == v:
            return k
    return -1


def choose_scale(values: Sequence[float]) -> tuple[int, list[int] | None]:
    """The smallest decimal scale that codes every value exactly, with the scaled ints.

    Returns ``(-1, None)`` when no scale up to :data:`MAX_SCALE` is exact for all
    values (they are then XOR-coded as raw bits).
    """
    if not values:
        return 0, []
    guess = 0
    for v in values[:16]:
        k = _decimals(v)
        if k < 0:
            return -1, None
        guess = max(guess, k)
    for k in range(guess, MAX_SCALE + 1):
        p = _POW10[k]
        try:
            q = list(map(round, map(mul, values, repeat(p))))
        except OverflowError:  # a value too big for any scale
            return -1, None
        if (
            max(q) < _SAFE_INT
            and min(q) > -_SAFE_INT
            and list(map(truediv, q, repeat(p)))
            == (values if isinstance(values, list) else list(values))
        ):
            return k, q
        if k >= guess + 2:
            break
    return -1, None


def encode_batch(
    series: Iterable[tuple[SeriesKey, Sequence[int], Sequence[float]]], *, level: int = 4
) -> tuple[bytes, int]:
    """Encode and compress; returns ``(payload, sample count)``.

    Inputs are trusted to be valid (checked at append): timestamps in
    ``[0, 2**53)``, finite values, series keys from :func:`canonical_tags`.
    """
    header: list[list[object]] = []
    ts_words: list[int] = []
    val_words: list[int] = []
    n = 0
    for key, ts, values in series:
        count = len(ts)
        if count != len(values):
            raise ValueError("a series has different numbers of timestamps and values")
        if count == 0:
            continue
        n += count
        ts_words.extend(_deltas(ts))
        scale, scaled = choose_scale(values)
        if scaled is not None:
            val_words.extend(map(and_, _deltas(scaled), repeat(_MASK)))
        else:
            bits = array("Q")
            bits.frombytes(array("d", values).tobytes())
            b = bits.tolist()
            val_words.append(b[0])
            val_words.extend(map(xor, b[1:], b[:-1]))
        header.append([key.metric, json.loads(key.tags) if key.tags else None, count, scale])
    if len(header) > MAX_SERIES:
        raise ValueError(f"a batch may hold at most {MAX_SERIES} series")
    ts_arr = array("q", ts_words)
    val_arr = array("Q", val_words)
    if _BIG_ENDIAN:
        ts_arr.byteswap()
        val_arr.byteswap()
    head = json.dumps({"series": header}, separators=(",", ":"), ensure_ascii=False).encode()
    raw = b"".join(
        (
            _HEADER.pack(MAGIC, len(head)),
            head,
            _planar(ts_arr.tobytes()),
            _planar(val_arr.tobytes()),
        )
    )
    return zlib.compress(raw, level), n


# -- decoding -----------------------------------------------------------------------


def _fail(why: str) -> BatchFormatError:
    return BatchFormatError(f"malformed telemetry batch: {why}")


def decode_batch(payload: bytes, *, max_samples: int = MAX_BATCH_SAMPLES) -> list[SeriesData]:
    """Decompress and decode a ``dr-tlm1`` payload; :class:`BatchFormatError` if malformed."""
    limit = _HEADER.size + 16 * max_samples + 64 * MAX_SERIES * 8
    d = zlib.decompressobj()
    try:
        raw = d.decompress(payload, limit)
    except zlib.error as exc:
        raise _fail(f"not zlib data ({exc})") from None
    if d.unconsumed_tail:
        raise _fail(f"more than {max_samples} samples")
    if not d.eof:
        raise _fail("the zlib stream is truncated")
    if len(raw) < _HEADER.size:
        raise _fail("too short")
    magic, hlen = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise _fail(f"bad magic {magic!r} (expected {MAGIC!r})")
    start = _HEADER.size
    try:
        header = json.loads(raw[start : start + hlen])
    except (ValueError, UnicodeDecodeError):
        raise _fail("the header is not JSON") from None
    entries = header.get("series") if isinstance(header, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_SERIES:
        raise _fail("the header has no valid series list")
    keys: list[tuple[SeriesKey, int, int]] = []
    n = 0
    for e in entries:
        if not (isinstance(e, list) and len(e) == 4):
            raise _fail("a series entry is not [metric, tags, count, scale]")
        metric, tags, count, scale = e
        if not isinstance(metric, str) or not metric or len(metric) > MAX_METRIC_LENGTH:
            raise _fail("a metric is not a string of 1-255 characters")
        if tags is not None and not (
            isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
        ):
            raise _fail(f"the tags of {metric!r} are not an object of strings")
        if type(count) is not int or count < 1:
            raise _fail(f"the count of {metric!r} is not a positive integer")
        if type(scale) is not int or not -1 <= scale <= MAX_SCALE:
            raise _fail(f"the scale of {metric!r} is not in [-1, {MAX_SCALE}]")
        tag_json = json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        keys.append((SeriesKey(metric, tag_json if tags else ""), count, scale))
        n += count
    if n > max_samples:
        raise _fail(f"{n} samples, more than {max_samples}")
    body = memoryview(raw)[start + hlen :]
    if len(body) != 16 * n:
        raise _fail(f"the columns hold {len(body)} bytes, expected {16 * n}")
    ts_arr = array("q")
    ts_arr.frombytes(_unplanar(body[: 8 * n], n))
    val_bytes = _unplanar(body[8 * n :], n)
    ints = array("q")
    ints.frombytes(val_bytes)
    bits = array("Q")
    bits.frombytes(val_bytes)
    if _BIG_ENDIAN:
        ts_arr.byteswap()
        ints.byteswap()
        bits.byteswap()
    out: list[SeriesData] = []
    pos = 0
    for key, count, scale in keys:
        end = pos + count
        ts = list(accumulate(ts_arr[pos:end]))
        if min(ts) < 0 or max(ts) > MAX_TS:
            raise _fail(f"a timestamp of {key.metric!r} is out of range")
        if scale >= 0:
            q = list(accumulate(ints[pos:end]))
            values = list(map(truediv, q, repeat(_POW10[scale])))
        else:
            raw_bits = array("Q", accumulate(bits[pos:end], xor))
            as_float = array("d")
            as_float.frombytes(raw_bits.tobytes())
            values = as_float.tolist()
            if not all(map(math.isfinite, values)):
                raise _fail(f"a value of {key.metric!r} is not finite")
        out.append(SeriesData(key, ts, values))
        pos = end
    return out
