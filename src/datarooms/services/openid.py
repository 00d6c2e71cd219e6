"""Who is calling: Matrix OpenID tokens, verified with the caller's homeserver.

A caller gets a token from its own homeserver
(``POST /_matrix/client/v3/user/{userId}/openid/request_token``) and sends it as
``Authorization: Bearer <token>``, with ``X-Matrix-Server-Name: <server name>``
saying which homeserver issued it (the bot's own server when absent).

The bot asks that homeserver who the token belongs to
(``GET /_matrix/federation/v1/openid/userinfo``), and accepts the answer only for
a user *of that server*: a homeserver can vouch for its own users, no one else's.

Which homeservers: the bot's own, those of an explicit mapping
``{server_name: base_url}`` (``[statebot] homeservers``), and, when the platform
federates, every server its federation policy allows (``[federation] allow``),
found by the spec's server discovery (``.well-known/matrix/server``, SRV, port 8448)
and asked over TLS verified as the homeserver verifies its peers
(:class:`FederationTrust`). A server outside all of these is refused before any
request leaves the bot.

Verified tokens are cached (keyed by a SHA-256 of the token, never the token
itself) for ``cache_seconds``; the userinfo answer does not say when a token
expires, and Synapse's tokens live one hour, so keep ``cache_seconds`` well
under that. Rejected tokens are remembered for a few seconds, in a cache of
their own (``max_negative_entries``), so random tokens can evict only other
rejected ones, never a verified caller. Tokens not in either cache are checked
with their homeserver at a bounded pace (``verify_per_second`` after a burst of
``verify_burst``, per homeserver): past it the answer is ``429 M_LIMIT_EXCEEDED``
until the budget refills, so a flood of made-up tokens becomes neither a flood of
requests to the homeserver nor a way to push verified callers out. Concurrent
requests with the same new token share one verification.

**UCAN invocations** are the other kind of bearer token (see :class:`UcanGate` and
docs/auth.md): a UCAN 1.0 container (``C`` + base64url DAG-CBOR) holding an invocation
signed by the caller and the delegations that prove it, rooted in a delegation the
service itself issued to a Matrix user it verified with an OpenID token. Each service has
its own ``did:key`` (served at ``/.well-known/did.json``); a UCAN is checked right here,
against the request it comes with (:class:`Action`: command, room, key), and never
reaches a homeserver. The verified caller is that Matrix user, acting through the
invoker's DID (``Caller.via``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from datarooms.errors import AccessDeniedError, HomeserverError, UnauthorizedError, ValidationError
from datarooms.homeserver.api import MatrixApi, openid_userinfo
from datarooms.homeserver.federation import ServerResolver, ssl_context_for
from datarooms.ids import SERVER_NAME, server_of
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.ucan import (
    MCP_CALL,
    MCP_SERVER,
    Delegation,
    Principal,
    RevocationStore,
    UcanError,
    Validator,
    covers,
    delegate,
    load_or_create_principal,
    looks_like_container,
)
from datarooms.services.scaffold import TokenBucket, bearer_token, header

if TYPE_CHECKING:
    from datarooms.config import Settings
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[\x21-\x7e]{1,1024}$")


class VerificationLimitedError(UnauthorizedError):
    """Too many unknown tokens to check just now: retry in a moment."""

    errcode = "M_LIMIT_EXCEEDED"
    http_status = 429


@dataclass(frozen=True)
class FederationTrust:
    """The platform's federation policy, for services that verify other servers' users:
    which servers are allowed (``None``: any), how to find them, how to verify them."""

    allowed: tuple[str, ...] | None
    resolver: ServerResolver
    ssl_context: ssl.SSLContext

    def allows(self, server_name: str) -> bool:
        return self.allowed is None or server_name in self.allowed


def federation_trust(settings: Settings) -> FederationTrust | None:
    """The platform's :class:`FederationTrust`, or ``None`` when it does not federate."""
    if not settings.federation.enabled:
        return None
    ctx = ssl_context_for(settings)
    return FederationTrust(settings.federation.allowed, ServerResolver(ssl_context=ctx), ctx)


