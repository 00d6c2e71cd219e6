"""Notifications out, as a trust boundary (issue 16): a room forwards its alerts only
when its admins declared it in room state and the operator configured the target; only
the summary line leaves; a receiver that fails is retried, then reported. ntfy push is
checked against a receiver that speaks ntfy's publish API as ntfy documents it
(https://docs.ntfy.sh/publish/): the topic in the path, the message as the body,
``Title``/``Priority``/``Tags`` headers (or their ``X-`` and short aliases), an access
token as ``Authorization: Bearer``, ``401`` with ntfy's error JSON without it."""

from __future__ import annotations

import json
import time
import uuid
from email.header import decode_header
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
from tests._cli import clean_env, cli
from tests._wait import until

_NTFY_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}


def _ntfy_header(request: web.Request, *names: str) -> str:
    for name in names:
        if name in request.headers:
            parts = decode_header(request.headers[name])  # ntfy decodes RFC 2047
            return "".join(p.decode(c or "utf-8") if isinstance(p, bytes) else p for p, c in parts)
    return ""


class NtfyServer:
    """ntfy's publish endpoint (``POST``/``PUT /<topic>``), with an access token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.messages: list[dict[str, Any]] = []

    async def publish(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {"code": 40101, "http": 401, "error": "unauthorized"}, status=401
            )
        raw = _ntfy_header(request, "X-Priority", "Priority", "prio", "p") or "3"
        priority = int(raw) if raw.isdigit() else _NTFY_PRIORITIES[raw]
        tags = _ntfy_header(request, "X-Tags", "Tags", "tag", "ta")
        message = {
            "id": uuid.uuid4().hex[:12],
            "time": int(time.time()),
            "event": "message",
            "topic": request.match_info["topic"],
            "message": (await request.read()).decode(),
            "title": _ntfy_header(request, "X-Title", "Title", "t"),
            "priority": priority,
            "tags": [t.strip() for t in tags.split(",") if t.strip()],
        }
        self.messages.append(message)
        return web.json_response(message)


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
    ntfy = NtfyServer(token="tk_" + uuid.uuid4().hex)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    app.router.add_route("POST", "/{topic}", ntfy.publish)
    app.router.add_route("PUT", "/{topic}", ntfy.publish)
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
        # ntfy, configured with the CLI; its token from stdin, never shown again.
        ntfy_url = f"http://127.0.0.1:{port}/boiler-alerts"
        data, env = tmp_path / "data", clean_env()
        added = cli(
            "forward", "add", room, "pager", ntfy_url, "--kind", "ntfy", "--secret-stdin",
            data_dir=data, env=env, input=ntfy.token,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = cli("forward", "list", "--json", data_dir=data, env=env)
        assert listed.returncode == 0, listed.stderr
        assert ntfy.token not in listed.stdout and "boiler-alerts" not in listed.stdout
        shown = {t["forward_id"]: t for t in json.loads(listed.stdout)["targets"]}
        assert shown["pager"]["kind"] == "ntfy" and shown["pager"]["secret"] is True
        bad = cli("forward", "add", room, "x y", ntfy_url, data_dir=data, env=env)
        assert bad.returncode != 0 and "forward id" in bad.stderr + bad.stdout
        # Another admin declares it with the CLI (its own device, its own data dir).
        ops = await homeserver.new_user("ops")
        await alice.rooms.grant(room, ops.user_id, "admin")
        ops_env = clean_env(
            DATAROOMS_HOMESERVER_MODE="external",
            DATAROOMS_HOMESERVER_URL=homeserver.base_url,
            DATAROOMS_ACCOUNT_USER_ID=ops.user_id,
            DATAROOMS_ACCOUNT_ACCESS_TOKEN=ops.access_token,
        )
        ops_dir = tmp_path / "ops"
        joined = cli("room", "join", room, data_dir=ops_dir, env=ops_env)
        assert joined.returncode == 0, joined.stderr
        said = cli(
            "forward", "declare", room, "pager", ntfy_url, "--kind", "ntfy",
            data_dir=ops_dir, env=ops_env,
        )  # fmt: skip
        assert said.returncode == 0, said.stderr
        assert "to 127.0.0.1:" in said.stdout and "boiler-alerts" not in said.stdout
        content = await declare(alice, room, "ops", "slack", url)
        assert content["forwards"]["ops"]["destination"] == f"127.0.0.1:{port}"
        assert "hook" not in str(content)  # the URL's path (its secret part) is not in state
        await until(lambda: "ops" in declared(svc.bot.client, room), 30, "the declaration")
        assert svc.bot.client.rooms.view(room).required(FORWARDING) == 100
        await bob.sync_once()
        forwards, sender, in_force = declarations(bob, room)  # what `room members` shows
        assert (sorted(forwards), sender, in_force) == (["ops", "pager"], alice.user_id, True)

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
        await until(lambda: ntfy.messages, 30, "the ntfy push")
        (push,) = ntfy.messages
        assert push["topic"] == "boiler-alerts"
        assert push["message"] == "🔥 [FIRING] hot: boiler too hot"  # the summary line only
        assert (push["title"], push["priority"]) == ("datarooms: hot firing", 4)
        assert push["tags"] == ["rotating_light"]
        status = svc.bot.notifier.status()
        assert status["counts"] == {"sent": 2}

        # A receiver that stays down: retried, then reported failed; the room goes on.
        # ntfy takes the resolve (a priority-3 check mark); the Slack receiver stays down.
        receiver.fail = 10**6
        await alice.telemetry.append(room, "temp", 10.0, tags={"boiler": "b7"})
        await alice.telemetry.flush()
        await until(lambda: len(ntfy.messages) == 2, 30, "the resolve on ntfy")
        assert ntfy.messages[1]["tags"] == ["white_check_mark"]
        assert ntfy.messages[1]["priority"] == 3
        await until(
            lambda: svc.bot is not None and svc.bot.notifier.status()["counts"].get("failed") == 1,
            90,
            "the failure to be reported",
        )
        assert svc.bot.notifier.status()["errors"][0]["error"] == "HTTP 503"
        listed = json.loads(cli("forward", "list", "--json", data_dir=data, env=env).stdout)
        shown = {t["forward_id"]: t for t in listed["targets"]}
        assert (shown["ops"]["failed"], shown["pager"]["sent"]) == (1, 2)
    finally:
        await svc.stop()
        await runner.cleanup()


class _Empty:
    rules: dict[str, Any] = {}


def test_what_each_kind_sends_and_its_secret() -> None:
    from email.header import decode_header as decode

    from datarooms.sdk.automation import SIGNATURE_HEADER, SignatureError, verify_signed
    from datarooms.sdk.automation.forward import outbound_request

    data = {"rule": "hot", "status": "firing", "severity": "page"}
    body, headers = outbound_request("json", "!r", "🔥 [FIRING] hot", data, "s3cret")
    assert json.loads(body) == {"room_id": "!r", "text": "🔥 [FIRING] hot", **data}
    verify_signed("s3cret", body, headers[SIGNATURE_HEADER], window=60)  # the receiver's check
    with pytest.raises(SignatureError):
        verify_signed("other", body, headers[SIGNATURE_HEADER], window=60)
    _, unsigned = outbound_request("json", "!r", "x", data, "")
    assert SIGNATURE_HEADER not in unsigned
    text, ntfy = outbound_request("ntfy", "!r", "line", {**data, "rule": "température"}, "tk")
    assert (text, ntfy["Priority"], ntfy["Authorization"]) == (b"line", "5", "Bearer tk")
    ((title, charset),) = decode(ntfy["Title"])  # non-ASCII: RFC 2047, as ntfy reads it
    assert isinstance(title, bytes) and title.decode(charset or "utf-8").startswith(
        "datarooms: température"
    )


def test_forward_targets_refuse_bad_input(tmp_path: Path) -> None:
    from datarooms.errors import ValidationError
    from datarooms.sdk.automation.forward import ForwardTargets

    t = ForwardTargets(tmp_path / "forward.db")
    try:
        for args, msg in [
            (("x", "!r", "ntfy", "https://ntfy.sh/"), "topic"),
            (("x", "!r", "slack", "https://hooks.example/x", "s"), "no secret"),
            (("x", "!r", "sms", "https://a.example/x"), "kind"),
            (("x", "!r", "json", "ftp://a.example/x"), "http"),
            (("x", "room", "json", "https://a.example/x"), "room id"),
        ]:
            with pytest.raises(ValidationError, match=msg):
                t.add(*args)
        with pytest.raises(ValidationError, match="no forwarding target"):
            t.remove("nope")
    finally:
        t.close()
