"""The media repository over HTTP: uploads and downloads of (already encrypted) bytes.

Transport only: the caller streams ciphertext in and out (``datarooms.sdk.attachments``
encrypts and decrypts). Rate limits (429) are retried here, bounded; a big transfer has no
total timeout, only a read timeout, so it may take as long as it takes while it moves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from datarooms._transport.http import RateLimitWaits, matrix_error
from datarooms.errors import HomeserverError

log = logging.getLogger(__name__)

UPLOAD_PATH = "/_matrix/media/v3/upload"


def timeout(read_timeout: float) -> aiohttp.ClientTimeout:
    # No total timeout: a big file may take as long as it takes, as long as it moves.
    return aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)


@contextlib.asynccontextmanager
async def session_scope(
    session: aiohttp.ClientSession | None,
) -> AsyncIterator[aiohttp.ClientSession]:
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as own:
        yield own


async def error_body(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return None


def homeserver_error(what: str, status: int, body: Any) -> HomeserverError:
    return matrix_error(status, body, what)


def too_large(size: int, limit: int | None) -> HomeserverError:
    detail = f" ({size} bytes > {limit} bytes)" if limit is not None else ""
    return HomeserverError(
        f"file is larger than the homeserver's max_upload_size{detail}; ask the homeserver "
        "admin to raise max_upload_size or send a smaller file",
        errcode="M_TOO_LARGE",
        status=413,
    )


def auth(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def max_upload_size(
    session: aiohttp.ClientSession, base_url: str, access_token: str, read_timeout: float
) -> int | None:
    """The homeserver's ``m.upload.size``, or None if it does not say."""
    for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
        try:
            async with session.get(
                base_url + path, headers=auth(access_token), timeout=timeout(read_timeout)
            ) as resp:
                if resp.status != 200:
                    continue
                body = await error_body(resp)
        except aiohttp.ClientConnectionError as exc:
            raise HomeserverError(
                f"cannot reach the homeserver at {base_url}: {exc}. "
                "Is it running? (`datarooms status`)"
            ) from None
        if isinstance(body, dict):
            limit = body.get("m.upload.size")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                return limit
        return None
    return None


async def post_upload(
    http: aiohttp.ClientSession,
    base_url: str,
    *,
    params: dict[str, str] | None,
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    read_timeout: float,
) -> tuple[int, Any]:
    """One upload attempt streaming ``body``; returns (status, JSON answer).

    An exception raised by ``body`` itself (e.g. the file could not be read) is raised
    as is, not as the connection error aiohttp reports after it.
    """
    failure: list[BaseException] = []

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except BaseException as exc:
            failure.append(exc)
            raise

    try:
        async with http.post(
            base_url + UPLOAD_PATH,
            params=params,
            data=guarded(),
            headers=headers,
            timeout=timeout(read_timeout),
        ) as resp:
            result = resp.status, await error_body(resp)
    except aiohttp.ClientError as exc:
        if failure:  # the body failed first; aiohttp only reports the aftermath
            raise failure[0] from None
        raise HomeserverError(
            f"uploading to {base_url} failed: {exc or type(exc).__name__}. "
            "Is the homeserver running? (`datarooms status`)"
        ) from None
    except TimeoutError:
        raise HomeserverError(
            f"the homeserver at {base_url} stopped answering during the upload"
        ) from None
    if failure:
        raise failure[0]
    return result


def download_path(server_name: str, media_id: str) -> str:
    return (
        "/_matrix/client/v1/media/download/"
        f"{quote(server_name, safe=':[]')}/{quote(media_id, safe='')}"
    )


@contextlib.asynccontextmanager
async def download_response(
    http: aiohttp.ClientSession,
    base_url: str,
    access_token: str,
    mxc: str,
    path: str,
    read_timeout: float,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The successful response for the media at ``path`` (``mxc`` names it in errors),
    after any 429 retries (authenticated media, ``/_matrix/client/v1/media/download``)."""
    url = base_url.rstrip("/") + path
    waits = RateLimitWaits()
    while True:
        try:
            async with http.get(
                url, headers=auth(access_token), timeout=timeout(read_timeout)
            ) as resp:
                if resp.status == 429:
                    body = await error_body(resp)
                    log.info("download rate limited; retrying", extra={"mxc": mxc})
                    if await waits(body, resp.headers):
                        continue
                    break
                if resp.status == 404:
                    answer = await error_body(resp)
                    err = homeserver_error(f"downloading {mxc}", 404, answer)
                    raise HomeserverError(
                        f"{mxc} is not on the homeserver (deleted, quarantined or "
                        f"never uploaded): {err.message}",
                        errcode=err.errcode,
                        status=404,
                    )
                if resp.status >= 400:
                    raise homeserver_error(
                        f"downloading {mxc}", resp.status, await error_body(resp)
                    )
                yield resp
                return
        except aiohttp.ClientError as exc:
            raise HomeserverError(
                f"downloading {mxc} from {base_url} failed: {exc or type(exc).__name__}. "
                "Is the homeserver running? (`datarooms status`)"
            ) from None
        except TimeoutError:
            raise HomeserverError(
                f"the homeserver at {base_url} stopped answering while sending {mxc}"
            ) from None
    raise HomeserverError(f"downloading {mxc}: still rate limited after retries", status=429)


async def iter_body(resp: aiohttp.ClientResponse, chunk_size: int) -> AsyncIterator[bytes]:
    """The body in pieces of ``chunk_size`` (the last may be shorter)."""
    buf: list[bytes] = []
    held = 0
    while True:
        piece = await resp.content.read(chunk_size - held)
        if not piece:
            break
        buf.append(piece)
        held += len(piece)
        if held >= chunk_size:
            yield b"".join(buf)
            buf.clear()
            held = 0
    if buf:
        yield b"".join(buf)
