"""A real Prometheus Alertmanager (Debian's package) sends firing and resolved alerts to
our hook; room members read them decrypted, grouped as Alertmanager grouped them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from datarooms import DataroomsClient
from datarooms.homeserver.embedded import free_port
from datarooms.sdk.automation import ALERT_KEY, HookRegistry
from datarooms.services.automation import registry_path
from datarooms.testing import TestHomeserver
from tests._automation import hook_messages, room_with_bot, start_service
from tests._system import alertmanager

CONFIG = """
route:
  receiver: datarooms
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: datarooms
    webhook_configs:
      - url: {url}
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {secret}
"""


@contextlib.contextmanager
def running_alertmanager(tmp: Path, hook_url: str, secret: str) -> Iterator[str]:
    binary = alertmanager()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "am.yml").write_text(CONFIG.format(url=hook_url, secret=secret))
    port = free_port()
    log = (tmp / "am.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'am.yml'}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _alert(instance: str, *, ends: datetime | None = None) -> dict[str, Any]:
    start = datetime.now(UTC) - timedelta(minutes=1)
    alert: dict[str, Any] = {
        "labels": {"alertname": "PumpPressureLow", "instance": instance, "severity": "page"},
        "annotations": {"summary": f"{instance} pressure under 1 bar"},
        "startsAt": start.isoformat(),
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    return alert


async def _wait_for(
    alice: DataroomsClient, room: str, status: str, timeout: float = 60, alerts: int = 0
) -> dict[str, Any]:
    """The first notification with this status (and, with ``alerts``, that many alerts:
    Alertmanager may flush a group before the second alert of one POST is in it, then
    sends the whole group again after group_interval)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for content in await hook_messages(alice, room):
            alert = content.get(ALERT_KEY, {})
            if alert.get("status") == status and len(alert.get("alerts", [])) >= alerts:
                return content
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"no {status} notification from Alertmanager arrived in the room")
        await asyncio.sleep(0.5)


async def test_alertmanager_firing_and_resolved_reach_members_decrypted(
    homeserver: TestHomeserver, tmp_path: Path, open_client: Any
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    ctx, svc, url = await start_service(homeserver, tmp_path / "data")
    try:
        room = await room_with_bot(alice, svc)
        reg = HookRegistry(registry_path(ctx.settings))
        hook = reg.add(room, format="alertmanager", name="alertmanager")
        reg.close()
        with running_alertmanager(
            tmp_path / "am", f"{url}/hooks/{hook.hook_id}", hook.secret
        ) as am:
            async with aiohttp.ClientSession() as s:
                for _ in range(100):  # Alertmanager starting
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(f"{am}/-/ready") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.2)
                both = [_alert("pump-7"), _alert("pump-8")]
                async with s.post(f"{am}/api/v2/alerts", json=both) as r:
                    assert r.status == 200, await r.text()
                firing = await _wait_for(alice, room, "firing", alerts=2)
                # One notification for the group, both alerts in it.
                assert firing["body"].startswith("🔥 [FIRING:2] PumpPressureLow")
                assert "pump-7 pressure under 1 bar" in firing["body"]
                alerts = firing[ALERT_KEY]["alerts"]
                assert sorted(a["labels"]["instance"] for a in alerts) == ["pump-7", "pump-8"]
                assert firing[ALERT_KEY]["group_labels"] == {"alertname": "PumpPressureLow"}
                ended = datetime.now(UTC) - timedelta(seconds=1)
                gone = [_alert("pump-7", ends=ended), _alert("pump-8", ends=ended)]
                async with s.post(f"{am}/api/v2/alerts", json=gone) as r:
                    assert r.status == 200
                resolved = await _wait_for(alice, room, "resolved")
                assert resolved["body"].startswith("✅ [RESOLVED] PumpPressureLow")
                assert {a["status"] for a in resolved[ALERT_KEY]["alerts"]} == {"resolved"}
        assert svc.bot is not None
        counts = svc.bot.outbox.counts()
        assert counts["failed"] == 0 and counts["sent"] >= 2
        # The homeserver holds the notifications only encrypted.
        events = await alice.messages.recent(room, 50)
        assert all(e.encrypted for e in events if e.type == "m.room.message")
    finally:
        await svc.stop()
