"""The automation service's HTTP API: ``POST /hooks/{hook_id}``, ``/health``, ``/metrics``.

A webhook request goes through, in order, before anything is stored:

1. the hook exists (``404 DR_UNKNOWN_HOOK``), for the ``token`` method the token is
   right (``401 DR_BAD_SIGNATURE``; before the rate limit, so a stranger cannot spend
   the hook's budget), and its rate limit allows it (``429 M_LIMIT_EXCEEDED`` with
   ``Retry-After``): all from the headers, before the body is read;
2. the body is read with the cap (``413 M_TOO_LARGE``);
3. the signature of the ``github`` and ``hmac`` methods (``401 DR_BAD_SIGNATURE``,
   ``401 DR_STALE_TIMESTAMP``);
4. the payload is parsed for the hook's format (``400 DR_BAD_PAYLOAD``);
5. its deliveries are committed to the outbox; only then ``202`` (or ``200`` with
   ``"duplicate": true`` for a redelivery already received).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Scope

from datarooms.sdk.automation import (
    SIGNATURE_HEADER,
    TOKEN_HEADER,
    Hook,
    HookOutbox,
    HookRegistry,
    parse,
    verify_github,
    verify_signed,
    verify_token,
)
from datarooms.services.automation.metrics import Metrics
from datarooms.services.scaffold import (
    Refusal,
    RequestGuard,
    TokenBucket,
    bearer_token,
    header,
    install_error_handlers,
)

log = logging.getLogger(__name__)

_PREFIX = "/hooks/"


def build_asgi(
    registry: HookRegistry,
    outbox: HookOutbox,
    metrics: Metrics,
    *,
    user_id: str,
    wake: Callable[[], None],
    max_body_bytes: int,
    rate_per_hook: float,
    burst: float,
    replay_window: float,
) -> tuple[FastAPI, ASGIApp]:
    app = FastAPI(
        title="datarooms automation",
        version="1.0.0",
        description="Inbound webhooks into end-to-end encrypted rooms (docs/automation.md).",
    )
    install_error_handlers(app, "the automation service")
    buckets = TokenBucket(rate_per_hook, burst)

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        counts = await asyncio.to_thread(outbox.counts)
        return {"status": "ok", "user_id": user_id, "outbox": counts}

    metrics.http.install(app, tags=["service"])

    @app.post("/hooks/{hook_id}", tags=["hooks"], status_code=202)
    async def receive(hook_id: str, request: Request) -> JSONResponse:
        """Receive one webhook (see the module's docstring for the checks)."""
        hook: Hook = request.state.hook
        body = await request.body()
        try:
            dedupe: str | None = None
            if hook.auth == "github":
                verify_github(hook.secret, body, request.headers.get("x-hub-signature-256"))
            elif hook.auth == "hmac":
                dedupe = "sig:" + verify_signed(
                    hook.secret,
                    body,
                    request.headers.get(SIGNATURE_HEADER.lower()),
                    window=replay_window,
                )
            if hook.format == "github":
                delivery = request.headers.get("x-github-delivery", "").strip()
                if delivery:
                    dedupe = "gh:" + delivery[:200]
            headers = {k.lower(): v for k, v in request.headers.items()}
            deliveries = parse(hook, body, headers)
        except Exception:
            metrics.hooks.labels(hook.format, "refused").inc()
            raise
        seqs = await asyncio.to_thread(
            outbox.enqueue, hook.hook_id, hook.room_id, deliveries, dedupe=dedupe
        )
        if seqs is None:
            metrics.hooks.labels(hook.format, "duplicate").inc()
            return JSONResponse({"duplicate": True, "queued": 0}, status_code=200)
        wake()
        metrics.hooks.labels(hook.format, "queued").inc()
        return JSONResponse({"queued": len(seqs), "seq": seqs}, status_code=202)

    async def authenticate(scope: Scope) -> None:
        path = str(scope.get("path", ""))
        if not path.startswith(_PREFIX) or scope.get("method") != "POST":
            return
        hook_id = path[len(_PREFIX) :]
        hook = await asyncio.to_thread(registry.get, hook_id)
        if hook is None:
            raise Refusal(
                404, "DR_UNKNOWN_HOOK", "no such hook; see `datarooms hook list` for its URL"
            )
        # A wrong token is refused before it can spend the hook's rate limit.
        if hook.auth == "token":
            presented = bearer_token(scope) or header(scope, TOKEN_HEADER.lower().encode())
            try:
                verify_token(hook.secret, presented)
            except Exception:
                metrics.hooks.labels(hook.format, "refused").inc()
                raise
        wait = buckets.take(hook.hook_id)
        if wait > 0:
            raise Refusal(
                429,
                "M_LIMIT_EXCEEDED",
                f"this hook sends faster than {rate_per_hook:g} requests/s; retry later",
                {"Retry-After": str(max(1, round(wait)))},
            )
        scope["state"]["hook"] = hook

    guard = RequestGuard(
        app,
        max_body=max_body_bytes,
        authenticate=authenticate,
        on_answer=metrics.http.record,
        too_large="[automation] max_body_bytes sets the limit",
    )
    return app, guard
