"""Encrypted attachments: AES-256-CTR per the Matrix spec, streamed to and from the media repo.

This module is the attachment crypto (``EncryptedFile``, the encryptor and decryptor) and
the streaming that ties it to the media repository, whose HTTP lives in
:mod:`datarooms._transport.media`. It encrypts a file with a fresh key,
uploads the ciphertext and hands back the ``EncryptedFile`` (the spec's
``file`` object, version ``v2``) that the caller puts in its own
``m.room.message`` event; and it downloads and decrypts such a file again,
checking the SHA-256 of the ciphertext before anything is handed over.

Files are streamed in chunks both ways, so memory stays flat whatever the
file size, and disk reads and writes run in worker threads so a big file never
blocks the event loop.

What the homeserver learns: the ciphertext, its length (which equals the
plaintext length: CTR mode does not pad) and, only if you pass ``filename``,
the file's name. The media is always uploaded as ``application/octet-stream``;
``content_type`` is only recorded in :class:`UploadedFile` for the event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from datarooms._transport import media
from datarooms._transport.http import RateLimitWaits
from datarooms.errors import DataroomsError, HomeserverError, ValidationError

log = logging.getLogger(__name__)

__all__ = [
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "EncryptedFile",
    "ProgressCallback",
    "TamperedFileError",
    "UploadedFile",
    "download_decrypted",
    "download_decrypted_bytes",
    "upload_encrypted",
]

#: ``progress(bytes_done, total)``; ``total`` is -1 when a download's size is unknown.
ProgressCallback = Callable[[int, int], None]

KEY_SIZE = 32
IV_SIZE = 16
SHA256_SIZE = 32
DEFAULT_CHUNK_SIZE = 1 << 20

_CTR_WRAP_BYTES = (1 << 64) * 16  # bytes a 64-bit block counter covers before it wraps
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class TamperedFileError(DataroomsError):
    """The ciphertext does not match the SHA-256 in the event: do not trust the file."""

    errcode = "DR_TAMPERED"
    http_status = 502


# -- base64 ------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    """Unpadded standard base64, as the spec wants for ``iv`` and ``hashes``."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64encode_urlsafe(data: bytes) -> str:
    """Unpadded URL-safe base64, as JWK wants for ``k``."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(value: object, field: str, size: int) -> bytes:
    """Decode padded or unpadded base64 in either alphabet and check the length."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a base64 string, got {type(value).__name__}")
    text = value.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{field} is not valid base64") from None
    if len(raw) != size:
        raise ValidationError(f"{field} must be {size} bytes, got {len(raw)}")
    return raw


# -- the EncryptedFile object ------------------------------------------------


def _parse_mxc(url: str) -> tuple[str, str]:
    """Split ``mxc://<server-name>/<media-id>`` or raise :class:`ValidationError`."""
    if not url.startswith("mxc://"):
        raise ValidationError(f"file.url must start with mxc://, got {url[:40]!r}")
    server_name, sep, media_id = url[len("mxc://") :].partition("/")
    if not server_name or not sep or not _MEDIA_ID.match(media_id):
        raise ValidationError(f"file.url must be mxc://<server-name>/<media-id>, got {url[:80]!r}")
    return server_name, media_id


