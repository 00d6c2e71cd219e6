"""UCAN interop with an independent UCAN 1.0 implementation (iso-ucan, from npm).

A chain and invocation minted by iso-ucan is accepted by our validator; a chain and
invocation we mint is accepted by iso-ucan; and each side refuses the other's tampering.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from multiformats import CID

from datarooms.sdk.ucan import (
    ROOM_READ,
    STATE_BOT,
    Principal,
    UcanError,
    Validator,
    bearer,
    delegate,
    invoke,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
import ucanjs

pytestmark = pytest.mark.xdist_group("ucan-npm")


@pytest.fixture(scope="module", autouse=True)
def _deps() -> None:
    ucanjs.ensure_ucan_deps()


def _cid(minted: dict[str, Any], name: str) -> bytes:
    return bytes(CID.decode(minted["cids"][name]))


def test_a_ucan_minted_by_iso_ucan_is_accepted() -> None:
    seeds = {name: os.urandom(32).hex() for name in ("bot", "alice", "agent")}
    bot = Principal.from_seed(bytes.fromhex(seeds["bot"]))
    minted = ucanjs.run(
        {
            "op": "mint",
            "seeds": seeds,
            "cmd": ROOM_READ,
            "args": {"room": "!r:example.org", "with": STATE_BOT},
            "policy": [["==", ".room", "!r:example.org"]],
            "meta": {"matrix_user": "@alice:example.org"},
        }
    )
    assert minted["dids"]["bot"] == bot.did  # same did:key from the same seed
    validator = Validator(bot.did)
    proven = validator.verify(minted["token"])
    assert proven.cmd == ROOM_READ
    assert proven.invoker == minted["dids"]["agent"]
    assert [bytes(h.cid) for h in proven.chain] == [_cid(minted, "root"), _cid(minted, "hop")]
    assert bytes(proven.invocation.cid) == _cid(minted, "inv")
    assert proven.root is not None and proven.root.meta == {"matrix_user": "@alice:example.org"}
    # Replaying their invocation, or presenting it to another service, is refused here.
    with pytest.raises(UcanError) as info:
        validator.verify(minted["token"])
    assert info.value.errcode == "DR_UCAN_REPLAYED"
    with pytest.raises(UcanError) as info:
        Validator(Principal.generate().did).verify(minted["token"])
    assert info.value.errcode == "DR_UCAN_WRONG_AUDIENCE"


def test_a_ucan_we_mint_verifies_with_iso_ucan() -> None:
    now = int(time.time())
    bot, alice, agent, sub = (Principal.generate() for _ in range(4))
    root = delegate(bot, alice.did, "/datarooms", subject=bot.did, expires=now + 3600)
    middle = delegate(
        alice,
        agent.did,
        "/datarooms/room",
        subject=bot.did,
        policy=[["==", ".room", "!r:example.org"], ["like", ".with", "ixo:*"]],
        expires=now + 1800,
    )
    leaf = delegate(agent, sub.did, ROOM_READ, subject=bot.did, expires=now + 600)
    args = {"room": "!r:example.org", "with": STATE_BOT}
    inv = invoke(sub, ROOM_READ, args, [root, middle, leaf], audience=bot.did)
    answer = ucanjs.run(
        {"op": "verify", "token": bearer(inv, [root, middle, leaf]), "audience": bot.did}
    )
    assert answer["ok"], answer
    assert answer["iss"] == sub.did and answer["sub"] == bot.did and answer["cmd"] == ROOM_READ
    assert answer["args"] == args
    assert [bytes(CID.decode(p)) for p in answer["proofs"]] == [
        bytes(root.cid),
        bytes(middle.cid),
        bytes(leaf.cid),
    ]
    assert bytes(CID.decode(answer["cid"])) == bytes(inv.cid)  # both hash the same bytes
    # iso-ucan applies our policy too: another room is refused there.
    bad = invoke(sub, ROOM_READ, {"room": "!x:example.org"}, [root, middle, leaf], audience=bot.did)
    answer = ucanjs.run(
        {"op": "verify", "token": bearer(bad, [root, middle, leaf]), "audience": bot.did}
    )
    assert not answer["ok"] and "policy" in answer["error"]
