"""Notifications out, as a trust boundary (issue 16): a room forwards its alerts only
when its admins declared it in room state and the operator configured the target; only
the summary line leaves; a receiver that fails is retried, then reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from datarooms import DataroomsClient
from datarooms.errors import AccessDeniedError
from datarooms.homeserver.embedded import free_port
from datarooms.sdk.automation.forward import FORWARDING, declarations, declare, declared
from datarooms.sdk.automation.rules import RULE_KEY_PREFIX, rule_schema
from datarooms.testing import TestHomeserver
from tests._automation import room_with_bot, start_service
from tests._wait import until


class Receiver:
    """A Slack-compatible incoming-webhook receiver: fails the first ``fail`` posts."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.bodies: list[Any] = []
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=503, text="down")
        self.bodies.append(await request.json())
        return web.Response(text="ok")


async def test_forwarding_needs_an_admin_declaration_sends_the_summary_and_retries(
    homeserver: TestHomeserver, tmp_path: Path, open_client: Any
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    bob: DataroomsClient = await open_client(await homeserver.new_user("bob"))
    receiver = Receiver(fail=2)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/hook"
    _ctx, svc, _ = await start_service(homeserver, tmp_path / "data", notify_attempts=4)
    assert svc.bot is not None
    try:
        room = await room_with_bot(alice, svc)
        await alice.rooms.grant(room, bob.user_id, "write")
        await bob.sync_once()
        await bob.rooms.join(room)
        # A writer may not declare forwarding; an admin may.
        with pytest.raises(AccessDeniedError, match="only an admin"):
            await declare(bob, room, "ops", "slack", url)
        svc.bot.notifier.add("ops", room, "slack", url)  # the operator's side
        content = await declare(alice, room, "ops", "slack", url)
        assert content["forwards"]["ops"]["destination"] == f"127.0.0.1:{port}"
        assert "hook" not in str(content)  # the URL's path (its secret part) is not in state
        await until(lambda: "ops" in declared(svc.bot.client, room), 30, "the declaration")
        assert svc.bot.client.rooms.view(room).required(FORWARDING) == 100
        await bob.sync_once()
        forwards, sender, in_force = declarations(bob, room)  # what `room members` shows
        assert (list(forwards), sender, in_force) == (["ops"], alice.user_id, True)

        name, schema = rule_schema()
        await alice.records.publish_schema(room, name, schema)
        secret = {
            "name": "hot",
            "kind": "threshold",
            "metric": "temp",
            "above": 80,
            "summary": "boiler too hot",
        }
        await alice.records.put(room, RULE_KEY_PREFIX + "hot", secret, schema=name)
        await until(
            lambda: "hot" in svc.bot.alerts.engines.get(room, _Empty()).rules, 30, "the rule"
        )
        await alice.telemetry.append(room, "temp", 93.5, tags={"boiler": "b7"})
        await alice.telemetry.flush()
        await until(lambda: receiver.bodies, 60, "the forwarded alert")
        # Slack's shape, the summary line only (not the series lines, not the record).
        assert receiver.bodies == [{"text": "🔥 [FIRING] hot: boiler too hot"}]
        assert receiver.attempts == 3  # two failures, retried
        status = svc.bot.notifier.status()
        assert status["counts"] == {"sent": 1}

        # A receiver that stays down: retried, then reported failed; the room goes on.
        receiver.fail = 10**6
        await alice.telemetry.append(room, "temp", 10.0, tags={"boiler": "b7"})
        await alice.telemetry.flush()
        await until(
            lambda: svc.bot is not None and svc.bot.notifier.status()["counts"].get("failed") == 1,
            90,
            "the failure to be reported",
        )
        assert svc.bot.notifier.status()["errors"][0]["error"] == "HTTP 503"
    finally:
        await svc.stop()
        await runner.cleanup()


class _Empty:
    rules: dict[str, Any] = {}
