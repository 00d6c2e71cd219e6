"""The SAS method ``m.sas.v1`` of the spec's key verification framework: the cryptography.

Pure protocol, no I/O (the transports and the state machine are in
:mod:`datarooms.sdk.keys.verification`):

- the ``m.key.verification.start`` content we offer, and the choice an accepting
  device makes from another device's offer;
- the **commitment** (SHA-256 of the accepting device's ephemeral key followed by
  the canonical JSON of the start content) that stops the accepting device from
  choosing its key after seeing the other one;
- the ECDH (vodozemac ``Sas`` / ``EstablishedSas``) and the **short
  authentication string** derived from it with ``curve25519-hkdf-sha256``:
  7 emoji from the spec's table of 64, or 3 numbers of 4 digits;
- the **MACs** of the keys being verified (the device's ed25519 key and, when
  known, the master cross-signing key), with ``hkdf-hmac-sha256.v2`` (or its
  unstable name from MSC3783) and, for old clients, ``hkdf-hmac-sha256``, whose
  base64 encoding is the broken one of libolm.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import vodozemac

from datarooms.errors import DataroomsError
from datarooms.sdk.keys.signing import canonical_json, unpadded_b64

METHOD = "m.sas.v1"
KEY_AGREEMENT = "curve25519-hkdf-sha256"
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_MSC3783 = "org.matrix.msc3783.hkdf-hmac-sha256"
MAC_LEGACY = "hkdf-hmac-sha256"
#: In order of preference; the first two are the same algorithm.
MAC_METHODS: tuple[str, ...] = (MAC_V2, MAC_MSC3783, MAC_LEGACY)
#: ``decimal`` is mandatory in the spec; ``emoji`` is what people compare.
SAS_METHODS: tuple[str, ...] = ("decimal", "emoji")


class SasError(DataroomsError):
    """The SAS exchange cannot go on; ``code`` is the spec's cancellation code."""

    errcode = "DR_VERIFICATION"
    http_status = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Emoji:
    """One emoji of the short authentication string (the spec's table)."""

    number: int
    symbol: str
    description: str

    def __str__(self) -> str:
        return f"{self.symbol} {self.description}"


# The spec's table (data-definitions/sas-emoji.json): code points and English names.
_EMOJI_TABLE = (
    ("1F436", "Dog"), ("1F431", "Cat"), ("1F981", "Lion"), ("1F40E", "Horse"),
    ("1F984", "Unicorn"), ("1F437", "Pig"), ("1F418", "Elephant"), ("1F430", "Rabbit"),
    ("1F43C", "Panda"), ("1F413", "Rooster"), ("1F427", "Penguin"), ("1F422", "Turtle"),
    ("1F41F", "Fish"), ("1F419", "Octopus"), ("1F98B", "Butterfly"), ("1F337", "Flower"),
    ("1F333", "Tree"), ("1F335", "Cactus"), ("1F344", "Mushroom"), ("1F30F", "Globe"),
    ("1F319", "Moon"), ("2601 FE0F", "Cloud"), ("1F525", "Fire"), ("1F34C", "Banana"),
    ("1F34E", "Apple"), ("1F353", "Strawberry"), ("1F33D", "Corn"), ("1F355", "Pizza"),
    ("1F382", "Cake"), ("2764 FE0F", "Heart"), ("1F600", "Smiley"), ("1F916", "Robot"),
    ("1F3A9", "Hat"), ("1F453", "Glasses"), ("1F527", "Spanner"), ("1F385", "Santa"),
    ("1F44D", "Thumbs Up"), ("2602 FE0F", "Umbrella"), ("231B", "Hourglass"),
    ("23F0", "Clock"), ("1F381", "Gift"), ("1F4A1", "Light Bulb"), ("1F4D5", "Book"),
    ("270F FE0F", "Pencil"), ("1F4CE", "Paperclip"), ("2702 FE0F", "Scissors"),
    ("1F512", "Lock"), ("1F511", "Key"), ("1F528", "Hammer"), ("260E FE0F", "Telephone"),
    ("1F3C1", "Flag"), ("1F682", "Train"), ("1F6B2", "Bicycle"), ("2708 FE0F", "Aeroplane"),
    ("1F680", "Rocket"), ("1F3C6", "Trophy"), ("26BD", "Ball"), ("1F3B8", "Guitar"),
    ("1F3BA", "Trumpet"), ("1F514", "Bell"), ("2693", "Anchor"), ("1F3A7", "Headphones"),
    ("1F4C1", "Folder"), ("1F4CC", "Pin"),
)  # fmt: skip

