"""Fuzz the state bot's REST API with schemathesis, from its own OpenAPI document.

Every operation gets bounded positive and negative examples, half of them
authenticated with a real OpenID token and aimed at a real room the bot is in,
so the fuzzer reaches the handlers and the homeserver behind them. Whatever it
sends, the bot answers 4xx or 2xx, never 5xx, and every answer conforms to the
OpenAPI document (status codes, content types, response schemas).
"""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from datarooms.testing import TestHomeserver
from tests.test_statebot import OpenClient, bot_room, openid_token, start_bot

EXAMPLES = 30  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(base_url: str, room: str, token: str) -> tuple[int, list[str]]:
    """Run every operation's examples (blocking: call it in a thread). Return (calls, failures)."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    auth = {"Authorization": f"Bearer {token}", "X-Matrix-Server-Name": "localhost"}
    failures: list[str] = []
    calls = 0

    def examples(operation: Any, mode: schemathesis.GenerationMode) -> Any:
        positive = mode is schemathesis.GenerationMode.POSITIVE

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal calls
            # Most calls authenticated and aimed at the real room, to reach the handlers.
            authenticated, real_room = calls % 4 != 3, calls % 3 != 2
            params = case.path_parameters or {}
            if real_room and positive:
                for name in ("room_id", "room"):
                    if name in params:
                        params[name] = room
            response = case.call(
                base_url=base_url, headers=auth if authenticated else None, timeout=30
            )
            calls += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # collect: report every failure
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{str(exc)[:300]}"
                )

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                examples(operation, mode)()
            except Unsatisfiable:
                continue  # nothing to make invalid (an operation without parameters)
    return calls, failures


async def test_fuzz_the_api_no_server_errors(
    homeserver: TestHomeserver, open_client: OpenClient
) -> None:
    bot = await start_bot(homeserver, open_client)
    try:
        alice = await open_client(await homeserver.new_user("alice"))
        room = await bot_room(alice, bot)
        token = await openid_token(alice)
        calls, failures = await asyncio.to_thread(fuzz, bot.url, room, token)
        assert calls > 300
        assert not failures, "\n".join(failures[:20])
        answered = {
            (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
            for metric in bot.metrics.registry.collect()
            if metric.name == "statebot_requests"
            for s in metric.samples
            if s.name.endswith("_total")
        }
        assert not [k for k in answered if k[2].startswith("5")]
        # The fuzzer reached the handlers: it read and wrote state in the real room.
        assert answered.get(("GET", "/v1/rooms/{room_id}/state", "200"))
        assert answered.get(("PUT", "/v1/rooms/{room_id}/state/{key:path}", "200"))
    finally:
        await bot.stop()
