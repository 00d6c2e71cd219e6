"""The web dashboard in a real headless Chromium (Debian's chromium, driven by Selenium),
on a real Synapse, with the users' other devices being real SDK devices.

One browser is shared by the module; each test signs in its own fresh users. The
dashboard runs on an event loop of its own (tests/_dashboard.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.telemetry import Sample
from datarooms.testing import TestHomeserver
from tests._dashboard import DashboardProcess, Page, chromium
from tests.test_server_blind import _scan as scan_homeserver

pytestmark = pytest.mark.xdist_group("dashboard")


@pytest.fixture(scope="module")
def dash(
    homeserver: TestHomeserver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardProcess]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    with DashboardProcess(homeserver.base_url, homeserver.server_name, data_dir) as d:
        yield d


@pytest.fixture(scope="module")
def page(dash: DashboardProcess) -> Iterator[Page]:
    driver = chromium()
    try:
        yield Page(driver, dash.url)
    finally:
        driver.quit()


def wait_for_room(page: Page, room_id: str) -> None:
    """Until the dashboard's device has seen the room and its state (its sync loop)."""
    page.wait(
        lambda _d: any(
            r["room_id"] == room_id and r["kind"]
            for r in page.fetch("GET", "/api/rooms")["body"]["rooms"]
        )
    )


async def test_sign_in_and_a_live_twin(homeserver, open_client, page: Page) -> None:  # type: ignore[no-untyped-def]
    user = await homeserver.new_user("alice")
    # The dashboard's device comes first: it creates the account's cross-signing keys and
    # signs itself, so the user's other devices share their room keys with it.
    page.sign_in(user.user_id, user.password)
    assert user.user_id in page.text("#who")
    phone = await open_client(user)
    room = await phone.rooms.create("device", name="Pump 7", did="did:ixo:entity:pump7")
    await phone.records.put(room.room_id, "temperature", {"celsius": 20.5, "ok": True})
    await phone.records.put(room.room_id, "rpm", 1200)
    wait_for_room(page, room.room_id)

    page.open("/")
    page.wait(lambda _d: page.all("#room-table tbody tr"))
    row = page.text("#room-table tbody tr")
    assert "Pump 7" in row and "did:ixo:entity:pump7" in row and "encrypted" in row
    page.open(f"/room/{room.room_id}/overview")
    page.wait(lambda _d: page.all("#servers tbody tr"))
    assert homeserver.server_name in page.text("#servers")
    assert "admin" in page.text("#members")
    page.screenshot("rooms")

    page.open(f"/room/{room.room_id}/twin")
    page.wait(lambda _d: len(page.all("#twin tbody tr")) == 2)
    # The room's size, as the dashboard's device holds it (docs/operations.md).
    sizes = {r["room_id"]: r for r in page.fetch("GET", "/api/rooms")["body"]["rooms"]}
    assert (sizes[room.room_id]["keys"], sizes[room.room_id]["versions"]) == (2, 2)
    assert sizes[room.room_id]["bytes"] > 0
    assert '"celsius":20.5' in page.text('#twin tr[data-key="temperature"]')
    assert "1200" in page.text('#twin tr[data-key="rpm"]')

    # Another device puts a record: the page shows it within a second, without a reload.
    await phone.records.put(room.room_id, "temperature", {"celsius": 21.25, "alarm": "hot"})
    page.wait(
        lambda _d: '"celsius":21.25' in page.text('#twin tr[data-key="temperature"]'), timeout=1.0
    )
    await phone.records.put(room.room_id, "valve", "open")
    page.wait(lambda _d: page.all('#twin tr[data-key="valve"]'), timeout=1.0)
    assert page.text("#twin-count") == "3"
    page.screenshot("twin")
    # Readable on a phone-width screen: nothing wider than the screen.
    page.driver.set_window_size(390, 844)
    try:
        width = page.driver.execute_script("return window.innerWidth")
        page.wait(
            lambda d: d.execute_script("return document.documentElement.scrollWidth") <= width
        )
        assert page.css('#twin tr[data-key="valve"]').is_displayed()
        page.screenshot("phone")
    finally:
        page.driver.set_window_size(1280, 800)

    # A key's history, with the changes between versions.
    page.css('#twin tr[data-key="temperature"] a').click()
    page.wait(lambda _d: len(page.all("#versions > li")) == 2)
    newest = page.text("#versions > li")
    assert "/celsius changed" in newest and "20.5" in newest and "21.25" in newest
    assert "/alarm added" in newest and "/ok removed" in newest
    page.screenshot("history")

    # Bad input: the SDK's error in the page, no traceback.
    page.open(f"/room/{room.room_id}/twin")
    page.wait(lambda _d: page.all("#put-form"))
    page.css("#put-key").send_keys("big")
    page.driver.execute_script(
        "document.getElementById('put-value').value = arguments[0]", '"' + "x" * 70_000 + '"'
    )
    page.css("#put-form button").click()
    page.wait(lambda _d: page.css("#error").is_displayed())
    assert "the limit is" in page.text("#error") and "Traceback" not in page.text("#error")
    assert page.console_errors(expected=("400 (Bad Request)",)) == []


