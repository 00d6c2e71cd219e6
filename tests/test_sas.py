"""Interactive device verification (SAS, m.sas.v1): SDK<->SDK and SDK<->matrix-js-sdk.

Both transports (to-device and in-room), both outcomes (match -> both devices
verified; mismatch/refusal -> both cancelled, nothing verified), and the trust
policy "verified" sharing room keys only after a verification.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.keys import (
    Verification,
    VerificationCancelled,
    VerificationError,
    VerificationState,
)
from datarooms.sdk.keys.sas import (
    EMOJI,
    MAC_LEGACY,
    MAC_V2,
    Agreement,
    Party,
    SasError,
    SasExchange,
    choose,
    start_offer,
)
from datarooms.sdk.keys.signing import verify_json
from datarooms.testing import TestHomeserver
from tests._cli import DATAROOMS, clean_env, cli
from tests._rooms import shared_room
from tests.interop.jsclient import JsClient, ensure_js_deps

TIMEOUT = 60.0


def _verified(client: DataroomsClient, user_id: str, device_id: str) -> bool:
    olm = client.nio.olm
    assert olm is not None
    for d in client.nio.device_store.active_user_devices(user_id):
        if d.id == device_id:
            return bool(olm.is_device_verified(d))
    return False


async def _until(check: Any, timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


# -- the SAS cryptography on its own ----------------------------------------------------


def _pair(mac: str) -> tuple[SasExchange, SasExchange]:
    agreement = Agreement("curve25519-hkdf-sha256", "sha256", mac, ("decimal", "emoji"))
    a, b = Party("@a:hs", "ADEV"), Party("@b:hs", "BDEV")
    sa = SasExchange(a, b, "txn1", True, agreement)
    sb = SasExchange(b, a, "txn1", False, agreement)
    sa.set_their_key(sb.public_key)
    sb.set_their_key(sa.public_key)
    return sa, sb


@pytest.mark.parametrize("mac", [MAC_V2, MAC_LEGACY])
def test_sas_exchange_agrees_and_macs_bind_the_keys(mac: str) -> None:
    sa, sb = _pair(mac)
    assert sa.emojis() == sb.emojis() and len(sa.emojis()) == 7
    assert sa.decimals() == sb.decimals()
    assert all(1000 <= n <= 9191 for n in sa.decimals())
    keys = {"ed25519:ADEV": "a-device-key", "ed25519:MASTER": "a-master-key"}
    content = sa.mac_content(keys)
    assert sb.verify_mac(content, keys) == set(keys)
    # A key that is not the one the other side MAC'd is a mismatch.
    with pytest.raises(SasError) as err:
        sb.verify_mac(content, {"ed25519:ADEV": "a-forged-key"})
    assert err.value.code == "m.key_mismatch"
    # So is a MAC moved to another key id (the key list is MAC'd as well).
    forged = {"mac": {"ed25519:OTHER": content["mac"]["ed25519:ADEV"]}, "keys": content["keys"]}
    with pytest.raises(SasError):
        sb.verify_mac(forged, {"ed25519:OTHER": "a-device-key"})


def test_sas_choice_and_emoji_table() -> None:
    assert len(EMOJI) == 64 and len({e.symbol for e in EMOJI}) == 64
    assert (EMOJI[0].symbol, EMOJI[63].description) == ("\N{DOG FACE}", "Pin")
    offer = start_offer("DEV")
    assert choose(offer).message_authentication_code == MAC_V2
    with pytest.raises(SasError) as err:
        choose({**offer, "key_agreement_protocols": ["curve25519"]})
    assert err.value.code == "m.unknown_method"


# -- the state machine, two flows wired back to back (no server) -------------------------


class _Side:
    """Stands in for a Verifier's transport and key lookups: messages go to an outbox."""

    def __init__(self, user: str, device: str) -> None:
        self.user_id, self.device_id, self.auto_start = user, device, True
        self._c = SimpleNamespace(start_sync=lambda: None)
        self.device_key = f"{device}-ed25519"
        self.known_other_key: str | None = None  # what we believe the other device's key is
        self.outbox: list[tuple[str, dict[str, Any]]] = []
        self.marked: list[str] = []

    async def _send_to_device(
        self, event_type: str, user_id: str, devices: list[str], content: dict[str, Any]
    ) -> None:
        self.outbox.append((event_type, dict(content)))

    async def _device(self, user_id: str, device_id: str) -> Any:
        return SimpleNamespace(user_id=user_id, id=device_id, ed25519=self.known_other_key)

    async def _master_key(self, user_id: str) -> tuple[None, None]:
        return None, None

    async def _own_keys(self) -> dict[str, str]:
        return {f"ed25519:{self.device_id}": self.device_key}

    async def _mark_verified(self, device: Any, master: Any, master_obj: Any) -> None:
        self.marked.append(device.id)


