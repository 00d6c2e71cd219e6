"""The rooms bot's HTTP API: the Matrix Application Service API and a small REST API.

Appservice endpoints (called by the homeserver, authenticated with the ``hs_token``):

- ``PUT /_matrix/app/v1/transactions/{txnId}``: events; idempotent by transaction id;
- ``GET /_matrix/app/v1/rooms/{roomAlias}``: someone asked for an entity alias that does
  not exist: create the entity's rooms now, then answer 200;
- ``GET /_matrix/app/v1/users/{userId}``, ``POST /_matrix/app/v1/ping``.

REST endpoints (called by people and programs, authenticated with a Matrix OpenID token,
see :mod:`datarooms.services.openid`):

- ``POST /rooms/source``: the rooms of a DID, created if missing; optionally invite (or,
  for the bot's own users, join) a user. ``POST /room/source`` is IXO's form of the same.
- ``GET /rooms/{did}``: the rooms of a DID, 404 if it has none yet.
- ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``.

Every error is ``{"errcode": "...", "error": "..."}`` with a fitting HTTP status.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the annotations of the
# handlers, and ``Depends(caller)`` refers to a closure it could not resolve from a string.

import asyncio
import hmac
import logging
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Scope

from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
)
from datarooms.ids import user_id as check_user_id
from datarooms.sdk.rooms import POWER
from datarooms.sdk.ucan import ROOM_READ, ROOM_WRITE
from datarooms.services.openid import Action, install_ucan_routes
from datarooms.services.roomsbot.entity_rooms import SPACE, did_from_localpart, parse_alias
from datarooms.services.roomsbot.store import EntityFacts, EntityRecord
from datarooms.services.scaffold import (
    RequestGuard,
    TokenBucket,
    bearer_token,
    header,
    install_error_handlers,
)

if TYPE_CHECKING:
    from datarooms.services.roomsbot.bot import RoomsBot

log = logging.getLogger(__name__)

_MAX_REST_BODY = 64 * 1024
#: Paths of the REST API, every one of them behind an OpenID token.
_REST_PREFIXES = ("/rooms/", "/room/")


def rest_action(method: str) -> Action:
    """A REST call in UCAN terms: reading (``GET``) is ``/datarooms/room/read``, anything
    else (creating an entity's rooms) ``/datarooms/room/write``; not room-scoped."""
    return Action(ROOM_READ if method in ("GET", "HEAD") else ROOM_WRITE)


_MAX_AS_BODY = 32 * 2**20
_ALIAS_QUERY_TIMEOUT_S = 25.0


class ErrorBody(BaseModel):
    errcode: str = Field(examples=["DR_INVALID"])
    error: str


class RoomOut(BaseModel):
    kind: str = Field(description="entity, another data-room kind, or space")
    room_id: str
    alias: str


class EntityRoomsOut(BaseModel):
    did: str
    type: str | None = Field(description="The entity's type on the chain, if known")
    controllers: list[str] = Field(description="Controller DIDs")
    members: list[str] = Field(description="Matrix users invited with admin power")
    source: str = Field(description="chain, or request (created before the chain was seen)")
    room_id: str = Field(description="The entity room (IXO's alias)")
    space: RoomOut | None = Field(
        description="The entity's space; null until someone asks for it (POST "
        "/rooms/source, /room/source, or the #space.did-... alias create it)"
    )
    rooms: list[RoomOut]


class SourceOut(EntityRoomsOut):
    created: bool = Field(description="True if this request created the rooms")


class SourceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    did: str = Field(
        min_length=1, max_length=512, examples=["did:ixo:entity:0a1b2c3d4e5f60718293a4b5c6d7e8f9"]
    )
    user_id: str | None = Field(
        default=None,
        max_length=255,
        description="A Matrix user to invite (controllers and operators only)",
    )
    join: bool = Field(
        default=False, description="Also join the user (only users of the bot's namespace)"
    )
    access: Literal["read", "write", "admin"] = Field(
        default="read",
        description="The user's access to the data rooms: read (an invite), write (power "
        "50) or admin (power 100); given, like the invite, by controllers and operators only",
    )


class IxoSourceRequest(BaseModel):
    did: str = Field(min_length=1, max_length=512)
    userMatrixId: str | None = Field(default=None, max_length=255)


class IxoSourceOut(BaseModel):
    roomId: str
    spaceId: str


class Transaction(BaseModel):
    model_config = ConfigDict(extra="allow")

    events: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)


