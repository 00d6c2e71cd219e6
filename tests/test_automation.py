"""Inbound webhooks: verification, formats, limits, the outbox, the CLI (issue 16)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from datarooms import DataroomsClient
from datarooms.sdk.automation import (
    ALERT_KEY,
    Hook,
    HookOutbox,
    HookRegistry,
    PayloadError,
    github_signature,
    lookup,
    parse,
    render,
    sign,
)
from datarooms.services.automation import registry_path
from datarooms.testing import TestHomeserver
from tests._automation import hook_messages, room_with_bot, start_service
from tests._cli import clean_env, cli
from tests._wait import until

OpenClient = Any


def _hook(**kw: Any) -> Hook:
    base: dict[str, Any] = dict(
        hook_id="h" * 16,
        room_id="!r:localhost",
        format="generic",
        auth="token",
        target="message",
        secret="s3cret",
    )
    base.update(kw)
    return Hook(**base)


ALERTMANAGER_FIRING = {
    "version": "4",
    "groupKey": '{}:{alertname="HighLatency"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "datarooms",
    "groupLabels": {"alertname": "HighLatency"},
    "commonLabels": {"alertname": "HighLatency", "severity": "page"},
    "commonAnnotations": {},
    "externalURL": "http://am:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighLatency", "instance": f"pump-{i}", "severity": "page"},
            "annotations": {"summary": f"pump {i} p99 over 2 s"},
            "startsAt": "2026-12-02T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": f"f{i}",
        }
        for i in (1, 2)
    ],
}


# -- formats, without a homeserver --------------------------------------------------------


def test_paths_and_templates() -> None:
    data = {"a": {"b": [{"c": 7}, {"c": "x"}]}, "n": "pump 7"}
    assert lookup(data, "a.b[1].c") == "x" and lookup(data, "$.a.b[0].c") == 7
    assert render("${n} at ${a.b[0].c} $$5", data) == "pump 7 at 7 $5"
    for bad in ("a.z", "a.b[5]", "n.x"):
        with pytest.raises(PayloadError, match="has no"):
            lookup(data, bad)


def test_alertmanager_grouped_and_malformed() -> None:
    hook = _hook(format="alertmanager")
    (d,) = parse(hook, json.dumps(ALERTMANAGER_FIRING).encode(), {})
    content = d.payload["content"]
    assert content["body"].startswith("🔥 [FIRING:2] HighLatency")
    assert "pump 2 p99 over 2 s" in content["body"]
    alert = content[ALERT_KEY]
    assert alert["status"] == "firing" and [a["fingerprint"] for a in alert["alerts"]] == [
        "f1",
        "f2",
    ]
    resolved = dict(ALERTMANAGER_FIRING, status="resolved")
    (r,) = parse(hook, json.dumps(resolved).encode(), {})
    assert r.payload["content"]["body"].startswith("✅ [RESOLVED] HighLatency")
    for broken, why in (
        (b"not json", "not JSON"),
        (json.dumps(dict(ALERTMANAGER_FIRING, version="3")).encode(), "version"),
        (json.dumps(dict(ALERTMANAGER_FIRING, alerts=[])).encode(), "non-empty"),
        (json.dumps(dict(ALERTMANAGER_FIRING, status="odd")).encode(), "status"),
        (json.dumps(dict(ALERTMANAGER_FIRING, groupLabels={"a": 1})).encode(), "groupLabels"),
    ):
        with pytest.raises(PayloadError, match=why):
            parse(hook, broken, {})


def test_generic_telemetry_mapping() -> None:
    hook = _hook(
        target="telemetry",
        mapping={"each": "readings", "metric": "temp.${room}", "value": "c", "ts": "at"},
    )
    body = {"readings": [{"room": "a", "c": 21.5, "at": 1000}, {"room": "b", "c": 19, "at": 2000}]}
    (d,) = parse(hook, json.dumps(body).encode(), {})
    assert d.payload["samples"] == [[1000, "temp.a", 21.5, {}], [2000, "temp.b", 19.0, {}]]
    with pytest.raises(PayloadError, match="finite number"):
        parse(hook, json.dumps({"readings": [{"room": "a", "c": "hot", "at": 1}]}).encode(), {})


# -- the service, against the real homeserver ---------------------------------------------


async def _post(
    s: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_hooks_verify_refuse_and_post_encrypted(
    homeserver: TestHomeserver, tmp_path: Path, open_client: OpenClient
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    ctx, svc, url = await start_service(homeserver, tmp_path / "data", rate_per_hook=2, burst=20)
    try:
        room = await room_with_bot(alice, svc)
        reg = HookRegistry(registry_path(ctx.settings))
        token = reg.add(room, template="deploy ${app} ${version} by ${who}", name="deploys")
        gh = reg.add(room, format="github", auth="github")
        signed = reg.add(room, auth="hmac", target="record", template="sensor.${id}")
        am = reg.add(room, format="alertmanager")
        reg.close()
        bearer = {"Authorization": f"Bearer {token.secret}"}
        async with aiohttp.ClientSession() as s:
            body = json.dumps({"app": "api", "version": "1.2", "who": "ci"}).encode()
            # Refused, nothing stored: wrong token, unknown hook, oversize, malformed.
            assert (await _post(s, f"{url}/hooks/{token.hook_id}", body, {}))[0] == 401
            st, err = await _post(
                s, f"{url}/hooks/{token.hook_id}", body, {"Authorization": "Bearer nope"}
            )
            assert (st, err["errcode"]) == (401, "DR_BAD_SIGNATURE")
            st, err = await _post(s, f"{url}/hooks/AAAAAAAAAAAAAAAA", body, bearer)
            assert (st, err["errcode"]) == (404, "DR_UNKNOWN_HOOK")
            st, err = await _post(s, f"{url}/hooks/{token.hook_id}", b"x" * (2 << 20), bearer)
            assert (st, err["errcode"]) == (413, "M_TOO_LARGE")
            st, err = await _post(s, f"{url}/hooks/{token.hook_id}", b'{"app": 1}', bearer)
            assert (st, err["errcode"]) == (400, "DR_BAD_PAYLOAD")
            st, err = await _post(
                s,
                f"{url}/hooks/{am.hook_id}",
                b'{"version": "4"}',
                {"Authorization": f"Bearer {am.secret}"},
            )
            assert (st, err["errcode"]) == (400, "DR_BAD_PAYLOAD")
            # GitHub: a bad signature is refused; a good one posts once per delivery id.
            ping = json.dumps(
                {"zen": "Keep it logically awesome.", "repository": {"full_name": "o/r"}}
            ).encode()
            gh_headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1"}
            st, err = await _post(
                s,
                f"{url}/hooks/{gh.hook_id}",
                ping,
                {**gh_headers, "X-Hub-Signature-256": github_signature("wrong", ping)},
            )
            assert (st, err["errcode"]) == (401, "DR_BAD_SIGNATURE")
            good = {**gh_headers, "X-Hub-Signature-256": github_signature(gh.secret, ping)}
            assert (await _post(s, f"{url}/hooks/{gh.hook_id}", ping, good))[0] == 202
            st, dup = await _post(s, f"{url}/hooks/{gh.hook_id}", ping, good)
            assert (st, dup["duplicate"]) == (200, True)
            # Signed timestamp: stale refused, fresh accepted, a replay answered once.
            reading = json.dumps({"id": "t1", "celsius": 21.5}).encode()
            old = sign(signed.secret, reading, now=time.time() - 3600)
            st, err = await _post(
                s, f"{url}/hooks/{signed.hook_id}", reading, {"X-Datarooms-Signature": old}
            )
            assert (st, err["errcode"]) == (401, "DR_STALE_TIMESTAMP")
            fresh = {"X-Datarooms-Signature": sign(signed.secret, reading)}
            assert (await _post(s, f"{url}/hooks/{signed.hook_id}", reading, fresh))[0] == 202
            assert (await _post(s, f"{url}/hooks/{signed.hook_id}", reading, fresh))[0] == 200
            tampered = json.dumps({"id": "t1", "celsius": 99}).encode()
            st, err = await _post(s, f"{url}/hooks/{signed.hook_id}", tampered, fresh)
            assert (st, err["errcode"]) == (401, "DR_BAD_SIGNATURE")
            # The good token posts.
            st, ok = await _post(s, f"{url}/hooks/{token.hook_id}", body, bearer)
            assert st == 202 and ok["queued"] == 1
            st, ok = await _post(
                s,
                f"{url}/hooks/{am.hook_id}",
                json.dumps(ALERTMANAGER_FIRING).encode(),
                {"Authorization": f"Bearer {am.secret}"},
            )
            assert st == 202
            # A flood on one hook is limited; another hook is not.
            codes = [
                (await _post(s, f"{url}/hooks/{token.hook_id}", b"{}", bearer))[0]
                for _ in range(30)
            ]
            assert 429 in codes
            async with s.get(f"{url}/metrics") as r:
                metrics = await r.text()
        assert svc.bot is not None
        outbox = svc.bot.outbox
        await until(lambda: outbox.counts()["pending"] == 0, 60, "the outbox to drain")
        assert outbox.counts()["failed"] == 0
        bodies = [c["body"] for c in await hook_messages(alice, room)]
        assert bodies.count("deploy api 1.2 by ci") == 1
        assert bodies.count("o/r: webhook configured (Keep it logically awesome.)") == 1
        alerts = [c for c in await hook_messages(alice, room) if ALERT_KEY in c]
        assert (
            len(alerts) == 1
            and alerts[0][ALERT_KEY]["group_key"] == ALERTMANAGER_FIRING["groupKey"]
        )
        # The empty generic bodies that got through the limiter posted "{}".
        assert bodies.count("{}") == codes.count(202)
        record = await alice.records.get(room, "sensor.t1")
        assert (
            record.value == {"id": "t1", "celsius": 21.5}
            and record.sender == svc.bot.client.user_id
        )
        assert 'automation_webhooks_total{format="github",result="duplicate"} 1.0' in metrics
        assert 'status="429"' in metrics
    finally:
        await svc.stop()


async def test_telemetry_hook(
    homeserver: TestHomeserver, tmp_path: Path, open_client: OpenClient
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    ctx, svc, url = await start_service(homeserver, tmp_path / "data")
    try:
        room = await room_with_bot(alice, svc)
        reg = HookRegistry(registry_path(ctx.settings))
        hook = reg.add(
            room,
            target="telemetry",
            mapping={"each": "r", "metric": "pump.${id}.bar", "value": "v", "ts": "t"},
        )
        reg.close()
        now = int(time.time() * 1000)
        body = json.dumps({"r": [{"id": 7, "v": 1.5 + i, "t": now + i} for i in range(5)]})
        async with aiohttp.ClientSession() as s:
            st, _ = await _post(
                s, f"{url}/hooks/{hook.hook_id}", body.encode(), {"X-Datarooms-Token": hook.secret}
            )
        assert st == 202

        async def arrived() -> list[float]:
            return [x.value for x in await alice.telemetry.query(room, "pump.7.bar")]

        deadline = time.monotonic() + 60
        while (got := await arrived()) != [1.5, 2.5, 3.5, 4.5, 5.5]:
            assert time.monotonic() < deadline, f"telemetry did not arrive: {got}"
            await asyncio.sleep(0.5)
    finally:
        await svc.stop()


def test_cli_hook_add_list_rotate_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = clean_env()
    added = cli(
        "hook",
        "add",
        "!room:localhost",
        "--format",
        "alertmanager",
        "--json",
        data_dir=data,
        env=env,
    )
    assert added.returncode == 0, added.stderr
    hook = json.loads(added.stdout)
    assert hook["secret"] and hook["url"].endswith(f"/hooks/{hook['hook_id']}")
    listed = cli("hook", "list", "--json", data_dir=data, env=env)
    assert listed.returncode == 0
    shown = json.loads(listed.stdout)
    assert [h["hook_id"] for h in shown] == [hook["hook_id"]]
    assert hook["secret"] not in listed.stdout and "secret" not in shown[0]
    rotated = json.loads(
        cli("hook", "rotate", hook["hook_id"], "--json", data_dir=data, env=env).stdout
    )
    assert rotated["secret"] != hook["secret"]
    reg = HookRegistry(data / "automation" / "hooks.db")
    stored = reg.get(hook["hook_id"])
    reg.close()
    assert stored is not None and stored.secret == rotated["secret"]
    assert (data / "automation" / "hooks.db").stat().st_mode & 0o077 == 0
    bad = cli(
        "hook",
        "add",
        "!room:localhost",
        "--format",
        "github",
        "--target",
        "record",
        data_dir=data,
        env=env,
    )
    assert bad.returncode != 0 and "message" in (bad.stderr + bad.stdout)
    assert cli("hook", "remove", hook["hook_id"], data_dir=data, env=env).returncode == 0
    gone = cli("hook", "remove", hook["hook_id"], data_dir=data, env=env)
    assert gone.returncode != 0 and "no hook" in (gone.stderr + gone.stdout)


def test_outbox_dedupe_and_durable(tmp_path: Path) -> None:
    from datarooms.sdk.automation import Delivery

    box = HookOutbox(tmp_path / "o.db")
    d = [Delivery("message", {"content": {"body": "x"}})]
    first = box.enqueue("h", "!r:x", d, dedupe="sig:1")
    assert first is not None and box.enqueue("h", "!r:x", d, dedupe="sig:1") is None
    assert box.enqueue("other", "!r:x", d, dedupe="sig:1") is not None
    box.close()
    again = HookOutbox(tmp_path / "o.db")  # what was acknowledged is still there
    rows = again.pending()
    assert len(rows) == 2 and len({r.txn for r in rows}) == 2
    again.close()
