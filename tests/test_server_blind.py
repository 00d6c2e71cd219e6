"""The homeserver never sees plaintext: scan its database and media store for markers."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


def _scan(hs: TestHomeserver, markers: list[str]) -> list[str]:
    # Fold the WAL into the main file so a byte scan sees every committed row.
    with sqlite3.connect(hs.synapse.database_path) as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    hits = []
    files = [p for p in hs.synapse.directory.rglob("*") if p.is_file()]
    for path in files:
        if path.suffix == ".log":
            continue  # Synapse's own log never holds event contents; checked separately
        blob = path.read_bytes()
        for m in markers:
            for form in (m.encode(), m.encode("utf-16-le")):
                if form in blob:
                    hits.append(f"{m} in {path}")
    return hits


async def test_no_plaintext_on_the_homeserver(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver, tmp_path: Path
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="collaboration")
    tag = uuid.uuid4().hex[:12]
    markers = {
        k: f"MARKER-{k}-{tag}"
        for k in ("record", "key", "message", "reply", "edit", "reaction", "file", "filename")
    }
    await alice.records.put(room, markers["key"], {"reading": markers["record"]})
    root = await alice.messages.send(room, markers["message"])
    await bob.messages.reply(room, root, markers["reply"])
    await alice.messages.edit(room, root, markers["edit"])
    await bob.messages.react(room, root, markers["reaction"][:60])
    src = tmp_path / f"{markers['filename']}.txt"
    src.write_text((markers["file"] + "\n") * 1000)
    ref = await alice.files.put(room, src)
    await bob.sync_once()
    # Sanity: the data is really there and readable by members.
    assert (await bob.records.get(room, markers["key"])).value == {"reading": markers["record"]}
    assert markers["file"].encode() in await bob.files.read(room, ref.event_id)

    hits = _scan(homeserver, list(markers.values()))
    assert hits == [], hits
    # The scan can find things: a marker in (unencrypted) room state is found.
    await alice.rooms.create("project", name=f"PLAIN-STATE-{tag}")
    assert _scan(homeserver, [f"PLAIN-STATE-{tag}"]), "the scan must be able to see plaintext"


async def test_no_claim_or_evidence_plaintext_on_the_homeserver(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver, tmp_path: Path
) -> None:
    """Claims, their evidence and the audit trail's anchors: ciphertext only on the server."""
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="verification")
    tag = uuid.uuid4().hex[:12]
    markers = {
        k: f"MARKER-{k}-{tag}"
        for k in ("subject", "claimtype", "claimdata", "evidence", "evidencename", "reading")
    }
    photo = await alice.files.put(
        room, (markers["evidence"] + "\n").encode() * 500, filename=markers["evidencename"]
    )
    rec = await alice.records.put(room, "meter", {"v": markers["reading"]})
    saved = await alice.claims.issue(
        room,
        f"did:ixo:entity:{markers['subject']}",
        f"T{markers['claimtype']}",
        {"finding": markers["claimdata"]},
        evidence=[photo, rec],
    )
    await bob.sync_once()
    assert (await bob.claims.verify(room, saved.cid)).ok  # readable by members
    # Neither the claim's CID nor its issuer or signature goes to the server in the clear.
    secret = [*markers.values(), saved.cid, saved.credential["proof"]["proofValue"]]
    hits = _scan(homeserver, secret)
    assert hits == [], hits


async def test_webhooks_reach_the_homeserver_only_encrypted(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, tmp_path: Path, open_client
) -> None:
    """What inbound webhooks carry (issue 16) is encrypted before the homeserver sees it."""
    import json

    import aiohttp

    from datarooms.sdk.automation import HookRegistry
    from datarooms.services.automation import registry_path
    from tests._automation import hook_messages, room_with_bot, start_service
    from tests._wait import until

    alice = await open_client(await homeserver.new_user("alice"))
    ctx, svc, url = await start_service(homeserver, tmp_path / "data")
    tag = uuid.uuid4().hex[:12]
    try:
        room = await room_with_bot(alice, svc)
        reg = HookRegistry(registry_path(ctx.settings))
        message = reg.add(room, template="${text}")
        record = reg.add(room, target="record", template="hook.${k}")
        reg.close()
        async with aiohttp.ClientSession() as s:
            for hook, body in (
                (message, {"text": f"HOOK-MESSAGE-{tag}"}),
                (record, {"k": f"HOOK-KEY-{tag}", "v": f"HOOK-VALUE-{tag}"}),
            ):
                async with s.post(
                    f"{url}/hooks/{hook.hook_id}",
                    data=json.dumps(body),
                    headers={"Authorization": f"Bearer {hook.secret}"},
                ) as r:
                    assert r.status == 202
        assert svc.bot is not None
        box = svc.bot.outbox
        await until(lambda: box.counts()["sent"] == 2, 60, "the hooks to be delivered")
        assert [c["body"] for c in await hook_messages(alice, room)] == [f"HOOK-MESSAGE-{tag}"]
        got = await alice.records.get(room, f"hook.HOOK-KEY-{tag}")
        assert got.value["v"] == f"HOOK-VALUE-{tag}"
    finally:
        await svc.stop()
    hits = _scan(homeserver, [f"HOOK-MESSAGE-{tag}", f"HOOK-KEY-{tag}", f"HOOK-VALUE-{tag}"])
    assert hits == [], hits
