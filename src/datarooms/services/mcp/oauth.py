"""MCP authorization as the MCP spec defines it: OAuth 2.1 with PKCE, run by the platform.

- ``/mcp`` answers an unauthenticated request ``401`` with ``WWW-Authenticate: Bearer
  resource_metadata="<base>/.well-known/oauth-protected-resource/mcp"`` (RFC 9728);
- that document names this server as the authorization server, whose metadata
  (RFC 8414), dynamic client registration (RFC 7591), ``/authorize`` and ``/token``
  (authorization code + PKCE S256, refresh tokens) come from the official ``mcp`` SDK's
  auth server (``mcp.server.auth``), with this module as its provider;
- consent: ``/authorize`` sends the person to ``/oauth/login``, where they sign in with
  their Matrix account (a password login against the platform's homeserver, logged out
  again at once) and approve the agent the client asked for (scope ``agent:NAME``).
  Only a platform operator (the service account or an ``[mcp] operators`` user) may
  authorize an agent;
- the access token maps to exactly that agent's capabilities (``agents.toml``).

Codes, tokens and registered clients live in memory: a restart of the platform signs
every OAuth client out (they start the flow again). At most 10,000 registered clients and
1,000 sign-ins in progress; password guesses on the consent page are the homeserver's
login attempts, under its own rate limit.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import create_auth_routes, create_protected_resource_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from datarooms.errors import HomeserverError
from datarooms.homeserver.api import MatrixApi
from datarooms.ids import SERVER_NAME

log = logging.getLogger(__name__)

SCOPE_PREFIX = "agent:"
ACCESS_SECONDS = 3600
CODE_SECONDS = 300
LOGIN_PATH = "/oauth/login"
#: Sign-ins in progress at once (each lives CODE_SECONDS); past it /authorize says retry.
MAX_PENDING = 1000


@dataclass
class _Pending:
    client: OAuthClientInformationFull
    params: AuthorizationParams
    expires: float


class MatrixLoginProvider:
    """The ``mcp`` SDK's ``OAuthAuthorizationServerProvider``, consent by Matrix login."""

    def __init__(
        self,
        base_url: str,
        homeserver_url: str,
        server_name: str,
        *,
        agents: Callable[[], Iterable[str]],
        operators: Callable[[], Iterable[str]],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.homeserver_url = homeserver_url
        self.server_name = server_name
        self.agents = agents
        self.operators = operators
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.pending: dict[str, _Pending] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}

    # -- clients ----------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        if len(self.clients) >= 10_000:
            raise RegistrationError("invalid_client_metadata", "too many registered clients")
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info

    # -- authorization ----------------------------------------------------------------

    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        scopes = params.scopes or []
        agents = [s[len(SCOPE_PREFIX) :] for s in scopes if s.startswith(SCOPE_PREFIX)]
        if len(agents) > 1:
            raise AuthorizeError("invalid_scope", "ask for one agent: scope agent:NAME")
        self._sweep()
        if len(self.pending) >= MAX_PENDING:
            raise AuthorizeError(
                "temporarily_unavailable", "too many sign-ins in progress; retry in a few minutes"
            )
        request_id = secrets.token_urlsafe(24)
        self.pending[request_id] = _Pending(client, params, time.time() + CODE_SECONDS)
        return f"{self.base_url}{LOGIN_PATH}?{urlencode({'request': request_id})}"

    async def login_page(self, request: Request) -> Response:
        """``GET``: the consent form; ``POST``: sign in with Matrix and approve."""
        if request.method == "GET":
            rid = request.query_params.get("request", "")
            pending = self.pending.get(rid)
            if pending is None:
                return HTMLResponse("<p>This sign-in link expired; start again.</p>", 400)
            return HTMLResponse(self._form(rid, pending))
        form = await request.form()
        rid = str(form.get("request", ""))
        pending = self.pending.get(rid)
        if pending is None or pending.expires < time.time():
            return HTMLResponse("<p>This sign-in link expired; start again.</p>", 400)
        user = str(form.get("user", "")).strip()
        password = str(form.get("password", ""))
        agent = str(form.get("agent", "")).strip()
        error = await self._check(user, password, agent)
        if error is not None:
            return HTMLResponse(self._form(rid, pending, error), 403)
        del self.pending[rid]
        code = secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=[SCOPE_PREFIX + agent],
            expires_at=time.time() + CODE_SECONDS,
            client_id=str(pending.client.client_id),
            code_challenge=pending.params.code_challenge,
            redirect_uri=pending.params.redirect_uri,
            redirect_uri_provided_explicitly=pending.params.redirect_uri_provided_explicitly,
            resource=pending.params.resource,
            subject=self._user_id(user),
        )
        log.info("MCP OAuth consent", extra={"user_id": self._user_id(user), "agent": agent})
        target = construct_redirect_uri(
            str(pending.params.redirect_uri), code=code, state=pending.params.state
        )
        return RedirectResponse(target, status_code=302)

    def _user_id(self, user: str) -> str:
        return user if user.startswith("@") else f"@{user}:{self.server_name}"

    async def _check(self, user: str, password: str, agent: str) -> str | None:
        if agent not in set(self.agents()):
            return f"there is no agent {agent!r} in agents.toml"
        user_id = self._user_id(user)
        if not user_id.startswith("@") or ":" not in user_id:
            return "give a Matrix user id or localpart"
        if not SERVER_NAME.match(user_id.split(":", 1)[1]):
            return "that is not a Matrix user id"
        if user_id not in set(self.operators()):
            return f"{user_id} may not authorize agents on this platform (not an operator)"
        api = MatrixApi(self.homeserver_url, timeout=15, name="the homeserver")
        try:
            answer = await api.answer(
                "POST",
                "/_matrix/client/v3/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": password,
                    "initial_device_display_name": "datarooms MCP consent (logged out at once)",
                },
                auth=False,
            )
            if answer.status != 200 or not isinstance(answer.body, dict):
                return "the homeserver refused that user name and password"
            token = answer.body.get("access_token")
            if isinstance(token, str):
                await api.answer(
                    "POST",
                    "/_matrix/client/v3/logout",
                    json={},
                    headers={"Authorization": f"Bearer {token}"},
                    auth=False,
                )
        except HomeserverError as exc:
            return f"cannot reach the homeserver: {exc.message}"
        finally:
            await api.close()
        return None

    def _form(self, rid: str, pending: _Pending, error: str | None = None) -> str:
        scopes = pending.params.scopes or []
        asked = next((s[len(SCOPE_PREFIX) :] for s in scopes if s.startswith(SCOPE_PREFIX)), "")
        client = html.escape(pending.client.client_name or str(pending.client.client_id))
        err = f"<p style='color:#b00'>{html.escape(error)}</p>" if error else ""
        return (
            "<!doctype html><title>datarooms: authorize an MCP client</title>"
            f"<h1>Authorize {client}</h1>{err}"
            f"<p>Sign in with your Matrix account on {html.escape(self.server_name)} to let "
            "this client act as an agent of the platform.</p>"
            f"<form method='post' action='{LOGIN_PATH}'>"
            f"<input type='hidden' name='request' value='{html.escape(rid)}'>"
            f"<label>Agent <input name='agent' value='{html.escape(asked)}'></label><br>"
            "<label>Matrix user <input name='user' autocomplete='username'></label><br>"
            "<label>Password <input name='password' type='password' "
            "autocomplete='current-password'></label><br>"
            "<button>Sign in and approve</button></form>"
        )

    # -- codes and tokens -----------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        code = self.codes.get(authorization_code)
        if code is None or code.client_id != client.client_id or code.expires_at < time.time():
            return None
        return code

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)  # a code is good once
        return self._issue(
            str(client.client_id),
            authorization_code.scopes,
            authorization_code.resource,
            authorization_code.subject,
        )

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        token = self.refresh.get(refresh_token)
        if token is None or token.client_id != client.client_id:
            return None
        return token

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        self.refresh.pop(refresh_token.token, None)  # rotated
        wanted = scopes or refresh_token.scopes
        if not set(wanted) <= set(refresh_token.scopes):
            raise TokenError("invalid_scope", "a refresh cannot widen the scope")
        return self._issue(
            str(client.client_id), wanted, refresh_token.resource, refresh_token.subject
        )

    def _issue(
        self, client_id: str, scopes: list[str], resource: str | None, subject: str | None
    ) -> OAuthToken:
        self._sweep()
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = int(time.time()) + ACCESS_SECONDS
        self.access[access] = AccessToken(
            token=access,
            client_id=client_id,
            scopes=scopes,
            expires_at=expires,
            resource=resource,
            subject=subject,
        )
        self.refresh[refresh] = RefreshToken(
            token=refresh, client_id=client_id, scopes=scopes, resource=resource, subject=subject
        )
        return OAuthToken(
            access_token=access,
            token_type="Bearer",  # noqa: S106 - the token type, not a secret
            expires_in=ACCESS_SECONDS,
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    async def load_access_token(self, token: str) -> AccessToken | None:
        found = self.access.get(token)
        if found is None or (found.expires_at is not None and found.expires_at < time.time()):
            return None
        return found

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.access.pop(token.token, None)
        self.refresh.pop(token.token, None)

    def agent_of(self, token: str) -> str | None:
        """The agent an OAuth access token acts as, or ``None``."""
        found = self.access.get(token)
        if found is None or (found.expires_at is not None and found.expires_at < time.time()):
            return None
        scope = next((s for s in found.scopes if s.startswith(SCOPE_PREFIX)), None)
        return scope[len(SCOPE_PREFIX) :] if scope else None

    def _sweep(self) -> None:
        now = time.time()
        for rid in [r for r, p in self.pending.items() if p.expires < now]:
            del self.pending[rid]
        for c in [c for c, v in self.codes.items() if v.expires_at < now]:
            del self.codes[c]
        for t in [t for t, v in self.access.items() if (v.expires_at or now + 1) < now]:
            del self.access[t]

    # -- routes -----------------------------------------------------------------

    def routes(self, resource_url: str, agent_scopes: list[str]) -> list[Route]:
        """The authorization server's routes, RFC 9728 metadata, and the consent page."""
        issuer = AnyHttpUrl(self.base_url)
        return [
            *create_auth_routes(
                self,  # type: ignore[arg-type]
                issuer,
                client_registration_options=ClientRegistrationOptions(enabled=True),
                revocation_options=RevocationOptions(enabled=True),
            ),
            *create_protected_resource_routes(
                AnyHttpUrl(resource_url),
                [issuer],
                scopes_supported=agent_scopes or None,
                resource_name="datarooms MCP server",
            ),
            Route(LOGIN_PATH, endpoint=self.login_page, methods=["GET", "POST"]),
        ]


def resource_metadata_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/.well-known/oauth-protected-resource/mcp"


__all__ = ["LOGIN_PATH", "SCOPE_PREFIX", "MatrixLoginProvider", "resource_metadata_url"]