class HealthOut(BaseModel):
    status: str = Field(description="ok, or degraded while the chain watcher is disconnected")
    user_id: str
    entities: int
    skipped_events: int
    chain: dict[str, Any] | None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request"},
    401: {"model": ErrorBody, "description": "Missing or unknown token"},
    403: {"model": ErrorBody, "description": "Not allowed"},
    429: {"model": ErrorBody, "description": "Too many new entities; retry later"},
    502: {"model": ErrorBody, "description": "The homeserver failed"},
}
_AS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request"},
    401: {"model": ErrorBody, "description": "No hs_token"},
    403: {"model": ErrorBody, "description": "Wrong hs_token"},
}

_bearer = HTTPBearer(auto_error=False, description="A Matrix OpenID access token")


def create_app(bot: "RoomsBot") -> FastAPI:
    app = FastAPI(
        title="datarooms rooms bot",
        version="1",
        description="Rooms for every entity: the Matrix appservice and REST API of the "
        "datarooms rooms bot. REST calls take a Matrix OpenID token as a bearer token.",
        openapi_tags=[{"name": "rooms"}, {"name": "appservice"}, {"name": "operations"}],
    )
    creations = TokenBucket(rate=2.0, burst=60)

    install_error_handlers(app, "the rooms bot")
    install_ucan_routes(app, bot.verifier)

    # -- auth --------------------------------------------------------------------

    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        x_matrix_server_name: Annotated[str | None, Header(max_length=255)] = None,
    ) -> str:
        known = getattr(request.state, "caller", None)
        if isinstance(known, str):  # the request guard verified it before reading the body
            return known
        token = credentials.credentials if credentials is not None else None
        action = rest_action(request.scope.get("method", ""))
        return (await bot.verifier.verify(token, x_matrix_server_name, action)).user_id

    def homeserver(request: Request) -> None:
        check_hs_token(bot, request.scope)

    def rooms_out(record: EntityRecord) -> dict[str, Any]:
        f = record.facts
        return {
            "did": f.did,
            "type": f.type,
            "controllers": list(f.controllers),
            "members": list(record.members),
            "source": f.source,
            "room_id": record.room_id,
            "space": (
                {"kind": SPACE, "room_id": record.space.room_id, "alias": record.space.alias}
                if record.space
                else None
            ),
            "rooms": [
                {"kind": k, "room_id": r.room_id, "alias": r.alias} for k, r in record.rooms.items()
            ],
        }

    async def source(
        who: str, raw_did: str, raw_user: str | None, join: bool, access: str = "read"
    ) -> tuple[EntityRecord, bool]:
        did = bot.rooms.check_did(raw_did)
        user = str(check_user_id(raw_user)) if raw_user else None
        if join and user is None:
            raise ValidationError("join needs user_id")
        if access != "read" and user is None:
            raise ValidationError("access needs user_id")
        if join and user is not None and not bot.registration.user_in_namespace(user):
            raise ValidationError(
                "join works only for the rooms bot's own users "
                f"(@{bot.registration.sender_localpart}-...); other users are invited "
                "and accept the invite themselves"
            )
        if bot.rooms.lookup(did) is None:
            wait = creations.take(who)
            if wait:
                raise DataroomsError(
                    f"too many new entities from {who}; retry in {wait:.1f} s",
                    errcode="M_LIMIT_EXCEEDED",
                ) from None
        record, created = await bot.rooms.ensure(EntityFacts(did), space=True)
        if user is not None:
            allowed = (
                who in bot.settings.operator_ids
                or who in record.members
                or who == bot.registration.user_id
                # a controller on another organisation's homeserver adds itself
                or (
                    user == who
                    and bot.rooms.is_controller(record, who, bot.settings.controller_server_names)
                )
            )
            if not allowed:
                raise AccessDeniedError(
                    f"only the controllers of {did} and the platform's operators may add "
                    "members to its rooms"
                )
            await bot.rooms.add_member(record, user, join=join, power=POWER[access])
        return record, created

    # -- REST --------------------------------------------------------------------

    @app.post(
        "/rooms/source",
        tags=["rooms"],
        response_model=SourceOut,
        responses=_ERRORS,
        summary="The rooms of a DID, created if missing",
    )
    async def rooms_source(
        body: SourceRequest, who: Annotated[str, Depends(caller)]
    ) -> dict[str, Any]:
        record, created = await source(who, body.did, body.user_id, body.join, body.access)
        return {**rooms_out(record), "created": created}

    @app.post(
        "/room/source",
        tags=["rooms"],
        response_model=IxoSourceOut,
        responses=_ERRORS,
        summary="IXO's form of /rooms/source",
    )
    async def ixo_source(
        body: IxoSourceRequest, who: Annotated[str, Depends(caller)]
    ) -> dict[str, Any]:
        record, _ = await source(who, body.did, body.userMatrixId, False)
        if record.space is None:  # source() asks for it: never so
            raise HomeserverError(f"the space of {record.did} could not be made")
        return {"roomId": record.room_id, "spaceId": record.space.room_id}

    @app.get(
        "/rooms/{did}",
        tags=["rooms"],
        response_model=EntityRoomsOut,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No rooms yet"}},
        summary="The rooms of a DID",
    )
    async def rooms_get(
        did: Annotated[str, Path(max_length=512)], who: Annotated[str, Depends(caller)]
    ) -> dict[str, Any]:
        checked = bot.rooms.check_did(did)
        record = bot.rooms.lookup(checked)
        if record is None:
            raise NotFoundError(
                f"{checked} has no rooms yet; POST /rooms/source creates them",
                errcode="M_NOT_FOUND",
            )
        return rooms_out(record)

    @app.get("/health", tags=["operations"], response_model=HealthOut)
    async def health() -> dict[str, Any]:
        st = bot.watcher.status if bot.watcher is not None else None
        chain = None
        if st is not None:
            # Unauthenticated: no chain URL (it may carry credentials), not even in errors.
            chain = {
                "connected": st.connected,
                "height": st.height,
                "chain_height": st.chain_height,
                "chain_id": st.chain_id,
                "handled": st.handled,
                "skipped": st.skipped,
                "reconnects": st.reconnects,
                "pending": st.pending,
                "last_error": without_urls(st.last_error, bot.chain_url),
            }
        return {
            "status": "ok" if st is None or st.connected else "degraded",
            "user_id": bot.registration.user_id,
            "entities": bot.store.count(),
            "skipped_events": bot.store.skipped_count(),
            "chain": chain,
        }

    bot.metrics.http.install(app)

    # -- appservice ----------------------------------------------------------------

    @app.put(
        "/_matrix/app/v1/transactions/{txnId}",
        tags=["appservice"],
        dependencies=[Depends(homeserver)],
        responses=_AS_ERRORS,
    )
    async def transaction(
        txnId: Annotated[str, Path(max_length=255)], body: Transaction
    ) -> dict[str, Any]:
        if bot.store.txn_seen(txnId):
            bot.metrics.as_transactions.labels("duplicate").inc()
            return {}
        bot.handle_events(body.events)
        bot.store.record_txn(txnId, len(body.events))
        bot.metrics.as_transactions.labels("new").inc()
        bot.metrics.as_events.inc(len(body.events))
        return {}

    @app.get(
        "/_matrix/app/v1/rooms/{roomAlias}",
        tags=["appservice"],
        dependencies=[Depends(homeserver)],
        responses={**_AS_ERRORS, 404: {"model": ErrorBody}},
    )
    async def alias_query(roomAlias: Annotated[str, Path(max_length=255)]) -> dict[str, Any]:
        return await bot.alias_query(roomAlias)

    @app.get(
        "/_matrix/app/v1/users/{userId}",
        tags=["appservice"],
        dependencies=[Depends(homeserver)],
        responses={**_AS_ERRORS, 404: {"model": ErrorBody}},
    )
    async def user_query(userId: Annotated[str, Path(max_length=255)]) -> dict[str, Any]:
        if userId == bot.registration.user_id:
            return {}
        raise NotFoundError(f"{userId} is not a user of the rooms bot", errcode="M_NOT_FOUND")

    @app.post(
        "/_matrix/app/v1/ping",
        tags=["appservice"],
        dependencies=[Depends(homeserver)],
        responses=_AS_ERRORS,
    )
    async def ping(
        transaction_id: Annotated[str | None, Query(max_length=255)] = None,
    ) -> dict[str, Any]:
        return {}

    return app


