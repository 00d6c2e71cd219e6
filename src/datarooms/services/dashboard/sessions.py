"""Sign-in sessions of the dashboard: an opaque id in an ``HttpOnly``, ``SameSite=Strict``
cookie, and a CSRF token per session that every change must send back in a header.

Sessions live in memory only: restarting the dashboard signs everyone out (their
devices stay, under the data dir, and the next sign-in reopens them).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

#: The session cookie, and the cookie that carries the sign-in form's CSRF token.
SESSION_COOKIE = "dr_session"
LOGIN_COOKIE = "dr_login"
#: The header every change sends its session's CSRF token in.
CSRF_HEADER = "x-csrf-token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class WebSession:
    """One signed-in browser."""

    user_id: str
    csrf: str
    expires: float
    #: The sha256 of the cookie's value (the value itself is not kept).
    key: str = ""

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """The signed-in browsers, by cookie; each session slides forward when used."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._by_key: dict[str, WebSession] = {}

    def create(self, user_id: str) -> tuple[str, WebSession]:
        """A new session of ``user_id``: ``(cookie value, session)``."""
        self._expire()
        cookie = secrets.token_urlsafe(32)
        session = WebSession(
            user_id, secrets.token_urlsafe(32), time.monotonic() + self.lifetime, _digest(cookie)
        )
        self._by_key[session.key] = session
        return cookie, session

    def get(self, cookie: str | None) -> WebSession | None:
        if not cookie or len(cookie) > 200:
            return None
        session = self._by_key.get(_digest(cookie))
        if session is None:
            return None
        now = time.monotonic()
        if session.expires < now:
            self._by_key.pop(session.key, None)
            return None
        session.expires = now + self.lifetime
        return session

    def end(self, session: WebSession) -> None:
        self._by_key.pop(session.key, None)

    def users(self) -> set[str]:
        """The users with a live session."""
        self._expire()
        return {s.user_id for s in self._by_key.values()}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._by_key.items() if s.expires < now]:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)


__all__ = ["CSRF_HEADER", "LOGIN_COOKIE", "SESSION_COOKIE", "Sessions", "WebSession"]