class TrustedServers:
    """The homeservers whose users a service accepts: named ones, plus (when the platform
    federates) every server its policy allows. ``server in trusted`` asks."""

    def __init__(self, named: Mapping[str, str], federation: FederationTrust | None = None) -> None:
        self.named = {name: url.rstrip("/") for name, url in named.items()}
        self.federation = federation

    def __contains__(self, server: object) -> bool:
        if not isinstance(server, str):
            return False
        return server in self.named or (
            self.federation is not None and self.federation.allows(server)
        )

    def __iter__(self) -> Iterator[str]:
        yield from self.named
        if self.federation is not None and self.federation.allowed is not None:
            yield from (s for s in self.federation.allowed if s not in self.named)

    def describe(self) -> str:
        names = ", ".join(sorted(self)) or "none"
        if self.federation is not None and self.federation.allowed is None:
            return names + " and any other server (federation allows any)"
        return names


@dataclass(frozen=True)
class Caller:
    """A verified Matrix user; ``via`` is the DID that invoked for them (a UCAN caller)."""

    user_id: str
    via: str | None = None

    @property
    def server_name(self) -> str:
        return server_of(self.user_id)


class OpenIdVerifier:
    """Verify OpenID tokens against the homeservers of a mapping, with a cache."""

    def __init__(
        self,
        homeservers: Mapping[str, str],
        *,
        default_server: str,
        federation: FederationTrust | None = None,
        cache_seconds: float = 300.0,
        negative_cache_seconds: float = 5.0,
        max_entries: int = 10_000,
        max_negative_entries: int = 1_000,
        verify_per_second: float = 20.0,
        verify_burst: int = 100,
        timeout: float = 10.0,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        if not homeservers:
            raise ValueError("OpenID verification needs at least one trusted homeserver")
        #: Who may call: the named homeservers, and those the federation policy allows.
        self.trusted = TrustedServers(homeservers, federation)
        self.homeservers = self.trusted.named
        self.default_server = default_server
        self.cache_seconds = cache_seconds
        self.negative_cache_seconds = negative_cache_seconds
        self.max_entries = max_entries
        self.max_negative_entries = max_negative_entries
        self.verify_per_second = verify_per_second
        self.verify_burst = verify_burst
        self._timeout = timeout
        self._apis: dict[str, MatrixApi] = {}
        #: Verified callers, and (apart, so they cannot evict those) rejected tokens.
        self._cache: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()
        self._rejected: OrderedDict[bytes, float] = OrderedDict()
        #: Per homeserver: (tokens left, when counted) of the verification budget.
        self._budget = TokenBucket(verify_per_second, verify_burst)
        self._inflight: dict[bytes, asyncio.Future[Caller]] = {}
        self._on_result = on_result or (lambda _r: None)
        #: The service's UCAN identity and validator; ``None``: OpenID tokens only.
        self.ucan: UcanGate | None = None

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    async def close(self) -> None:
        apis, self._apis = self._apis, {}
        for api in apis.values():
            await api.close()

    async def verify(
        self, token: str | None, server_name: str | None, action: Action | None = None
    ) -> Caller:
        """The caller the token belongs to; :class:`UnauthorizedError` if none.

        A UCAN container (when the service takes UCANs) is checked against ``action``,
        what the request asks; an OpenID token ignores it (the handler checks access).
        """
        if token and self.ucan is not None and (len(token) > 1024 or looks_like_container(token)):
            try:
                caller = self.ucan.check(token, action)
            except UcanError:
                self._on_result("ucan_rejected")
                raise
            self._on_result("ucan")
            return caller
        if not token:
            self._on_result("missing")
            raise UnauthorizedError(
                "no OpenID token: send 'Authorization: Bearer <token>' with a token from "
                "POST /_matrix/client/v3/user/{userId}/openid/request_token on your homeserver",
                errcode="M_MISSING_TOKEN",
            )
        server = server_name or self.default_server
        if not _TOKEN.match(token):
            self._on_result("rejected")
            raise UnauthorizedError("the OpenID token is malformed")
        if not SERVER_NAME.match(server):
            self._on_result("rejected")
            raise UnauthorizedError(
                "X-Matrix-Server-Name is not a Matrix server name", errcode="DR_UNKNOWN_HOMESERVER"
            )
        if server not in self.trusted:
            self._on_result("rejected")
            raise UnauthorizedError(
                f"the homeserver {server!r} is not one this service trusts; it verifies "
                f"tokens of: {self.trusted.describe()}",
                errcode="DR_UNKNOWN_HOMESERVER",
            )
        cache_key = hashlib.sha256(f"{server}\0{token}".encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None:
            expires, caller = hit
            if expires > now:
                self._cache.move_to_end(cache_key)
                self._on_result("cached")
                return caller
            del self._cache[cache_key]
        rejected_until = self._rejected.get(cache_key)
        if rejected_until is not None:
            if rejected_until > now:
                self._on_result("rejected")
                raise UnauthorizedError(_UNKNOWN)
            del self._rejected[cache_key]
        pending = self._inflight.get(cache_key)
        if pending is not None:
            # Someone is already asking the homeserver about this token: share the answer.
            await asyncio.wait({pending})
            if pending.cancelled():  # that request went away mid-way: ask ourselves
                return await self.verify(token, server_name)
            return pending.result()
        if not self._spend(server, now):
            self._on_result("limited")
            raise VerificationLimitedError(
                "too many unknown OpenID tokens to check just now; retry in a few seconds"
            )
        future: asyncio.Future[Caller] = asyncio.get_running_loop().create_future()
        self._inflight[cache_key] = future
        try:
            caller = await self._ask(server, token)
        except UnauthorizedError as exc:
            self._remember(cache_key, None, self.negative_cache_seconds)
            self._on_result("rejected")
            _settle(future, exc)
            raise
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            _settle(future, exc)
            raise
        else:
            self._remember(cache_key, caller, self.cache_seconds)
            self._on_result("verified")
            future.set_result(caller)
            return caller
        finally:
            self._inflight.pop(cache_key, None)

    @property
    def rejected_cache_size(self) -> int:
        return len(self._rejected)

    def _spend(self, server: str, now: float) -> bool:
        """Take one homeserver check from ``server``'s budget; False if it is spent."""
        return self._budget.take(server) == 0.0

    def _remember(self, key: bytes, caller: Caller | None, ttl: float) -> None:
        if ttl <= 0:
            return
        if caller is None:
            self._rejected[key] = time.monotonic() + ttl
            self._rejected.move_to_end(key)
            while len(self._rejected) > self.max_negative_entries:
                self._rejected.popitem(last=False)
            return
        self._cache[key] = (time.monotonic() + ttl, caller)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _api(self, server: str) -> MatrixApi:
        api = self._apis.get(server)
        if api is not None:
            return api
        base = self.trusted.named.get(server)
        if base is not None:
            api = MatrixApi(base, timeout=self._timeout, name=f"the homeserver {server}")
        else:
            fed = self.trusted.federation
            assert fed is not None  # server in self.trusted, and not named
            found = await fed.resolver.resolve(server)
            url_host = found.base_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
            api = MatrixApi(
                found.base_url,
                timeout=self._timeout,
                name=f"the homeserver {server} (federation API)",
                ssl_context=fed.ssl_context,
                tls_host=None if found.tls_host == url_host else found.tls_host,
            )
        self._apis[server] = api
        return api

    async def _ask(self, server: str, token: str) -> Caller:
        api = await self._api(server)
        try:
            answer = await openid_userinfo(api, token)
        except HomeserverError as exc:
            raise HomeserverError(
                f"cannot verify the OpenID token: {exc.message}", errcode=exc.errcode
            ) from None
        body, status = answer.body, answer.status
        if status in (401, 403, 404):
            raise UnauthorizedError(_UNKNOWN)
        if status != 200 or not isinstance(body, dict):
            raise HomeserverError(
                f"cannot verify the OpenID token: the homeserver {server} answered HTTP {status}"
            )
        sub = body.get("sub")
        try:
            user = check_user_id(sub) if isinstance(sub, str) else None
        except ValidationError:
            user = None
        if user is None:
            raise UnauthorizedError(f"the homeserver {server} answered no valid user for the token")
        if server_of(user) != server:
            log.warning(
                "a homeserver vouched for a user of another server",
                extra={"server": server, "user_id": user},
            )
            raise UnauthorizedError(
                f"the homeserver {server} vouched for {user}, who is not one of its users"
            )
        return Caller(user)


@dataclass(frozen=True)
class Action:
    """What a request asks, in UCAN terms: the command, and the room and key it is about.
    A UCAN invocation must name exactly this command and these args."""

    cmd: str
    room: str | None = None
    key: str | None = None


def bot_verifier(
    client: DataroomsClient,
    resource: str,
    *,
    homeservers: Mapping[str, str],
    federation: FederationTrust | None,
    cache_seconds: float,
    revocations: RevocationStore | None,
    on_result: Callable[[str], None] | None = None,
) -> OpenIdVerifier:
    """Who is asking a bot (the state bot, the claims service): Matrix OpenID tokens from
    the bot's own homeserver and ``homeservers`` ({server name: URL}), and UCAN
    invocations addressed to ``resource``, signed for the bot's ``did:key`` (kept with its
    device), checked against ``revocations`` (the platform's; else the device's own)."""
    own = server_of(client.user_id)
    verifier = OpenIdVerifier(
        {own: client.homeserver_url, **homeservers},
        default_server=own,
        federation=federation,
        cache_seconds=cache_seconds,
        on_result=on_result,
    )
    verifier.ucan = UcanGate(
        load_or_create_principal(client.store_dir / "ucan-service.ed25519"),
        resource,
        revocations=revocations or RevocationStore(client.store_dir / "ucan-revocations.sqlite"),
    )
    return verifier


def mcp_gate(settings: Settings) -> UcanGate:
    """The MCP server's UCAN side: its key in ``<data_dir>/mcp/ucan-service.ed25519``
    (shared by the running service and ``datarooms agents grant``), the platform's
    revocations."""
    return UcanGate(
        load_or_create_principal(settings.data_dir / "mcp" / "ucan-service.ed25519"),
        MCP_SERVER,
        revocations=platform_revocations(settings),
    )


def platform_revocations(settings: Settings) -> RevocationStore:
    """The platform's revocation store, ``<data_dir>/ucan/revocations.sqlite``: every
    service of the platform opens it, so a revocation any of them takes holds for all."""
    return RevocationStore(settings.data_dir / "ucan" / "revocations.sqlite")


#: Longest a root delegation a service issues may live (30 days).
MAX_ROOT_SECONDS = 30 * 24 * 3600


class UcanGate:
    """A service's UCAN side: its ``did:key`` (kept in its data), the resource it is
    (``ixo:matrix-state-bot``...), and the validator of invocations addressed to it.

    The chain of every accepted invocation starts with a delegation this service issued
    (:meth:`issue`) to a Matrix user it verified; ``meta.matrix_user`` of that root names
    the user the request acts for, so the handler applies that user's access, never more.
    """

    def __init__(
        self,
        principal: Principal,
        resource: str,
        *,
        revocations: RevocationStore | None = None,
        max_lifetime: int = 300,
    ) -> None:
        self.principal = principal
        self.did = principal.did
        self.resource = resource
        self.validator = Validator(self.did, revocations=revocations, max_lifetime=max_lifetime)

    def did_document(self) -> dict[str, object]:
        return self.principal.did_document()

    def check(self, token: str, action: Action | None) -> Caller:
        proven = self.validator.verify(token)
        args = proven.args
        if args.get("with") != self.resource:
            raise UcanError(
                f"the invocation is for {args.get('with')!r}; this service is {self.resource!r}",
                errcode="DR_UCAN_WRONG_AUDIENCE",
            )
        if action is None:
            raise UcanError(
                "this endpoint takes a Matrix OpenID token, not a UCAN",
                errcode="DR_UCAN_NOT_ALLOWED",
            )
        if proven.cmd != action.cmd:
            raise UcanError(
                f"this request is {action.cmd!r}; the invocation is {proven.cmd!r}",
                errcode="DR_UCAN_WRONG_COMMAND",
            )
        if action.room is not None and args.get("room") != action.room:
            raise UcanError(
                f"the invocation is for the room {args.get('room')!r}, not {action.room!r}",
                errcode="DR_UCAN_WRONG_ROOM",
            )
        if action.key is not None and args.get("key") != action.key:
            raise UcanError(
                f"the invocation is for the key {args.get('key')!r}, not {action.key!r}",
                errcode="DR_UCAN_NOT_ALLOWED",
            )
        root = proven.root
        user = root.meta.get("matrix_user") if root is not None else None
        try:
            user = check_user_id(user) if isinstance(user, str) else None
        except ValidationError:
            user = None
        if root is None or user is None:
            raise UcanError(
                "the chain's root delegation names no Matrix user (meta.matrix_user): get "
                "one from this service's POST /v1/ucan/delegate",
                errcode="DR_UCAN_BROKEN_CHAIN",
            )
        return Caller(user, via=proven.invoker)

    def check_agent(self, token: str) -> tuple[str, Mapping[str, Any]]:
        """The MCP agent a UCAN invocation of ``/datarooms/mcp`` acts as: the ``agent`` of
        its chain's root, which this service issued (``datarooms agents grant``)."""
        proven = self.validator.verify(token)
        if proven.args.get("with") != self.resource:
            raise UcanError(
                f"the invocation is for {proven.args.get('with')!r}; this is {self.resource!r}",
                errcode="DR_UCAN_WRONG_AUDIENCE",
            )
        if not covers(MCP_CALL, proven.cmd):
            raise UcanError(
                f"the MCP server takes invocations of {MCP_CALL!r}, not {proven.cmd!r}",
                errcode="DR_UCAN_WRONG_COMMAND",
            )
        root = proven.root
        agent = root.meta.get("agent") if root is not None else None
        if not isinstance(agent, str) or proven.args.get("agent") != agent:
            raise UcanError(
                "the chain's root names no agent, or the invocation another one: get a "
                "delegation with `datarooms agents grant NAME`",
                errcode="DR_UCAN_BROKEN_CHAIN",
            )
        return agent, proven.args

    def grant_agent(
        self, agent: str, audience: str, *, until: int, policy: list[object] | None = None
    ) -> Delegation:
        """A root delegation to act as the MCP agent ``agent`` until ``until`` (Unix time).

        ``policy`` narrows what an invocation may state: e.g. ``["==", ".access", "read"]``,
        ``["all", ".rooms", ["or", [["==", ".", "!a:hs"], ...]]]``."""
        return delegate(
            self.principal,
            audience,
            MCP_CALL,
            subject=self.did,
            policy=[["==", ".with", self.resource], ["==", ".agent", agent], *(policy or [])],
            expires=until,
            meta={"agent": agent},
        )

    def issue(
        self,
        caller: Caller,
        audience: str,
        *,
        cmd: str,
        policy: list[object] | None,
        expires_in: int,
    ) -> Delegation:
        """A root delegation from this service to ``audience`` (the caller's DID) for the
        caller, who must have come with an OpenID token (a UCAN caller delegates itself)."""
        if caller.via is not None:
            raise AccessDeniedError(
                "a UCAN caller cannot get a root delegation: delegate your own to others",
                errcode="DR_UCAN_NOT_ALLOWED",
            )
        if not 0 < expires_in <= MAX_ROOT_SECONDS:
            raise ValidationError(f"expires_in must be 1 to {MAX_ROOT_SECONDS} seconds")
        return delegate(
            self.principal,
            audience,
            cmd,
            subject=self.did,
            policy=[["==", ".with", self.resource], *(policy or [])],
            expires=int(time.time()) + expires_in,
            meta={"matrix_user": caller.user_id},
        )


def _settle(future: asyncio.Future[Caller], exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # retrieved: only concurrent waiters see it, no "never retrieved" warning


_UNKNOWN = (
    "the OpenID token is unknown or expired: request a new one from your homeserver "
    "(POST /_matrix/client/v3/user/{userId}/openid/request_token)"
)


class DelegateRequest(BaseModel):
    """``POST /v1/ucan/delegate``: a root delegation from the service to your DID."""

    model_config = ConfigDict(extra="forbid", strict=True)

    audience: str = Field(description="Your did:key (Ed25519): who receives the delegation")
    cmd: str = Field(default="/datarooms", description="The command granted (and below it)")
    policy: list[Any] = Field(
        default_factory=list, description="UCAN policy statements on the args (narrowing)"
    )
    expires_in: int = Field(default=86400, description="Seconds until it expires (max 30 days)")


class ErrorBody(BaseModel):
    errcode: str = Field(description="`M_...` (Matrix) or `DR_...` (datarooms)")
    error: str = Field(description="What went wrong and what to do about it")


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Invalid input",
        401: "No valid token, or the UCAN is no good (the errcode says why)",
        403: "The token does not grant this",
        413: "The body is too large",
        429: "Too many tokens to check just now",
        502: "The homeserver could not be asked",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


def install_ucan_routes(app: FastAPI, verifier: OpenIdVerifier) -> None:
    """The UCAN endpoints every service has: its DID document, root delegations for a
    caller verified with an OpenID token, and revocation."""
    gate = verifier.ucan
    if gate is None:
        return

    async def caller(request: Request) -> Caller:
        known = getattr(request.state, "caller", None)
        if isinstance(known, Caller):  # the request guard verified it already
            return known
        return await verifier.verify(
            bearer_token(request.scope), header(request.scope, b"x-matrix-server-name")
        )

    @app.get("/.well-known/did.json", tags=["ucan"], responses=_responses(400))
    async def did_document() -> dict[str, object]:
        """This service's DID document: the audience of every UCAN invocation sent here."""
        return gate.did_document()

    @app.post(
        "/v1/ucan/delegate", tags=["ucan"], responses=_responses(400, 401, 403, 413, 429, 502)
    )
    async def issue(
        body: DelegateRequest,
        who: Caller = Depends(caller),  # noqa: B008 (annotations are strings here)
    ) -> dict[str, Any]:
        """A root delegation from this service to ``audience``, acting for you (the Matrix
        user of the OpenID token): delegate it onwards to agents, each hop narrowing."""
        try:
            d = gate.issue(
                who, body.audience, cmd=body.cmd, policy=body.policy, expires_in=body.expires_in
            )
        except UcanError as exc:
            raise ValidationError(exc.message, errcode=exc.errcode) from None
        return {
            "delegation": d.encode(),
            "cid": str(d.cid),
            "issuer": gate.did,
            "resource": gate.resource,
            "expires": d.exp,
        }

    @app.post("/ucan/revoke", tags=["ucan"], responses=_responses(400, 401, 403, 413, 429))
    async def revoke(request: Request) -> dict[str, Any]:
        """Revoke a delegation: the body is a container (text) with a ``/ucan/revoke``
        invocation (args ``{"ucan": CID}``) signed by an issuer on the revoked link's chain,
        and the delegations of that chain. Every service of the platform refuses it at once."""
        raw = await request.body()
        text = raw.decode("ascii", errors="replace").strip()
        return {"revoked": gate.validator.revoke(text)}
