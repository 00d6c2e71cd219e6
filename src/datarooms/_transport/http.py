"""The one HTTP client of datarooms: JSON over aiohttp, with bounded retries.

:class:`JsonHttp` is what every part of datarooms uses to reach an HTTP API (a
homeserver, the state bot, the rooms bot, a chain node). It owns one aiohttp
session and retries, within bounds, what is safe to retry:

- ``429`` (rate limited): the request was refused, not done; wait what the
  server asks (``retry_after_ms`` in a Matrix body, else a ``Retry-After``
  header, at most :attr:`RetryPolicy.max_wait` each time) and try again, at most
  :attr:`RetryPolicy.rate_limit_attempts` times;
- ``502``/``503``/``504`` and dropped connections: back off (exponentially, from
  :attr:`RetryPolicy.backoff` to :attr:`RetryPolicy.max_backoff`) and try again
  at most :attr:`RetryPolicy.error_attempts` times, for idempotent requests only
  (``GET``, ``HEAD``, ``PUT``, ``DELETE``, ``OPTIONS``, or ``idempotent=True``);
  a connection that could not even be opened is retried for any method;
- timeouts are not retried: a request that took too long may have been done.

:class:`MatrixHttp` adds what Matrix APIs share on top: the access token in the
``Authorization`` header (never in a URL, so it cannot reach a log line) and
``{"errcode", "error"}`` error bodies turned into :class:`HomeserverError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import aiohttp

from datarooms.errors import DataroomsError, HomeserverError

log = logging.getLogger(__name__)

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    #: Tries of a request the server answered 429 ...
    rate_limit_attempts: int = 1000
    #: ... and the longest it waits on 429s in all. A busy public homeserver answers
    #: a burst from many tasks of one account with 429 again and again (each waiter
    #: wakes with the others and most lose the race): what counts is the time, not
    #: the tries. matrix-nio's own requests wait without a limit.
    rate_limit_budget: float = 600.0
    #: The longest single wait a 429 may ask for; longer asks are cut to this.
    max_wait: float = 30.0
    #: Tries of an idempotent request on 502/503/504 or a dropped connection.
    error_attempts: int = 4
    #: First back-off after a failed try; doubles each time, up to ``max_backoff``.
    backoff: float = 0.2
    max_backoff: float = 3.0
    #: Answers that mean "try again later" (a proxy or an overloaded server). Our own
    #: services answer 502 for "the homeserver failed": their clients use ``frozenset()``.
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})


DEFAULT_RETRY = RetryPolicy()
#: No retries at all (health checks, polls that retry by themselves).
NO_RETRY = RetryPolicy(rate_limit_attempts=1, error_attempts=1)
#: For the clients of our own services: 429 and lost connections only (their 5xx
#: answers are final: 502 means the homeserver behind them failed).
SERVICE_RETRY = RetryPolicy(retry_statuses=frozenset())


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, its JSON body (None if it had none) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


class Unreachable(Exception):
    """The server could not be reached, or did not answer in time (``timed_out``)."""

    def __init__(self, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out


class RateLimitWaits:
    """One request's waits on 429 under a :class:`RetryPolicy` (the media up- and
    downloads, which run their own loops): ``await waits(body, headers)`` sleeps what the
    server asks and returns True, or False once the policy's tries or time are spent."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or DEFAULT_RETRY
        self.tries = 0
        self.waited = 0.0

    async def __call__(self, body: Any, headers: Mapping[str, str] | None = None) -> bool:
        p = self.policy
        delay = min(p.max_wait, retry_after_seconds(body, headers))
        self.tries += 1
        if self.tries >= p.rate_limit_attempts or self.waited + delay > p.rate_limit_budget:
            return False
        self.waited += delay
        await asyncio.sleep(delay)
        return True


def retry_after_seconds(body: Any, headers: Mapping[str, str] | None = None) -> float:
    """How long a 429 asks to wait: ``retry_after_ms`` of a Matrix error body, else the
    ``Retry-After`` header (seconds), else one second."""
    if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), (int, float)):
        return max(0.05, float(body["retry_after_ms"]) / 1000.0)
    raw = (headers or {}).get("Retry-After")
    if raw is not None:
        try:
            return max(0.05, float(raw))
        except ValueError:
            pass
    return 1.0


