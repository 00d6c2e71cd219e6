"""Plain Matrix HTTP calls for the few endpoints matrix-nio does not wrap.

Every call honours ``429`` with ``retry_after_ms`` and turns an error answer
into :class:`HomeserverError` carrying the homeserver's ``errcode``.
Access tokens go in the ``Authorization`` header, never in a URL, so they
cannot end up in a log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from datarooms.errors import HomeserverError

log = logging.getLogger(__name__)

_MAX_RATE_LIMIT_RETRIES = 8


class MatrixHttp:
    """A small async client for one homeserver base URL."""

    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> MatrixHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        headers = {}
        if auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        url = self.base_url + path
        for _attempt in range(_MAX_RATE_LIMIT_RETRIES):
            try:
                async with self._get_session().request(
                    method, url, json=json, params=params, headers=headers
                ) as resp:
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                    if resp.status == 429:
                        delay = _retry_after(body)
                        log.info("rate limited; retrying", extra={"path": path, "delay_s": delay})
                        await asyncio.sleep(delay)
                        continue
                    if resp.status >= 400:
                        errcode = "M_UNKNOWN"
                        error = f"HTTP {resp.status}"
                        if isinstance(body, dict):
                            errcode = str(body.get("errcode", errcode))
                            error = str(body.get("error", error))
                        raise HomeserverError(
                            f"{method} {path} failed: {errcode}: {error}",
                            errcode=errcode,
                            status=resp.status,
                        )
                    return body
            except aiohttp.ClientConnectionError as exc:
                raise HomeserverError(
                    f"cannot reach the homeserver at {self.base_url}: {exc}. "
                    "Is it running? (`datarooms status`)"
                ) from None
            except TimeoutError:
                raise HomeserverError(
                    f"the homeserver at {self.base_url} did not answer {method} {path} in time"
                ) from None
        raise HomeserverError(f"{method} {path}: still rate limited after retries", status=429)

    async def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/_matrix/client/v3/account/whoami")
        return result

    async def versions(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/_matrix/client/versions", auth=False)
        return result

    async def login_password(
        self,
        user: str,
        password: str,
        *,
        device_id: str | None = None,
        device_name: str = "datarooms",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": device_name,
        }
        if device_id:
            body["device_id"] = device_id
        result: dict[str, Any] = await self.request(
            "POST", "/_matrix/client/v3/login", json=body, auth=False
        )
        return result


def _retry_after(body: Any) -> float:
    if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), (int, float)):
        return max(0.05, float(body["retry_after_ms"]) / 1000.0)
    return 1.0