EMOJI: tuple[Emoji, ...] = tuple(
    Emoji(i, "".join(chr(int(cp, 16)) for cp in points.split()), name)
    for i, (points, name) in enumerate(_EMOJI_TABLE)
)


def start_offer(from_device: str) -> dict[str, Any]:
    """The SAS part of our ``m.key.verification.start`` (the transport adds the flow id).

    Only fields the spec defines: other implementations compute the commitment
    over the start content *as they parsed it*, so an extra field would break it.
    """
    return {
        "from_device": from_device,
        "method": METHOD,
        "key_agreement_protocols": [KEY_AGREEMENT],
        "hashes": [HASH],
        "message_authentication_codes": list(MAC_METHODS),
        "short_authentication_string": list(SAS_METHODS),
    }


@dataclass(frozen=True)
class Agreement:
    """What both devices use for this exchange (the ``m.key.verification.accept`` choice)."""

    key_agreement_protocol: str
    hash: str
    message_authentication_code: str
    short_authentication_string: tuple[str, ...]

    def accept_content(self, commitment: str) -> dict[str, Any]:
        return {
            "method": METHOD,
            "key_agreement_protocol": self.key_agreement_protocol,
            "hash": self.hash,
            "message_authentication_code": self.message_authentication_code,
            "short_authentication_string": list(self.short_authentication_string),
            "commitment": commitment,
        }


def _str_list(content: Mapping[str, Any], field: str) -> list[str]:
    value = content.get(field)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SasError("m.invalid_message", f"the start message has no valid {field!r}")
    return list(value)


def choose(start: Mapping[str, Any]) -> Agreement:
    """As the accepting device: pick from another device's start offer, or refuse it."""
    if start.get("method") != METHOD:
        raise SasError(
            "m.unknown_method", f"unsupported verification method {start.get('method')!r}"
        )
    if KEY_AGREEMENT not in _str_list(start, "key_agreement_protocols"):
        raise SasError("m.unknown_method", f"the other device does not offer {KEY_AGREEMENT}")
    if HASH not in _str_list(start, "hashes"):
        raise SasError("m.unknown_method", "the other device does not offer sha256")
    offered_macs = _str_list(start, "message_authentication_codes")
    mac = next((m for m in MAC_METHODS if m in offered_macs), None)
    if mac is None:
        raise SasError("m.unknown_method", "no common message authentication code")
    sas = tuple(m for m in SAS_METHODS if m in _str_list(start, "short_authentication_string"))
    if "decimal" not in sas:
        raise SasError("m.unknown_method", "the other device does not offer decimal SAS")
    return Agreement(KEY_AGREEMENT, HASH, mac, sas)


def check_accept(offer: Mapping[str, Any], accept: Mapping[str, Any]) -> tuple[Agreement, str]:
    """As the starting device: check the other device chose from our offer."""
    try:
        agreement = Agreement(
            str(accept["key_agreement_protocol"]),
            str(accept["hash"]),
            str(accept["message_authentication_code"]),
            tuple(str(s) for s in accept["short_authentication_string"]),
        )
        commitment = str(accept["commitment"])
    except (KeyError, TypeError) as exc:
        raise SasError("m.invalid_message", f"the accept message lacks {exc}") from None
    if (
        accept.get("method", METHOD) != METHOD
        or agreement.key_agreement_protocol not in offer["key_agreement_protocols"]
        or agreement.hash not in offer["hashes"]
        or agreement.message_authentication_code not in offer["message_authentication_codes"]
        or not set(agreement.short_authentication_string)
        <= set(offer["short_authentication_string"])
        or "decimal" not in agreement.short_authentication_string
    ):
        raise SasError("m.unknown_method", "the other device chose something we did not offer")
    return agreement, commitment


def commitment(public_key: str, start_content: Mapping[str, Any]) -> str:
    """unpadded base64 of SHA-256(public key in unpadded base64 || canonical JSON of start)."""
    digest = hashlib.sha256(public_key.encode() + canonical_json(dict(start_content)))
    return unpadded_b64(digest.digest())


@dataclass(frozen=True)
class Party:
    """One side of the exchange: user, device, and (once known) ephemeral public key."""

    user_id: str
    device_id: str


