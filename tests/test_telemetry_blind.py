"""The homeserver never sees telemetry in the clear: scan its database and media store."""

from __future__ import annotations

import random
import sqlite3
import struct
import uuid
import zlib
from pathlib import Path

import aiohttp

from datarooms.sdk.telemetry import TELEMETRY_BATCH, Telemetry, TelemetryConfig
from datarooms.sdk.telemetry.encoding import SeriesKey, canonical_tags, encode_batch
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


def _inflate_all(blob: bytes) -> list[bytes]:
    """Every zlib stream that starts somewhere in ``blob``, inflated (a payload sent
    without encryption would be one)."""
    out = []
    start = 0
    while (i := blob.find(b"\x78", start)) != -1:
        start = i + 1
        if i + 1 < len(blob) and blob[i + 1] in (0x01, 0x5E, 0x9C, 0xDA):
            try:
                out.append(zlib.decompressobj().decompress(blob[i:], 50_000_000))
            except zlib.error:
                continue
    return out


def _media_of(hs: TestHomeserver, user_ids: list[str]) -> set[Path]:
    """The media store files of what ``user_ids`` uploaded (Synapse's own record of it)."""
    with sqlite3.connect(hs.synapse.database_path) as db:
        rows = db.execute(
            f"SELECT media_id FROM local_media_repository WHERE user_id IN "  # noqa: S608
            f"({','.join('?' * len(user_ids))})",
            user_ids,
        ).fetchall()
    content = hs.synapse.media_store_path / "local_content"
    return {content / m[:2] / m[2:4] / m[4:] for (m,) in rows}


def _scan(hs: TestHomeserver, markers: list[bytes], uploaders: list[str]) -> list[str]:
    """Every file of the homeserver searched for ``markers`` as they are; the media the
    ``uploaders`` wrote also inflated at every offset (any other test's media, such as a
    64 MB file, would only slow this down: its markers are not ours)."""
    with sqlite3.connect(hs.synapse.database_path) as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    ours = _media_of(hs, uploaders)
    assert ours and all(p.is_file() for p in ours), ours
    hits = []
    for path in (p for p in hs.synapse.directory.rglob("*") if p.is_file()):
        if path.suffix == ".log":
            continue
        blob = path.read_bytes()
        views = [blob]
        if path in ours:
            views += _inflate_all(blob)
        for m in markers:
            if any(m in v for v in views):
                hits.append(f"{m!r} in {path}")
    return hits


async def test_no_telemetry_plaintext_on_the_homeserver(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    tag = uuid.uuid4().hex[:12]
    metric, site = f"MARKER-metric-{tag}", f"MARKER-site-{tag}"
    exact = 271828.18284 + int(tag[:6], 16)  # a value with a recognisable encoding
    rng = random.Random(tag)
    # Inline batches (a few samples) and media batches (random doubles: big payloads).
    samples = [(1_700_000_000_000, metric, exact, {"site": site})]
    samples += [(1_700_000_000_001 + i, metric, rng.uniform(0, 1e9)) for i in range(40_000)]
    async with Telemetry(alice, TelemetryConfig(max_batch_samples=20_000)) as ta:
        await ta.append_many(room, samples[:1])
        await ta.flush(timeout=60)
        await ta.append_many(room, samples[1:])
        await ta.flush(timeout=120)
        assert ta.stats.inline_batches >= 1 and ta.stats.media_batches >= 2
    async with Telemetry(bob) as tb:  # sanity: a member reads it all
        rows = await tb.query(room, metric, limit=100_000)
        assert len(rows) == 40_001 and rows[0].value == exact and rows[0].tags == {"site": site}

    markers = [
        metric.encode(),
        site.encode(),
        repr(exact).encode(),
        struct.pack("<d", exact),
        struct.pack(">d", exact),
        TELEMETRY_BATCH.encode(),  # even the event type is inside the ciphertext
    ]
    uploaders = [alice.user_id, bob.user_id]
    scanned = _media_of(homeserver, uploaders)
    assert len(scanned) >= ta.stats.media_batches  # every media batch is scanned inside
    hits = _scan(homeserver, markers, uploaders)
    assert hits == [], hits

    # The scan can find things: an unencrypted upload of a compressed payload is found.
    payload, _ = encode_batch(
        [(SeriesKey(f"PLAIN-{tag}", canonical_tags({"site": site})), [1], [exact])]
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{alice.homeserver_url.rstrip('/')}/_matrix/media/v3/upload",
            data=payload,
            headers={
                "Authorization": f"Bearer {alice.access_token}",
                "Content-Type": "application/octet-stream",
            },
        ) as resp,
    ):
        assert resp.status == 200
    found = _scan(homeserver, [f"PLAIN-{tag}".encode()], uploaders)
    assert found, "the scan must see inside zlib"
    assert all("media_store" in hit for hit in found), found
