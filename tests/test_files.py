"""Encrypted attachments against a real Synapse: round trips, nio interop, tampering, memory."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from datarooms._transport import media as media_transport
from datarooms.errors import HomeserverError, ValidationError
from datarooms.homeserver.admin import RegisteredUser
from datarooms.sdk.attachments import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    EncryptedFile,
    TamperedFileError,
    download_decrypted,
    download_decrypted_bytes,
    upload_encrypted,
)
from datarooms.testing import TestHomeserver

MB = 1 << 20


@pytest.fixture
async def user(homeserver: TestHomeserver) -> RegisteredUser:
    return await homeserver.new_user("files")


@pytest.fixture(scope="module")
def small_homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHomeserver]:
    """A Synapse whose max_upload_size is 1 MiB."""
    with TestHomeserver(
        tmp_path_factory.mktemp("small-hs"), extra_config={"max_upload_size": "1M"}
    ) as hs:
        yield hs


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _stored_path(hs: TestHomeserver, mxc: str) -> Path:
    media_id = mxc.rsplit("/", 1)[1]
    return (
        hs.synapse.media_store_path / "local_content" / media_id[:2] / media_id[2:4] / media_id[4:]
    )


def _stored_files(hs: TestHomeserver) -> list[Path]:
    return [p for p in hs.synapse.media_store_path.rglob("*") if p.is_file()]


def _write_random_file(path: Path, size: int, chunk: int = 4 * MB) -> str:
    """Write ``size`` random bytes in chunks; returns their SHA-256 hex."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            fh.write(data)
            left -= len(data)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MB):
            digest.update(block)
    return digest.hexdigest()


class _Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check(self, total: int) -> None:
        assert self.calls, "progress was never called"
        done = [d for d, _ in self.calls]
        assert done == sorted(done), f"progress went backwards: {done}"
        assert len(set(done)) == len(done), "progress repeated a value"
        assert {t for _, t in self.calls} == {total}
        assert self.calls[-1] == (total, total)


# -- the EncryptedFile object ------------------------------------------------


def _sample_json() -> dict[str, Any]:
    return EncryptedFile(
        url="mxc://example.org/abcDEF_123-x",
        key=secrets.token_bytes(32),
        iv=secrets.token_bytes(8) + bytes(8),
        sha256=hashlib.sha256(b"x").digest(),
    ).to_json()


def test_to_json_matches_the_spec() -> None:
    enc = AttachmentEncryptor()
    enc.update(b"hello")
    obj = enc.encrypted_file("mxc://example.org/abc").to_json()
    assert set(obj) == {"url", "key", "iv", "hashes", "v"}
    assert obj["v"] == "v2"
    assert obj["key"] == {
        "kty": "oct",
        "alg": "A256CTR",
        "key_ops": ["encrypt", "decrypt"],
        "k": base64.urlsafe_b64encode(enc.key).decode().rstrip("="),
        "ext": True,
    }
    assert "=" not in obj["iv"] and "=" not in obj["hashes"]["sha256"]
    assert "=" not in obj["key"]["k"] and "+" not in obj["key"]["k"] and "/" not in obj["key"]["k"]
    assert base64.b64decode(obj["iv"] + "==") == enc.iv
    parsed = EncryptedFile.from_json(obj)
    assert parsed == enc.encrypted_file("mxc://example.org/abc")
    assert obj["key"]["k"] not in repr(parsed) and enc.key.hex() not in repr(parsed), (
        "the repr must not show the key"
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["key"].__setitem__("alg", "A128CTR"), "file.key.alg"),
        (lambda o: o["key"].__setitem__("kty", "RSA"), "file.key.kty"),
        (lambda o: o.__setitem__("v", "v1"), "file.v"),
        (lambda o: o.pop("v"), "file.v"),
        (lambda o: o["key"].__setitem__("k", _b64(b"short")), "file.key.k"),
        (lambda o: o["key"].__setitem__("k", "!!not base64!!"), "file.key.k"),
        (lambda o: o["key"].__setitem__("key_ops", ["decrypt"]), "file.key.key_ops"),
        (lambda o: o["key"].__setitem__("ext", False), "file.key.ext"),
        (lambda o: o.__setitem__("iv", _b64(bytes(8))), "file.iv"),
        (lambda o: o.pop("iv"), "file.iv"),
        (lambda o: o.__setitem__("hashes", {}), "file.hashes.sha256"),
        (lambda o: o.pop("hashes"), "file.hashes"),
        (lambda o: o["hashes"].__setitem__("sha256", _b64(b"abc")), "file.hashes.sha256"),
        (lambda o: o.__setitem__("url", "https://example.org/abc"), "file.url"),
        (lambda o: o.__setitem__("url", "mxc://example.org/"), "file.url"),
        (lambda o: o.pop("url"), "file.url"),
        (lambda o: o.pop("key"), "file.key"),
    ],
)
def test_from_json_rejects_bad_objects(mutate: Any, field: str) -> None:
    obj = copy.deepcopy(_sample_json())
    mutate(obj)
    with pytest.raises(ValidationError) as err:
        EncryptedFile.from_json(obj)
    assert field in err.value.message


