"""Key backup: upload and restore throughput, and what backup adds to a record put.

Run from the repo root: python bench/keys.py [--quick | --smoke]

Everything runs against a real embedded Synapse.

1. backup and restore of 10,000 Megolm sessions (quick: 1,000). Sending 10k
   events to make 10k real sessions would take far too long, so the sessions are
   made locally: a vodozemac ``GroupSession`` each, turned into a nio
   ``InboundGroupSession`` from its session key, with this device's identity
   keys as sender, for one of the user's real rooms (which also holds a few
   real sessions: the user's own and a peer's). They are added to the client's
   olm store and saved to its crypto store (setup, timed apart), then
   ``client.keys.backup_sessions`` uploads them: encrypt each to the backup key,
   PUT /room_keys/keys in chunks -> backup_sessions_per_s. Then a NEW device of
   the same user (password login, fresh store) runs ``keys.restore(recovery_key)``:
   unlock from secret storage, GET every backed-up session, PK-decrypt, import,
   save to the crypto store, retry pending decryption -> restore_sessions_per_s
   over everything restored (synthetic + real). The restored count must equal
   the backed-up count, and the real room's history must decrypt afterwards.
   restore's progress callback splits its time into: until the first 100 are
   imported (unlock + download + parse), importing, and the tail (marking as
   backed up, retrying decryption).
2. put latency with backup on vs off: one encrypted room, a reader and two
   writers of different users - one without key backup, one with
   (``setup_recovery``) - so both share each new Megolm session with the same
   set of devices. Interleaved, alternating which writer goes first, after a
   warm-up. put_*: the Megolm session already exists and is backed up (the
   common case; nio rotates a session after 100 messages, so 1 put in 100 of
   each writer shares and, with backup, uploads a new one: in the p99, not the
   p50). put_new_session_*: each writer invalidates its outbound session before
   every put, so each put shares a new session (key query, trust check, Olm
   to-device) and, with backup on, uploads it to the backup before encrypting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import vodozemac
from nio.crypto.sessions import InboundGroupSession

from _common import bench_args, emit, machine, median, percentile, with_homeserver
from datarooms import Credentials, DataroomsClient
from datarooms.homeserver.admin import RegisteredUser
from datarooms.testing import TestHomeserver

PROBE = b"probe: made with a synthetic session before the backup"


def ms(seconds: float) -> float:
    return seconds * 1000


async def open_client(hs: TestHomeserver, user: RegisteredUser, store: Path) -> DataroomsClient:
    return await DataroomsClient.open(
        Credentials(hs.base_url, user.user_id, user.access_token), store
    )


async def shared_room(
    owner: DataroomsClient, others: list[tuple[DataroomsClient, str]], name: str
) -> str:
    """As tests/_rooms.py: ``owner`` creates a room, grants each other, they join."""
    room = await owner.rooms.create("device", name=name)
    for other, access in others:
        await owner.rooms.grant(room.room_id, other.user_id, access)  # type: ignore[arg-type]
    for other, _ in others:
        await other.sync_once()
        await other.rooms.join(room.room_id)
    await owner.sync_once()
    for other, _ in others:
        await other.sync_once()
    return room.room_id


# -- 1. backup upload and restore ----------------------------------------------------


def make_sessions(
    client: DataroomsClient, room: str, n: int
) -> tuple[list[InboundGroupSession], list[tuple[str, str]]]:
    """``n`` Megolm sessions of this device for ``room``, made locally (never sent).

    Also returns (session id, ciphertext) probes: a message encrypted with the
    first and the last session, to check the restored keys really decrypt.
    """
    olm = client.nio.olm
    assert olm is not None
    keys = olm.account.identity_keys
    out, probes = [], []
    for i in range(n):
        outbound = vodozemac.GroupSession()
        out.append(
            InboundGroupSession(
                session_key=outbound.session_key.to_base64(),
                signing_key=keys["ed25519"],
                sender_key=keys["curve25519"],
                room_id=room,
            )
        )
        if i in (0, n - 1):
            probes.append((outbound.session_id, outbound.encrypt(PROBE).to_base64()))
    return out, probes


async def bench_backup(hs: TestHomeserver, tmp: Path, n: int, single_n: int) -> dict[str, Any]:
    user = await hs.new_user("keeper")
    kate = await open_client(hs, user, tmp / "keeper")
    peer = await open_client(hs, await hs.new_user("peer"), tmp / "peer")
    try:
        recovery_key = await kate.keys.setup_recovery()
        room = await shared_room(kate, [(peer, "write")], "bench keys")
        for i in range(5):  # real sessions: kate's own, and the peer's she receives
            await kate.records.put(room, f"k{i}", i)
            await peer.records.put(room, f"p{i}", i)
        await kate.sync_once()  # brings the peer's session; backs it up
        version = kate.keys.backup_version
        assert version is not None
        real = len(kate.index.backed_up(version))
        real_local = len(list(kate.nio.olm.inbound_group_store))  # type: ignore[union-attr]

        sender_key = kate.nio.olm.account.identity_keys["curve25519"]  # type: ignore[union-attr]
        t0 = time.perf_counter()
        sessions, probes = make_sessions(kate, room, n)
        make_s = time.perf_counter() - t0
        olm, store = kate.nio.olm, kate.nio.store
        assert olm is not None and store is not None
        t0 = time.perf_counter()
        for s in sessions:
            olm.inbound_group_store.add(s)
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with store.database.atomic():  # one transaction: this is setup, not the path
            for s in sessions:
                store.save_inbound_group_session(s)
        save_s = time.perf_counter() - t0
        print(
            f"{n:,} sessions made in {make_s:.2f} s; added to the olm store in {add_s:.2f} s; "
            f"saved to the crypto store (one transaction) in {save_s:.2f} s",
            flush=True,
        )

        t0 = time.perf_counter()
        uploaded = await kate.keys.backup_sessions(sessions)
        backup_s = time.perf_counter() - t0
        assert uploaded == n, (uploaded, n)
        backed = len(kate.index.backed_up(version))
        assert backed == n + real, (backed, n, real)
        print(
            f"backup: {n:,} sessions uploaded in {backup_s:.2f} s ({n / backup_s:,.0f} sessions/s)",
            flush=True,
        )
        # What a put adds for a new session: backing up one session on its own.
        singles, _ = make_sessions(kate, room, single_n)
        one_ms = []
        for s in singles:
            olm.inbound_group_store.add(s)
            t0 = time.perf_counter()
            assert await kate.keys.backup_sessions([s]) == 1
            one_ms.append(ms(time.perf_counter() - t0))
        # A second call finds nothing to do (the backed-up set is cached).
        t0 = time.perf_counter()
        again = await kate.keys.backup_pending()
        pending_noop_ms = ms(time.perf_counter() - t0)
        assert again == 0, again
    finally:
        await peer.close()
        await kate.close()

    new = await DataroomsClient.open(
        Credentials(hs.base_url, user.user_id, password=user.password), tmp / "keeper-new"
    )
    try:
        assert new.device_id != kate.device_id
        ticks: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        restored = await new.keys.restore(
            recovery_key, progress=lambda i, total: ticks.append((time.perf_counter(), i))
        )
        restore_s = time.perf_counter() - t0
        assert restored == n + single_n + real, (restored, n, single_n, real)
        store = new.nio.olm.inbound_group_store  # type: ignore[union-attr]
        local = len(list(store))
        assert local >= restored, (local, restored)
        for sid, ciphertext in probes:  # the restored keys decrypt what the old ones encrypted
            got = store.get(room, sender_key, sid)
            assert got is not None and got.decrypt(ciphertext)[0] == PROBE.decode(), sid
        assert new.index.pending() == [], "real history still undecryptable after restore"
        await new.records.backfill(room)
        assert new.index.count(room) == 10, new.index.count(room)
    finally:
        await new.close()
    (t_first, i_first), (t_last, i_last) = ticks[0], ticks[-1]
    import_rate = (i_last - i_first) / (t_last - t_first) if t_last > t_first else float("nan")
    out = {
        "backup_sessions": n,
        "real_sessions": real,
        "real_sessions_local": real_local,
        "backup_s": backup_s,
        "backup_sessions_per_s": n / backup_s,
        "backup_pending_noop_ms": pending_noop_ms,
        "backup_one_session_p50_ms": median(one_ms),
        "backup_one_session_p99_ms": percentile(one_ms, 99),
        "backup_one_session_n": single_n,
        "restored_sessions": restored,
        "restore_s": restore_s,
        "restore_sessions_per_s": restored / restore_s,
        "restore_until_first_100_s": t_first - t0,
        "restore_import_sessions_per_s": import_rate,
        "restore_tail_s": t0 + restore_s - t_last,
        "sessions_make_s": make_s,
        "olm_store_add_s": add_s,
        "crypto_store_save_s": save_s,
    }
    print(
        f"backing up one session alone: p50 {out['backup_one_session_p50_ms']:.2f} ms "
        f"(p99 {out['backup_one_session_p99_ms']:.2f}) over {single_n}"
    )
    print(
        f"restore on a new device: {restored:,} sessions ({n:,} + {single_n} backed up one "
        f"by one + {real} real) in "
        f"{restore_s:.2f} s ({out['restore_sessions_per_s']:,.0f} sessions/s): unlock + "
        f"download + first 100 {out['restore_until_first_100_s']:.2f} s, import "
        f"{import_rate:,.0f}/s, tail (mark + retry decryption) {out['restore_tail_s']:.2f} s",
        flush=True,
    )
    return out


# -- 2. put latency, backup on vs off ----------------------------------------------------


async def interleave(fns: list[Callable[[int], Awaitable[float]]], n: int) -> list[list[float]]:
    """Run each fn n times, interleaved, alternating the order; their latencies (ms)."""
    out: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for i in range(n):
        for k in order if i % 2 == 0 else reversed(order):
            out[k].append(await fns[k](i))
    return out


async def bench_put(hs: TestHomeserver, tmp: Path, n: int, warmup: int) -> dict[str, Any]:
    off = await open_client(hs, await hs.new_user("writer-off"), tmp / "writer-off")
    on = await open_client(hs, await hs.new_user("writer-on"), tmp / "writer-on")
    reader = await open_client(hs, await hs.new_user("reader"), tmp / "reader")
    try:
        await on.keys.setup_recovery()
        assert on.keys.backup_enabled and not off.keys.backup_enabled
        room = await shared_room(off, [(on, "write"), (reader, "read")], "bench backup put")

        def put(client: DataroomsClient, new_session: bool) -> Callable[[int], Awaitable[float]]:
            async def run(i: int) -> float:
                if new_session:
                    client.nio.invalidate_outbound_session(room)
                t0 = time.perf_counter()
                await client.records.put(room, f"sensor-{i % 10}", {"c": 20 + i % 7, "seq": i})
                return ms(time.perf_counter() - t0)

            return run

        for i in range(warmup):
            await put(off, False)(i)
            await put(on, False)(i)
        backed_before = len(on.index.backed_up(on.keys.backup_version or ""))
        same_off, same_on = await interleave([put(off, False), put(on, False)], n)
        new_off, new_on = await interleave([put(off, True), put(on, True)], n)
        backed_after = len(on.index.backed_up(on.keys.backup_version or ""))
        # Each new-session put of the backup writer backed its session up.
        assert backed_after - backed_before >= n, (backed_before, backed_after, n)
    finally:
        for c in (off, on, reader):
            await c.close()
    r: dict[str, Any] = {
        "put_p50_ms_backup_on": median(same_on),
        "put_p99_ms_backup_on": percentile(same_on, 99),
        "put_p50_ms_backup_off": median(same_off),
        "put_p99_ms_backup_off": percentile(same_off, 99),
        "put_new_session_p50_ms_backup_on": median(new_on),
        "put_new_session_p99_ms_backup_on": percentile(new_on, 99),
        "put_new_session_p50_ms_backup_off": median(new_off),
        "put_new_session_p99_ms_backup_off": percentile(new_off, 99),
        "put_n": n,
        "put_warmup": warmup,
    }
    r["put_ratio_on_off"] = r["put_p50_ms_backup_on"] / r["put_p50_ms_backup_off"]
    r["put_added_ms"] = r["put_p50_ms_backup_on"] - r["put_p50_ms_backup_off"]
    r["put_new_session_ratio_on_off"] = (
        r["put_new_session_p50_ms_backup_on"] / r["put_new_session_p50_ms_backup_off"]
    )
    r["put_new_session_added_ms"] = (
        r["put_new_session_p50_ms_backup_on"] - r["put_new_session_p50_ms_backup_off"]
    )
    return r


# -- main ---------------------------------------------------------------------------


async def run(hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {}
    n = 200 if smoke else 1000 if quick else 10_000
    print(f"1/2 backup upload and restore of {n:,} sessions ...", flush=True)
    result.update(await bench_backup(hs, tmp, n, 3 if smoke else 20 if quick else 100))
    print("2/2 put latency, backup on vs off ...", flush=True)
    puts, warmup = (3, 1) if smoke else (30, 5) if quick else (200, 10)
    result.update(await bench_put(hs, tmp, puts, warmup=warmup))
    return result


def main() -> None:
    ap = bench_args(__doc__, "1,000 sessions, 30 puts per variant")
    args = ap.parse_args()
    # nio warns about every event it cannot decrypt yet (a new device before restore)
    # and every device it has no Olm session with yet: expected here, and noise.
    logging.getLogger("nio").setLevel(logging.ERROR)
    r = with_homeserver("keys", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke))
    print(
        f"backup upload: {r['backup_sessions']:,} sessions in {r['backup_s']:.2f} s: "
        f"{r['backup_sessions_per_s']:,.0f} sessions/s"
    )
    print(
        f"restore (new device): {r['restored_sessions']:,} sessions in {r['restore_s']:.2f} s: "
        f"{r['restore_sessions_per_s']:,.0f} sessions/s"
    )
    print(
        f"put, session reused: p50 {r['put_p50_ms_backup_on']:.2f} ms with backup "
        f"(p99 {r['put_p99_ms_backup_on']:.2f}) vs {r['put_p50_ms_backup_off']:.2f} ms without "
        f"(p99 {r['put_p99_ms_backup_off']:.2f}): ratio {r['put_ratio_on_off']:.3f}, "
        f"{r['put_added_ms']:+.2f} ms over {r['put_n']} each"
    )
    print(
        f"put, new session each time: p50 {r['put_new_session_p50_ms_backup_on']:.2f} ms with "
        f"backup (p99 {r['put_new_session_p99_ms_backup_on']:.2f}) vs "
        f"{r['put_new_session_p50_ms_backup_off']:.2f} ms without "
        f"(p99 {r['put_new_session_p99_ms_backup_off']:.2f}): ratio "
        f"{r['put_new_session_ratio_on_off']:.3f}, {r['put_new_session_added_ms']:+.2f} ms"
    )
    print(f"runtime {r['runtime_s']:.0f} s")
    emit({"bench": "keys", "quick": args.quick, "smoke": args.smoke, **r, **machine()})


if __name__ == "__main__":
    main()
