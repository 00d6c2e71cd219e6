"""External-homeserver mode: the client side pointed at a homeserver we did not start."""

from __future__ import annotations

from pathlib import Path

from datarooms.testing import TestHomeserver
from tests._cli import clean_env, cli, start_up


async def test_whoami_against_external_homeserver(
    homeserver: TestHomeserver, data_dir: Path
) -> None:
    user = await homeserver.new_user("ext")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=user.access_token,
    )
    res = cli("whoami", data_dir=data_dir, env=env)
    assert res.returncode == 0, res.stderr
    assert user.user_id in res.stdout and homeserver.base_url in res.stdout

    # Password login works too, and leaves no device behind.
    env_pw = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_PASSWORD=user.password,
    )
    res = cli("whoami", data_dir=data_dir, env=env_pw)
    assert res.returncode == 0, res.stderr


async def test_user_add_on_external_synapse_with_shared_secret(
    homeserver: TestHomeserver, data_dir: Path
) -> None:
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_HOMESERVER_REGISTRATION_SHARED_SECRET=homeserver.synapse.registration_shared_secret,
    )
    res = cli("user", "add", "ext-dave-1", data_dir=data_dir, env=env)
    assert res.returncode == 0, res.stderr
    assert "@ext-dave-1:localhost" in res.stdout
    wrong = clean_env(**{**env, "DATAROOMS_HOMESERVER_REGISTRATION_SHARED_SECRET": "nope"})
    res = cli("user", "add", "ext-dave-2", data_dir=data_dir, env=wrong)
    assert res.returncode == 1 and "registration secret" in res.stderr


async def test_up_in_external_mode_starts_no_synapse(
    homeserver: TestHomeserver, data_dir: Path
) -> None:
    user = await homeserver.new_user("svc", admin=True)
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=user.access_token,
    )
    # The bots need accounts of their own: without a way to register them, a clear error.
    res = cli("up", data_dir=data_dir, env=env)
    assert res.returncode == 1 and "registration_shared_secret" in res.stderr
    env["DATAROOMS_HOMESERVER_REGISTRATION_SHARED_SECRET"] = (
        homeserver.synapse.registration_shared_secret
    )
    up = start_up(data_dir, env=env)
    try:
        state = up.wait_running()
        assert state["mode"] == "external"
        assert state["synapse_pid"] is None
        assert state["service_user"] == user.user_id
        assert not (data_dir / "synapse").exists()
        services = state["services"]
        assert isinstance(services, dict) and "statebot" in services and "mcp" in services
    finally:
        up.interrupt()
        up.kill()