def check_hs_token(bot: "RoomsBot", scope: Scope) -> None:
    """The homeserver's calls carry the registration's ``hs_token`` (a bearer token, or
    ``?access_token=`` from older homeservers)."""
    token = bearer_token(scope) or ""
    if not token:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        token = (query.get("access_token") or [""])[0]
    if not token:
        raise UnauthorizedError("missing the homeserver token", errcode="M_UNAUTHORIZED")
    if not hmac.compare_digest(token.encode(), bot.registration.hs_token.encode()):
        raise AccessDeniedError("wrong homeserver token", errcode="M_FORBIDDEN")


def build_asgi(bot: "RoomsBot") -> tuple[FastAPI, ASGIApp]:
    """The FastAPI app and the ASGI app to serve: the app behind the services'
    :class:`RequestGuard`, which authenticates every call (the homeserver's ``hs_token``
    on ``/_matrix/app/``, an OpenID token on the REST API) before its body is read, caps
    bodies (32 MiB for transactions, 64 KiB for the REST API) and counts answers."""
    app = create_app(bot)

    async def authenticate(scope: Scope) -> None:
        path = str(scope.get("path", ""))
        if path.startswith("/_matrix/app/"):
            check_hs_token(bot, scope)
        elif path.startswith(_REST_PREFIXES):
            caller = await bot.verifier.verify(
                bearer_token(scope),
                header(scope, b"x-matrix-server-name"),
                rest_action(str(scope.get("method", ""))),
            )
            scope["state"]["caller"] = caller.user_id

    def limit(scope: Scope) -> int:
        return (
            _MAX_AS_BODY if str(scope.get("path", "")).startswith("/_matrix/") else _MAX_REST_BODY
        )

    return app, RequestGuard(
        app, max_body=limit, authenticate=authenticate, on_answer=bot.metrics.http.record
    )


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def without_urls(text: str | None, *known: str | None) -> str | None:
    """``text`` with every URL (and so any userinfo in one) replaced by ``<url>``, and
    the hosts of the ``known`` URLs by ``<host>``."""
    if text is None:
        return None
    text = _URL.sub("<url>", text)
    for url in known:
        host = urlsplit(url).hostname if url else None
        if host:
            text = re.sub(re.escape(host) + r"(:\d+)?", "<host>", text)
    return text


