"""The state bot's REST API: a thin FastAPI layer over :class:`StateHandler`.

Every route authenticates the caller (a Matrix OpenID token, see
:mod:`datarooms.services.openid`) before its body is read, parses and validates its
input, calls the handler and shapes the answer. Every error is
``{"errcode": ..., "error": ...}`` with its HTTP status (see
:mod:`datarooms.services.scaffold`); a request body over the limit gets 413 before
it is parsed. The OpenAPI document is at
``/openapi.json``, interactive docs at ``/docs`` and ``/redoc``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Scope

from datarooms.config import STATEBOT_MAX_BODY_BYTES
from datarooms.sdk.ucan import ROOM_READ, ROOM_WRITE, STATE_SET
from datarooms.services.openid import Action, Caller, OpenIdVerifier, install_ucan_routes
from datarooms.services.scaffold import (
    RequestGuard,
    bearer_token,
    header,
    install_error_handlers,
)
from datarooms.services.statebot import events as sev
from datarooms.services.statebot.handler import StateHandler
from datarooms.services.statebot.metrics import Metrics

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
#: The largest request body: a state event is at most 65,536 bytes, and JSON
#: escaping can double what a value takes in the request.
MAX_BODY_BYTES = STATEBOT_MAX_BODY_BYTES

_SERVER = r"[A-Za-z0-9.:\[\]-]+"
_ROOM_ID = r"!(?:[^:\s/]+:" + _SERVER + r"|[A-Za-z0-9_-]+)"
ROOM_ID_PATTERN = f"^{_ROOM_ID}$"
ROOM_PATTERN = f"^(?:{_ROOM_ID}|#[^:\\s/]+:{_SERVER})$"
USER_ID_PATTERN = r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$"
KEY_PATTERN = r"^[^\x00-\x1f\x7f]+$"
PATH_PATTERN = r"^(?:/[\s\S]*)?$"

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN, max_length=255)]
RoomIdParam = Annotated[
    str,
    Path(description="Room id, e.g. `!abc:example.org`", pattern=ROOM_ID_PATTERN, max_length=255),
]
KeyParam = Annotated[
    str,
    Path(
        description="The state key (the `state_key` of the `ixo.room.state` event)",
        pattern=KEY_PATTERN,
        min_length=1,
        max_length=sev.MAX_KEY_LENGTH,
    ),
]


# -- models ---------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorResponse(_Model):
    errcode: str = Field(description="`M_...` (Matrix) or `DR_...` (datarooms)")
    error: str = Field(description="What went wrong and what to do about it")


class SetStateRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"value": {"unit": "C", "max": 40}},
                {"path": "/thresholds/max", "value": 45},
                {"value": {"api_key": "..."}, "secure": True},
            ]
        },
    )

    value: Any = Field(
        description="The JSON value to write at `path`. The whole value of a key is a JSON "
        "object. In the clear, numbers must be integers within +-(2^53 - 1) (Matrix canonical "
        "JSON)."
    )
    path: str = Field(
        "",
        max_length=1024,
        json_schema_extra={"pattern": PATH_PATTERN},
        description="JSON Pointer (RFC 6901) into the key's value; empty for the whole "
        "value; `/list/-` appends. Missing objects on the way are created.",
    )
    mode: Literal["merge", "replace"] = Field(
        "merge",
        description="`merge`: JSON Merge Patch (RFC 7386) at the path (objects merge, null "
        "removes a member); `replace`: put the value as given.",
    )
    secure: bool | None = Field(
        None,
        description="true: keep the value out of room state, in an end-to-end encrypted "
        "record (state holds a reference). false: store it in the clear. Absent: keep the "
        "key's current mode.",
    )


class StateResponse(_Model):
    room_id: str
    key: str
    path: str
    value: Any = Field(description="The value at `path`")
    secure: bool


class SetStateResponse(_Model):
    room_id: str
    key: str
    event_id: str = Field(description="The `ixo.room.state` event written")
    secure: bool
    record_event_id: str | None = Field(
        None, description="For a secure value: the encrypted record holding it"
    )


class KeyInfoModel(_Model):
    key: str
    secure: bool
    has_acl: bool
    readable: bool = Field(description="Whether the caller may read it")
    writable: bool = Field(description="Whether the caller may write it")


class KeysResponse(_Model):
    room_id: str
    keys: list[KeyInfoModel]


class AclRequest(_Model):
    read: list[UserId] = Field(max_length=sev.MAX_ACL_ENTRIES, description="Who may read the key")
    write: list[UserId] = Field(
        max_length=sev.MAX_ACL_ENTRIES, description="Who may write the key (and read it)"
    )


class AclResponse(_Model):
    room_id: str
    key: str
    read: list[str]
    write: list[str]
    event_id: str | None = Field(None, description="The ACL event written (on PUT)")


class JoinResponse(_Model):
    room_id: str


class RoomStatusResponse(_Model):
    room_id: str
    encrypted: bool
    bot_user_id: str
    bot_power: int
    state_power: int = Field(description="Power the room asks for ixo.room.state")
    acl_power: int = Field(description="Power the room asks for ixo.room.state.acl")
    record_power: int = Field(description="Power the room asks for encrypted events")
    caller_power: int
    bot_can_write_state: bool
    bot_can_write_acl: bool
    bot_can_write_secure: bool
    problems: list[str]


class HealthResponse(_Model):
    status: Literal["ok"]
    user_id: str
    device_id: str
    rooms: int
    synced: bool


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Invalid input (malformed JSON, bad path, bad id, bad value)",
        401: "No OpenID token, or one the caller's homeserver does not vouch for",
        403: "The caller (or the bot itself, DR_BOT_POWER) may not do this",
        404: "No such room (for the bot), key, ACL or value at the path",
        413: "The value or request is too large",
        502: "The homeserver could not be reached or failed",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


_COMMON = (400, 401, 403, 404, 413, 502)


# -- authentication -------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    description="A Matrix OpenID token from POST "
    "/_matrix/client/v3/user/{userId}/openid/request_token on the caller's homeserver",
)


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    server_name: Annotated[
        str | None,
        Header(
            alias="X-Matrix-Server-Name",
            max_length=255,
            description="Server name of the homeserver that issued the token "
            "(default: the bot's own)",
        ),
    ] = None,
) -> Caller:
    known = getattr(request.state, "caller", None)
    if isinstance(known, Caller):  # the request guard verified it before reading the body
        return known
    verifier: OpenIdVerifier = request.app.state.verifier
    return await verifier.verify(
        credentials.credentials if credentials else None,
        server_name,
        action_of(request.scope.get("method", ""), request.scope.get("path", "")),
    )


#: The UCAN command of changing a key's ACL.
STATE_ACL = "/datarooms/state/acl"


def action_of(method: str, path: str) -> Action | None:
    """What a ``/v1/`` request asks, in UCAN terms (``None``: no UCAN may ask it).

    ``GET`` on a room, its keys, a value or an ACL: ``/datarooms/room/read`` (with the
    room, and the key when there is one); ``POST .../join``: ``/datarooms/room/write``;
    ``PUT .../state/{key}``: ``/datarooms/state/set``; ``PUT .../acl/{key}``:
    ``/datarooms/state/acl``.
    """
    if not path.startswith("/v1/rooms/"):
        return None
    room, _, rest = path[len("/v1/rooms/") :].partition("/")
    part, _, key = rest.partition("/")
    if method == "GET" and not rest:
        return Action(ROOM_READ, room)
    if method == "POST" and rest == "join":
        return Action(ROOM_WRITE, room)
    if method == "GET" and part == "state":
        return Action(ROOM_READ, room, key or None)
    if method == "GET" and part == "acl" and key:
        return Action(ROOM_READ, room, key)
    if method == "PUT" and part == "state" and key:
        return Action(STATE_SET, room, key)
    if method == "PUT" and part == "acl" and key:
        return Action(STATE_ACL, room, key)
    return None


Auth = Annotated[Caller, Depends(_caller)]


# -- the app ----------------------------------------------------------------------


def create_app(
    handler: StateHandler,
    verifier: OpenIdVerifier,
    metrics: Metrics,
    *,
    synced: Callable[[], bool] = lambda: True,
) -> FastAPI:
    """The FastAPI app of one state bot (serve it through :func:`build_asgi`)."""
    app = FastAPI(
        title="datarooms state bot",
        version=API_VERSION,
        description=(
            "Keyed room state (`ixo.room.state`) guarded by ACLs (`ixo.room.state.acl`), "
            "compatible with IXO's state bot. Authenticate with a Matrix OpenID token: "
            "`Authorization: Bearer <token>` and, for a homeserver other than the bot's, "
            "`X-Matrix-Server-Name: <server name>`. See docs/statebot.md."
        ),
        responses={400: {"model": ErrorResponse}},
    )
    app.state.verifier = verifier

    install_error_handlers(app, "the state bot")
    if verifier.ucan is not None:
        install_ucan_routes(app, verifier)

    # -- service endpoints --

    @app.get("/health", tags=["service"], response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness: the bot's account and device, rooms, and whether it has synced."""
        c = handler.client
        return HealthResponse(
            status="ok",
            user_id=c.user_id,
            device_id=c.device_id,
            rooms=len(handler.joined_rooms()),
            synced=synced(),
        )

    metrics.http.install(app, tags=["service"])

    # -- rooms --

    @app.get(
        "/v1/rooms/{room_id}",
        tags=["rooms"],
        response_model=RoomStatusResponse,
        responses=_errors(*_COMMON),
    )
    async def room_status(who: Auth, room_id: RoomIdParam) -> RoomStatusResponse:
        """The bot's and the caller's power in a room, and whether the bot can write there."""
        s = handler.status(who, room_id)
        return RoomStatusResponse(**vars(s))

    @app.post(
        "/v1/rooms/{room}/join",
        tags=["rooms"],
        response_model=JoinResponse,
        responses=_errors(*_COMMON),
    )
    async def join(
        who: Auth,
        room: Annotated[
            str,
            Path(
                description="Room id, or alias (`#` as %23)", pattern=ROOM_PATTERN, max_length=255
            ),
        ],
    ) -> JoinResponse:
        """Have the bot join a room: invite it first (a Matrix invite), then call this."""
        return JoinResponse(room_id=await handler.join(who, room))

    # -- state --

    @app.get(
        "/v1/rooms/{room_id}/state",
        tags=["state"],
        response_model=KeysResponse,
        responses=_errors(*_COMMON),
    )
    async def list_keys(who: Auth, room_id: RoomIdParam) -> KeysResponse:
        """The keys of a room, with what the caller may do with each."""
        keys = handler.keys(who, room_id)
        return KeysResponse(room_id=room_id, keys=[KeyInfoModel(**vars(k)) for k in keys])

    @app.get(
        "/v1/rooms/{room_id}/state/{key:path}",
        tags=["state"],
        response_model=StateResponse,
        responses=_errors(*_COMMON),
    )
    async def get_state(
        who: Auth,
        room_id: RoomIdParam,
        key: KeyParam,
        path: Annotated[
            str,
            Query(
                max_length=1024,
                json_schema_extra={"pattern": PATH_PATTERN},
                description="JSON Pointer into the value (RFC 6901); empty: the whole value",
            ),
        ] = "",
    ) -> StateResponse:
        """A key's value, or the part of it at a JSON Pointer."""
        v = await handler.get(who, room_id, key, path)
        return StateResponse(
            room_id=v.room_id, key=v.key, path=v.path, value=v.value, secure=v.secure
        )

    @app.put(
        "/v1/rooms/{room_id}/state/{key:path}",
        tags=["state"],
        response_model=SetStateResponse,
        responses=_errors(*_COMMON),
    )
    async def set_state(
        who: Auth, room_id: RoomIdParam, key: KeyParam, body: SetStateRequest
    ) -> SetStateResponse:
        """Merge (or replace) a value at a path of a key."""
        r = await handler.set(
            who, room_id, key, body.value, path=body.path, mode=body.mode, secure=body.secure
        )
        metrics.writes.labels("secure" if r.secure else "clear").inc()
        return SetStateResponse(
            room_id=r.room_id,
            key=r.key,
            event_id=r.event_id,
            secure=r.secure,
            record_event_id=r.record_event_id,
        )

    # -- ACLs --

    @app.get(
        "/v1/rooms/{room_id}/acl/{key:path}",
        tags=["acl"],
        response_model=AclResponse,
        responses=_errors(*_COMMON),
    )
    async def get_acl(who: Auth, room_id: RoomIdParam, key: KeyParam) -> AclResponse:
        """The read and write lists of a key (404 if it has no ACL)."""
        acl = handler.get_acl(who, room_id, key)
        return AclResponse(
            room_id=room_id, key=key, read=list(acl.read), write=list(acl.write), event_id=None
        )

    @app.put(
        "/v1/rooms/{room_id}/acl/{key:path}",
        tags=["acl"],
        response_model=AclResponse,
        responses=_errors(*_COMMON),
    )
    async def set_acl(
        who: Auth, room_id: RoomIdParam, key: KeyParam, body: AclRequest
    ) -> AclResponse:
        """Replace the ACL of a key. Needs the power the room asks for `ixo.room.state.acl`."""
        event_id, acl = await handler.set_acl(who, room_id, key, list(body.read), list(body.write))
        metrics.writes.labels("acl").inc()
        return AclResponse(
            room_id=room_id, key=key, read=list(acl.read), write=list(acl.write), event_id=event_id
        )

    return app


def _too_large() -> str:
    return "a state value is at most 65,536 bytes (one Matrix event)"


def build_asgi(
    handler: StateHandler,
    verifier: OpenIdVerifier,
    metrics: Metrics,
    *,
    synced: Callable[[], bool] = lambda: True,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> tuple[FastAPI, ASGIApp]:
    """The FastAPI app (for its OpenAPI document) and the ASGI app to serve: the app
    behind the services' :class:`RequestGuard`, which authenticates every ``/v1/`` call
    before its body is read, caps the body and counts every answer."""
    app = create_app(handler, verifier, metrics, synced=synced)

    async def authenticate(scope: Scope) -> None:
        if str(scope.get("path", "")).startswith("/v1/"):
            scope["state"]["caller"] = await verifier.verify(
                bearer_token(scope),
                header(scope, b"x-matrix-server-name"),
                action_of(str(scope.get("method", "")), str(scope.get("path", ""))),
            )

    guard = RequestGuard(
        app,
        max_body=max_body_bytes,
        authenticate=authenticate,
        on_answer=metrics.http.record,
        too_large=_too_large(),
    )
    return app, guard