def test_from_json_rejects_non_objects() -> None:
    with pytest.raises(ValidationError, match="JSON object"):
        EncryptedFile.from_json(["not", "a", "dict"])


def test_from_json_accepts_padded_base64_and_extra_fields() -> None:
    base = _sample_json()
    obj = copy.deepcopy(base)
    obj["iv"] += "=="
    obj["hashes"]["sha256"] += "="
    obj["mimetype"] = "text/plain"
    assert EncryptedFile.from_json(obj).to_json() == base


def test_fresh_key_and_iv_per_encryptor() -> None:
    seen_keys, seen_ivs = set(), set()
    for _ in range(50):
        enc = AttachmentEncryptor()
        assert len(enc.key) == 32 and len(enc.iv) == 16
        assert enc.iv[8:] == bytes(8), "the 64-bit counter half of the IV must start at zero"
        seen_keys.add(enc.key)
        seen_ivs.add(enc.iv[:8])
    assert len(seen_keys) == 50 and len(seen_ivs) == 50


def test_encrypt_decrypt_in_odd_chunks() -> None:
    data = os.urandom(100_003)
    enc = AttachmentEncryptor()
    ciphertext = b"".join(enc.update(data[i : i + 7_777]) for i in range(0, len(data), 7_777))
    assert len(ciphertext) == len(data) and ciphertext != data
    file = enc.encrypted_file("mxc://example.org/abc")
    dec = AttachmentDecryptor(file)
    plain = b"".join(dec.update(ciphertext[i : i + 1_001]) for i in range(0, len(data), 1_001))
    dec.verify()
    assert plain == data

    dec = AttachmentDecryptor(file)
    dec.update(ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    with pytest.raises(TamperedFileError):
        dec.verify()


def test_counter_wraps_within_64_bits() -> None:
    """An IV whose counter half is near 2**64 (other clients' files) wraps like the spec says."""
    key, prefix = os.urandom(32), os.urandom(8)
    start = (1 << 64) - 3
    blocks = 7
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - reference keystream
    keystream = b"".join(
        ecb.update(prefix + ((start + i) % (1 << 64)).to_bytes(8, "big")) for i in range(blocks)
    )
    plaintext = os.urandom(blocks * 16 - 5)
    ciphertext = bytes(a ^ b for a, b in zip(plaintext, keystream, strict=False))
    file = EncryptedFile(
        url="mxc://example.org/abc",
        key=key,
        iv=prefix + start.to_bytes(8, "big"),
        sha256=hashlib.sha256(ciphertext).digest(),
    )
    for step in (1, 5, 16, 40, len(ciphertext)):
        dec = AttachmentDecryptor(file)
        pieces = [ciphertext[i : i + step] for i in range(0, len(ciphertext), step)]
        out = b"".join(dec.update(piece) for piece in pieces)
        dec.verify()
        assert out == plaintext, f"wrong plaintext with chunks of {step}"


# -- through the homeserver --------------------------------------------------


async def test_round_trip_bytes(homeserver: TestHomeserver, user: RegisteredUser) -> None:
    data = b"the quarterly numbers \x00\xff" * 100
    progress = _Progress()
    up = await upload_encrypted(
        homeserver.base_url, user.access_token, data, content_type="text/plain", progress=progress
    )
    progress.check(len(data))
    assert up.size == len(data) and up.content_type == "text/plain" and up.filename is None
    assert up.url.startswith(f"mxc://{homeserver.server_name}/")
    # What goes in the event survives JSON.
    file = EncryptedFile.from_json(up.file.to_json())
    down = _Progress()
    got = await download_decrypted_bytes(
        homeserver.base_url, user.access_token, file, progress=down
    )
    assert got == data
    down.check(len(data))


async def test_round_trip_empty_file(homeserver: TestHomeserver, user: RegisteredUser) -> None:
    progress = _Progress()
    up = await upload_encrypted(homeserver.base_url, user.access_token, b"", progress=progress)
    assert progress.calls == [(0, 0)]
    assert await download_decrypted_bytes(homeserver.base_url, user.access_token, up.file) == b""


async def test_round_trip_multi_chunk_file(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    size = 3 * MB + 123
    src = tmp_path / "report.bin"
    digest = _write_random_file(src, size)
    progress = _Progress()
    up = await upload_encrypted(
        homeserver.base_url,
        user.access_token,
        src,
        filename="report.bin",
        progress=progress,
        chunk_size=MB,
    )
    progress.check(size)
    assert len(progress.calls) == 4  # 1 MiB, 2 MiB, 3 MiB, then the last 123 bytes
    assert up.size == size and up.filename == "report.bin"
    assert _stored_path(homeserver, up.url).stat().st_size == size

    dest = tmp_path / "out" / "report.bin"
    dest.parent.mkdir()
    down = _Progress()
    result = await download_decrypted(
        homeserver.base_url, user.access_token, up.file, dest, progress=down, chunk_size=MB
    )
    assert result == dest
    assert _sha256_file(dest) == digest
    down.check(size)
    assert dest.stat().st_mode & 0o077 == 0, "decrypted files are private to the owner"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report.bin"], "no temp files left"


async def test_upload_from_a_stream_reads_from_its_position(
    homeserver: TestHomeserver, user: RegisteredUser
) -> None:
    stream = io.BytesIO(b"HEADER" + b"payload" * 1000)
    stream.seek(6)
    up = await upload_encrypted(homeserver.base_url, user.access_token, stream, chunk_size=1000)
    assert up.size == 7000
    got = await download_decrypted_bytes(homeserver.base_url, user.access_token, up.file)
    assert got == b"payload" * 1000


async def test_fresh_key_iv_and_ciphertext_per_upload(
    homeserver: TestHomeserver, user: RegisteredUser
) -> None:
    data = b"same bytes twice" * 64
    a = await upload_encrypted(homeserver.base_url, user.access_token, data)
    b = await upload_encrypted(homeserver.base_url, user.access_token, data)
    assert a.file.key != b.file.key
    assert a.file.iv != b.file.iv
    assert a.file.sha256 != b.file.sha256
    assert a.url != b.url
    for up in (a, b):
        assert up.file.iv[8:] == bytes(8)
    stored_a = _stored_path(homeserver, a.url).read_bytes()
    stored_b = _stored_path(homeserver, b.url).read_bytes()
    assert stored_a != stored_b
    assert hashlib.sha256(stored_a).digest() == a.file.sha256


async def test_plaintext_never_reaches_the_media_store(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    marker = b"DATAROOMS-PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()
    src = tmp_path / "secret.txt"
    src.write_bytes((b"confidential " + marker + b"\n") * 50_000)  # ~2.5 MB, several chunks
    up = await upload_encrypted(homeserver.base_url, user.access_token, src, chunk_size=MB)
    up2 = await upload_encrypted(homeserver.base_url, user.access_token, marker)
    stored = _stored_files(homeserver)
    assert _stored_path(homeserver, up.url) in stored
    assert _stored_path(homeserver, up2.url) in stored
    hits = [p for p in stored if marker in p.read_bytes() or b"confidential" in p.read_bytes()]
    assert hits == []


# -- interop with matrix-nio -------------------------------------------------


async def test_nio_decrypts_what_we_encrypt(
    homeserver: TestHomeserver, user: RegisteredUser
) -> None:
    data = os.urandom(2 * MB + 17)
    up = await upload_encrypted(homeserver.base_url, user.access_token, data, chunk_size=MB)
    ciphertext = _stored_path(homeserver, up.url).read_bytes()
    obj = up.file.to_json()
    plain = decrypt_attachment(ciphertext, obj["key"]["k"], obj["hashes"]["sha256"], obj["iv"])
    assert plain == data


async def test_we_decrypt_what_nio_encrypts(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    data = os.urandom(MB + 5)
    ciphertext, info = encrypt_attachment(data)
    # Upload nio's ciphertext as-is, as another client would.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            homeserver.base_url + "/_matrix/media/v3/upload",
            data=ciphertext,
            headers={
                "Authorization": f"Bearer {user.access_token}",
                "Content-Type": "application/octet-stream",
            },
        ) as resp,
    ):
        assert resp.status == 200
        mxc = (await resp.json())["content_uri"]
    file = EncryptedFile.from_json({**info, "url": mxc})
    dest = tmp_path / "from-nio.bin"
    await download_decrypted(homeserver.base_url, user.access_token, file, dest)
    assert dest.read_bytes() == data
    assert await download_decrypted_bytes(homeserver.base_url, user.access_token, file) == data


# -- tampering ---------------------------------------------------------------


async def test_tampered_ciphertext_on_the_server(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    data = os.urandom(MB + 1000)
    up = await upload_encrypted(homeserver.base_url, user.access_token, data)
    stored = _stored_path(homeserver, up.url)
    with stored.open("r+b") as fh:
        fh.seek(12345)
        byte = fh.read(1)
        fh.seek(12345)
        fh.write(bytes([byte[0] ^ 0x01]))

    dest = tmp_path / "tampered.bin"
    with pytest.raises(TamperedFileError, match="nothing was written") as err:
        await download_decrypted(
            homeserver.base_url, user.access_token, up.file, dest, chunk_size=64 * 1024
        )
    assert err.value.errcode == "DR_TAMPERED"
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == [], "the temporary file must be deleted"

    with pytest.raises(TamperedFileError):
        await download_decrypted_bytes(homeserver.base_url, user.access_token, up.file)


async def test_tampered_hash_in_the_event(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    up = await upload_encrypted(homeserver.base_url, user.access_token, b"genuine content")
    obj = up.file.to_json()
    obj["hashes"]["sha256"] = _b64(hashlib.sha256(b"something else").digest())
    forged = EncryptedFile.from_json(obj)
    dest = tmp_path / "x.txt"
    dest.write_bytes(b"previous version")
    with pytest.raises(TamperedFileError):
        await download_decrypted(homeserver.base_url, user.access_token, forged, dest)
    assert dest.read_bytes() == b"previous version", "a failed download must not touch dest"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    with pytest.raises(TamperedFileError):
        await download_decrypted_bytes(homeserver.base_url, user.access_token, forged)


# -- errors ------------------------------------------------------------------


async def test_missing_media(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    up = await upload_encrypted(homeserver.base_url, user.access_token, b"x")
    gone = EncryptedFile(
        url=f"mxc://{homeserver.server_name}/doesNotExist123",
        key=up.file.key,
        iv=up.file.iv,
        sha256=up.file.sha256,
    )
    dest = tmp_path / "gone.bin"
    with pytest.raises(HomeserverError) as err:
        await download_decrypted(homeserver.base_url, user.access_token, gone, dest)
    assert err.value.errcode == "M_NOT_FOUND" and err.value.status == 404
    assert "not on the homeserver" in err.value.message
    assert list(tmp_path.iterdir()) == []


async def test_failed_download_leaves_nothing(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    up = await upload_encrypted(homeserver.base_url, user.access_token, os.urandom(3 * MB))

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    dest = tmp_path / "interrupted.bin"
    with pytest.raises(KeyboardInterrupt):
        await download_decrypted(
            homeserver.base_url, user.access_token, up.file, dest, progress=interrupt
        )
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(ValidationError, match="does not exist"):
        await download_decrypted(
            homeserver.base_url, user.access_token, up.file, tmp_path / "no" / "such.bin"
        )
    with pytest.raises(ValidationError, match="max_size"):
        await download_decrypted_bytes(homeserver.base_url, user.access_token, up.file, max_size=MB)


async def test_bad_token(homeserver: TestHomeserver) -> None:
    with pytest.raises(HomeserverError) as err:
        await upload_encrypted(homeserver.base_url, "not-a-token", b"data")
    assert err.value.errcode == "M_UNKNOWN_TOKEN" and err.value.status == 401


async def test_unreachable_homeserver() -> None:
    from datarooms.homeserver.embedded import free_port

    with pytest.raises(HomeserverError, match="cannot reach"):
        await upload_encrypted(f"http://127.0.0.1:{free_port()}", "token", b"data")


async def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a file"):
        await upload_encrypted("http://127.0.0.1:1", "t", tmp_path / "missing.bin")

    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    with pytest.raises(ValidationError, match="cannot seek"):
        await upload_encrypted("http://127.0.0.1:1", "t", Pipe())  # type: ignore[arg-type]


async def test_file_shrinking_during_upload(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    src = tmp_path / "shrinks.bin"
    _write_random_file(src, 3 * MB)

    def truncate(done: int, total: int) -> None:
        with src.open("r+b") as fh:
            fh.truncate(MB + 10)

    with pytest.raises(ValidationError, match="became shorter"):
        await upload_encrypted(
            homeserver.base_url, user.access_token, src, progress=truncate, chunk_size=MB
        )


@pytest.mark.xdist_group("small-homeserver")  # one worker, one such Synapse
async def test_too_large_is_refused_before_uploading(
    small_homeserver: TestHomeserver, tmp_path: Path
) -> None:
    user = await small_homeserver.new_user("big")
    before = _stored_files(small_homeserver)
    progress = _Progress()
    with pytest.raises(HomeserverError, match="larger than the homeserver's max_upload_size") as e:
        await upload_encrypted(
            small_homeserver.base_url, user.access_token, os.urandom(2 * MB), progress=progress
        )
    assert e.value.errcode == "M_TOO_LARGE" and e.value.status == 413
    assert progress.calls == [], "nothing should have been sent"
    assert _stored_files(small_homeserver) == before
    # At the limit is fine.
    up = await upload_encrypted(small_homeserver.base_url, user.access_token, os.urandom(MB))
    assert up.size == MB


@pytest.mark.xdist_group("small-homeserver")  # one worker, one such Synapse
async def test_too_large_answer_from_the_homeserver(
    small_homeserver: TestHomeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the homeserver does not publish its limit, its 413 is still reported clearly."""

    async def unknown_limit(*args: object) -> None:
        return None

    monkeypatch.setattr(media_transport, "max_upload_size", unknown_limit)
    user = await small_homeserver.new_user("big")
    with pytest.raises(HomeserverError, match="larger than the homeserver's max_upload_size") as e:
        await upload_encrypted(small_homeserver.base_url, user.access_token, os.urandom(2 * MB))
    assert e.value.errcode == "M_TOO_LARGE" and e.value.status == 413


async def test_rate_limited_upload_is_retried_with_a_fresh_key(tmp_path: Path) -> None:
    """Synapse does not rate-limit uploads with 429, so a stand-in answers the first one so."""
    bodies: list[bytes] = []

    async def config(request: web.Request) -> web.Response:
        return web.json_response({"m.upload.size": 10 * MB})

    async def upload(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.headers["Content-Type"] == "application/octet-stream"
        assert request.headers["Content-Length"] == str(300_000)
        assert "Transfer-Encoding" not in request.headers
        assert "filename" not in request.query
        bodies.append(await request.read())
        if len(bodies) == 1:
            return web.json_response(
                {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 50},
                status=429,
            )
        return web.json_response({"content_uri": "mxc://stub/abcdef"})

    app = web.Application()
    app.router.add_get("/_matrix/client/v1/media/config", config)
    app.router.add_post("/_matrix/media/v3/upload", upload)
    async with _serve(app) as base_url:
        src = tmp_path / "f.bin"
        data = os.urandom(300_000)
        src.write_bytes(data)
        progress = _Progress()
        up = await upload_encrypted(base_url, "tok", src, progress=progress, chunk_size=100_000)
    progress.check(300_000)
    assert len(bodies) == 2 and all(len(b) == 300_000 for b in bodies)
    assert bodies[0] != bodies[1], "a retry must not reuse the key and IV"
    assert hashlib.sha256(bodies[1]).digest() == up.file.sha256
    dec = AttachmentDecryptor(up.file)
    assert dec.update(bodies[1]) == data
    dec.verify()


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- memory ------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class _RssSampler:
    """Peak VmRSS growth over a block, sampled in a background thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
async def test_memory_stays_flat_for_a_64_mb_file(
    homeserver: TestHomeserver, user: RegisteredUser, tmp_path: Path
) -> None:
    size = 64 * MB
    src = tmp_path / "big.bin"
    digest = _write_random_file(src, size)
    # Warm up: first use of the code paths, thread pool and connection machinery.
    warm = await upload_encrypted(homeserver.base_url, user.access_token, os.urandom(2 * MB))
    await download_decrypted(homeserver.base_url, user.access_token, warm.file, tmp_path / "w")

    with _RssSampler() as up_mem:
        up = await upload_encrypted(homeserver.base_url, user.access_token, src)
    assert up.size == size

    dest = tmp_path / "big.out"
    with _RssSampler() as down_mem:
        await download_decrypted(homeserver.base_url, user.access_token, up.file, dest)
    assert _sha256_file(dest) == digest

    assert up_mem.growth < 32 * MB, f"upload grew RSS by {up_mem.growth / MB:.1f} MiB"
    assert down_mem.growth < 32 * MB, f"download grew RSS by {down_mem.growth / MB:.1f} MiB"
