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