async def test_chart_points_raw_and_rolled_up(homeserver, open_client, page: Page) -> None:  # type: ignore[no-untyped-def]
    user = await homeserver.new_user("carol")
    page.sign_in(user.user_id, user.password)
    sensor = await open_client(user)
    room = (await sensor.rooms.create("device", name="Sensor")).room_id
    end = int(time.time() * 1000)
    samples = [Sample(end - (299 - i) * 1000, "temp", 20 + (i % 17) / 4) for i in range(300)]
    await sensor.telemetry.append_many(room, samples)
    await sensor.telemetry.flush(timeout=60)
    wait_for_room(page, room)

    page.open(f"/room/{room}/telemetry")
    page.wait(lambda _d: page.all("#points"), timeout=30)
    points = page.css("#points")
    # Five minutes of samples: the chart draws every raw sample.
    assert points.get_attribute("data-mode") == "raw"
    assert points.get_attribute("data-count") == "300"
    assert page.all("#chart canvas")
    page.screenshot("telemetry")
    # A day: per-minute rollups, every sample counted once.
    day = page.fetch(
        "GET",
        f"/api/rooms/{room}/telemetry?metric=temp&since={end - 86_400_000}&until={end + 1}",
    )["body"]
    assert day["mode"] == "rollup" and day["step"] == 60_000
    assert sum(day["n"]) == 300 and len(day["t"]) in (5, 6)
    assert max(day["max"]) == max(s.value for s in samples)
    page.open(f"/room/{room}/telemetry?metric=temp&range=24h")
    page.wait(
        lambda _d: (
            page.all("#points") and page.css("#points").get_attribute("data-mode") == "rollup"
        )
    )
    assert page.console_errors() == []


