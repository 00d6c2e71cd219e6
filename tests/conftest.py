from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datarooms.homeserver.admin import RegisteredUser
from datarooms.testing import TestHomeserver, profile_homeserver
from tests._roomsbot import AppserviceHomeserver, appservice_homeserver
from tests._system import require_program


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist names the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that test_scale_core.py imports keep their own marks, but run in its
    group (their own xdist_group would send them to another group's worker)."""
    for item in items:
        group = getattr(getattr(item, "module", None), "GROUP", None)
        if isinstance(group, str) and item.path.name == "test_scale_core.py":
            item.add_marker(pytest.mark.xdist_group(group), append=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` every test marked ``xdist_group`` must carry its group in
    its node id (that is how pytest-xdist keeps a group on one worker); if a pytest or
    xdist upgrade breaks that, the groups' shared homeservers would be started on every
    worker, silently. Fail instead."""
    if not session.config.getoption("loadgroup", default=False):
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist's loadgroup did not group {len(lost)} tests (e.g. {lost[0]}): "
            "check the pytest / pytest-xdist versions pinned in pyproject.toml"
        )


@pytest.fixture(scope="session")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHomeserver]:
    """One real Synapse for the whole test session (the scale profile's, PostgreSQL and
    workers, with ``DATAROOMS_TEST_PROFILE=scale``)."""
    with profile_homeserver(tmp_path_factory.mktemp("homeserver")) as hs:
        yield hs


@pytest.fixture(scope="session")
def appservice_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppserviceHomeserver]:
    """One Synapse that loaded the rooms bot's registration, for every rooms-bot test of
    the session (started on first use). Tests that need it carry
    ``pytest.mark.xdist_group("appservice")`` so that they share one worker, and so
    one such Synapse; each takes a data dir of its own (``tests._roomsbot.own_data_dir``)."""
    with appservice_homeserver(tmp_path_factory.mktemp("appservice")) as env:
        yield env


@pytest.fixture(scope="session")
def scale_core_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppserviceHomeserver]:
    """One scale-profile Synapse (PostgreSQL, Redis, a main process, client, sync, two
    event persisters, media and appservice workers, behind nginx) that also loaded the
    rooms bot's registration: for the tests in the ``scale-core`` group (one worker, so
    one such Synapse, about ten processes): tests/test_scale.py and the core of the suite
    in tests/test_scale_core.py."""
    require_program("redis-server", "redis-server")
    require_program("nginx", "nginx")
    require_program("pg_ctlcluster", "postgresql")  # /usr/lib/postgresql/<ver>/bin
    with appservice_homeserver(tmp_path_factory.mktemp("scale-core"), profile="scale") as env:
        yield env


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def open_client(homeserver: TestHomeserver, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Open SDK clients (each its own device and store); all are closed after the test."""
    from datarooms import Credentials, DataroomsClient

    opened: list[DataroomsClient] = []

    async def _open(user: RegisteredUser, store: str | None = None) -> DataroomsClient:
        creds = Credentials(homeserver.base_url, user.user_id, user.access_token)
        client = await DataroomsClient.open(creds, tmp_path / (store or user.user_id))
        opened.append(client)
        return client

    yield _open
    for client in opened:
        await client.close()


@pytest.fixture
async def alice_bob(homeserver: TestHomeserver, open_client):  # type: ignore[no-untyped-def]
    """Two fresh users with one SDK device each."""
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    return alice, bob


@pytest.fixture
async def service():  # type: ignore[no-untyped-def]
    """Start MCP servers over HTTP on a platform context (each on a free port); all are
    stopped after the test. ``svc, url = await service(ctx)``."""
    from datarooms.homeserver.embedded import free_port
    from datarooms.services.mcp import McpService

    started: list[McpService] = []

    async def _start(ctx: Any) -> tuple[McpService, str]:
        svc = McpService(port=free_port())
        info = await svc.start(ctx)
        started.append(svc)
        return svc, str(info["url"])

    yield _start
    for svc in started:
        await svc.stop()