async def answer_alias_query(bot: "RoomsBot", alias: str) -> dict[str, Any]:
    """Create the rooms behind a not-yet-existing entity alias (the homeserver asked)."""

    def not_found(why: str) -> NotFoundError:
        bot.metrics.alias_queries.labels("not_found").inc()
        return NotFoundError(f"{alias}: {why}", errcode="M_NOT_FOUND")

    reg = bot.registration
    parsed = parse_alias(alias, reg.server_name)
    if parsed is None or not reg.alias_in_namespace(alias):
        raise not_found("not an entity alias of this rooms bot")
    kind, local = parsed
    if kind not in (*bot.rooms.kinds, SPACE):
        raise not_found(f"entities here have no {kind!r} room")
    did = bot.store.did_for_alias(alias) or did_from_localpart(local)
    if did is None:
        raise not_found("the alias does not name a DID")
    known = bot.rooms.lookup(did) is not None
    facts = EntityFacts(did)
    if not known:
        # Anyone may ask (the homeserver's alias lookup needs no login): rooms are made
        # only for an entity the chain has, and at a bounded pace.
        if not bot.settings.on_demand:
            raise not_found("rooms are created on demand only when roomsbot.on_demand is on")
        wait = bot.on_demand_limit.take("alias")
        if wait:
            bot.metrics.alias_queries.labels("rate_limited").inc()
            log.warning(
                "alias queries for unknown entities are rate-limited", extra={"alias": alias}
            )
            raise NotFoundError(
                f"{alias}: too many new entities asked for; try again in {wait:.0f} s",
                errcode="M_NOT_FOUND",
            )
        try:
            entity = await asyncio.wait_for(bot.chain_entity(did), _ALIAS_QUERY_TIMEOUT_S)
        except (DataroomsError, TimeoutError, OSError) as exc:
            log.warning(
                "looking an entity up on the chain failed",
                extra={"alias": alias, "error": str(exc) or type(exc).__name__},
            )
            raise not_found("the chain could not be asked just now; try again") from None
        if entity is None:
            raise not_found(f"{did} is not an entity on the chain this rooms bot follows")
        facts = bot.facts_of(entity)
    # The homeserver asks only for aliases it does not have: if the store says the rooms
    # exist, it is out of date (say, the homeserver was reset), so check them again.
    # (A space not made yet is no sign of that: spaces are made when first asked for.)
    current = bot.rooms.lookup(did)
    lazy_space = kind == SPACE and current is not None and current.space is None
    recheck = known and not lazy_space and not bot.rooms.busy(did)
    try:
        await asyncio.wait_for(
            bot.rooms.ensure(facts, recheck=recheck, space=kind == SPACE), _ALIAS_QUERY_TIMEOUT_S
        )
    except ValidationError as exc:
        raise not_found(exc.message) from None
    except (DataroomsError, TimeoutError) as exc:
        log.warning(
            "creating rooms for an alias query failed",
            extra={"alias": alias, "error": str(exc) or type(exc).__name__},
        )
        raise not_found("the rooms could not be created just now; try again") from None
    bot.metrics.alias_queries.labels("created").inc()
    return {}
