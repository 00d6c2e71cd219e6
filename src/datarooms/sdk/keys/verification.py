"""Interactive device verification (the spec's key verification framework, SAS method).

``client.keys.verification`` (a :class:`Verifier`) runs the whole flow of the
spec, to-device or in a room::

    request -> ready -> start -> accept -> key/key -> (compare SAS) -> mac/mac -> done/done

and marks the other device **verified** in nio's store when the MACs check out,
so the trust policy ``verified`` (and ``cross-signed``) shares room keys with it.
The cryptography is in :mod:`datarooms.sdk.keys.sas`.

Using it::

    v = await client.keys.verification.request("@bob:example.org", "BOBDEVICE")
    await v.wait_for_sas()
    print(v.emojis(), v.decimals())      # compare with the other screen
    await v.confirm()                    # or: await v.mismatch()
    await v.done()                       # raises VerificationCancelled

    incoming = await client.keys.verification.wait_request()
    await incoming.accept()
    ...

How it hooks into the client: through the SDK's typed sync hooks
(:mod:`datarooms.sdk.hooks`), after each batch is committed:

- **to-device** events arrive as ``ToDeviceReceived``;
- **in-room** events (decrypted) arrive as ``RoomEventReceived``;
- nio 0.26 has its own *legacy* SAS (start-first, no request/ready/done). It would
  answer the same ``m.key.verification.start``/``key``/``mac`` events and cancel
  or corrupt our flows, so the SDK's sync loop gives nio only the verification
  events of flows nio itself started (``client.nio.start_key_verification``);
  everything else is ours;
- the hooks only queue events; a worker task does the I/O, so nothing runs
  in the sync round.

Room keys: in-room verification events are encrypted with the room's Megolm
session, which the trust policy shares only with trusted devices. Under the
policy ``verified`` an unverified device cannot read them: verify to-device then.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nio import LocalProtocolError

from datarooms.errors import AccessDeniedError, DataroomsError, NotFoundError, ValidationError
from datarooms.sdk.hooks import RoomEventReceived, ToDeviceReceived
from datarooms.sdk.keys.sas import (
    METHOD,
    Emoji,
    Party,
    SasError,
    SasExchange,
    check_accept,
    choose,
    commitment,
    start_offer,
)

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

REQUEST = "m.key.verification.request"
READY = "m.key.verification.ready"
START = "m.key.verification.start"
ACCEPT = "m.key.verification.accept"
KEY = "m.key.verification.key"
MAC = "m.key.verification.mac"
DONE = "m.key.verification.done"
CANCEL = "m.key.verification.cancel"
_PREFIX = "m.key.verification."

#: The spec: ignore requests older than 10 minutes or more than 5 minutes in the future.
_MAX_AGE_MS = 10 * 60 * 1000
_MAX_FUTURE_MS = 5 * 60 * 1000
#: In-room events of a flow we do not know (yet): kept this long, in case our own
#: request's send returns after the answer was synced.
_ORPHAN_TTL_S = 120.0
_ORPHAN_MAX = 200


class VerificationState(enum.StrEnum):
    REQUESTED = "requested"  # request sent or received, no ready yet
    READY = "ready"  # both sides support m.sas.v1; waiting for a start
    STARTED = "started"  # a start was sent or received
    ACCEPTED = "accepted"  # accept exchanged; ephemeral keys being exchanged
    KEYS_EXCHANGED = "keys_exchanged"  # the SAS can be shown and compared
    CONFIRMED = "confirmed"  # we said the SAS matches and sent our MAC
    DONE = "done"  # MACs checked on both sides; the device is verified
    CANCELLED = "cancelled"


class VerificationError(DataroomsError):
    """The verification cannot do what was asked in its current state."""

    errcode = "DR_VERIFICATION"
    http_status = 409


class VerificationCancelled(VerificationError):
    """The flow was cancelled, by us or by the other device."""

    errcode = "DR_VERIFICATION_CANCELLED"

    def __init__(self, code: str, reason: str, by_us: bool) -> None:
        who = "we" if by_us else "the other device"
        super().__init__(f"verification cancelled: {who} sent {code} ({reason})")
        self.code, self.reason, self.by_us = code, reason, by_us


def _now_ms() -> int:
    return int(time.time() * 1000)


class Verification:
    """One verification flow with one device of another user (or of our own user).

    Obtain it from :meth:`Verifier.request` or :meth:`Verifier.wait_request`.
    """

    def __init__(
        self,
        verifier: Verifier,
        flow_id: str,
        other_user: str,
        other_device: str | None,
        *,
        incoming: bool,
        room_id: str | None = None,
        has_request: bool = True,
    ) -> None:
        self._v = verifier
        #: The to-device ``transaction_id``, or the event id of the in-room request.
        self.flow_id = flow_id
        self.other_user = other_user
        #: None while a to-device request to all the user's devices awaits a ready.
        self.other_device = other_device
        #: The other side asked for it.
        self.incoming = incoming
        self.room_id = room_id
        self.state = VerificationState.REQUESTED
        self.cancel_code: str | None = None
        self.cancel_reason: str | None = None
        self.cancelled_by_us = False
        #: Their master cross-signing key was part of the verified MACs.
        self.identity_verified = False
        self._has_request = has_request
        self._request_devices: list[str] = []
        self._accepted = not incoming  # the user agreed to go on (implicit when we asked)
        self._offer: dict[str, Any] | None = None  # our start content, as sent
        self._their_start: dict[str, Any] | None = None
        self._exchange: SasExchange | None = None
        self._their_commitment: str | None = None
        self._their_mac: dict[str, Any] | None = None
        self._confirmed = False
        self._mac_checked = False
        self._done_sent = False
        self._done_received = False
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.created = time.monotonic()

    def __repr__(self) -> str:
        where = f"room {self.room_id}" if self.room_id else "to-device"
        return (
            f"Verification({self.other_user} {self.other_device or '*'}, {where}, "
            f"{'incoming' if self.incoming else 'outgoing'}, {self.state.value})"
        )

    # -- what the application sees ---------------------------------------------------

    @property
    def transport(self) -> str:
        return "in-room" if self.room_id else "to-device"

    @property
    def verified(self) -> bool:
        """Their MAC checked out and the device is marked verified here."""
        return self._mac_checked

    @property
    def finished(self) -> bool:
        return self.state in (VerificationState.DONE, VerificationState.CANCELLED)

    def emojis(self) -> list[Emoji]:
        """The 7 emoji to compare with the other screen (once the keys are exchanged)."""
        ex = self._sas_ready()
        if "emoji" not in ex.agreement.short_authentication_string:
            raise VerificationError("the other device did not agree to compare emoji")
        return ex.emojis()

    def decimals(self) -> tuple[int, int, int]:
        """The 3 numbers to compare with the other screen (once the keys are exchanged)."""
        return self._sas_ready().decimals()

    def _sas_ready(self) -> SasExchange:
        self._raise_if_cancelled()
        ex = self._exchange
        if ex is None or not ex.established:
            raise VerificationError(
                f"the short authentication string is not available yet (state {self.state.value})"
            )
        return ex

    def _raise_if_cancelled(self) -> None:
        if self.state is VerificationState.CANCELLED:
            raise VerificationCancelled(
                self.cancel_code or "m.user", self.cancel_reason or "", self.cancelled_by_us
            )

    # -- waiting ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, done: Callable[[], bool], what: str, timeout: float | None) -> None:
        async def loop() -> None:
            while True:
                self._raise_if_cancelled()
                if done():
                    return
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            await self.cancel(f"timed out waiting for {what}", code="m.timeout")
            raise VerificationCancelled(
                "m.timeout", f"timed out waiting for {what}", True
            ) from None

    async def wait_for_sas(self, timeout: float | None = 300.0) -> None:
        """Wait until the SAS can be shown (:meth:`emojis`, :meth:`decimals`).

        On timeout the flow is cancelled (``m.timeout``) and VerificationCancelled raised.
        """
        self._v._c.start_sync()
        await self._wait(
            lambda: self._exchange is not None and self._exchange.established,
            "the other device's key",
            timeout,
        )

    async def done(self, timeout: float | None = 600.0) -> None:
        """Wait for the end: returns when verified, raises VerificationCancelled otherwise."""
        self._v._c.start_sync()
        await self._wait(
            lambda: self.state is VerificationState.DONE, "the end of the flow", timeout
        )

    # -- what the user decides ---------------------------------------------------------

    async def accept(self) -> None:
        """Accept an incoming request (sends ``ready``), or an incoming bare ``start``."""
        async with self._lock:
            self._raise_if_cancelled()
            if not self.incoming:
                raise VerificationError("only an incoming request can be accepted")
            if self._accepted:
                return
            if self.state is VerificationState.REQUESTED:
                await self._send(READY, {"from_device": self._v.device_id, "methods": [METHOD]})
                self._accepted = True
                self._set(VerificationState.READY)
            elif self.state is VerificationState.STARTED and self._their_start is not None:
                await self._send_accept()
                self._accepted = True
            else:
                self._accepted = True  # a bare start is on its way: accept it when it arrives

    async def start(self) -> None:
        """Send the SAS ``start`` (done for you when we asked and the other side is ready)."""
        async with self._lock:
            self._raise_if_cancelled()
            if self.state is VerificationState.REQUESTED and self.incoming:
                raise VerificationError("accept the request before starting")
            if self.state is not VerificationState.READY or self._offer is not None:
                return
            await self._send_start()

    async def confirm(self) -> None:
        """The SAS matches on both screens: send our MAC (and ``done`` once theirs checks out)."""
        async with self._lock:
            self._raise_if_cancelled()
            if self._confirmed:
                return
            ex = self._sas_ready()
            await self._send(MAC, ex.mac_content(await self._v._own_keys()))
            self._confirmed = True
            self._set(VerificationState.CONFIRMED)
            if self._their_mac is not None:
                await self._check_their_mac()

    async def mismatch(self) -> None:
        """The SAS differs: cancel with ``m.mismatched_sas``. The device stays unverified."""
        await self.cancel("the short authentication strings did not match", "m.mismatched_sas")

    async def cancel(self, reason: str = "cancelled by the user", code: str = "m.user") -> None:
        """Cancel the flow (tells the other device). Does nothing once it has ended."""
        async with self._lock:
            await self._cancel(code, reason)

    # -- internals: state ------------------------------------------------------------

    def _set(self, state: VerificationState) -> None:
        if self.state is not VerificationState.CANCELLED:
            self.state = state
        self._notify()

    def _cancelled(self, code: str, reason: str, by_us: bool) -> None:
        if self.finished:
            return
        self.state = VerificationState.CANCELLED
        self.cancel_code, self.cancel_reason, self.cancelled_by_us = code, reason, by_us
        log.info(
            "verification cancelled by %s: %s (%s)",
            "us" if by_us else "them",
            code,
            reason,
            extra={"flow": self.flow_id, "code": code, "by_us": by_us, "other": self.other_user},
        )
        self._notify()

    async def _cancel(self, code: str, reason: str) -> None:
        if self.finished:
            return
        self._cancelled(code, reason, True)
        try:
            await self._send(CANCEL, {"code": code, "reason": reason})
        except Exception as exc:  # cancelled here anyway; the other side will time out
            log.warning("could not send a verification cancel", extra={"error": str(exc)})

    # -- internals: sending ------------------------------------------------------------

    async def _send(self, event_type: str, content: dict[str, Any]) -> None:
        if self.room_id is not None:
            content["m.relates_to"] = {"rel_type": "m.reference", "event_id": self.flow_id}
            try:
                await self._v._c.send(self.room_id, event_type, content)
            except AccessDeniedError as exc:
                raise VerificationError(
                    f"{exc.message}: in-room verification needs the right to send in the "
                    "room (write access); verify to-device instead"
                ) from None
        else:
            content["transaction_id"] = self.flow_id
            devices = [self.other_device] if self.other_device else self._request_devices
            await self._v._send_to_device(event_type, self.other_user, devices, content)

    async def _send_start(self) -> None:
        offer = start_offer(self._v.device_id)
        await self._send(START, offer)  # adds the flow id: the commitment covers it
        self._offer = offer
        self._set(VerificationState.STARTED)

    async def _send_accept(self) -> None:
        assert self._their_start is not None and self.other_device is not None
        agreement = choose(self._their_start)
        ex = SasExchange(
            Party(self._v.user_id, self._v.device_id),
            Party(self.other_user, self.other_device),
            self.flow_id,
            False,
            agreement,
        )
        self._exchange = ex
        await self._send(
            ACCEPT, agreement.accept_content(commitment(ex.public_key, self._their_start))
        )
        self._set(VerificationState.ACCEPTED)

    # -- internals: receiving ----------------------------------------------------------

    async def _receive(self, event_type: str, content: dict[str, Any]) -> None:
        async with self._lock:
            if self.finished:
                return
            if event_type == CANCEL:
                self._cancelled(
                    str(content.get("code", "m.user")), str(content.get("reason", "")), False
                )
                return
            handler = {
                READY: self._on_ready,
                START: self._on_start,
                ACCEPT: self._on_accept,
                KEY: self._on_key,
                MAC: self._on_mac,
                DONE: self._on_done,
            }.get(event_type)
            if handler is None:
                return
            try:
                await handler(content)
            except SasError as exc:
                log.warning(
                    "verification failed",
                    extra={"flow": self.flow_id, "code": exc.code, "error": exc.message},
                )
                await self._cancel(exc.code, exc.message)

    async def _on_ready(self, content: dict[str, Any]) -> None:
        if self.incoming or self.state is not VerificationState.REQUESTED:
            return  # a late duplicate, or the echo of another device
        from_device = content.get("from_device")
        if not isinstance(from_device, str):
            raise SasError("m.invalid_message", "the ready message has no from_device")
        if self.other_device is None:
            self.other_device = from_device
            others = [d for d in self._request_devices if d != from_device]
            if others:  # the request went to every device: tell the others it was taken
                await self._v._send_to_device(
                    CANCEL,
                    self.other_user,
                    others,
                    {
                        "code": "m.accepted",
                        "reason": "another device accepted the request",
                        "transaction_id": self.flow_id,
                    },
                )
        elif from_device != self.other_device:
            return
        methods = content.get("methods")
        if not isinstance(methods, list) or METHOD not in methods:
            raise SasError("m.unknown_method", f"the other device does not support {METHOD}")
        self._set(VerificationState.READY)
        if self._v.auto_start:
            await self._send_start()

    async def _on_start(self, content: dict[str, Any]) -> None:
        from_device = content.get("from_device")
        if not isinstance(from_device, str) or (
            self.other_device is not None and from_device != self.other_device
        ):
            raise SasError("m.invalid_message", "the start message comes from another device")
        if self._exchange is not None:
            raise SasError("m.unexpected_message", "a second start message")
        if self._has_request and self.state not in (
            VerificationState.READY,
            VerificationState.STARTED,
        ):
            raise SasError("m.unexpected_message", f"a start message in state {self.state.value}")
        if self._offer is not None:
            # Both sides started. The spec: the start of the smaller user id (or, for
            # one user, of the smaller device id) is used.
            if (self._v.user_id, self._v.device_id) < (self.other_user, from_device):
                return  # ours is used; they will accept it
            self._offer = None
        choose(content)  # refuse at once what we cannot do
        self._their_start = content
        self.other_device = from_device
        self._set(VerificationState.STARTED)
        if self._accepted:
            await self._send_accept()

    async def _on_accept(self, content: dict[str, Any]) -> None:
        if self._offer is None or self._exchange is not None:
            raise SasError("m.unexpected_message", "an accept message we did not ask for")
        assert self.other_device is not None
        agreement, their_commitment = check_accept(self._offer, content)
        ex = SasExchange(
            Party(self._v.user_id, self._v.device_id),
            Party(self.other_user, self.other_device),
            self.flow_id,
            True,
            agreement,
        )
        self._exchange, self._their_commitment = ex, their_commitment
        await self._send(KEY, {"key": ex.public_key})
        self._set(VerificationState.ACCEPTED)

    async def _on_key(self, content: dict[str, Any]) -> None:
        ex = self._exchange
        key = content.get("key")
        if ex is None:
            raise SasError("m.unexpected_message", "a key message before accept")
        if not isinstance(key, str):
            raise SasError("m.invalid_message", "the key message has no key")
        if ex.we_started:
            assert self._offer is not None
            if commitment(key, self._offer) != self._their_commitment:
                raise SasError(
                    "m.mismatched_commitment",
                    "the other device's key does not match its commitment",
                )
            ex.set_their_key(key)
        else:
            ex.set_their_key(key)
            await self._send(KEY, {"key": ex.public_key})
        self._set(VerificationState.KEYS_EXCHANGED)

    async def _on_mac(self, content: dict[str, Any]) -> None:
        if self._exchange is None or not self._exchange.established:
            raise SasError("m.unexpected_message", "a MAC before the keys were exchanged")
        if self._their_mac is not None:
            raise SasError("m.unexpected_message", "a second MAC message")
        self._their_mac = content
        if self._confirmed:  # else: checked when our user confirms
            await self._check_their_mac()

    async def _check_their_mac(self) -> None:
        assert self._exchange is not None and self._their_mac is not None
        assert self.other_device is not None
        device = await self._v._device(self.other_user, self.other_device)
        master, master_obj = await self._v._master_key(self.other_user)
        device_key_id = f"ed25519:{self.other_device}"
        known = {device_key_id: str(device.ed25519)}
        if master is not None:
            known[f"ed25519:{master}"] = master
        verified = self._exchange.verify_mac(self._their_mac, known)
        if device_key_id not in verified:
            raise SasError("m.key_mismatch", "the other device did not authenticate its own key")
        self._mac_checked = True
        self.identity_verified = master is not None and f"ed25519:{master}" in verified
        await self._v._mark_verified(device, master if self.identity_verified else None, master_obj)
        if not self._has_request:
            self._set(VerificationState.DONE)  # the legacy flow has no done messages
            return
        await self._send(DONE, {})
        self._done_sent = True
        self._set(VerificationState.DONE if self._done_received else self.state)

    async def _on_done(self, content: dict[str, Any]) -> None:
        self._done_received = True
        if self._done_sent:
            self._set(VerificationState.DONE)

    def _taken_elsewhere(self) -> None:
        """Another device of ours answered this in-room request."""
        self._cancelled("m.accepted", "another of our devices answered the request", True)


class Verifier:
    """``client.keys.verification``: requests, incoming requests, and the transports."""

    def __init__(self, client: DataroomsClient, *, auto_start: bool = True) -> None:
        self._c = client
        #: When we asked and the other side is ready, we send the SAS start ourselves.
        self.auto_start = auto_start
        self._flows: dict[str, Verification] = {}
        self._incoming: asyncio.Queue[Verification] = asyncio.Queue()
        self._events: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._orphans: dict[str, list[tuple[float, str, dict[str, Any]]]] = {}
        self._install()

    @property
    def user_id(self) -> str:
        return self._c.user_id

    @property
    def device_id(self) -> str:
        return self._c.device_id

    # -- hooks into the sync loop -------------------------------------------------------

    def _install(self) -> None:
        hooks = self._c.hooks
        hooks.on(ToDeviceReceived, self._on_to_device)
        hooks.on(RoomEventReceived, self._on_room_event)

    def _on_to_device(self, event: ToDeviceReceived) -> None:
        if event.type.startswith(_PREFIX):
            self._enqueue(
                None, {"type": event.type, "sender": event.sender, "content": event.content}
            )

    def _on_room_event(self, hook: RoomEventReceived) -> None:
        e = hook.event
        if not e.decrypted:
            return
        if e.type.startswith(_PREFIX) or (
            e.type == "m.room.message" and e.content.get("msgtype") == REQUEST
        ):
            self._enqueue(
                e.room_id,
                {
                    "type": e.type,
                    "sender": e.sender,
                    "content": e.content,
                    "event_id": e.event_id,
                    "origin_server_ts": e.ts,
                },
            )

    def _enqueue(self, room_id: str | None, source: dict[str, Any]) -> None:
        self._events.put_nowait((room_id, source))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="datarooms-verification"
            )

    async def _work(self) -> None:
        # Runs while there are events and then ends (a new one is started on demand),
        # so no task outlives the client.
        while not self._events.empty():
            room_id, source = self._events.get_nowait()
            try:
                if room_id is None:
                    await self._to_device_event(source)
                else:
                    await self._room_event(room_id, source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad event must not stop verification
                log.warning(
                    "could not handle a verification event",
                    extra={"type": source.get("type"), "error": str(exc)},
                )

    # -- incoming events -------------------------------------------------------------

    async def _to_device_event(self, source: dict[str, Any]) -> None:
        etype, sender, content = source.get("type"), source.get("sender"), source.get("content")
        if not isinstance(sender, str) or not isinstance(content, dict):
            return
        txn = content.get("transaction_id")
        if not isinstance(txn, str) or not txn:
            return
        olm = self._c.nio.olm
        if olm is not None and txn in olm.key_verifications:
            return  # a legacy flow nio runs itself
        flow = self._flows.get(txn)
        if etype == REQUEST:
            from_device = content.get("from_device")
            if flow is not None or not isinstance(from_device, str):
                return
            if (sender, from_device) == (self.user_id, self.device_id):
                return
            if not _fresh(content.get("timestamp")):
                log.info("ignoring a stale verification request", extra={"from": sender})
                return
            self._add_incoming(Verification(self, txn, sender, from_device, incoming=True))
            return
        if flow is None:
            if etype == START and isinstance(content.get("from_device"), str):
                # A start without a request (the older flow, e.g. nio's own SAS).
                flow = Verification(
                    self, txn, sender, str(content["from_device"]), incoming=True, has_request=False
                )
                flow.state = VerificationState.READY
                self._add_incoming(flow)
            else:
                return
        if flow.room_id is not None or flow.other_user != sender:
            return
        await flow._receive(str(etype), content)

    async def _room_event(self, room_id: str, source: dict[str, Any]) -> None:
        etype, sender = source.get("type"), source.get("sender")
        content, event_id = source.get("content"), source.get("event_id")
        if not isinstance(sender, str) or not isinstance(content, dict):
            return
        if etype == "m.room.message":
            if sender == self.user_id or content.get("to") != self.user_id:
                return
            from_device = content.get("from_device")
            if not isinstance(event_id, str) or not isinstance(from_device, str):
                return
            if event_id in self._flows or not _fresh(source.get("origin_server_ts")):
                return
            self._add_incoming(
                Verification(self, event_id, sender, from_device, incoming=True, room_id=room_id)
            )
            return
        rel = content.get("m.relates_to")
        if not isinstance(rel, dict) or rel.get("rel_type") != "m.reference":
            return
        flow_id = rel.get("event_id")
        if not isinstance(flow_id, str):
            return
        flow = self._flows.get(flow_id)
        if sender == self.user_id:
            # Our own echo, or another of our devices answering a request to us.
            from_device = content.get("from_device")
            if (
                flow is not None
                and flow.incoming
                and isinstance(from_device, str)
                and from_device != self.device_id
            ):
                flow._taken_elsewhere()
            return
        if flow is None:
            self._keep_orphan(flow_id, str(etype), source)
            return
        if flow.room_id != room_id or flow.other_user != sender:
            return
        await flow._receive(str(etype), content)

    def _keep_orphan(self, flow_id: str, etype: str, source: dict[str, Any]) -> None:
        if not _fresh(source.get("origin_server_ts")):
            return
        now = time.monotonic()
        for fid in [f for f, items in self._orphans.items() if now - items[0][0] > _ORPHAN_TTL_S]:
            del self._orphans[fid]
        if sum(len(v) for v in self._orphans.values()) < _ORPHAN_MAX:
            self._orphans.setdefault(flow_id, []).append((now, etype, source))

    def _add_incoming(self, flow: Verification) -> None:
        self._flows[flow.flow_id] = flow
        log.info(
            "incoming verification request",
            extra={
                "from": flow.other_user,
                "device": flow.other_device,
                "transport": flow.transport,
            },
        )
        self._incoming.put_nowait(flow)

    # -- requests --------------------------------------------------------------------

    async def request(
        self, user_id: str, device_id: str | None = None, room_id: str | None = None
    ) -> Verification:
        """Ask a device (or all devices) of ``user_id`` to verify; returns the flow.

        To-device by default; with ``room_id``, in that room (the spec's in-room
        verification of another user: whichever of their devices answers is verified).
        Starts the sync loop: the answers come with it.
        """
        if room_id is not None:
            return await self._request_in_room(user_id, room_id)
        if (user_id, device_id) == (self.user_id, self.device_id):
            raise ValidationError("a device cannot verify itself")
        devices = await self._devices(user_id, device_id)
        if device_id is not None:
            if device_id not in devices:
                raise NotFoundError(
                    f"{user_id} has no device {device_id} (or its keys are invalid)"
                )
            targets = [device_id]
        else:
            targets = sorted(devices)
            if not targets:
                raise NotFoundError(f"no device of {user_id} with valid keys is known")
        flow = Verification(self, secrets.token_urlsafe(18), user_id, device_id, incoming=False)
        flow._request_devices = targets
        self._flows[flow.flow_id] = flow
        self._c.start_sync()
        content = {
            "from_device": self.device_id,
            "methods": [METHOD],
            "timestamp": _now_ms(),
            "transaction_id": flow.flow_id,
        }
        try:
            await self._send_to_device(REQUEST, user_id, targets, content)
        except BaseException:
            self._flows.pop(flow.flow_id, None)
            raise
        return flow

    async def _request_in_room(self, user_id: str, room_id: str) -> Verification:
        if user_id == self.user_id:
            raise ValidationError("in-room verification is for other users; verify to-device")
        await self._c.ensure_room(room_id)
        if user_id not in self._c.nio.rooms[room_id].users:
            raise ValidationError(f"{user_id} is not a member of {room_id}")
        content = {
            "msgtype": REQUEST,
            "body": f"{self.user_id} is requesting to verify your device, but your client "
            "does not support in-room verification.",
            "from_device": self.device_id,
            "methods": [METHOD],
            "to": user_id,
        }
        self._c.start_sync()
        event_id = await self._c.send(room_id, "m.room.message", content)
        flow = Verification(self, event_id, user_id, None, incoming=False, room_id=room_id)
        self._flows[event_id] = flow
        for _, _etype, source in self._orphans.pop(event_id, []):
            self._enqueue(room_id, source)  # answers that came before our send returned
        return flow

    async def wait_request(
        self, user_id: str | None = None, timeout: float | None = None
    ) -> Verification:
        """The next incoming request (from ``user_id`` if given). Starts the sync loop."""
        self._c.start_sync()

        async def next_one() -> Verification:
            while True:
                flow = await self._incoming.get()
                if flow.finished:
                    continue
                if user_id is None or flow.other_user == user_id:
                    return flow

        try:
            return await asyncio.wait_for(next_one(), timeout)
        except TimeoutError:
            raise VerificationError(
                f"no verification request{f' from {user_id}' if user_id else ''} "
                f"arrived within {timeout:.0f} s"
            ) from None

    async def requests(self) -> AsyncIterator[Verification]:
        """Incoming requests as they arrive (each once). Starts the sync loop."""
        while True:
            yield await self.wait_request()

    def flows(self) -> list[Verification]:
        """Every flow this device knows of in this process, newest last."""
        return sorted(self._flows.values(), key=lambda f: f.created)

    # -- devices and keys --------------------------------------------------------------

    async def _query(self, user_id: str) -> None:
        nio = self._c.nio
        olm = nio.olm
        if olm is None:
            raise VerificationError("this device has no encryption: nothing to verify with")
        olm.users_for_key_query.add(user_id)
        with contextlib.suppress(LocalProtocolError):  # another task just queried
            await self._c._check(await nio.keys_query(), "query device keys")

    async def _devices(self, user_id: str, want: str | None = None) -> dict[str, Any]:
        """The user's devices with valid keys, as nio knows them (queried when needed)."""
        store = self._c.nio.device_store
        devices = {d.id: d for d in store.active_user_devices(user_id)}
        if not devices or (want is not None and want not in devices):
            await self._query(user_id)
            devices = {d.id: d for d in store.active_user_devices(user_id)}
        if user_id == self.user_id:
            devices.pop(self.device_id, None)
        return devices

    async def _device(self, user_id: str, device_id: str) -> Any:
        found = await self._devices(user_id, device_id)
        if device_id not in found:
            raise SasError("m.key_mismatch", f"the keys of device {device_id} are unknown here")
        return found[device_id]

    async def _master_key(self, user_id: str) -> tuple[str | None, dict[str, Any] | None]:
        """The user's master key as the server has it now (verified by the MAC, or not used)."""
        res = await self._c.keys.query_keys([user_id])
        master = res.get("master_keys", {}).get(user_id)
        if not isinstance(master, dict):
            return None, None
        keys = list((master.get("keys") or {}).values())
        if len(keys) != 1 or not isinstance(keys[0], str):
            return None, None
        return keys[0], master

    async def _own_keys(self) -> dict[str, str]:
        """Our keys to MAC: this device's ed25519 key, and our master key if we trust it."""
        olm = self._c.nio.olm
        assert olm is not None
        keys = {f"ed25519:{self.device_id}": str(olm.account.identity_keys["ed25519"])}
        me = self.user_id
        res = await self._c.keys.query_keys([me])
        if self.device_id in self._c.keys.cross_signed_devices(me, res):
            master, _ = await self._master_key(me)
            if master is not None:
                keys[f"ed25519:{master}"] = master
        return keys

    async def _mark_verified(
        self, device: Any, master: str | None, master_obj: dict[str, Any] | None
    ) -> None:
        nio = self._c.nio
        olm = nio.olm
        assert olm is not None
        withheld = bool(olm.is_device_blacklisted(device))
        olm.verify_device(device)
        log.info(
            "device verified by SAS",
            extra={"user": device.user_id, "device": device.id, "identity": master is not None},
        )
        if withheld:
            # The current Megolm sessions of rooms we share were withheld from this
            # device; start new ones so it can read what is written next.
            for room_id, room in nio.rooms.items():
                if room.encrypted and device.user_id in room.users:
                    nio.invalidate_outbound_session(room_id)
        if master is not None and master_obj is not None:
            await self._c.keys.verified_identity(device.user_id, master, master_obj)
        if device.user_id == self.user_id:
            # Our own other device: sign it with our self-signing key (if held here),
            # so every client that trusts our identity trusts that device too.
            try:
                await self._c.keys.sign_own_device(device.id)
            except DataroomsError as exc:
                log.warning("could not cross-sign the verified device", extra={"error": str(exc)})

    # -- to-device transport ---------------------------------------------------------

    async def _send_to_device(
        self, event_type: str, user_id: str, devices: list[str], content: dict[str, Any]
    ) -> None:
        """Cleartext to-device, as every client sends verification messages."""
        body = {"messages": {user_id: dict.fromkeys(devices, content)}}
        path = f"/_matrix/client/v3/sendToDevice/{quote(event_type)}/{secrets.token_hex(16)}"
        async with self._c.http() as http:
            await http.request("PUT", path, json=body)


def _fresh(ts: object) -> bool:
    if not isinstance(ts, int):
        return False
    age = _now_ms() - ts
    return -_MAX_FUTURE_MS <= age <= _MAX_AGE_MS