@dataclass(frozen=True)
class EncryptedFile:
    """The spec's ``EncryptedFile`` (v2): where the ciphertext is and how to decrypt it.

    ``key`` is the raw 32-byte AES key, ``iv`` the 16-byte initial counter block
    and ``sha256`` the raw digest of the ciphertext. The repr hides the key.
    """

    url: str
    key: bytes
    iv: bytes
    sha256: bytes

    def __post_init__(self) -> None:
        _parse_mxc(self.url)
        for field, value, size in (
            ("file.key.k", self.key, KEY_SIZE),
            ("file.iv", self.iv, IV_SIZE),
            ("file.hashes.sha256", self.sha256, SHA256_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise ValidationError(f"{field} must be {size} bytes")

    def __repr__(self) -> str:
        return f"EncryptedFile(url={self.url!r}, sha256={_b64encode(self.sha256)!r})"

    @property
    def server_name(self) -> str:
        return _parse_mxc(self.url)[0]

    @property
    def media_id(self) -> str:
        return _parse_mxc(self.url)[1]

    def to_json(self) -> dict[str, Any]:
        """The JSON object for the ``file`` field of an ``m.room.message`` event."""
        return {
            "url": self.url,
            "key": {
                "kty": "oct",
                "alg": "A256CTR",
                "key_ops": ["encrypt", "decrypt"],
                "k": _b64encode_urlsafe(self.key),
                "ext": True,
            },
            "iv": _b64encode(self.iv),
            "hashes": {"sha256": _b64encode(self.sha256)},
            "v": "v2",
        }

    @classmethod
    def from_json(cls, obj: object) -> EncryptedFile:
        """Parse and strictly check a ``file`` object; :class:`ValidationError` names the field."""
        if not isinstance(obj, dict):
            raise ValidationError(f"file must be a JSON object, got {type(obj).__name__}")
        if obj.get("v") != "v2":
            raise ValidationError(
                f"file.v must be 'v2', got {obj.get('v')!r}: only version 2 attachments "
                "are supported"
            )
        url = obj.get("url")
        if not isinstance(url, str):
            raise ValidationError("file.url is missing or not a string")
        _parse_mxc(url)

        jwk = obj.get("key")
        if not isinstance(jwk, dict):
            raise ValidationError("file.key is missing or not a JSON object")
        if jwk.get("kty") != "oct":
            raise ValidationError(f"file.key.kty must be 'oct', got {jwk.get('kty')!r}")
        if jwk.get("alg") != "A256CTR":
            raise ValidationError(f"file.key.alg must be 'A256CTR', got {jwk.get('alg')!r}")
        key_ops = jwk.get("key_ops")
        if not isinstance(key_ops, list) or "encrypt" not in key_ops or "decrypt" not in key_ops:
            raise ValidationError(
                f"file.key.key_ops must contain 'encrypt' and 'decrypt', got {key_ops!r}"
            )
        if jwk.get("ext") is not True:
            raise ValidationError(f"file.key.ext must be true, got {jwk.get('ext')!r}")
        if "k" not in jwk:
            raise ValidationError("file.key.k is missing")
        key = _b64decode(jwk["k"], "file.key.k", KEY_SIZE)

        if "iv" not in obj:
            raise ValidationError("file.iv is missing")
        iv = _b64decode(obj["iv"], "file.iv", IV_SIZE)

        hashes = obj.get("hashes")
        if not isinstance(hashes, dict):
            raise ValidationError("file.hashes is missing or not a JSON object")
        if "sha256" not in hashes:
            raise ValidationError("file.hashes.sha256 is missing")
        sha256 = _b64decode(hashes["sha256"], "file.hashes.sha256", SHA256_SIZE)
        return cls(url=url, key=key, iv=iv, sha256=sha256)


@dataclass(frozen=True)
class UploadedFile:
    """The result of :func:`upload_encrypted`: the ``file`` object and what the event needs."""

    file: EncryptedFile
    size: int  # plaintext bytes (== ciphertext bytes)
    content_type: str
    filename: str | None = None

    @property
    def url(self) -> str:
        return self.file.url


# -- incremental encryption --------------------------------------------------


class _Ctr64:
    """AES-256-CTR with the spec's 64-bit block counter.

    ``cryptography`` increments all 128 bits of the counter block; the spec
    (and every other client) treats the last 8 bytes as a counter that wraps
    without carrying into the first 8. The two only differ when an IV's counter
    half starts close to 2**64 (our IVs start at 0), but files from other
    clients may, so at the wrap point we restart with the counter at 0.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._key = key
        self._prefix = iv[:8]
        self._until_wrap = ((1 << 64) - int.from_bytes(iv[8:], "big")) * 16
        self._ctx: CipherContext = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    def update(self, data: bytes) -> bytes:
        if len(data) <= self._until_wrap:
            self._until_wrap -= len(data)
            return self._ctx.update(data)
        head = self._ctx.update(data[: self._until_wrap])
        rest = data[self._until_wrap :]
        self._ctx = Cipher(
            algorithms.AES(self._key), modes.CTR(self._prefix + bytes(8))
        ).encryptor()
        self._until_wrap = _CTR_WRAP_BYTES
        return head + self.update(rest)


class AttachmentEncryptor:
    """Encrypt one attachment chunk by chunk with a fresh random key and IV.

    The key is 32 random bytes and the IV 8 random bytes followed by 8 zero
    bytes (the 64-bit block counter starts at 0). One encryptor is one file:
    create a new one for every upload, including a retried one.
    """

    def __init__(self) -> None:
        self.key = secrets.token_bytes(KEY_SIZE)
        self.iv = secrets.token_bytes(8) + bytes(8)
        self._cipher = _Ctr64(self.key, self.iv)
        self._sha256 = hashlib.sha256()
        self._digest: bytes | None = None
        self.bytes_done = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Encrypt the next ``chunk``; returns ciphertext of the same length."""
        if self._digest is not None:
            raise ValidationError("this AttachmentEncryptor is finished; use a new one")
        ciphertext = self._cipher.update(bytes(chunk))
        self._sha256.update(ciphertext)
        self.bytes_done += len(ciphertext)
        return ciphertext

    def finish(self) -> dict[str, str]:
        """End the file; returns the spec's ``hashes`` object (SHA-256 of the ciphertext)."""
        if self._digest is None:
            self._digest = self._sha256.digest()
        return {"sha256": _b64encode(self._digest)}

    def encrypted_file(self, url: str) -> EncryptedFile:
        """The :class:`EncryptedFile` for this ciphertext once it is stored at ``url``."""
        self.finish()
        assert self._digest is not None
        return EncryptedFile(url=url, key=self.key, iv=self.iv, sha256=self._digest)


class AttachmentDecryptor:
    """Decrypt one attachment chunk by chunk; :meth:`verify` checks the ciphertext's SHA-256.

    Plaintext from :meth:`update` is unverified until :meth:`verify` returns:
    do not show or keep it before then.
    """

    def __init__(self, file: EncryptedFile) -> None:
        self.file = file
        self._cipher = _Ctr64(file.key, file.iv)
        self._sha256 = hashlib.sha256()
        self.bytes_done = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Decrypt the next ``chunk`` of ciphertext; returns plaintext of the same length."""
        data = bytes(chunk)
        self._sha256.update(data)
        self.bytes_done += len(data)
        return self._cipher.update(data)

    def verify(self) -> None:
        """Raise :class:`TamperedFileError` unless the ciphertext fed so far has the right hash."""
        if not hmac.compare_digest(self._sha256.digest(), self.file.sha256):
            raise TamperedFileError(
                "the file does not match its SHA-256: it was changed on the server or in transit"
            )


# -- upload -----------------------------------------------------------------


class _Source:
    """A re-readable plaintext source with a known size, read in worker threads."""

    def __init__(self, source: Path | bytes | BinaryIO) -> None:
        self._path: Path | None = None
        self._data: memoryview | None = None
        self._stream: BinaryIO | None = None
        self._start = 0
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data = memoryview(bytes(source) if not isinstance(source, bytes) else source)
            self.size = len(self._data)
        elif isinstance(source, (str, os.PathLike)):
            self._path = Path(source)
            if not self._path.is_file():
                raise ValidationError(f"cannot upload {self._path}: not a file")
            self.size = self._path.stat().st_size
        else:
            stream = source
            try:
                seekable = stream.seekable()
            except (AttributeError, ValueError):
                seekable = False
            if not seekable:
                raise ValidationError(
                    "cannot upload from a stream that cannot seek: its size must be known "
                    "in advance. Save it to a file first and upload the file."
                )
            self._stream = stream
            self._start = stream.tell()
            self.size = stream.seek(0, io.SEEK_END) - self._start
            stream.seek(self._start)

    async def open(self) -> BinaryIO | None:
        """Position at the start; returns a handle to close, or None."""
        if self._path is not None:
            try:
                return await asyncio.to_thread(self._path.open, "rb")
            except OSError as exc:
                raise ValidationError(f"cannot read {self._path}: {exc.strerror or exc}") from None
        if self._stream is not None:
            await asyncio.to_thread(self._stream.seek, self._start)
            return self._stream
        return None

    def close(self, handle: BinaryIO | None) -> None:
        if handle is not None and self._path is not None:
            handle.close()

    async def chunks(
        self, handle: BinaryIO | None, enc: AttachmentEncryptor, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """Ciphertext, ``chunk_size`` at a time, exactly :attr:`size` bytes in all."""
        done = 0
        while done < self.size:
            n = min(chunk_size, self.size - done)
            if self._data is not None:
                ciphertext = enc.update(self._data[done : done + n])
            else:
                assert handle is not None
                try:
                    ciphertext = await asyncio.to_thread(_read_encrypt, handle, enc, n)
                except OSError as exc:
                    raise ValidationError(
                        f"cannot read the file to upload: {exc.strerror or exc}"
                    ) from None
            if not ciphertext:
                raise ValidationError(
                    f"the file became shorter while it was being uploaded "
                    f"({done} of {self.size} bytes read); upload it again"
                )
            done += len(ciphertext)
            yield ciphertext


async def _post_once(
    http: aiohttp.ClientSession,
    base_url: str,
    *,
    params: dict[str, str] | None,
    headers: dict[str, str],
    src: _Source,
    enc: AttachmentEncryptor,
    chunk_size: int,
    report: Callable[[int], None],
    read_timeout: float,
) -> tuple[int, Any]:
    """One upload attempt: encrypt the source as it streams to the media repo."""

    async def body(handle: BinaryIO | None) -> AsyncIterator[bytes]:
        async for ciphertext in src.chunks(handle, enc, chunk_size):
            yield ciphertext
            report(enc.bytes_done)

    handle = await src.open()
    try:
        return await media.post_upload(
            http,
            base_url,
            params=params,
            headers=headers,
            body=body(handle),
            read_timeout=read_timeout,
        )
    finally:
        src.close(handle)


def _read_encrypt(handle: BinaryIO, enc: AttachmentEncryptor, n: int) -> bytes:
    """Read up to ``n`` bytes (fewer only at end of file) and encrypt them."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = handle.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return enc.update(b"".join(parts)) if parts else b""


async def upload_encrypted(
    base_url: str,
    access_token: str,
    source: Path | bytes | BinaryIO,
    *,
    filename: str | None = None,
    content_type: str = "application/octet-stream",
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    session: aiohttp.ClientSession | None = None,
    read_timeout: float = 300.0,
) -> UploadedFile:
    """Encrypt ``source`` with a fresh key and stream the ciphertext to the media repo.

    ``source`` is a path, bytes, or a seekable binary stream (read from its
    current position to the end, and not closed). ``filename`` is sent to the
    homeserver in the clear, so leave it out unless the name is not secret;
    the event can carry it encrypted instead. ``progress(bytes_sent, total)``
    is called on the event loop and never goes backwards.

    Raises :class:`HomeserverError` (``M_TOO_LARGE`` if the file is over the
    homeserver's ``max_upload_size``) or :class:`ValidationError`.
    """
    if chunk_size <= 0:
        raise ValidationError(f"chunk_size must be positive, got {chunk_size}")
    base_url = base_url.rstrip("/")
    src = _Source(source)
    total = src.size
    params = {"filename": filename} if filename else None
    headers = {
        **media.auth(access_token),
        "Content-Type": "application/octet-stream",
        "Content-Length": str(total),
    }
    reported = -1

    def report(done: int) -> None:
        nonlocal reported
        if progress is not None and done > reported:
            reported = done
            progress(done, total)

    async with media.session_scope(session) as http:
        limit = await media.max_upload_size(http, base_url, access_token, read_timeout)
        if limit is not None and total > limit:
            raise media.too_large(total, limit)

        waits = RateLimitWaits()
        while True:
            # A fresh key and IV for every attempt: nothing is ever encrypted twice
            # under the same key, even if a refused attempt left data behind.
            enc = AttachmentEncryptor()
            status, answer = await _post_once(
                http,
                base_url,
                params=params,
                headers=headers,
                src=src,
                enc=enc,
                chunk_size=chunk_size,
                report=report,
                read_timeout=read_timeout,
            )
            if status == 429:
                log.info("upload rate limited; retrying", extra={"bytes": total})
                if await waits(answer):
                    continue
                break
            errcode = answer.get("errcode") if isinstance(answer, dict) else None
            if status == 413 or errcode == "M_TOO_LARGE":
                raise media.too_large(total, limit)
            if status >= 400:
                raise media.homeserver_error("uploading the file", status, answer)
            uri = answer.get("content_uri") if isinstance(answer, dict) else None
            if not isinstance(uri, str) or not uri.startswith("mxc://"):
                raise HomeserverError(
                    f"the homeserver answered the upload without a valid content_uri: {answer!r}"
                )
            if enc.bytes_done != total:  # cannot happen with Content-Length, but never guess
                raise HomeserverError(f"the upload ended after {enc.bytes_done} of {total} bytes")
            report(total)
            if progress is not None and reported < 0:  # an empty file
                reported = 0
                progress(0, 0)
            return UploadedFile(
                file=enc.encrypted_file(uri),
                size=total,
                content_type=content_type,
                filename=filename,
            )
    raise HomeserverError("uploading the file: still rate limited after retries", status=429)


# -- download ---------------------------------------------------------------


def _download_path(file: EncryptedFile) -> str:
    return media.download_path(file.server_name, file.media_id)


def _check_download_args(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise ValidationError(f"chunk_size must be positive, got {chunk_size}")


async def download_decrypted(
    base_url: str,
    access_token: str,
    file: EncryptedFile,
    dest: Path,
    *,
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    session: aiohttp.ClientSession | None = None,
    read_timeout: float = 300.0,
) -> Path:
    """Download, decrypt and verify ``file`` into ``dest``; returns ``dest``.

    The plaintext goes to a private temporary file next to ``dest`` (mode
    0600) that is renamed over ``dest`` only once the ciphertext's SHA-256
    has matched, so ``dest`` is either the whole verified file or untouched.
    ``progress(bytes_done, total)`` gets ``total == -1`` if the homeserver
    does not send a length.

    Raises :class:`TamperedFileError` if the hash does not match,
    :class:`HomeserverError` if the download fails.
    """
    _check_download_args(chunk_size)
    dest = Path(dest)
    if dest.is_dir():
        raise ValidationError(f"cannot download to {dest}: it is a directory")
    if not dest.parent.is_dir():
        raise ValidationError(f"cannot download to {dest}: the folder {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
    dec = AttachmentDecryptor(file)
    handle = await asyncio.to_thread(_create_private, tmp)
    try:
        async with (
            media.session_scope(session) as http,
            media.download_response(
                http, base_url, access_token, file.url, _download_path(file), read_timeout
            ) as resp,
        ):
            total = resp.content_length if resp.content_length is not None else -1
            try:
                async for ciphertext in media.iter_body(resp, chunk_size):
                    await asyncio.to_thread(_decrypt_write, handle, dec, ciphertext)
                    if progress is not None:
                        progress(dec.bytes_done, total)
            except aiohttp.ClientError as exc:
                raise HomeserverError(
                    f"downloading {file.url} broke off after {dec.bytes_done} bytes: "
                    f"{exc or type(exc).__name__}; nothing was written"
                ) from None
        try:
            dec.verify()
        except TamperedFileError:
            raise TamperedFileError(
                "the downloaded file does not match its SHA-256: it was changed on the "
                "server or in transit; nothing was written"
            ) from None
        await asyncio.to_thread(_commit, handle, tmp, dest)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _create_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _decrypt_write(handle: BinaryIO, dec: AttachmentDecryptor, ciphertext: bytes) -> None:
    handle.write(dec.update(ciphertext))


def _commit(handle: BinaryIO, tmp: Path, dest: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(tmp, dest)


async def download_decrypted_bytes(
    base_url: str,
    access_token: str,
    file: EncryptedFile,
    *,
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_size: int | None = None,
    session: aiohttp.ClientSession | None = None,
    read_timeout: float = 300.0,
) -> bytes:
    """Download, decrypt and verify a small ``file`` into memory.

    Nothing is returned unless the SHA-256 matches. ``max_size`` (bytes)
    refuses bigger files before reading them; use :func:`download_decrypted`
    for those.
    """
    _check_download_args(chunk_size)
    dec = AttachmentDecryptor(file)
    parts: list[bytes] = []
    async with (
        media.session_scope(session) as http,
        media.download_response(
            http, base_url, access_token, file.url, _download_path(file), read_timeout
        ) as resp,
    ):
        total = resp.content_length if resp.content_length is not None else -1
        if max_size is not None and total > max_size:
            raise ValidationError(
                f"{file.url} is {total} bytes, more than max_size={max_size}; "
                "download it to a file instead"
            )
        try:
            async for ciphertext in media.iter_body(resp, chunk_size):
                parts.append(dec.update(ciphertext))
                if max_size is not None and dec.bytes_done > max_size:
                    raise ValidationError(
                        f"{file.url} is more than max_size={max_size} bytes; "
                        "download it to a file instead"
                    )
                if progress is not None:
                    progress(dec.bytes_done, total)
        except aiohttp.ClientError as exc:
            raise HomeserverError(
                f"downloading {file.url} broke off after {dec.bytes_done} bytes: "
                f"{exc or type(exc).__name__}"
            ) from None
    try:
        dec.verify()
    except TamperedFileError:
        raise TamperedFileError(
            "the downloaded file does not match its SHA-256: it was changed on the "
            "server or in transit; nothing was returned"
        ) from None
    return b"".join(parts)
