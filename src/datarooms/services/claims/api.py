"""The claims service's REST API: a thin FastAPI layer over :class:`ClaimsHandler`.

IXO's claims bot shape (docs/evidence.md maps it to ``claim.v1beta1``):

- ``POST /v1/rooms/{room}/collections/{collection}/claims`` ``{"credential": {...}}``
  → ``{"cid", "event_id", ...}`` (``saveClaim``);
- ``GET /v1/rooms/{room}/collections/{collection}/claims/{cid}`` → the claim and its
  verification verdict (``queryClaim``);
- ``GET /v1/rooms/{room}/collections/{collection}/claims`` → the collection's claims.

Every ``/v1/`` call is authenticated with a Matrix OpenID token before its body is
read (the services' :class:`~datarooms.services.scaffold.RequestGuard`); errors are
``{"errcode", "error"}`` with their HTTP status.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Scope

from datarooms.sdk.ucan import ROOM_READ, ROOM_WRITE
from datarooms.services.claims.handler import ClaimsHandler
from datarooms.services.openid import Action, Caller, OpenIdVerifier, install_ucan_routes
from datarooms.services.scaffold import (
    RequestGuard,
    bearer_token,
    header,
    http_metrics,
    install_error_handlers,
)

API_VERSION = "1.0.0"

RoomParam = Annotated[
    str,
    Path(description="Room id, e.g. `!abc:example.org`", pattern=r"^![^\s/]+$", max_length=255),
]
CollectionParam = Annotated[
    str,
    Path(description="The claim collection", pattern=r"^[A-Za-z0-9._:-]{1,128}$"),
]
CidParam = Annotated[str, Path(description="The claim's CID", pattern=r"^b[a-z2-7]{8,128}$")]


class SaveClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credential: dict[str, Any] = Field(
        description="A W3C Verifiable Credential with its eddsa-jcs-2022 DataIntegrityProof"
    )


def _caller(request: Request) -> Caller:
    caller = request.scope["state"]["caller"]
    assert isinstance(caller, Caller)
    return caller


def create_app(handler: ClaimsHandler) -> FastAPI:
    app = FastAPI(
        title="datarooms claims service",
        version=API_VERSION,
        description="Save and query signed, content-addressed claims (IXO claims bot shape).",
    )
    install_error_handlers(app, "the claims service")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "bot": handler.bot_id}

    @app.post("/v1/rooms/{room_id}/collections/{collection}/claims")
    async def save_claim(
        request: Request, room_id: RoomParam, collection: CollectionParam, body: SaveClaimRequest
    ) -> dict[str, Any]:
        saved = await handler.save(_caller(request), room_id, collection, body.credential)
        return {
            "cid": saved.cid,
            "collection": saved.collection,
            "room_id": saved.room_id,
            "event_id": saved.event_id,
        }

    @app.get("/v1/rooms/{room_id}/collections/{collection}/claims/{cid}")
    async def query_claim(
        request: Request, room_id: RoomParam, collection: CollectionParam, cid: CidParam
    ) -> dict[str, Any]:
        found = await handler.query(_caller(request), room_id, collection, cid)
        return {
            "cid": found.claim.cid,
            "collection": found.claim.collection,
            "event_id": found.claim.event_id,
            "credential": found.claim.credential,
            "verification": found.verdict.to_json(),
        }

    @app.get("/v1/rooms/{room_id}/collections/{collection}/claims")
    async def list_claims(
        request: Request, room_id: RoomParam, collection: CollectionParam
    ) -> dict[str, Any]:
        claims = await handler.list(_caller(request), room_id, collection)
        return {"claims": [{"cid": c.cid, "event_id": c.event_id} for c in claims]}

    return app


def claims_action(method: str, path: str) -> Action | None:
    """What a ``/v1/`` request asks, in UCAN terms: saving a claim is
    ``/datarooms/room/write`` on its room, reading or listing ``/datarooms/room/read``."""
    if not path.startswith("/v1/rooms/"):
        return None
    room, _, rest = path[len("/v1/rooms/") :].partition("/")
    if not rest.startswith("collections/"):
        return None
    if method == "POST":
        return Action(ROOM_WRITE, room)
    if method == "GET":
        return Action(ROOM_READ, room)
    return None


def build_asgi(
    handler: ClaimsHandler, verifier: OpenIdVerifier, *, max_body_bytes: int
) -> tuple[FastAPI, ASGIApp]:
    """The app and the ASGI app to serve, behind the guard that authenticates first."""
    app = create_app(handler)
    install_ucan_routes(app, verifier)
    metrics = http_metrics("claims")
    metrics.install(app)

    async def authenticate(scope: Scope) -> None:
        path = str(scope.get("path", ""))
        if path.startswith("/v1/"):
            scope["state"]["caller"] = await verifier.verify(
                bearer_token(scope),
                header(scope, b"x-matrix-server-name"),
                claims_action(str(scope.get("method", "")), path),
            )

    guard = RequestGuard(
        app,
        max_body=max_body_bytes,
        authenticate=authenticate,
        on_answer=metrics.record,
        too_large="a claim is at most 44 KiB; put large evidence in files and cite them",
    )
    return app, guard