class SasExchange:
    """The ECDH and everything derived from it, for one verification flow.

    ``starter`` is the side whose ``m.key.verification.start`` was used; it comes
    first in the info strings. ``flow_id`` is the to-device ``transaction_id`` or
    the event id of the in-room request.
    """

    def __init__(
        self, own: Party, other: Party, flow_id: str, we_started: bool, agreement: Agreement
    ) -> None:
        self.own, self.other, self.flow_id = own, other, flow_id
        self.we_started = we_started
        self.agreement = agreement
        self._sas: Any = vodozemac.Sas()
        self.public_key: str = self._sas.public_key.to_base64()
        self._established: Any = None
        self.their_key: str | None = None

    @property
    def established(self) -> bool:
        return self._established is not None

    def set_their_key(self, key: str) -> None:
        if self._established is not None:
            raise SasError("m.unexpected_message", "the other device sent its key twice")
        try:
            pub = vodozemac.Curve25519PublicKey.from_base64(key)
            self._established = self._sas.diffie_hellman(pub)
        except Exception as exc:  # vodozemac raises its own exception types
            raise SasError("m.invalid_message", f"invalid ephemeral key: {exc}") from None
        self.their_key = key

    def _info(self) -> str:
        assert self.their_key is not None
        mine = f"{self.own.user_id}|{self.own.device_id}|{self.public_key}"
        theirs = f"{self.other.user_id}|{self.other.device_id}|{self.their_key}"
        first, second = (mine, theirs) if self.we_started else (theirs, mine)
        return f"MATRIX_KEY_VERIFICATION_SAS|{first}|{second}|{self.flow_id}"

    def _bytes(self) -> Any:
        if self._established is None:
            raise SasError("m.unexpected_message", "the keys have not been exchanged yet")
        return self._established.bytes(self._info())

    def emojis(self) -> list[Emoji]:
        return [EMOJI[i] for i in self._bytes().emoji_indices]

    def decimals(self) -> tuple[int, int, int]:
        a, b, c = self._bytes().decimals
        return int(a), int(b), int(c)

    # -- MACs ---------------------------------------------------------------------

    def _mac(self, value: str, info: str) -> str:
        if self.agreement.message_authentication_code == MAC_LEGACY:
            return str(self._established.calculate_mac_invalid_base64(value, info))
        return str(self._established.calculate_mac(value, info))

    def _mac_info(self, sender: Party, receiver: Party) -> str:
        return (
            f"MATRIX_KEY_VERIFICATION_MAC{sender.user_id}{sender.device_id}"
            f"{receiver.user_id}{receiver.device_id}{self.flow_id}"
        )

    def mac_content(self, keys: Mapping[str, str]) -> dict[str, Any]:
        """``{"mac": {key id: MAC}, "keys": MAC of the sorted key ids}`` for our keys."""
        if self._established is None:
            raise SasError("m.unexpected_message", "the keys have not been exchanged yet")
        info = self._mac_info(self.own, self.other)
        mac = {key_id: self._mac(key, info + key_id) for key_id, key in keys.items()}
        return {"mac": mac, "keys": self._mac(",".join(sorted(mac)), info + "KEY_IDS")}

    def verify_mac(self, content: Mapping[str, Any], known: Mapping[str, str]) -> set[str]:
        """Check the other device's MACs against the keys we know for it.

        Returns the ids of the keys whose MAC is valid. Key ids we do not know
        are ignored (as the spec says); a wrong MAC cancels with ``m.key_mismatch``.
        """
        if self._established is None:
            raise SasError("m.unexpected_message", "the keys have not been exchanged yet")
        mac = content.get("mac")
        keys_mac = content.get("keys")
        if not isinstance(mac, dict) or not isinstance(keys_mac, str):
            raise SasError("m.invalid_message", "the MAC message has no 'mac' or 'keys'")
        info = self._mac_info(self.other, self.own)
        if not self._check(",".join(sorted(mac)), info + "KEY_IDS", keys_mac):
            raise SasError("m.key_mismatch", "the MAC of the key list does not match")
        verified: set[str] = set()
        for key_id, value in mac.items():
            key = known.get(key_id)
            if key is None:
                continue
            if not isinstance(value, str) or not self._check(key, info + key_id, value):
                raise SasError("m.key_mismatch", f"the MAC of key {key_id} does not match")
            verified.add(key_id)
        return verified

    def _check(self, value: str, info: str, tag: str) -> bool:
        if self.agreement.message_authentication_code == MAC_LEGACY:
            expected = self._mac(value, info)
            return hmac.compare_digest(expected.encode(), tag.encode())
        try:
            self._established.verify_mac(value, info, tag)
        except Exception:  # vodozemac's SasException: mismatch or bad base64
            return False
        return True