def _wired() -> tuple[_Side, Verification, _Side, Verification]:
    a, b = _Side("@a:hs", "ADEV"), _Side("@b:hs", "BDEV")
    a.known_other_key, b.known_other_key = b.device_key, a.device_key
    out = Verification(a, "flow1", b.user_id, b.device_id, incoming=False)  # type: ignore[arg-type]
    inc = Verification(b, "flow1", a.user_id, a.device_id, incoming=True)  # type: ignore[arg-type]
    return a, out, b, inc


async def _pump(
    a: _Side, out: Verification, b: _Side, inc: Verification, tamper: Any = None
) -> None:
    """Deliver queued messages both ways until none are left."""
    while a.outbox or b.outbox:
        for side, target in ((a, inc), (b, out)):
            while side.outbox:
                event_type, content = side.outbox.pop(0)
                if tamper is not None:
                    content = tamper(side, event_type, content)
                await target._receive(event_type, content)


async def test_state_machine_completes_back_to_back() -> None:
    a, out, b, inc = _wired()
    await inc.accept()
    await _pump(a, out, b, inc)
    assert out.emojis() == inc.emojis()
    await out.confirm()
    await inc.confirm()
    await _pump(a, out, b, inc)
    assert out.state is inc.state is VerificationState.DONE
    assert (a.marked, b.marked) == (["BDEV"], ["ADEV"])


