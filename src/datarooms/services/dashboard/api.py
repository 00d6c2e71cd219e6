"""The dashboard's HTTP surface: pages, a JSON API over the signed-in user's device, and
a stream of server-sent events.

Who may ask what is decided before a body is read (:class:`scaffold.RequestGuard`):

- ``/static/*``, ``/login`` (GET), ``/``, ``/api/health`` and ``/metrics`` (Prometheus,
  ``dashboard_*``, route templates only) are public (``/`` sends a
  signed-out browser to ``/login``);
- ``POST /login`` must carry the sign-in form's CSRF token (the ``dr_login`` cookie
  and the ``X-CSRF-Token`` header agree);
- everything else needs the session cookie (``401`` without one), and every method but
  ``GET``/``HEAD`` the session's CSRF token in ``X-CSRF-Token`` (``403 DR_CSRF``
  without it) and, when the browser sends one, an ``Origin`` of the dashboard itself.

Every handler then asks the SDK on the signed-in user's device only, and only about
rooms that user is joined to. Errors are ``{"errcode", "error"}`` (the pages show
``error``); no traceback ever reaches a page.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope

from datarooms.errors import NotFoundError, ValidationError
from datarooms.sdk.audit_bundle import check_trail
from datarooms.sdk.automation.alerts import acknowledge, open_alerts
from datarooms.sdk.keys import Verification
from datarooms.services.dashboard import views
from datarooms.services.dashboard.devices import UserDevice
from datarooms.services.dashboard.sessions import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    WebSession,
)
from datarooms.services.scaffold import (
    Refusal,
    RequestGuard,
    header,
    http_metrics,
    install_error_handlers,
)

if TYPE_CHECKING:
    from datarooms.services.dashboard.service import Dashboard

STATIC = Path(str(resources.files("datarooms.services.dashboard") / "static"))
_PUBLIC = frozenset({"/", "/login", "/api/health", "/metrics", "/favicon.ico"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
#: JSON bodies: above the SDK's record limit, so that its own error explains that limit.
_JSON_BODY = 256 * 1024
#: Security headers of every answer: scripts and styles only from the dashboard itself.
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _cookies(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header(scope, b"cookie") or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(name, value)
    return out


def _origin_ok(scope: Scope) -> bool:
    origin = header(scope, b"origin")
    if origin is None:
        return True
    host = header(scope, b"host") or ""
    return origin in (f"http://{host}", f"https://{host}")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {bytes(k).lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in _HEADERS.items()]
                if not str(scope.get("path", "")).startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in extra if h[0] not in names
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def build_asgi(dash: Dashboard) -> ASGIApp:
    app = FastAPI(title="datarooms dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app, "the dashboard")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def authenticate(scope: Scope) -> None:
        path = str(scope.get("path", ""))
        method = str(scope.get("method", "GET"))
        cookies = _cookies(scope)
        if method not in _SAFE_METHODS and not _origin_ok(scope):
            raise Refusal(403, "DR_CSRF", "this request came from another site")
        if path.startswith("/static/") or (path in _PUBLIC and method in _SAFE_METHODS):
            scope["state"]["session"] = dash.sessions.get(cookies.get(SESSION_COOKIE))
            return
        if path == "/login" and method == "POST":
            token = header(scope, CSRF_HEADER.encode())
            expected = cookies.get(LOGIN_COOKIE)
            if not token or not expected or not secrets.compare_digest(token, expected):
                raise Refusal(
                    403, "DR_CSRF", "the sign-in form expired; reload the page and sign in again"
                )
            return
        session = dash.sessions.get(cookies.get(SESSION_COOKIE))
        if session is None or dash.devices.get(session.user_id) is None:
            raise Refusal(401, "M_MISSING_TOKEN", "you are signed out; sign in again")
        if method not in _SAFE_METHODS and not session.csrf_ok(header(scope, CSRF_HEADER.encode())):
            raise Refusal(
                403, "DR_CSRF", "the request did not carry this page's CSRF token; reload the page"
            )
        scope["state"]["session"] = session

    def body_limit(scope: Scope) -> int:
        path = str(scope.get("path", ""))
        if scope.get("method") == "POST" and path.endswith("/files"):
            return dash.config.max_upload_bytes
        return _JSON_BODY

    metrics = http_metrics("dashboard")
    metrics.install(app)
    _routes(app, dash)
    guarded = RequestGuard(
        app,
        max_body=body_limit,
        authenticate=authenticate,
        on_answer=metrics.record,
    )
    return SecurityHeaders(guarded)


def _session(request: Request) -> WebSession:
    session = request.state.session
    assert isinstance(session, WebSession)
    return session


def _page(name: str, **values: str) -> str:
    text = (STATIC / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


class LoginBody(BaseModel):
    user: str = Field(max_length=255)
    password: str = Field(max_length=1024)
    recovery_key: str | None = Field(default=None, max_length=200)


class MessageBody(BaseModel):
    body: str = Field(min_length=1, max_length=20_000)
    thread_root: str | None = Field(default=None, max_length=255)


class GrantBody(BaseModel):
    user: str = Field(max_length=255)
    access: Literal["read", "write", "admin"] = "read"


class RevokeBody(BaseModel):
    user: str = Field(max_length=255)


class AckBody(BaseModel):
    event_id: str = Field(min_length=2, max_length=255)


class VerifyBody(BaseModel):
    user: str = Field(min_length=1, max_length=255)
    device: str = Field(min_length=1, max_length=255)


class PutBody(BaseModel):
    key: str = Field(min_length=1, max_length=1024)
    value: Any = None


def _routes(app: FastAPI, dash: Dashboard) -> None:
    def device_of(request: Request) -> UserDevice:
        device = dash.devices.get(_session(request).user_id)
        if device is None:
            raise NotFoundError("your device is closed; sign in again")
        return device

    # -- pages -----------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, response_model=None)
    async def index(request: Request) -> Response:
        session = request.state.session
        if session is None or dash.devices.get(session.user_id) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(_page("app.html", csrf=session.csrf, user=_html(session.user_id)))

    @app.get("/login", response_class=HTMLResponse)
    async def login_page() -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        resp = HTMLResponse(_page("login.html", csrf=token))
        resp.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=3600, path="/login"
        )
        return resp

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.post("/login")
    async def login(body: LoginBody) -> JSONResponse:
        user_id = dash.devices.user_id(body.user)
        device = await dash.devices.sign_in(
            user_id, body.password, (body.recovery_key or "").strip() or None
        )
        cookie, _ = dash.sessions.create(user_id)
        resp = JSONResponse({"user_id": user_id, "device_id": device.client.device_id})
        resp.set_cookie(
            SESSION_COOKIE,
            cookie,
            httponly=True,
            samesite="strict",
            max_age=int(dash.config.session_seconds),
            path="/",
        )
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> JSONResponse:
        session = _session(request)
        dash.sessions.end(session)
        await dash.end_user(session.user_id)
        resp = JSONResponse({})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- who and how -----------------------------------------------------------------

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return dash.status()

    @app.get("/api/me")
    async def me(request: Request) -> dict[str, Any]:
        device = device_of(request)
        return {
            "user_id": device.user_id,
            "device_id": device.client.device_id,
            "homeserver": dash.homeserver_url,
            **dash.status(),
        }

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        device = device_of(request)
        queue = device.stream()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield _sse(dash.status())
                while not dash.stopping.is_set():
                    try:
                        item = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse(item)
                    if item.get("type") == "signed_out":
                        return
            finally:
                device.streams.discard(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- rooms -----------------------------------------------------------------------

    @app.get("/api/rooms")
    async def rooms(request: Request) -> dict[str, Any]:
        client = device_of(request).client
        joined = set(client.rooms.joined_ids())
        # How big each room is, as this user's dashboard device holds it (sdk/usage.py).
        sizes = {u.room_id: u for u in client.rooms.usage()}
        out = []
        for room in client.rooms.list():
            if room.room_id not in joined:
                continue
            size = sizes.get(room.room_id)
            out.append(
                {
                    "room_id": room.room_id,
                    "kind": room.kind,
                    "name": room.name,
                    "alias": room.alias,
                    "did": room.did,
                    "purpose": room.purpose,
                    "encrypted": client.rooms.is_encrypted(room.room_id),
                    "members": len(client.rooms.members(room.room_id)),
                    "keys": size.keys if size else 0,
                    "versions": size.versions if size else 0,
                    "files": size.files if size else 0,
                    "telemetry_samples": size.telemetry_samples if size else 0,
                    "bytes": size.total_bytes if size else 0,
                }
            )
        out.sort(key=lambda r: str(r["name"] or r["room_id"]).lower())
        return {"rooms": out, "invites": client.invites()}

    @app.get("/api/rooms/{room}")
    async def room(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        client = device.client
        info = client.rooms.info(room_id)
        acl = client.rooms.server_acl(room_id)
        return {
            "room_id": room_id,
            "kind": info.kind,
            "name": info.name,
            "alias": info.alias,
            "did": info.did,
            "purpose": info.purpose,
            "encrypted": client.rooms.is_encrypted(room_id),
            "me": client.user_id,
            "my_device": client.device_id,
            "my_access": client.rooms.view(room_id).access(client.user_id),
            "members": [
                {
                    "user_id": m.user_id,
                    "membership": m.membership,
                    "access": m.access,
                    "power": m.power,
                    "display_name": m.display_name,
                }
                for m in client.rooms.members(room_id)
            ],
            "servers": [
                {"server_name": s.server_name, "members": list(s.members), "allowed": s.allowed}
                for s in client.rooms.servers(room_id)
            ],
            "server_acl": acl.content() if acl is not None else None,
        }

    # -- records: the twin and history ----------------------------------------------

    @app.get("/api/rooms/{room}/twin")
    async def twin(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        latest = await device.client.records.latest(room_id)
        return {
            "room_id": room_id,
            "records": [views.record_json(latest[k]) for k in sorted(latest)],
        }

    @app.get("/api/rooms/{room}/history")
    async def history(
        request: Request,
        room: str,
        key: str = Query(min_length=1, max_length=1024),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        versions = await device.client.records.history(
            room_id, key, limit=limit + 1, newest_first=True
        )
        if not versions:
            raise NotFoundError(f"room {room_id} has no record {key!r}")
        shown = views.history_json(versions)[:limit]
        return {"room_id": room_id, "key": key, "versions": shown}

    @app.post("/api/rooms/{room}/records")
    async def put_record(request: Request, room: str, body: PutBody) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        record = await device.client.records.put(room_id, body.key, body.value)
        return views.record_json(record)

    # -- telemetry -------------------------------------------------------------------

    @app.get("/api/rooms/{room}/series")
    async def series(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        found = await device.client.telemetry.series(room_id)
        return {
            "series": [
                {
                    "metric": s.metric,
                    "tags": dict(s.tags),
                    "count": s.count,
                    "first_ts": s.first_ts,
                    "last_ts": s.last_ts,
                }
                for s in found
            ]
        }

    @app.get("/api/rooms/{room}/telemetry")
    async def telemetry(
        request: Request,
        room: str,
        metric: str = Query(min_length=1, max_length=200),
        since: int = Query(ge=0),
        until: int = Query(ge=0),
    ) -> dict[str, Any]:
        """Points of ``metric`` in ``[since, until)`` (ms): raw samples when the range is
        short and they fit, else buckets (per-minute rollups or coarser) that fit."""
        device = device_of(request)
        room_id = device.joined(room)
        if until <= since:
            raise ValidationError("until must be after since")
        tm = device.client.telemetry
        # Followed from now on: the index stays current live, and later charts of the room
        # answer from it without asking the homeserver first.
        tm.follow(room_id)
        cfg = dash.config
        span = until - since
        out: dict[str, Any]
        if span <= cfg.raw_range_seconds * 1000:
            samples = await tm.query(
                room_id, metric, since=since, until=until, limit=cfg.max_points + 1
            )
            if len(samples) <= cfg.max_points:
                out = views.raw_points(samples)
            else:
                step = views.bucket_step(span, cfg.max_points, minimum=1000)
                buckets = await tm.aggregate(
                    room_id, metric, since=since, until=until, step=step, catch_up=False
                )
                out = views.bucket_points(buckets, step)
        else:
            step = views.bucket_step(span, cfg.max_points, minimum=60_000)
            # Buckets on whole UTC minutes: each is then made of full minutes, which the
            # index answers from its per-minute rollups instead of the raw samples.
            start = since - since % 60_000
            end = until + (-until % 60_000)
            buckets = await tm.aggregate(room_id, metric, since=start, until=end, step=step)
            out = views.bucket_points(buckets, step)
        return {"room_id": room_id, "metric": metric, "since": since, "until": until, **out}

    # -- files -----------------------------------------------------------------------

    @app.get("/api/rooms/{room}/files")
    async def files(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        out = []
        async for e in device.client.messages.backwards(room_id, max_scan=1000):
            content = e.content
            if content.get("msgtype") != "m.file" or "file" not in content:
                continue
            info = content.get("info") or {}
            out.append(
                {
                    "event_id": e.event_id,
                    "name": str(content.get("filename") or content.get("body") or "file"),
                    "size": info.get("size"),
                    "mimetype": info.get("mimetype"),
                    "sender": e.sender,
                    "ts": e.ts,
                }
            )
            if len(out) >= 200:
                break
        return {"files": out}

    @app.post("/api/rooms/{room}/files")
    async def upload(
        request: Request, room: str, name: str = Query(min_length=1, max_length=255)
    ) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        data = await request.body()
        if not data:
            raise ValidationError("the file is empty")
        digest = hashlib.sha256(data).hexdigest()
        ref = await device.client.files.put(room_id, data, filename=name)
        return {"event_id": ref.event_id, "name": ref.name, "size": ref.size, "sha256": digest}

    @app.get("/api/rooms/{room}/files/{event_id}")
    async def download(request: Request, room: str, event_id: str) -> Response:
        device = device_of(request)
        room_id = device.joined(room)
        if not event_id.startswith("$") or len(event_id) > 255:
            raise ValidationError("not an event id ($...)")
        ref = await device.client.files.ref(room_id, event_id)
        # files.read checks the ciphertext's SHA-256 against the event before decrypting.
        data = await device.client.files.read(room_id, event_id)
        return Response(
            data,
            # Never the sender's type: a file must not run as a page of the dashboard.
            media_type="application/octet-stream",
            headers={
                "content-disposition": f"attachment; filename*=UTF-8''{quote(ref.name)}",
                "x-content-sha256": hashlib.sha256(data).hexdigest(),
            },
        )

    # -- messages --------------------------------------------------------------------

    @app.get("/api/rooms/{room}/messages")
    async def messages(
        request: Request, room: str, limit: int = Query(50, ge=1, le=500)
    ) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        page = await device.client.messages.read(room_id, limit=limit)
        out = []
        for e in page.events:
            if e.type not in ("m.room.message", "m.room.encrypted"):
                continue
            rel = e.content.get("m.relates_to") or {}
            out.append(
                {
                    "event_id": e.event_id,
                    "sender": e.sender,
                    "ts": e.ts,
                    "decrypted": e.decrypted,
                    "msgtype": e.content.get("msgtype"),
                    "body": e.content.get("body") if e.decrypted else None,
                    "thread_root": rel.get("event_id")
                    if rel.get("rel_type") == "m.thread"
                    else None,
                }
            )
        return {"messages": out, "more": page.more}

    @app.post("/api/rooms/{room}/messages")
    async def send(request: Request, room: str, body: MessageBody) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        if body.thread_root:
            event_id = await device.client.messages.thread_reply(
                room_id, body.thread_root, body.body
            )
        else:
            event_id = await device.client.messages.send(room_id, body.body)
        return {"event_id": event_id}

    # -- access ----------------------------------------------------------------------

    @app.get("/api/rooms/{room}/access")
    async def access(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        review = await device.client.rooms.review(room_id)
        return {
            "room_id": room_id,
            "members": [
                {
                    "user_id": m.user_id,
                    "membership": m.membership,
                    "access": m.access,
                    "power": m.power,
                    "last_active_ts": m.last_active_ts,
                    "devices": [
                        {
                            "device_id": d.device_id,
                            "display_name": d.display_name,
                            "verified": d.verified,
                        }
                        for d in m.devices
                    ],
                }
                for m in review
            ],
        }

    @app.post("/api/rooms/{room}/access")
    async def grant(request: Request, room: str, body: GrantBody) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        await device.client.rooms.grant(room_id, body.user.strip(), body.access)
        return {"granted": body.user.strip(), "access": body.access}

    @app.post("/api/rooms/{room}/access/revoke")
    async def revoke(request: Request, room: str, body: RevokeBody) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        await device.client.rooms.revoke(room_id, body.user.strip())
        return {"revoked": body.user.strip()}

    # -- evidence: claims and the audit trail ---------------------------------------

    @app.get("/api/rooms/{room}/claims")
    async def claims(
        request: Request, room: str, limit: int = Query(50, ge=1, le=200)
    ) -> dict[str, Any]:
        """The room's claims, newest first, each verified now: signature, its CID and
        every evidence item's bytes, fetched from the room and decrypted here."""
        device = device_of(request)
        room_id = device.joined(room)
        client = device.client
        out = []
        for saved in await client.claims.list(room_id, limit=limit):
            verdict = await client.claims.verify(room_id, saved.cid, collection=saved.collection)
            out.append(views.claim_json(saved, verdict))
        return {"room_id": room_id, "claims": out}

    @app.get("/api/rooms/{room}/audit")
    async def audit(
        request: Request, room: str, limit: int = Query(100, ge=1, le=1000)
    ) -> dict[str, Any]:
        """The room's audit trail (brought up to date from the room), its hash chain
        checked, and this device's anchors of it with their status."""
        device = device_of(request)
        room_id = device.joined(room)
        trail = device.client.audit
        await trail.update(room_id)
        entries = [{**e.entry, "hash": e.hash} for e in trail.entries(room_id)]
        checked = check_trail(room_id, entries, [a.to_json() for a in trail.anchors(room_id)])
        return {
            "room_id": room_id,
            "count": len(entries),
            "entries": entries[::-1][:limit],
            **checked,
        }

    # -- alerts ----------------------------------------------------------------------

    @app.get("/api/rooms/{room}/alerts")
    async def alerts(request: Request, room: str) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        found = await open_alerts(device.client, room_id)
        return {"room_id": room_id, "alerts": [a.to_json() for a in found]}

    @app.post("/api/rooms/{room}/alerts/ack")
    async def ack(request: Request, room: str, body: AckBody) -> dict[str, Any]:
        device = device_of(request)
        room_id = device.joined(room)
        alert = await acknowledge(device.client, room_id, body.event_id)
        return alert.to_json()

    # -- device verification (SAS) of a room's members ----------------------------

    def member_flow(device: UserDevice, room_id: str, flow_id: str) -> Verification:
        for flow in device.client.keys.verification.flows():
            if flow.flow_id == flow_id and not flow.incoming:
                if not device.client.rooms.view(room_id).is_joined(flow.other_user):
                    break
                return flow
        raise NotFoundError(f"no verification {flow_id!r} of a member of {room_id}")

    @app.post("/api/rooms/{room}/verify")
    async def verify(request: Request, room: str, body: VerifyBody) -> dict[str, Any]:
        """Ask a member's device to verify with this dashboard device (emoji SAS)."""
        device = device_of(request)
        room_id = device.joined(room)
        user = body.user.strip()
        if not device.client.rooms.view(room_id).is_joined(user):
            raise ValidationError(f"{user} is not a joined member of {room_id}")
        flow = await device.client.keys.verification.request(user, body.device.strip())
        return views.verification_json(flow)

    @app.get("/api/rooms/{room}/verify/{flow_id}")
    async def verification(request: Request, room: str, flow_id: str) -> dict[str, Any]:
        device = device_of(request)
        return views.verification_json(member_flow(device, device.joined(room), flow_id))

    @app.post("/api/rooms/{room}/verify/{flow_id}/{answer}")
    async def answer(
        request: Request, room: str, flow_id: str, answer: Literal["confirm", "mismatch", "cancel"]
    ) -> dict[str, Any]:
        """The user compared the emoji: ``confirm`` (they match), ``mismatch`` (they
        differ: cancelled, nothing verified) or ``cancel``."""
        device = device_of(request)
        flow = member_flow(device, device.joined(room), flow_id)
        if answer == "confirm":
            await flow.confirm()
        elif answer == "mismatch":
            await flow.mismatch()
        else:
            await flow.cancel()
        return views.verification_json(flow)


def _sse(item: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode()


def _html(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


__all__ = ["build_asgi"]
