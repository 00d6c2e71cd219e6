"""The chain layer against the real devchain, over real HTTP and websockets.

No homeserver here: the watcher hands entities to a recording handler.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from datarooms.chain import (
    ENTITY_CREATED_EVENT,
    ENTITY_CREATED_QUERY,
    IID_CREATED_EVENT,
    MSG_CREATE_ENTITY,
    ChainCorruptError,
    ChainEntity,
    ChainWatcher,
    CometRpc,
    DevChain,
    DevChainServer,
    EntityRejected,
    MemoryCursor,
    Query,
    RpcError,
    SkippedEvent,
    controller_user_id,
    create_entity_tx,
    emit_events_tx,
    parse_tx_events,
)
from datarooms.errors import HomeserverError
from datarooms.homeserver.embedded import free_port
from tests._cli import cli as run_cli
from tests._roomsbot import register, running_devchain


class Recorder:
    """A watcher handler that records what it is given (and can fail on purpose)."""

    def __init__(self) -> None:
        self.seen: list[ChainEntity] = []
        self.skipped: list[SkippedEvent] = []
        self.fail: dict[str, int] = {}  # did -> transient failures still to raise
        self.reject: set[str] = set()
        self.delay = 0.0

    async def __call__(self, entity: ChainEntity) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if entity.did in self.reject:
            raise EntityRejected("rejected on purpose")
        if self.fail.get(entity.did, 0) > 0:
            self.fail[entity.did] -= 1
            raise HomeserverError("the homeserver is down (on purpose)")
        self.seen.append(entity)

    def dids(self) -> Counter[str]:
        return Counter(e.did for e in self.seen)


async def until(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def watcher(
    url: str, rec: Recorder, cursor: MemoryCursor | None = None, **kwargs: Any
) -> tuple[ChainWatcher, CometRpc]:
    rpc = CometRpc(url)
    w = ChainWatcher(
        rpc,
        cursor or MemoryCursor(),
        rec,
        on_skip=rec.skipped.append,
        catchup_interval=0.3,
        backoff_initial=0.05,
        backoff_max=0.5,
        **kwargs,
    )
    return w, rpc


# -- the query language ----------------------------------------------------------


def test_query_parse_and_match() -> None:
    q = Query.parse(f"{ENTITY_CREATED_QUERY} AND tx.height>=5 AND tx.height<10")
    events = {"tm.event": ["Tx"], "message.action": ["/x", MSG_CREATE_ENTITY], "tx.height": ["7"]}
    assert q.matches(events)
    assert not q.matches({**events, "tx.height": ["10"]})
    assert not q.matches({**events, "message.action": ["/other"]})
    assert q.height_bounds() == (5, 9)
    assert Query.parse("a.b EXISTS").matches({"a.b": [""]})
    assert Query.parse("a.b CONTAINS 'xy'").matches({"a.b": ["axyz"]})
    for bad, msg in [
        ("", "empty"),
        ("tm.event=", "expected a quoted"),
        ("tm.event='Tx' AND", "ends with AND"),
        ("tm.event 'Tx'", "operator"),
        ("a.b CONTAINS 5", "CONTAINS needs"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Query.parse(bad)


# -- the parser: IXO events, malformed events ------------------------------------


def _entity_event(
    entity: Any, signer: str | None = '"did:ixo:ixo1owner"', raw: bool = False
) -> dict[str, Any]:
    attrs = [{"key": "entity", "value": entity if raw else json.dumps(entity), "index": True}]
    if signer is not None:
        attrs.append({"key": "signer", "value": signer, "index": True})
    attrs.append({"key": "msg_index", "value": "0", "index": True})
    return {"type": ENTITY_CREATED_EVENT, "attributes": attrs}


def test_parser_reads_ixo_events_and_skips_malformed_ones() -> None:
    iid = {
        "type": IID_CREATED_EVENT,
        "attributes": [
            {
                "key": "iidDocument",
                "value": json.dumps(
                    {
                        "id": "did:ixo:entity:aa",
                        "controller": ["did:ixo:ixo1ctl", "did:ixo:entity:aa", "not a did"],
                    }
                ),
                "index": True,
            },
            {"key": "msg_index", "value": "0", "index": True},
        ],
    }
    good = _entity_event(
        {
            "id": "did:ixo:entity:aa",
            "type": "asset/device",
            "status": 0,
            "brand_new_field": {"x": 1},
        }
    )
    parsed = parse_tx_events(3, "H", [iid, good])
    assert parsed.skipped == []
    [e] = parsed.entities
    # owner (signer) first, the DID document's controllers next; itself and junk left out;
    # an unknown field is tolerated (IXO adds fields between chain versions).
    assert (e.did, e.type, e.controllers) == (
        "did:ixo:entity:aa",
        "asset/device",
        ("did:ixo:ixo1owner", "did:ixo:ixo1ctl"),
    )
    assert controller_user_id("did:ixo:ixo1ctl", "hs.example") == "@did-ixo-ixo1ctl:hs.example"
    assert controller_user_id("did:key:z6MkUPPER", "hs") is None  # not a valid localpart

    cases = {
        "not valid JSON": _entity_event("{bad json", raw=True),
        "not an object": _entity_event([1, 2]),
        "has no 'id'": _entity_event({"type": "x"}),
        "is not a DID": _entity_event({"id": "entity 42"}),
        "'type' must be text": _entity_event({"id": "did:ixo:entity:bb", "type": 7}),
        "has no 'entity' attribute": {"type": ENTITY_CREATED_EVENT, "attributes": []},
        "malformed attributes": {"type": ENTITY_CREATED_EVENT, "attributes": "nope"},
    }
    for reason, event in cases.items():
        parsed = parse_tx_events(1, "T", [event, good])
        assert [s.reason for s in parsed.skipped if reason in s.reason], (reason, parsed)
        assert [x.did for x in parsed.entities] == ["did:ixo:entity:aa"], reason
    assert parse_tx_events(1, "T", "not a list").skipped[0].reason.startswith("tx_result")
    # Double-encoded entity JSON (a JSON string holding the JSON) is read too.
    double = _entity_event(json.dumps(json.dumps({"id": "did:ixo:entity:cc"})), raw=True)
    assert parse_tx_events(1, "T", [double]).entities[0].did == "did:ixo:entity:cc"


# -- the devchain's RPC: CometBFT 0.38 shapes, IXO events --------------------------


async def test_devchain_rpc_shapes(tmp_path: Path) -> None:
    async with running_devchain(tmp_path / "chain") as srv, CometRpc(srv.url) as rpc:
        res = await rpc.broadcast_tx_commit(
            create_entity_tx(entity_type="asset/device", controllers=["did:ixo:ixo1alice"])
        )
        assert res["check_tx"]["code"] == 0 and res["height"] == "1"
        events = {e["type"]: e for e in res["tx_result"]["events"]}
        assert {a["key"]: a["value"] for a in events["message"]["attributes"]}["action"] == (
            MSG_CREATE_ENTITY
        )
        attrs = {a["key"]: a for a in events[ENTITY_CREATED_EVENT]["attributes"]}
        entity = json.loads(attrs["entity"]["value"])  # the entity, as a JSON string
        assert entity["id"].startswith("did:ixo:entity:") and len(entity["id"]) == 47
        assert entity["type"] == "asset/device" and attrs["entity"]["index"] is True
        assert json.loads(attrs["signer"]["value"]) == "did:ixo:ixo1alice"
        iid = json.loads(
            {a["key"]: a["value"] for a in events[IID_CREATED_EVENT]["attributes"]}["iidDocument"]
        )
        assert "did:ixo:ixo1alice" in iid["controller"]

        status = await rpc.status()
        assert status["node_info"]["network"] == srv.chain.chain_id
        assert status["sync_info"]["latest_block_height"] == "1"  # int64 as a string
        assert status["validator_info"]["pub_key"]["type"] == "tendermint/PubKeyEd25519"

        await register(srv.url, 2)
        block = await rpc.block(2)
        header = block["block"]["header"]
        assert (
            header["height"] == "2"
            and header["last_block_id"]["hash"] == ((await rpc.block(1))["block_id"]["hash"])
        )
        assert block["block"]["last_commit"]["signatures"][0]["block_id_flag"] == 2
        assert len(block["block"]["data"]["txs"]) >= 1

        txs, total = await rpc.tx_search(ENTITY_CREATED_QUERY, per_page=2)
        assert total == 3 and len(txs) == 2 and txs[0].height == 1
        found = await rpc.tx(txs[0].hash)
        assert found.hash == txs[0].hash and found.tx == txs[0].tx
        with pytest.raises(RpcError, match="page should be within"):
            await rpc.tx_search(ENTITY_CREATED_QUERY, page=9)
        with pytest.raises(RpcError, match="failed to parse query"):
            await rpc.tx_search("tm.event=")
        with pytest.raises(RpcError, match="must be less than or equal"):
            await rpc.block(99)
        # CheckTx refuses bad registrations with a code, as a Cosmos chain does.
        bad = await rpc.broadcast_tx_sync(create_entity_tx(entity_type="x", controllers=["nobody"]))
        assert bad["code"] != 0 and "invalid did" in bad["log"]
        # The devchain accepts raw events only when asked to.
        raw = await rpc.broadcast_tx_sync(emit_events_tx([]))
        assert raw["code"] != 0 and "unrecognized message type" in raw["log"]


# -- the watcher -----------------------------------------------------------------


async def test_watcher_backfills_follows_skips_and_reconnects(tmp_path: Path) -> None:
    async with running_devchain(tmp_path / "chain", allow_raw_events=True) as srv:
        before = await register(srv.url, 5)  # registered while no watcher runs
        rec = Recorder()
        w, rpc = watcher(srv.url, rec)
        w.start()
        try:
            await until(lambda: len(rec.seen) >= 5, what="the backfill")
            async with CometRpc(srv.url) as chain:
                for ev in (
                    [_entity_event("{oops", raw=True)],
                    [_entity_event({"id": "not-a-did"})],
                    [{"type": ENTITY_CREATED_EVENT, "attributes": 5}],
                ):
                    res = await chain.broadcast_tx_commit(emit_events_tx(ev))
                    assert res["check_tx"]["code"] == 0
            live = await register(srv.url, 5)
            # The websocket drops (node restart, network cut) while entities keep coming.
            assert await srv.drop_websockets() >= 1
            during = await register(srv.url, 10)
            # Drop it again once the watcher is back (under load it may still be reconnecting).
            await until(
                lambda: w.status.connected and w.status.reconnects >= 1, what="the reconnection"
            )
            assert await srv.drop_websockets() >= 1
            after = await register(srv.url, 5)
            expected = set(before + live + during + after)
            await until(lambda: set(rec.dids()) >= expected, what="every entity")
            await until(lambda: w.height == srv.chain.height, what="the cursor")
            assert all(n == 1 for n in rec.dids().values()), "an entity was handled twice"
            assert len(rec.seen) == 25
            reasons = [s.reason for s in rec.skipped]
            assert len(reasons) == 3, reasons  # each malformed event once, not per delivery
            assert any("not valid JSON" in r for r in reasons)
            assert any("is not a DID" in r for r in reasons)
            assert any("malformed attributes" in r for r in reasons)
            assert w.status.reconnects >= 2 and w.status.skipped == 3
        finally:
            await w.stop()
            await rpc.close()


async def test_watcher_waits_for_an_unreachable_node_and_resumes_from_its_cursor(
    tmp_path: Path,
) -> None:
    port = free_port()
    chain_dir = tmp_path / "chain"
    rec = Recorder()
    cursor = MemoryCursor()
    w, rpc = watcher(f"http://127.0.0.1:{port}", rec, cursor)
    w.start()  # nothing listens yet
    try:
        await until(lambda: w.status.reconnects >= 2, what="failed connection attempts")
        assert not w.status.connected and "cannot" in (w.status.last_error or "")
        async with DevChainServer(DevChain(chain_dir, block_interval=0.05), port=port) as srv:
            first = await register(srv.url, 3)
            await until(
                lambda: w.height == srv.chain.height and len(rec.seen) == 3,
                what="the first entities",
            )
        # The node goes away; a new watcher (a restarted bot) resumes from the saved height.
        await w.stop()
        rec2 = Recorder()
        w2, rpc2 = watcher(f"http://127.0.0.1:{port}", rec2, cursor)
        w2.start()
        try:
            async with DevChainServer(DevChain(chain_dir, block_interval=0.05), port=port) as srv:
                second = await register(srv.url, 4)
                await until(lambda: set(rec2.dids()) == set(second), what="the new entities")
                await until(lambda: w2.height == srv.chain.height, what="the cursor")
            assert not set(first) & set(rec2.dids()), "entities below the cursor came again"
        finally:
            await w2.stop()
            await rpc2.close()
    finally:
        await w.stop()
        await rpc.close()


async def test_failures_are_retried_and_hold_the_cursor_back_but_not_other_entities(
    tmp_path: Path,
) -> None:
    async with running_devchain(tmp_path / "chain") as srv:
        [stuck] = await register(srv.url)
        [rejected] = await register(srv.url)
        later = await register(srv.url, 3)
        rec = Recorder()
        rec.fail[stuck] = 4  # the homeserver is "down" for this one, four times
        rec.reject.add(rejected)
        w, rpc = watcher(srv.url, rec)
        w.start()
        try:
            await until(lambda: set(rec.dids()) >= set(later), what="later entities")
            # The failing entity (height 1) keeps the persisted height below it...
            assert stuck not in rec.dids()
            assert (w.height or 0) < 1
            # ...until it succeeds; the rejected one is skipped for good, with its reason.
            await until(lambda: stuck in rec.dids(), what="the retried entity")
            await until(lambda: w.height == srv.chain.height, what="the cursor")
            assert rejected not in rec.dids()
            assert any(
                rejected in s.reason and "rejected on purpose" in s.reason for s in rec.skipped
            )
            assert w.status.retries >= 4
        finally:
            await w.stop()
            await rpc.close()


async def test_a_slow_client_loses_its_subscription_and_misses_nothing(tmp_path: Path) -> None:
    chain = DevChain(tmp_path / "chain", block_interval=0.05, subscription_buffer=3)
    async with DevChainServer(chain, port=0) as srv:
        rec = Recorder()
        rec.delay = 0.02
        w, rpc = watcher(srv.url, rec, concurrency=1, max_pending=2)
        w.start()
        try:
            await until(lambda: w.status.connected, what="the subscription")
            dids = await register(srv.url, 40)
            await until(lambda: set(rec.dids()) == set(dids), what="every entity")
            assert all(n == 1 for n in rec.dids().values())
            assert w.status.reconnects >= 1  # the devchain cancelled the slow subscription
        finally:
            await w.stop()
            await rpc.close()


# -- tamper detection ------------------------------------------------------------


def verify_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("devchain", "--verify", data_dir=data_dir, timeout=60)


def _rewrite_block(path: Path, height: int, change: Any) -> None:
    lines = path.read_bytes().split(b"\n")
    block = json.loads(lines[height - 1])
    change(block)
    lines[height - 1] = json.dumps(block, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))


async def test_a_tampered_block_is_detected_and_reported(tmp_path: Path) -> None:
    directory = tmp_path / "chain"
    async with running_devchain(directory) as srv:
        for _ in range(3):
            await register(srv.url)
    blocks = directory / "blocks.jsonl"
    pristine = blocks.read_bytes()
    assert DevChain.verify(directory) == 3

    def change_event(block: dict[str, Any]) -> None:
        attrs = block["results"][0]["events"][-1]["attributes"]
        attrs[0]["value"] = attrs[0]["value"].replace("asset/device", "asset/forged")

    def change_tx(block: dict[str, Any]) -> None:
        tx = json.loads(base64.b64decode(block["txs"][0]))
        tx["body"]["memo"] = "forged"
        block["txs"][0] = base64.b64encode(json.dumps(tx).encode()).decode()

    def rehash_unsigned(block: dict[str, Any]) -> None:
        # Change a result and fix every hash: only the signature can tell.
        from datarooms.chain.devchain.node import header_hash, results_hash

        change_event(block)
        block["header"]["results_hash"] = results_hash(block["results"])
        block["hash"] = header_hash(block["header"])

    for change, problem in [
        (change_event, "results (events) do not match"),
        (change_tx, "transactions do not match"),
        (rehash_unsigned, "signature is not the validator's"),
    ]:
        blocks.write_bytes(pristine)
        _rewrite_block(blocks, 2, change)
        expected = "block 2 fails verification: .*" + re.escape(problem)
        with pytest.raises(ChainCorruptError, match=expected):
            DevChain.verify(directory)
        with pytest.raises(ChainCorruptError, match="block 2"):
            DevChain(directory).open()
        with pytest.raises(ChainCorruptError):  # the RPC server refuses to start on it
            await DevChainServer(DevChain(directory), port=0).start()

    # A removed block breaks the links too.
    lines = pristine.split(b"\n")
    blocks.write_bytes(b"\n".join([lines[0], lines[2], b""]))
    with pytest.raises(ChainCorruptError, match=r"block 2 .*height is 3"):
        DevChain.verify(directory)

    # A half-written last block (a crash while appending) is not tampering: it is dropped.
    blocks.write_bytes(pristine + pristine.split(b"\n")[0][:50])
    chain = DevChain(directory)
    chain.open()
    assert chain.height == 3
    assert blocks.read_bytes() == pristine

    res = await asyncio.to_thread(verify_cli, tmp_path)
    assert res.returncode == 1 and "no devchain" in res.stderr  # <data>/devchain is empty
    (tmp_path / "devchain").symlink_to(directory)
    _rewrite_block(blocks, 1, change_tx)
    res = await asyncio.to_thread(verify_cli, tmp_path)
    assert res.returncode == 1 and "block 1 fails verification" in res.stderr
    assert "Traceback" not in res.stderr


# -- the CLI -----------------------------------------------------------------------


async def test_cli_registers_and_lists_entities(tmp_path: Path) -> None:
    async with running_devchain(tmp_path / "chain") as srv:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return run_cli("entity", *args, "--rpc", srv.url, data_dir=tmp_path, timeout=60)

        res = await asyncio.to_thread(
            cli, "register", "--type", "dao", "-c", "did:ixo:ixo1alice", "-n", "2", "--json"
        )
        assert res.returncode == 0, res.stderr
        made = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        assert len(made) == 2 and all(m["type"] == "dao" for m in made)
        assert made[0]["controllers"] == ["did:ixo:ixo1alice"]
        res = await asyncio.to_thread(cli, "list", "--json")
        assert res.returncode == 0, res.stderr
        listed = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        assert {m["did"] for m in made} == {e["did"] for e in listed}
        res = await asyncio.to_thread(cli, "register", "-c", "not-a-did")
        assert res.returncode == 1 and "invalid did" in res.stderr
