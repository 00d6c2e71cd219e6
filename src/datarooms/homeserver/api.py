"""The Matrix HTTP API client that services and the CLI use.

Services and the CLI never import the private transport; what they need of it
is here:

- :class:`MatrixApi`: a client of one Matrix-style API (JSON bodies,
  ``{"errcode", "error"}`` errors, ``429`` with ``retry_after_ms``) with bounded
  retries: a homeserver (``whoami``, ``versions``, ``login_password``,
  ``openid_token``, ``logout`` and any ``request``), or one of our own services'
  REST APIs (give it ``name`` and ``errors``);
- :func:`openid_userinfo`: who a Matrix OpenID token belongs to, asked of the
  homeserver that issued it (the federation API);
- :class:`Answer`, :data:`NO_RETRY`, :data:`SERVICE_RETRY`, :class:`RetryPolicy`.
"""

from __future__ import annotations

from datarooms._transport.http import (
    DEFAULT_RETRY,
    NO_RETRY,
    SERVICE_RETRY,
    Answer,
    ErrorFactory,
    MatrixHttp,
    RetryPolicy,
    matrix_error,
)

#: The federation endpoint that says whose an OpenID token is.
USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"


class MatrixApi(MatrixHttp):
    """A client of one Matrix-style HTTP API; see :class:`datarooms._transport.http.MatrixHttp`."""

    async def __aenter__(self) -> MatrixApi:
        return self


async def openid_userinfo(api: MatrixApi, token: str) -> Answer:
    """Ask a homeserver whose OpenID ``token`` is: ``200 {"sub": user_id}`` if it issued
    it, ``401``/``403``/``404`` if not. The token goes in the query, as the federation
    API defines; the transport never logs a query."""
    result: Answer = await api.answer(
        "GET", USERINFO_PATH, params={"access_token": token}, auth=False
    )
    return result


__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRY",
    "SERVICE_RETRY",
    "USERINFO_PATH",
    "Answer",
    "ErrorFactory",
    "MatrixApi",
    "RetryPolicy",
    "matrix_error",
    "openid_userinfo",
]