async def test_grant_revoke_and_files(homeserver, open_client, page: Page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    owner = await homeserver.new_user("dana")
    bob = await homeserver.new_user("bob")
    page.sign_in(owner.user_id, owner.password)
    laptop = await open_client(owner)
    room = (await laptop.rooms.create("project", name="Evidence")).room_id
    wait_for_room(page, room)

    # Grant from the page; the SDK (another device) sees it.
    page.open(f"/room/{room}/access")
    page.wait(lambda _d: page.all("#grant-form"))
    page.css("#grant-user").send_keys(bob.user_id)
    page.css("#grant-access").send_keys("write")
    page.css("#grant-form button").click()
    page.wait(lambda _d: page.all(f'#access tr[data-user="{bob.user_id}"]'))
    await laptop.sync_once()
    granted = {m.user_id: m for m in laptop.rooms.members(room)}
    assert granted[bob.user_id].membership == "invite" and granted[bob.user_id].access == "write"
    assert "verified" in page.text(f'#access tr[data-user="{owner.user_id}"]')
    page.screenshot("access")
    # Revoke from the page.
    page.css(f'#access tr[data-user="{bob.user_id}"] button.revoke').click()
    page.wait(lambda _d: not page.all(f'#access tr[data-user="{bob.user_id}"]'))
    await laptop.sync_once()
    assert bob.user_id not in {m.user_id for m in laptop.rooms.members(room)}
    # A grant the SDK refuses: its message in the page.
    page.wait(lambda _d: page.all("#grant-user"))
    page.css("#grant-user").send_keys("not-a-user")
    page.css("#grant-form button").click()
    page.wait(lambda _d: page.css("#error").is_displayed())
    assert "user id" in page.text("#error")

    # A file: uploaded from the page (encrypted by the dashboard), listed, downloaded and
    # checked (the dashboard checks the ciphertext's SHA-256, the page the plaintext's).
    tag = uuid.uuid4().hex[:12]
    markers = {k: f"MARKER-{k}-{tag}" for k in ("file", "filename", "message", "thread")}
    data = bytes(range(256)) * 4000 + markers["file"].encode()
    path = tmp_path / f"{markers['filename']}.bin"
    path.write_bytes(data)
    page.open(f"/room/{room}/files")
    page.wait(lambda _d: page.all("#upload-form"))
    page.css("#file-input").send_keys(str(path))
    page.css("#upload").click()
    page.wait(lambda _d: page.all('#upload-result[data-verified="true"]'), timeout=30)
    assert (
        page.css("#upload-result").get_attribute("data-sha256") == hashlib.sha256(data).hexdigest()
    )
    page.wait(lambda _d: page.all("#files tbody tr"))
    assert markers["filename"] in page.text("#files tbody tr")
    page.css("#files tbody tr button.verify").click()
    page.wait(lambda _d: page.css("#files tbody tr button.verify").text == "SHA-256 ok")
    verify = page.css("#files tbody tr button.verify")
    assert verify.get_attribute("data-sha256") == hashlib.sha256(data).hexdigest()
    page.screenshot("files")

    # Messages: sent from the page, read by the SDK; and a thread.
    page.open(f"/room/{room}/messages")
    page.wait(lambda _d: page.all("#message-form"))
    page.css("#message-body").send_keys(markers["message"])
    page.css("#message-form button").click()
    page.wait(lambda _d: markers["message"] in page.text("#messages"))
    page.css("#messages li button.link").click()
    page.css("#message-body").send_keys(markers["thread"])
    page.css("#message-form button").click()
    page.wait(lambda _d: page.all("#messages li.in-thread"))
    assert markers["thread"] in page.text("#messages li.in-thread")
    page.screenshot("messages")
    # What the dashboard wrote reached the homeserver only as ciphertext.
    hits = scan_homeserver(homeserver, list(markers.values()))
    assert hits == [], hits
    assert page.console_errors(expected=("400 (Bad Request)",)) == []


async def test_csrf_sign_out_and_other_users(
    homeserver, open_client, page: Page, dash: DashboardProcess
) -> None:  # type: ignore[no-untyped-def]
    eve_user = await homeserver.new_user("erin")
    mallory = await homeserver.new_user("mallory")
    page.sign_in(eve_user.user_id, eve_user.password)
    device = await open_client(eve_user)
    room = (await device.rooms.create("project", name="Private")).room_id
    await device.records.put(room, "secret", "only erin")
    wait_for_room(page, room)

    # A change without the page's CSRF token is refused, and does nothing.
    refused = page.fetch("POST", f"/api/rooms/{room}/messages", {"body": "forged"}, csrf=False)
    assert refused["status"] == 403 and refused["body"]["errcode"] == "DR_CSRF"
    ok = page.fetch("POST", f"/api/rooms/{room}/messages", {"body": "real"})
    assert ok["status"] == 200
    page_msgs = page.fetch("GET", f"/api/rooms/{room}/messages")["body"]["messages"]
    assert [m["body"] for m in page_msgs] == ["real"]

    # A wrong password is refused with a message in the page.
    page.driver.delete_all_cookies()
    page.driver.get(dash.url + "/login")
    page.css("#user").send_keys(mallory.user_id)
    page.css("#password").send_keys("wrong")
    page.css("#signin").click()
    page.wait(lambda _d: page.css("#error").is_displayed())
    assert "wrong user name or password" in page.text("#error")

    # Signed out: the data URLs answer 401, the pages send you to the sign-in page.
    assert page.fetch("GET", f"/api/rooms/{room}/twin", csrf=False)["status"] == 401
    page.driver.get(dash.url + "/")
    page.wait(lambda d: d.current_url.endswith("/login"))

    # Another user signed in on the same browser cannot open the first user's room.
    page.sign_in(mallory.user_id, mallory.password)
    other = page.fetch("GET", f"/api/rooms/{room}/twin")
    assert other["status"] == 403 and "not a member" in other["body"]["error"]
    assert page.fetch("GET", "/api/rooms")["body"]["rooms"] == []
    page.open(f"/room/{room}/twin")
    page.wait(lambda _d: page.css("#error").is_displayed())
    assert "not a member" in page.text("#error")
    assert "only erin" not in page.driver.page_source
    # Signing out ends the session: its cookie no longer opens anything.
    cookie = page.driver.get_cookie("dr_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.css("#logout").click()
    page.wait(lambda d: d.current_url.endswith("/login"))
    page.driver.add_cookie({"name": "dr_session", "value": cookie["value"], "path": "/"})
    assert page.fetch("GET", "/api/rooms", csrf=False)["status"] == 401
    page.console_errors()  # the refusals above were logged, on purpose


def test_homeserver_outage_banner_recovers_without_reload(page: Page, tmp_path: Path) -> None:
    """The homeserver goes away: a banner says so; it comes back: the banner goes and the
    same page (never reloaded) shows new data again. (A test of its own homeserver,
    stopped and started, on one event loop of its own.)"""
    with TestHomeserver(tmp_path / "hs") as hs, asyncio.Runner() as loop:
        user = loop.run(hs.new_user("frank"))
        with DashboardProcess(hs.base_url, hs.server_name, tmp_path / "dash") as dash:
            own = Page(page.driver, dash.url)
            own.sign_in(user.user_id, user.password)
            writer = loop.run(
                DataroomsClient.open(
                    Credentials(hs.base_url, user.user_id, user.access_token), tmp_path / "writer"
                )
            )
            try:
                room = loop.run(writer.rooms.create("device", name="Outage")).room_id
                loop.run(writer.records.put(room, "state", "before"))
                wait_for_room(own, room)
                own.open(f"/room/{room}/twin")
                own.wait(lambda _d: own.all('#twin tr[data-key="state"]'))
                own.driver.execute_script("window.__sameDocument = true")

                loop.run(hs.synapse.stop())
                own.wait(lambda _d: own.css("#banner").is_displayed(), timeout=20)
                assert "homeserver is unreachable" in own.text("#banner")
                own.screenshot("outage")
                loop.run(hs.synapse.start())
                own.wait(lambda _d: not own.css("#banner").is_displayed(), timeout=30)
                loop.run(writer.records.put(room, "state", "after"))
                own.wait(lambda _d: '"after"' in own.text('#twin tr[data-key="state"]'), timeout=30)
                assert own.driver.execute_script("return window.__sameDocument") is True
            finally:
                loop.run(writer.close())
        # The page of the stopped dashboard would go on polling it: leave it first.
        own.driver.get("about:blank")
        own.console_errors()  # failed requests during the outage are logged, as they should


async def test_evidence_claims_verified_and_the_audit_trail(
    homeserver, open_client, page: Page
) -> None:  # type: ignore[no-untyped-def]
    owner = await homeserver.new_user("gina")
    page.sign_in(owner.user_id, owner.password)
    laptop = await open_client(owner)
    room = (await laptop.rooms.create("verification", name="Audit")).room_id
    report = await laptop.files.put(room, b"inspection report", filename="report.txt")
    reading = await laptop.records.put(room, "meter/1", {"kwh": 12})
    good = await laptop.claims.issue(
        room, "did:ixo:entity:pump7", "Inspected", {"ok": True}, evidence=[report]
    )
    gone = await laptop.claims.issue(
        room, "did:ixo:entity:pump7", "Metered", {"kwh": 12}, evidence=[reading]
    )
    await laptop.messages.redact(room, reading.event_id)  # the evidence is gone
    wait_for_room(page, room)

    page.open(f"/room/{room}/evidence")
    page.wait(lambda _d: len(page.all("#claims tbody tr")) == 2, timeout=30)
    ok_row = page.css(f'#claims tr[data-cid="{good.cid}"]')
    assert ok_row.get_attribute("data-ok") == "true"
    assert "✓ valid" in ok_row.text and "✓ file report.txt" in ok_row.text
    bad_row = page.css(f'#claims tr[data-cid="{gone.cid}"]')
    assert bad_row.get_attribute("data-ok") == "false"
    assert bad_row.get_attribute("data-reason") == "evidence_missing"
    assert "✓ valid" in bad_row.text and "could not be found" in bad_row.text
    # The trail: every event of the room, its hash chain checked on the dashboard.
    assert page.css("#chain").get_attribute("data-ok") == "true"
    assert "hash chain intact" in page.text("#chain")
    laptop_added = await laptop.audit.update(room)
    rows = page.all("#trail tbody tr")
    assert len(rows) >= min(laptop_added, 100) - 1 >= 8  # the redaction may come after
    newest = int(rows[0].get_attribute("data-seq"))
    assert [int(r.get_attribute("data-seq")) for r in rows] == list(
        range(newest, newest - len(rows), -1)
    )
    # The same chain as the laptop's own trail of the room (any member reproduces it).
    theirs = {e.seq: e.hash for e in laptop.audit.entries(room)}
    first = rows[-1]
    assert theirs[int(first.get_attribute("data-seq"))].startswith(
        first.find_element("css selector", "td.mono").get_attribute("title")[:16]
    )
    assert page.all("#no-anchors")
    page.screenshot("evidence")
    assert page.console_errors() == []


async def test_alerts_open_and_acknowledged_from_the_page(
    homeserver, open_client, page: Page
) -> None:  # type: ignore[no-untyped-def]
    from datarooms.sdk.automation.alerts import AlertWatcher
    from datarooms.sdk.automation.rules import RULE_KEY_PREFIX, rule_schema
    from tests._rooms import shared_room
    from tests._wait import until

    owner = await homeserver.new_user("hank")
    page.sign_in(owner.user_id, owner.password)
    laptop = await open_client(owner)
    # The alert rules run on another account's device (as the automation service does).
    bot = await open_client(await homeserver.new_user("alertbot"))
    room = await shared_room(laptop, bot, "write")
    name, schema = rule_schema()
    await laptop.records.publish_schema(room, name, schema)
    rule = {"name": "hot", "kind": "threshold", "metric": "temp", "above": 80, "clear": 70}
    await laptop.records.put(
        room, RULE_KEY_PREFIX + "hot", {**rule, "summary": "too hot"}, schema=name
    )
    posted: list[str] = []
    watcher = AlertWatcher(bot, on_alert=lambda _room, _text, alert: posted.append(alert["status"]))
    watcher.start()
    try:
        await bot.sync_once()
        assert await watcher.watch(room) == 1
        await laptop.telemetry.append(room, "temp", 91.5)
        await laptop.telemetry.flush()
        await until(lambda: watcher.alerts, 30, "the alert to be posted")
        [alert_event] = list(watcher.alerts)
        wait_for_room(page, room)

        page.open(f"/room/{room}/alerts")
        page.wait(lambda _d: page.all(f'#alerts tr[data-event="{alert_event}"]'), timeout=30)
        row = page.css(f'#alerts tr[data-event="{alert_event}"]')
        assert "hot" in row.text and "temp" in row.text and "91.5" in row.text
        assert row.get_attribute("data-acked") == "false"
        # A forged acknowledgement (no CSRF token) is refused and acknowledges nothing.
        forged = page.fetch(
            "POST", f"/api/rooms/{room}/alerts/ack", {"event_id": alert_event}, csrf=False
        )
        assert forged["status"] == 403
        # Not an alert: a clear error.
        wrong = page.fetch("POST", f"/api/rooms/{room}/alerts/ack", {"event_id": "$nope"})
        assert wrong["status"] == 404 and "not an open alert" in wrong["body"]["error"]
        page.screenshot("alerts")
        row.find_element("css selector", "button.ack").click()
        page.wait(
            lambda _d: (
                page.css(f'#alerts tr[data-event="{alert_event}"]').get_attribute("data-acked")
                == "true"
            )
        )
        assert owner.user_id in page.text(f'#alerts tr[data-event="{alert_event}"] td.acked')
        # The watcher took it as an acknowledgement, as it takes any member's reaction.
        await until(lambda: watcher.acks, 30, "the watcher to see the ack")
        assert watcher.acks == [(room, "hot", owner.user_id)]

        # Resolved: no longer open.
        await laptop.telemetry.append(room, "temp", 60.0)
        await laptop.telemetry.flush()
        await until(lambda: "resolved" in posted, 30, "the alert to resolve")
        page.wait(
            lambda _d: page.fetch("GET", f"/api/rooms/{room}/alerts")["body"]["alerts"] == [],
            timeout=30,
        )
        page.driver.refresh()
        page.wait(lambda _d: page.all("#no-alerts"))
    finally:
        await watcher.stop()
    assert page.console_errors(expected=("404 (Not Found)", "403 (Forbidden)")) == []


async def until_page(page: Page, cond: Any, timeout: float = 30.0) -> None:
    """Like ``page.wait``, but the test's event loop runs meanwhile (its SDK devices
    answer the dashboard while the browser is watched)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        assert time.monotonic() < deadline, f"the page did not get there in {timeout} s"
        await asyncio.sleep(0.05)


async def test_sas_verification_from_the_page(homeserver, open_client, page: Page) -> None:  # type: ignore[no-untyped-def]
    from datarooms.sdk.keys import VerificationCancelled
    from tests._rooms import shared_room

    owner = await homeserver.new_user("ivy")
    page.sign_in(owner.user_id, owner.password)
    laptop = await open_client(owner)
    bob = await open_client(await homeserver.new_user("bob"))
    room = await shared_room(laptop, bob, "write")
    wait_for_room(page, room)
    me = page.fetch("GET", "/api/me")["body"]
    button = f'#access tr[data-user="{bob.user_id}"] div[data-device="{bob.device_id}"] button'

    # Only for members of the room, with the page's CSRF token.
    stranger = await homeserver.new_user("stranger")
    refused = page.fetch(
        "POST", f"/api/rooms/{room}/verify", {"user": stranger.user_id, "device": "X"}
    )
    assert refused["status"] == 400 and "not a joined member" in refused["body"]["error"]
    forged = page.fetch(
        "POST",
        f"/api/rooms/{room}/verify",
        {"user": bob.user_id, "device": bob.device_id},
        csrf=False,
    )
    assert forged["status"] == 403

    async def bob_answers() -> Any:
        inc = await bob.keys.verification.wait_request(owner.user_id, timeout=60)
        assert inc.other_device == me["device_id"]
        await inc.accept()
        await inc.wait_for_sas(60)
        return inc

    # The emoji differ (says the page's user): cancelled on both sides, nothing verified.
    page.open(f"/room/{room}/access")
    page.wait(lambda _d: page.all(button))
    page.css(button).click()
    inc = await bob_answers()
    await until_page(page, lambda: len(page.all("#sas-emojis li")) == 7)
    page.css("#sas-mismatch").click()
    with pytest.raises(VerificationCancelled) as err:
        await inc.done(60)
    assert err.value.code == "m.mismatched_sas" and not err.value.by_us
    page.wait(lambda _d: page.css("#sas").get_attribute("data-state") == "cancelled")
    assert "did not match" in page.text("#sas-state")

    # They match: both devices verified.
    page.css(button).click()
    inc = await bob_answers()
    await until_page(page, lambda: len(page.all("#sas-emojis li")) == 7)
    shown = [li.text.split("\n")[0] for li in page.all("#sas-emojis li .emoji")]
    assert shown == [e.symbol for e in inc.emojis()]  # the same 7 emoji on both screens
    page.screenshot("verify")
    page.css("#sas-match").click()
    await inc.confirm()
    await inc.done(60)
    assert inc.verified
    await until_page(page, lambda: "Verified" in page.text("#access-result"))
    assert "— verified" in page.text(f'#access tr[data-user="{bob.user_id}"]')
    [seen] = [d for d in await bob.keys.devices(owner.user_id) if d.device_id == me["device_id"]]
    assert seen.verified
    assert page.console_errors(expected=("400 (Bad Request)", "403 (Forbidden)")) == []