async def test_a_key_that_breaks_the_commitment_cancels() -> None:
    a, out, b, inc = _wired()
    other = SasExchange(
        Party("@x:hs", "X"), Party("@y:hs", "Y"), "f", True, choose(start_offer("X"))
    )

    def swap_key(side: _Side, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
        if side is b and event_type == "m.key.verification.key":  # a MITM's key to Alice
            return {**content, "key": other.public_key}
        return content

    await inc.accept()
    await _pump(a, out, b, inc, swap_key)
    assert out.state is inc.state is VerificationState.CANCELLED
    assert (out.cancel_code, out.cancelled_by_us) == ("m.mismatched_commitment", True)
    assert inc.cancel_code == "m.mismatched_commitment" and not inc.cancelled_by_us


async def test_a_wrong_device_key_fails_the_mac_and_verifies_nothing() -> None:
    a, out, b, inc = _wired()
    a.known_other_key = "a-key-the-server-made-up"  # Alice was given another key for Bob's device
    await inc.accept()
    await _pump(a, out, b, inc)
    await inc.confirm()
    await out.confirm()
    await _pump(a, out, b, inc)
    assert out.state is inc.state is VerificationState.CANCELLED
    assert out.cancel_code == "m.key_mismatch" and not out.verified and a.marked == []
    # Alice's MAC covered her real key, so Bob's check of it stood (as the spec says:
    # each side trusts what its own MAC check proved); the flow still ends cancelled.
    assert inc.cancel_code == "m.key_mismatch" and b.marked == ["ADEV"]


async def test_messages_out_of_order_cancel() -> None:
    _, out, _, inc = _wired()
    await out._receive("m.key.verification.key", {"key": "AAAA"})
    assert (out.state, out.cancel_code) == (VerificationState.CANCELLED, "m.unexpected_message")
    with pytest.raises(VerificationError):
        await inc.confirm()  # nothing to confirm yet


# -- SDK <-> SDK ----------------------------------------------------------------------


async def _compare_and_confirm(a: Any, b: Any) -> None:
    await asyncio.gather(a.wait_for_sas(TIMEOUT), b.wait_for_sas(TIMEOUT))
    assert a.emojis() == b.emojis()
    assert a.decimals() == b.decimals()
    await asyncio.gather(a.confirm(), b.confirm())
    await asyncio.gather(a.done(TIMEOUT), b.done(TIMEOUT))


async def test_to_device_sas_verifies_both_and_policy_verified_shares_keys(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    alice.keys.trust = "verified"
    alice.nio.invalidate_outbound_session(room)
    await alice.records.put(room, "before", "withheld from unverified devices")
    await bob.sync_once()
    assert bob.index.latest(room, "before") is None  # no room key for Bob's device

    out = await alice.keys.verification.request(bob.user_id, bob.device_id)
    inc = await bob.keys.verification.wait_request(alice.user_id, timeout=TIMEOUT)
    assert (inc.incoming, inc.other_device, inc.transport) == (True, alice.device_id, "to-device")
    assert inc.state is VerificationState.REQUESTED
    await inc.accept()
    await _compare_and_confirm(out, inc)

    assert out.state is inc.state is VerificationState.DONE
    assert out.verified and inc.verified and out.identity_verified and inc.identity_verified
    assert _verified(alice, bob.user_id, bob.device_id)
    assert _verified(bob, alice.user_id, alice.device_id)
    [seen] = await alice.keys.devices(bob.user_id)
    assert seen.verified and seen.trusted and seen.device_id == bob.device_id
    assert (await alice.keys.status()).verified_devices == 1

    # Under "verified", Bob's device now gets the room key of what Alice writes next.
    await alice.records.put(room, "after", "for verified devices")
    for _ in range(50):
        await bob.sync_once()
        if bob.index.latest(room, "after") is not None:
            break
    assert (await bob.records.get(room, "after")).value == "for verified devices"


async def test_in_room_sas_verifies_both_devices_and_signs_identity(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write")  # in-room answers are sent in the room
    out = await alice.keys.verification.request(bob.user_id, room_id=room)
    inc = await bob.keys.verification.wait_request(timeout=TIMEOUT)
    assert (inc.transport, inc.room_id, inc.flow_id) == ("in-room", room, out.flow_id)
    await inc.accept()
    await _compare_and_confirm(out, inc)
    assert out.other_device == bob.device_id
    assert _verified(alice, bob.user_id, bob.device_id)
    assert _verified(bob, alice.user_id, alice.device_id)
    assert out.identity_verified and inc.identity_verified
    # The master keys were MAC'd too: each side signed the other's with its user-signing key.
    res = await alice.keys.query_keys([bob.user_id])
    bob_master = res["master_keys"][bob.user_id]
    alice_usk = alice.keys._key("user_signing")
    assert alice_usk is not None
    assert verify_json(bob_master, alice.user_id, alice_usk.public, alice_usk.public)


async def test_mismatch_cancels_both_sides_and_verifies_nothing(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    await shared_room(alice, bob)
    out = await alice.keys.verification.request(bob.user_id)  # every device of Bob's
    inc = await bob.keys.verification.wait_request(alice.user_id, timeout=TIMEOUT)
    await inc.accept()
    await asyncio.gather(out.wait_for_sas(TIMEOUT), inc.wait_for_sas(TIMEOUT))
    await out.confirm()  # Alice says they match; Bob says they do not
    await inc.mismatch()
    with pytest.raises(VerificationCancelled) as err:
        await out.done(TIMEOUT)
    assert (err.value.code, err.value.by_us) == ("m.mismatched_sas", False)
    with pytest.raises(VerificationCancelled) as err:
        await inc.done(TIMEOUT)
    assert (err.value.code, err.value.by_us) == ("m.mismatched_sas", True)
    assert out.state is inc.state is VerificationState.CANCELLED
    assert not out.verified and not inc.verified
    assert not _verified(alice, bob.user_id, bob.device_id)
    assert not _verified(bob, alice.user_id, alice.device_id)
    with pytest.raises(VerificationCancelled):
        out.emojis()


async def test_refused_request_is_cancelled_on_both_sides(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    await shared_room(alice, bob)
    out = await alice.keys.verification.request(bob.user_id, bob.device_id)
    inc = await bob.keys.verification.wait_request(timeout=TIMEOUT)
    await inc.cancel("not now")
    with pytest.raises(VerificationCancelled) as err:
        await out.wait_for_sas(TIMEOUT)
    assert (err.value.code, err.value.reason, err.value.by_us) == ("m.user", "not now", False)
    assert not _verified(alice, bob.user_id, bob.device_id)


async def test_verifying_our_own_new_device_cross_signs_it(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    user = await homeserver.new_user("alice")
    laptop = await open_client(user)  # the account's first device: creates and holds the keys
    phone = await DataroomsClient.open(
        Credentials(homeserver.base_url, user.user_id, password=user.password),
        tmp_path / "phone",
    )
    try:
        assert not (await phone.keys.status()).device_cross_signed  # it has no keys to sign with
        out = await phone.keys.verification.request(user.user_id, laptop.device_id)
        inc = await laptop.keys.verification.wait_request(user.user_id, timeout=TIMEOUT)
        assert inc.other_device == phone.device_id
        await inc.accept()
        await _compare_and_confirm(out, inc)
        assert (await phone.keys.status()).device_cross_signed  # the laptop signed it
        assert _verified(laptop, user.user_id, phone.device_id)
    finally:
        await phone.close()


async def test_both_sides_start_and_the_spec_picks_one(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    await shared_room(alice, bob)
    out = await alice.keys.verification.request(bob.user_id, bob.device_id)  # starts on ready
    inc = await bob.keys.verification.wait_request(timeout=TIMEOUT)
    await inc.accept()
    await inc.start()  # Bob starts too: Alice's start is used (her user id sorts first)
    await _compare_and_confirm(out, inc)
    assert out._exchange is not None and out._exchange.we_started
    assert inc._exchange is not None and not inc._exchange.we_started
    assert _verified(alice, bob.user_id, bob.device_id)
    assert _verified(bob, alice.user_id, alice.device_id)


async def test_start_without_request_is_offered_and_nio_keeps_its_own_flows(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    """The older start-first flow (here nio's own legacy SAS) arrives as an incoming flow.

    Bob's nio keeps running the flow it started (our hook leaves nio's own flows to
    nio): it receives our accept and key and answers. It then cancels with
    ``m.mismatched_commitment``: nio 0.26 hex-encodes the commitment where the spec
    (and matrix-rust-sdk, and we) use unpadded base64, so nio's legacy SAS cannot
    complete with spec-following clients. Nothing is verified on either side.
    """
    alice, bob = alice_bob
    await shared_room(alice, bob)
    device = next(
        d
        for d in bob.nio.device_store.active_user_devices(alice.user_id)
        if d.id == alice.device_id
    )
    bob.start_sync()  # nio's own answers go out with Bob's sync rounds
    resp = await bob.nio.start_key_verification(device)
    assert getattr(resp, "status_code", None) is None, resp
    [txn] = list(bob.nio.key_verifications)
    inc = await alice.keys.verification.wait_request(bob.user_id, timeout=TIMEOUT)
    assert (inc.flow_id, inc.other_device, inc.incoming) == (txn, bob.device_id, True)
    assert inc.state is VerificationState.STARTED  # their start: accept() answers it
    await inc.accept()
    with pytest.raises(VerificationCancelled) as err:
        await inc.done(TIMEOUT)
    assert (err.value.code, err.value.by_us) == ("m.mismatched_commitment", False)
    assert not _verified(alice, bob.user_id, bob.device_id)
    assert not _verified(bob, alice.user_id, alice.device_id)


async def test_cli_keys_verify_shows_the_sas_and_verifies(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    """`datarooms keys verify USER DEVICE`, answered "y", against an SDK device."""
    bob = await open_client(await homeserver.new_user("bob"))
    user = await homeserver.new_user("cli")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=user.user_id,
        DATAROOMS_ACCOUNT_PASSWORD=user.password,
    )
    data_dir = tmp_path / "cli"
    argv = [DATAROOMS, "--data-dir", str(data_dir), "keys", "verify", bob.user_id, bob.device_id]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        inc = await bob.keys.verification.wait_request(user.user_id, timeout=TIMEOUT)
        await inc.accept()
        await inc.wait_for_sas(TIMEOUT)
        await inc.confirm()
        out, err = await asyncio.wait_for(proc.communicate(b"y\n"), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stdout = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "   ".join(e.description for e in inc.emojis()) in stdout
    assert "  ".join(f"{n:04d}" for n in inc.decimals()) in stdout
    assert f"verified {bob.user_id} device {bob.device_id}" in stdout
    await inc.done(TIMEOUT)
    assert _verified(bob, user.user_id, inc.other_device or "")
    listing = cli("keys", "devices", bob.user_id, data_dir=data_dir, env=env)
    assert listing.returncode == 0, listing.stderr
    [row] = [line for line in listing.stdout.splitlines() if line.startswith(bob.device_id)]
    assert row.split()[1:4] == ["yes", "yes", "yes"], listing.stdout


# -- SDK <-> matrix-js-sdk (Rust crypto) -----------------------------------------------


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()


async def _we_ask(alice: DataroomsClient, js: JsClient, room_id: str | None) -> None:
    """Our SDK requests (and starts); matrix-js-sdk accepts and compares."""
    assert js.user_id is not None and js.device_id is not None
    device = None if room_id else js.device_id
    out = await alice.keys.verification.request(js.user_id, device, room_id=room_id)
    req = await js.wait_verification_request(timeout=TIMEOUT)
    assert (req["flow_id"], req["other_user"]) == (out.flow_id, alice.user_id)
    await js.accept_verification(out.flow_id)
    sas = await js.sas(out.flow_id, timeout=TIMEOUT)
    await out.wait_for_sas(TIMEOUT)
    assert [(e.symbol, e.description) for e in out.emojis()] == [tuple(e) for e in sas["emoji"]]
    assert list(out.decimals()) == sas["decimal"]
    await out.confirm()
    await js.sas_confirm(out.flow_id)
    await out.done(TIMEOUT)
    await js.wait_verification(out.flow_id, "done", timeout=TIMEOUT)
    assert out.verified and out.other_device == js.device_id and out.identity_verified


async def _js_asks(alice: DataroomsClient, js: JsClient, room_id: str | None) -> None:
    """matrix-js-sdk requests (and starts); our SDK accepts and compares."""
    assert js.user_id is not None
    device = None if room_id else alice.device_id
    sent = await js.request_verification(alice.user_id, device, room_id)
    inc = await alice.keys.verification.wait_request(js.user_id, timeout=TIMEOUT)
    assert (inc.flow_id, inc.room_id, inc.other_device) == (sent["flow_id"], room_id, js.device_id)
    await inc.accept()
    await js.start_verification(inc.flow_id, timeout=TIMEOUT)
    sas = await js.sas(inc.flow_id, timeout=TIMEOUT)
    await inc.wait_for_sas(TIMEOUT)
    assert [(e.symbol, e.description) for e in inc.emojis()] == [tuple(e) for e in sas["emoji"]]
    assert list(inc.decimals()) == sas["decimal"]
    await js.sas_confirm(inc.flow_id)
    await inc.confirm()
    await inc.done(TIMEOUT)
    await js.wait_verification(inc.flow_id, "done", timeout=TIMEOUT)
    assert inc.verified and inc.identity_verified


async def _js_syncs_after(alice: DataroomsClient, js: JsClient, room_id: str, n: int) -> None:
    """Let matrix-js-sdk finish a sync that began after the last flow ended.

    matrix-rust-sdk cancels a new request (ours or its own) while an earlier one with
    the same user is still in its cache, and it drops finished ones only at its next
    sync; a message it has to receive makes that sync happen.
    """
    marker = f"sync marker {n}"
    await alice.messages.send(room_id, marker)
    await js.wait_event(room_id, "m.room.message", match={"body": marker}, timeout=TIMEOUT)


async def test_sas_with_matrix_js_sdk_both_ways_both_transports(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    js_user = await homeserver.new_user("jsbob")
    async with JsClient() as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        room = await alice.rooms.create("collaboration", name="verification")
        await alice.rooms.grant(room.room_id, js_user.user_id, "write")
        await js.join(room.room_id)
        await alice.sync_once()
        assert js.device_id is not None
        before = await js.device_status(alice.user_id, alice.device_id)
        assert not before["locally_verified"] and not before["cross_signing_verified"]

        await _we_ask(alice, js, None)  # to-device, SDK -> matrix-js-sdk
        assert _verified(alice, js_user.user_id, js.device_id)
        # Our master key was in the MACs: matrix-js-sdk signs it with its user-signing
        # key (uploaded after its "done"), so our cross-signed device is verified there.
        for _ in range(100):
            after = await js.device_status(alice.user_id, alice.device_id)
            if after["cross_signing_verified"]:
                break
            await asyncio.sleep(0.1)
        assert after["cross_signing_verified"] and after["locally_verified"], after
        await _js_syncs_after(alice, js, room.room_id, 1)
        await _js_asks(alice, js, room.room_id)  # in-room, matrix-js-sdk -> SDK
        await _js_syncs_after(alice, js, room.room_id, 2)
        await _we_ask(alice, js, room.room_id)  # in-room, SDK -> matrix-js-sdk
        await _js_syncs_after(alice, js, room.room_id, 3)
        await _js_asks(alice, js, None)  # to-device, matrix-js-sdk -> SDK
        await _js_syncs_after(alice, js, room.room_id, 4)

        # matrix-js-sdk's user says the emoji differ: our side ends cancelled.
        out = await alice.keys.verification.request(js_user.user_id, js.device_id)
        await js.wait_verification_request(timeout=TIMEOUT)
        await js.accept_verification(out.flow_id)
        await js.sas(out.flow_id, timeout=TIMEOUT)
        await out.wait_for_sas(TIMEOUT)
        await js.sas_mismatch(out.flow_id)
        with pytest.raises(VerificationCancelled) as err:
            await out.done(TIMEOUT)
        assert (err.value.code, err.value.by_us) == ("m.mismatched_sas", False)
        ended = await js.wait_verification(out.flow_id, "cancelled", timeout=TIMEOUT)
        assert ended["cancellation_code"] == "m.mismatched_sas"
