"""Test support: a real Synapse for a test session, and fresh users per test.

Used by this project's own tests and usable in yours::

    from datarooms.testing import TestHomeserver

    @pytest.fixture(scope="session")
    def homeserver(tmp_path_factory):
        with TestHomeserver(tmp_path_factory.mktemp("hs")) as hs:
            yield hs

    async def test_something(homeserver):
        alice = await homeserver.new_user("alice")

Nothing here mocks the homeserver: it is Synapse, started as for ``datarooms up``
but on a free port, with cheap password hashing so registering users is fast.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from datarooms.homeserver.admin import RegisteredUser, register_user
from datarooms.homeserver.embedded import EmbeddedSynapse, free_port

#: Settings that make a test homeserver faster without changing behaviour.
TEST_SYNAPSE_CONFIG: dict[str, Any] = {"bcrypt_rounds": 4}


class TestHomeserver:
    """A Synapse started in ``directory`` for the length of a ``with`` block."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str = "localhost",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.synapse = EmbeddedSynapse(
            directory,
            server_name=server_name,
            port=free_port(),
            start_timeout=180,
            extra_config={**TEST_SYNAPSE_CONFIG, **(extra_config or {})},
        )

    @property
    def base_url(self) -> str:
        return self.synapse.base_url

    @property
    def server_name(self) -> str:
        return self.synapse.server_name

    def __enter__(self) -> TestHomeserver:
        asyncio.run(self.synapse.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run(self.synapse.stop())

    async def new_user(self, prefix: str = "user", *, admin: bool = False) -> RegisteredUser:
        """Register a user that no other test has: ``<prefix>-<random>``."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        return await register_user(
            self.base_url, self.synapse.registration_shared_secret, name, admin=admin
        )
