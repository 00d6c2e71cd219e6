"""The dashboard's pure parts: changes between versions, chart buckets, sessions, settings."""

from __future__ import annotations

import pytest

from datarooms.config import DashboardSettings, load_settings
from datarooms.errors import ConfigError
from datarooms.services.dashboard.sessions import Sessions
from datarooms.services.dashboard.views import bucket_step, changes


def test_changes_between_versions() -> None:
    old = {"a": 1, "b": {"c": 2, "d": [1]}, "gone": True, "x/y": 0}
    new = {"a": 1, "b": {"c": 3, "d": [1, 2]}, "new": None, "x/y": 1}
    assert changes(old, new) == [
        {"path": "/b/c", "op": "changed", "old": 2, "new": 3},
        {"path": "/b/d", "op": "changed", "old": [1], "new": [1, 2]},
        {"path": "/gone", "op": "removed", "old": True},
        {"path": "/new", "op": "added", "new": None},
        {"path": "/x~1y", "op": "changed", "old": 0, "new": 1},
    ]
    assert changes(1, 1) == []
    assert changes(1, 1.0) == [{"path": "/", "op": "changed", "old": 1, "new": 1.0}]
    assert changes("a", {"a": 1}) == [{"path": "/", "op": "changed", "old": "a", "new": {"a": 1}}]


def test_bucket_step_fits_and_uses_whole_minutes() -> None:
    day = 86_400_000
    assert bucket_step(day, 2000, minimum=60_000) == 60_000  # 1,440 one-minute buckets
    assert bucket_step(7 * day, 2000, minimum=60_000) == 360_000  # 6 minutes
    assert bucket_step(7 * day, 2000, minimum=60_000) * 2000 >= 7 * day
    assert bucket_step(3_600_000, 2000, minimum=1000) == 1800


def test_sessions_expire_and_end() -> None:
    sessions = Sessions(lifetime=60)
    cookie, session = sessions.create("@a:x")
    assert sessions.get(cookie) is session and sessions.users() == {"@a:x"}
    assert sessions.get("wrong") is None and sessions.get(None) is None
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("x") and not session.csrf_ok(None)
    session.expires = 0  # long ago
    assert sessions.get(cookie) is None and len(sessions) == 0
    cookie, session = sessions.create("@a:x")
    sessions.end(session)
    assert sessions.get(cookie) is None


def test_dashboard_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = load_settings(data_dir=tmp_path, env={"DATAROOMS_DASHBOARD_PORT": "9015"})
    assert s.dashboard.port == 9015 and s.dashboard.host == "127.0.0.1"
    assert DashboardSettings().port == 8015
    with pytest.raises(ConfigError, match=r"dashboard\.port"):
        load_settings(data_dir=tmp_path, env={"DATAROOMS_DASHBOARD_PORT": "70000"})
    with pytest.raises(ConfigError, match="session_seconds"):
        DashboardSettings(session_seconds=1).check()


async def test_sign_in_checks_the_password_and_limits_attempts(homeserver, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datarooms.errors import UnauthorizedError, ValidationError
    from datarooms.services.dashboard.devices import Devices, TooManyAttemptsError

    user = await homeserver.new_user("guess")
    devices = Devices(homeserver.base_url, homeserver.server_name, tmp_path / "devices")
    assert devices.user_id(user.user_id.split(":")[0][1:]) == user.user_id
    with pytest.raises(ValidationError):
        devices.user_id("two words")
    for _ in range(10):
        with pytest.raises(UnauthorizedError, match="wrong user name or password"):
            await devices.sign_in(user.user_id, "not the password")
    with pytest.raises(TooManyAttemptsError, match="too many sign-in attempts"):
        await devices.sign_in(user.user_id, user.password)  # even the right one, for now
    assert devices.get(user.user_id) is None and not (tmp_path / "devices").exists()


def test_check_trail_finds_a_break_and_checks_each_anchor() -> None:
    from datarooms.sdk.audit import GENESIS, entry_for, entry_hash, merkle_root
    from datarooms.sdk.audit_bundle import check_trail

    room = "!r:x"
    entries, prev = [], GENESIS
    for n in range(1, 6):
        raw = {"event_id": f"$e{n}", "type": "m.room.message", "sender": "@a:x", "content": {}}
        entry = entry_for(room, n, prev, raw)
        prev = entry_hash(entry)
        entries.append({**entry, "hash": prev})
    root = merkle_root([e["hash"] for e in entries[:3]])
    anchors = [
        {"first_seq": 1, "last_seq": 3, "root": root, "tx_hash": "T1", "height": 7},
        {"first_seq": 4, "last_seq": 5, "root": root, "tx_hash": "T2", "height": None},
        {"first_seq": 4, "last_seq": 9, "root": root, "tx_hash": "T3", "height": None},
    ]
    out = check_trail(room, entries, anchors)
    assert out["chain"] == {
        "ok": True,
        "checked": 5,
        "detail": "5 entries link up",
        "seq": None,
    }
    assert [a["status"] for a in out["anchors"]] == [
        "committed",
        "root_mismatch",
        "missing_entries",
    ]
    good = merkle_root([e["hash"] for e in entries[3:]])
    pending = check_trail(room, entries, [{**anchors[1], "root": good}])["anchors"][0]
    assert pending["status"] == "pending"
    # An entry altered in place: the chain breaks at it.
    entries[2] = {**entries[2], "sender": "@mallory:x"}
    broken = check_trail(room, entries, [])["chain"]
    assert not broken["ok"] and broken["seq"] == 3 and "altered" in broken["detail"]


def test_alert_items_of_rules_and_alertmanager() -> None:
    from datarooms.sdk.automation.alerts import _alert_items

    rule = {
        "source": "rule",
        "rule": "hot",
        "status": "firing",
        "series": [
            {"series": "temp{site=a}", "value": 91.5, "ts": 1},
            {"series": "temp{site=b}", "value": None},
        ],
    }
    assert _alert_items(rule) == [
        ("rule:hot:temp{site=a}", "firing", "hot", "temp{site=a}", 91.5),
        ("rule:hot:temp{site=b}", "firing", "hot", "temp{site=b}", None),
    ]
    am = {
        "source": "alertmanager",
        "group_key": "g",
        "alerts": [
            {
                "status": "resolved",
                "labels": {"alertname": "Disk", "host": "h1"},
                "fingerprint": "f1",
            },
            {"status": "firing", "labels": {"alertname": "Disk", "host": "h2"}},
            "junk",
        ],
    }
    assert _alert_items(am) == [
        ("alertmanager:g:f1", "resolved", "Disk", "host=h1", None),
        ("alertmanager:g:alertname=Disk,host=h2", "firing", "Disk", "host=h2", None),
    ]
    assert _alert_items({"source": "github"}) == []
