"""The telemetry batch encoding (dr-tlm1): exact round trips, documented layout, bad input."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from datarooms.errors import ValidationError
from datarooms.sdk.telemetry import BATCH_SCHEMA, TELEMETRY_BATCH
from datarooms.sdk.telemetry.encoding import (
    MAX_TS,
    BatchFormatError,
    SeriesKey,
    canonical_tags,
    choose_scale,
    decode_batch,
    encode_batch,
)
from datarooms.sdk.telemetry.model import group_samples

DOCS = Path(__file__).resolve().parent.parent / "docs"

finite = st.floats(allow_nan=False, allow_infinity=False).map(lambda v: v + 0.0)
decimal2 = st.integers(-(10**9), 10**9).map(lambda i: i / 100)
timestamps = st.integers(0, MAX_TS)
tag_maps = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3).map(
    lambda d: canonical_tags(d)
)
series_st = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20).filter(lambda m: all(ord(c) >= 32 for c in m)),
        tag_maps,
        st.lists(st.tuples(timestamps, st.one_of(finite, decimal2)), min_size=1, max_size=60),
    ),
    max_size=6,
    unique_by=lambda s: (s[0], s[1]),
)


def _as_input(
    series: list[tuple[str, str, list[tuple[int, float]]]],
) -> list[tuple[SeriesKey, list[int], list[float]]]:
    return [(SeriesKey(m, t), [p[0] for p in pts], [p[1] for p in pts]) for m, t, pts in series]


@settings(max_examples=200, deadline=None)
@given(series_st, st.sampled_from([1, 6, 9]))
def test_round_trip_is_exact(series, level) -> None:  # type: ignore[no-untyped-def]
    given_in = _as_input(series)
    payload, n = encode_batch(given_in, level=level)
    assert n == sum(len(ts) for _, ts, _ in given_in)
    out = decode_batch(payload)
    assert [(s.key, s.ts, s.values) for s in out] == given_in
    # Bit-exact, not just ==: the doubles come back with the same bits.
    for s, (_, _, values) in zip(out, given_in, strict=True):
        assert struct.pack(f"<{len(values)}d", *s.values) == struct.pack(
            f"<{len(values)}d", *values
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(finite, decimal2), min_size=1, max_size=50))
def test_choose_scale_is_exact_or_gives_up(values) -> None:  # type: ignore[no-untyped-def]
    scale, ints = choose_scale(values)
    if ints is None:
        assert scale == -1
    else:
        assert [q / 10.0**scale for q in ints] == values
        assert all(abs(q) < 2**53 for q in ints)


def test_quantised_sensor_data_compresses_well() -> None:
    # 100 metrics x 200 samples, two decimals, regular timestamps: ~2 bytes a sample.
    series = []
    for m in range(100):
        ts = [1_700_000_000_000 + 10 * i for i in range(200)]
        values = [round(20 + m + ((i * 7919) % 13 - 6) / 100, 2) for i in range(200)]
        series.append((SeriesKey(f"sensor-{m}"), ts, values))
    payload, n = encode_batch(series)
    assert n == 20_000
    assert len(payload) < 3 * n
    assert [s.values for s in decode_batch(payload)] == [v for _, _, v in series]


def test_documented_example_layout() -> None:
    """The worked example in docs/telemetry.md, byte for byte (before zlib)."""
    series = [
        (SeriesKey("temp", canonical_tags({"site": "a"})), [1000, 1010, 1020], [21.5, 21.25, 21.5]),
        (SeriesKey("flow"), [1005], [0.1 + 0.2]),  # 0.30000000000000004: no exact decimal
    ]
    payload, _ = encode_batch(series)
    raw = zlib.decompress(payload)
    doc = (DOCS / "telemetry.md").read_text()
    hex_lines = doc.split("<!-- example-hex -->")[1].split("```")[1].split()
    assert raw.hex() == "".join(hex_lines)
    header = json.loads(raw[8 : 8 + struct.unpack_from("<I", raw, 4)[0]])
    assert header == {"series": [["temp", {"site": "a"}, 3, 2], ["flow", None, 1, -1]]}


def _raw(header: bytes, body: bytes = b"", magic: bytes = b"DRT1") -> bytes:
    return zlib.compress(magic + struct.pack("<I", len(header)) + header + body)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not zlib", "not zlib data"),
        (_raw(b"{}", magic=b"XXXX"), "bad magic"),
        (_raw(b"{}"), "no valid series list"),
        (_raw(b"[1,2]"), "no valid series list"),
        (_raw(b"{nope"), "header is not JSON"),
        (_raw(b'{"series":[["m",null,2,0]]}', b"\0" * 16), "expected 32"),
        (_raw(b'{"series":[["m",null,1,99]]}', b"\0" * 16), "scale"),
        (_raw(b'{"series":[["m",null,0,0]]}'), "count"),
        (_raw(b'{"series":[["m",{"k":1},1,0]]}', b"\0" * 16), "tags"),
        (_raw(b'{"series":[["",null,1,0]]}', b"\0" * 16), "metric"),
        (zlib.compress(b"DRT1")[:-3], "not zlib data|truncated|too short"),
    ],
)
def test_malformed_payloads_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        decode_batch(payload)


def test_decompression_is_bounded() -> None:
    bomb = zlib.compress(b"DRT1" + b"\x00" * 50_000_000, 9)  # about 50 KB on the wire
    with pytest.raises(BatchFormatError, match="more than 1000 samples"):
        decode_batch(bomb, max_samples=1000)


def test_non_finite_values_in_a_payload_are_rejected() -> None:
    series = [(SeriesKey("m"), [1], [1.5])]
    raw = zlib.decompress(encode_batch(series)[0])
    hlen = struct.unpack_from("<I", raw, 4)[0]
    ts_block = raw[8 + hlen : 8 + hlen + 8]
    # One sample with scale -1 whose bits are +inf (one word: its planes are its bytes).
    bad = _raw(b'{"series":[["m",null,1,-1]]}', ts_block + struct.pack("<d", float("inf")))
    with pytest.raises(BatchFormatError, match="not finite"):
        decode_batch(bad)


def test_samples_are_checked_at_the_edge() -> None:
    rows = group_samples([(5, "m", 1), (6, "m", -0.0, {"b": "2", "a": "1"})], 10)
    assert rows == [(2, {("m", ""): ([5], [1.0]), ("m", '{"a":"1","b":"2"}'): ([6], [0.0])})]
    bad = [
        ((1, "m", float("nan")), "finite"),
        ((1, "m", True), "must be a number"),
        ((1, "m", "1.5"), "must be a number"),
        ((-1, "m", 1.0), "out of range"),
        ((1.5, "m", 1.0), "int of milliseconds"),
        ((1, "", 1.0), "non-empty string"),
        ((1, "a\nb", 1.0), "control characters"),
        ((1, "m", 1.0, {"k": 1}), "must be strings"),
        ((1, "m"), "a sample tuple is"),
        ("x", "is a Sample"),
    ]
    for sample, message in bad:
        with pytest.raises(ValidationError, match=message):
            group_samples([(1, "ok", 1.0), sample], 10)  # type: ignore[list-item]
    # A mutated tags dict is read as it is at each sample.
    tags = {"k": "1"}
    samples = []
    for i in range(3):
        tags["k"] = str(i)
        samples.append((i, "m", 1.0, dict(tags)))
    keys = {k for _, g in group_samples(samples, 10) for k in g}
    assert keys == {("m", '{"k":"0"}'), ("m", '{"k":"1"}'), ("m", '{"k":"2"}')}


def test_chunks_split_big_appends() -> None:
    rows = group_samples(((i, f"m{i % 3}", i) for i in range(25)), 10)
    assert [n for n, _ in rows] == [10, 10, 5]


def test_event_schema_is_documented_and_valid() -> None:
    doc = DOCS / "events" / f"{TELEMETRY_BATCH}.json"
    assert json.loads(doc.read_text()) == BATCH_SCHEMA, f"{doc} is stale"
    Draft202012Validator.check_schema(BATCH_SCHEMA)
    v = Draft202012Validator(BATCH_SCHEMA)
    base = {
        "v": 1,
        "stream": "0123456789abcdef",
        "seq": 1,
        "n": 3,
        "t0": 1,
        "t1": 2,
        "enc": "dr-tlm1+zlib",
    }
    assert v.is_valid({**base, "data": "eJw"})
    assert v.is_valid(
        {
            **base,
            "size": 10,
            "file": {"url": "mxc://a/b", "key": {}, "iv": "", "hashes": {}, "v": "v2"},
        }
    )
    assert not v.is_valid(base)  # neither data nor file
    assert not v.is_valid({**base, "data": "eJw", "seq": 0})
    assert not v.is_valid({**base, "data": "eJw", "enc": "gzip"})
