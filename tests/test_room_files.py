"""Files in rooms: streamed, encrypted, verified; tampering is an error, not data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datarooms import TamperedFileError, ValidationError
from datarooms.sdk.files import safe_name
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


async def test_file_put_get_between_users(  # type: ignore[no-untyped-def]
    alice_bob, tmp_path: Path, homeserver: TestHomeserver
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "read")
    src = tmp_path / "evidence.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    progress: list[tuple[int, int]] = []
    ref = await alice.files.put(room, src, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (len(data), len(data))
    assert ref.name == "evidence.bin" and ref.size == len(data)

    await bob.sync_once()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = await bob.files.get(room, ref.event_id, downloads)
    assert out == downloads / "evidence.bin" and out.read_bytes() == data
    # An existing file is never silently replaced (issue 11): refused, unless overwrite.
    out.write_bytes(b"mine")
    with pytest.raises(ValidationError, match="exists"):
        await bob.files.get(room, ref.event_id, downloads)
    assert out.read_bytes() == b"mine"
    await bob.files.get(room, ref.event_id, downloads, overwrite=True)
    assert out.read_bytes() == data

    # Tamper with the stored ciphertext: the download fails and writes nothing.
    media = homeserver.synapse.media_store_path / "local_content"
    mid = ref.file.media_id
    stored = media / mid[:2] / mid[2:4] / mid[4:]
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    stored.write_bytes(bytes(blob))
    dest = tmp_path / "tampered.bin"
    with pytest.raises(TamperedFileError):
        await bob.files.get(room, ref.event_id, dest)
    assert not dest.exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


async def test_sender_chosen_names_stay_in_the_directory(alice_bob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A sender picks the file name: a path or a hidden name must not escape or hide."""
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "read")
    sneaky = await alice.files.put(room, b"export PATH=/evil", filename="../../.bashrc")
    traversal = await alice.files.put(room, b"data", filename="../../etc/cron.d/x")
    await bob.sync_once()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(ValidationError, match="hidden"):
        await bob.files.get(room, sneaky.event_id, downloads)
    out = await bob.files.get(room, traversal.event_id, downloads)
    assert out == downloads / "x"
    assert sorted(p.name for p in downloads.iterdir()) == ["x"]
    assert not list(tmp_path.rglob(".bashrc")) and not list(tmp_path.rglob("cron.d"))
    assert safe_name("..") == "file.bin" and safe_name("a\\b\x07c") == "bc"
