"""Helpers for the rooms bot tests: a Synapse that loads the bot's registration, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from datarooms._transport.http import MatrixHttp
from datarooms.chain import CometRpc, DevChain, DevChainServer, create_entity_tx
from datarooms.homeserver.admin import RegisteredUser
from datarooms.homeserver.embedded import free_port
from datarooms.services.roomsbot.registration import (
    Registration,
    load_registration,
    write_registration,
)
from datarooms.testing import TestHomeserver, profile_homeserver


@dataclass
class AppserviceHomeserver:
    hs: TestHomeserver
    registration: Registration
    data_dir: Path

    @property
    def port(self) -> int:
        return self.registration.port


@contextlib.contextmanager
def appservice_homeserver(
    directory: Path, *, profile: str | None = None
) -> Iterator[AppserviceHomeserver]:
    """A real Synapse that loaded the rooms bot's registration (written first, as the
    platform does), the bot's data dir being ``directory / "data"``; of ``profile``
    (default: the suite's, datarooms.testing.test_profile)."""
    data_dir = directory / "data"
    reg = write_registration(
        data_dir / "roomsbot" / "registration.yaml",
        server_name="localhost",
        url=f"http://127.0.0.1:{free_port()}",
    )
    with profile_homeserver(
        directory / "synapse",
        extra_config={"app_service_config_files": [str(reg.path)]},
        profile=profile,
    ) as hs:
        yield AppserviceHomeserver(hs, reg, data_dir)


def own_data_dir(shared: AppserviceHomeserver, directory: Path) -> AppserviceHomeserver:
    """The shared appservice homeserver with a data dir of the caller's own in
    ``directory`` (holding a copy of the registration, tokens and all): the bot's store,
    chain cursor and run files start empty, as on a first `datarooms up`."""
    data_dir = directory / "data"
    dest = data_dir / "roomsbot" / "registration.yaml"
    dest.parent.mkdir(parents=True)
    shutil.copy2(shared.registration.path, dest)
    return AppserviceHomeserver(shared.hs, load_registration(dest), data_dir)


def controller_did(user: RegisteredUser) -> str:
    """The DID whose IXO Matrix user is ``user`` (``did:ixo:X`` ↔ ``@did-ixo-X``)."""
    localpart = user.user_id[1:].split(":", 1)[0]
    assert localpart.startswith("did-ixo-")
    return "did:ixo:" + localpart[len("did-ixo-") :]


async def new_controller(ashs: AppserviceHomeserver) -> tuple[RegisteredUser, str]:
    """A controller DID's account. ``@did-…`` is the appservice's exclusive namespace, so
    (as in production) only the appservice can create it: no password, no open sign-up."""
    localpart = f"did-ixo-ixo1{uuid.uuid4().hex[:10]}"
    async with MatrixHttp(ashs.hs.base_url, ashs.registration.as_token) as http:
        res = await http.request(
            "POST",
            "/_matrix/client/v3/register",
            json={"type": "m.login.application_service", "username": localpart},
        )
    user = RegisteredUser(res["user_id"], res["access_token"], res.get("device_id", ""), "")
    return user, controller_did(user)


async def openid_token(hs: TestHomeserver, user: RegisteredUser) -> str:
    async with MatrixHttp(hs.base_url, user.access_token) as http:
        res = await http.request(
            "POST",
            f"/_matrix/client/v3/user/{quote(user.user_id)}/openid/request_token",
            json={},
        )
    return str(res["access_token"])


@contextlib.asynccontextmanager
async def running_devchain(directory: Path, **kwargs: Any) -> AsyncIterator[DevChainServer]:
    chain = DevChain(
        directory, chain_id=f"test-{uuid.uuid4().hex[:8]}", block_interval=0.05, **kwargs
    )
    async with DevChainServer(chain, port=0) as server:
        yield server


async def register(
    url: str, n: int = 1, *, controllers: list[str] | None = None, entity_type: str = "asset/device"
) -> list[str]:
    """Register ``n`` entities; return their DIDs (in order)."""
    from datarooms.chain import parse_tx_events

    async with CometRpc(url) as rpc:
        results = await asyncio.gather(
            *(
                rpc.broadcast_tx_commit(
                    create_entity_tx(entity_type=entity_type, controllers=controllers or [])
                )
                for _ in range(n)
            )
        )
    dids = []
    for res in results:
        assert res["check_tx"]["code"] == 0, res
        parsed = parse_tx_events(int(res["height"]), res["hash"], res["tx_result"]["events"])
        dids.extend(e.did for e in parsed.entities)
    return dids


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def state_of(hs: TestHomeserver, token: str, room_id: str) -> dict[tuple[str, str], Any]:
    async with MatrixHttp(hs.base_url, token) as http:
        events = await http.request("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state")
    return {(e["type"], e["state_key"]): e["content"] for e in events}


async def resolve(hs: TestHomeserver, token: str, alias: str) -> str:
    async with MatrixHttp(hs.base_url, token) as http:
        res = await http.request("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
    return str(res["room_id"])


def fuzz(base_url: str, token: str, examples: int = 25) -> tuple[int, list[str]]:
    """schemathesis on every operation of the bot's OpenAPI document, positive and negative
    examples, most of them authenticated with a real OpenID token (blocking: run it in a
    thread). Return (calls made, failures)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    auth = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    calls = 0
    real_did = "did:ixo:entity:" + "f0" * 16

    def examples_of(operation: Any, mode: Any) -> Any:
        positive = mode is schemathesis.GenerationMode.POSITIVE

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal calls
            authenticated = calls % 4 != 3
            params = case.path_parameters or {}
            if positive and "did" in params and calls % 3 == 0:
                params["did"] = real_did
            headers = dict(case.headers or {})
            if authenticated:
                headers.update(auth)
            response = case.call(base_url=base_url, headers=headers, timeout=60)
            calls += 1
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(
                    f"{case.method} {case.formatted_path} -> "
                    f"{response.status_code}: {str(exc)[:300]}"
                )

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                examples_of(operation, mode)()
            except Unsatisfiable:
                continue
    return calls, failures