class JsonHttp:
    """JSON requests to one base URL over one aiohttp session, with bounded retries."""

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float | aiohttp.ClientTimeout = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        ssl_context: ssl.SSLContext | None = None,
        tls_host: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: How HTTPS peers are verified (None: the system's CAs), and the host name their
        #: certificate must be valid for when it is not the URL's (federation delegation).
        self._ssl = ssl_context
        self._tls_host = tls_host
        self._session = session
        self._own_session = session is None
        self._timeout = (
            timeout
            if isinstance(timeout, aiohttp.ClientTimeout)
            else aiohttp.ClientTimeout(total=timeout)
        )
        self.retry = retry

    async def __aenter__(self) -> JsonHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (created on first use), e.g. for a websocket."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Send one request (``path`` is appended to the base URL; a full URL is used as
        is); retry as :class:`RetryPolicy` says; return the last :class:`Answer`.

        Raises :class:`Unreachable` if no answer came. Never logs the URL's query or
        the headers (they may hold tokens).
        """
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        may_repeat = method.upper() in _IDEMPOTENT if idempotent is None else idempotent
        policy = self.retry
        session = self.session()
        per_try = aiohttp.ClientTimeout(total=timeout) if timeout is not None else session.timeout
        rate_limited = failed = 0
        waited_429 = 0.0
        backoff = policy.backoff
        extra: dict[str, Any] = {}
        if self._tls_host is not None:
            extra["server_hostname"] = self._tls_host
            headers = {"Host": self._tls_host, **(headers or {})}
        while True:
            try:
                async with session.request(
                    method, url, json=json, params=params, headers=headers, timeout=per_try, **extra
                ) as resp:
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                    answer = Answer(resp.status, body, resp.headers)
            except aiohttp.ClientConnectorError as exc:  # never sent: safe to repeat
                failed += 1
                if failed >= policy.error_attempts:
                    raise Unreachable(str(exc) or type(exc).__name__) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                failed += 1
                if not may_repeat or failed >= policy.error_attempts:
                    raise Unreachable(str(exc) or type(exc).__name__) from None
            except TimeoutError:
                raise Unreachable("no answer in time", timed_out=True) from None
            else:
                if answer.status == 429:
                    rate_limited += 1
                    delay = min(policy.max_wait, retry_after_seconds(body, answer.headers))
                    if (
                        rate_limited >= policy.rate_limit_attempts
                        or waited_429 + delay > policy.rate_limit_budget
                    ):
                        return answer
                    waited_429 += delay
                    log.info(
                        "rate limited; retrying",
                        extra={"path": path.split("?", 1)[0], "delay_s": delay},
                    )
                    await asyncio.sleep(delay)
                    continue
                if answer.status in policy.retry_statuses and may_repeat:
                    failed += 1
                    if failed >= policy.error_attempts:
                        return answer
                else:
                    return answer
            log.info(
                "request failed; retrying",
                extra={"path": path.split("?", 1)[0], "delay_s": round(backoff, 2)},
            )
            await asyncio.sleep(backoff)
            backoff = min(policy.max_backoff, backoff * 2)


class RequestOptions(TypedDict, total=False):
    """The options of :meth:`MatrixHttp.answer` and :meth:`MatrixHttp.request`."""

    json: Any
    params: Mapping[str, str] | None
    headers: Mapping[str, str] | None
    auth: bool
    idempotent: bool | None
    timeout: float | None


#: Builds the error for an answer of 400 or more: ``(status, body, what) -> error``.
ErrorFactory = Callable[[int, Any, str], DataroomsError]


def matrix_error(status: int, body: Any, what: str) -> HomeserverError:
    """The :class:`HomeserverError` for a Matrix error answer to ``what``."""
    errcode = "M_UNKNOWN"
    error = f"HTTP {status}"
    if isinstance(body, dict):
        errcode = str(body.get("errcode", errcode))
        error = str(body.get("error", error))
    if status == 429:
        error = f"still rate limited after retries: {error}"
    return HomeserverError(f"{what} failed: {errcode}: {error}", errcode=errcode, status=status)


class MatrixHttp(JsonHttp):
    """A client of one Matrix-style API (a homeserver by default).

    ``name`` says what the server is in error messages ("the homeserver", "the state
    bot"); ``errors`` builds the exception for an error answer.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        name: str = "the homeserver",
        errors: ErrorFactory = matrix_error,
        unreachable_errcodes: tuple[str | None, str | None] = (None, None),
        ssl_context: ssl.SSLContext | None = None,
        tls_host: str | None = None,
    ) -> None:
        super().__init__(
            base_url,
            session=session,
            timeout=timeout,
            retry=retry,
            ssl_context=ssl_context,
            tls_host=tls_host,
        )
        self.access_token = access_token
        self.name = name
        self._errors = errors
        #: The errcodes of "cannot reach" and "no answer in time" (None: DR_HOMESERVER).
        self._unreachable, self._timed_out = unreachable_errcodes

    async def __aenter__(self) -> MatrixHttp:
        return self

    async def answer(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Like :meth:`JsonHttp.send`, with the access token; an unreachable server
        raises :class:`HomeserverError` naming it."""
        sent = dict(headers or {})
        if auth and self.access_token:
            sent["Authorization"] = f"Bearer {self.access_token}"
        try:
            return await self.send(
                method,
                path,
                json=json,
                params=params,
                headers=sent,
                idempotent=idempotent,
                timeout=timeout,
            )
        except Unreachable as exc:
            if exc.timed_out:
                raise HomeserverError(
                    f"{self.name} at {self.base_url} did not answer {method} "
                    f"{path.split('?', 1)[0]} in time",
                    errcode=self._timed_out,
                ) from None
            raise HomeserverError(
                f"cannot reach {self.name} at {self.base_url}: {exc.detail}. "
                "Is it running? (`datarooms status`)",
                errcode=self._unreachable,
            ) from None

    async def request(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        """The JSON body of a successful answer (options as :meth:`answer`'s); an error
        answer raises (see ``errors``)."""
        answer = await self.answer(method, path, **options)
        if answer.status >= 400:
            raise self._errors(answer.status, answer.body, f"{method} {path.split('?', 1)[0]}")
        return answer.body

    # -- calls every Matrix client needs ----------------------------------------

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

    async def logout(self) -> None:
        await self.request("POST", "/_matrix/client/v3/logout", json={})

    async def openid_token(self, user_id: str) -> dict[str, Any]:
        """A Matrix OpenID token of ``user_id`` (the account of the access token):
        ``{"access_token", "matrix_server_name", "expires_in", ...}``."""
        result = await self.request(
            "POST",
            f"/_matrix/client/v3/user/{quote(user_id, safe='')}/openid/request_token",
            json={},
            idempotent=True,  # asking twice only makes two tokens
        )
        if not isinstance(result, dict) or not isinstance(result.get("access_token"), str):
            raise HomeserverError("the homeserver answered no OpenID token")
        return result
