"""Check a UCAN invocation and its delegation chain, as a service (the executor) does.

What is checked, and the errcode each failure gets (see :mod:`.errors`):

- size (``DR_UCAN_TOO_LARGE``) before anything is decoded; structure (``DR_UCAN_MALFORMED``);
- every signature, with the key of its issuer's ``did:key`` (``DR_UCAN_BAD_SIGNATURE``;
  any other DID method: ``DR_UCAN_UNKNOWN_DID_METHOD``);
- the invocation is for this service: its ``aud`` (or, absent, its ``sub``) is the
  service's DID, and its subject one the service answers for (``DR_UCAN_WRONG_AUDIENCE``);
- time: every token's ``nbf``/``exp`` (``DR_UCAN_NOT_YET_VALID``, ``DR_UCAN_EXPIRED``); an
  invocation must expire, within ``max_lifetime`` seconds (``DR_UCAN_LIFETIME``);
- the chain: ``prf`` names delegations carried in the container, root first; the root is
  issued by the subject; each ``aud`` is the next ``iss``; the last ``aud`` is the invoker
  (``DR_UCAN_BROKEN_CHAIN``);
- attenuation: each hop's command is its parent's or below it, and it does not outlive
  its parent; the invocation's command is under the last hop's (``DR_UCAN_WIDENS``);
- every policy along the chain holds for the invocation's ``args`` (``DR_UCAN_POLICY``);
- no link is revoked (``DR_UCAN_REVOKED``), and the invocation was not seen before
  (``DR_UCAN_REPLAYED``).

Verified delegations are memoized by CID (their signature is not checked twice); time,
revocation and replay are checked on every call.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiformats import CID

from datarooms import _sqlite
from datarooms.sdk.ucan.errors import UcanError
from datarooms.sdk.ucan.policy import holds
from datarooms.sdk.ucan.tokens import (
    Delegation,
    Invocation,
    covers,
    decode,
    decode_container,
)

REVOKE_COMMAND = "/ucan/revoke"
#: Allowed clock skew, in seconds, for nbf/iat.
CLOCK_SKEW = 30


@dataclass(frozen=True)
class Proven:
    """An invocation whose chain checked out: what it asks, and who granted it."""

    invocation: Invocation
    chain: tuple[Delegation, ...]

    @property
    def invoker(self) -> str:
        return self.invocation.iss

    @property
    def cmd(self) -> str:
        return self.invocation.cmd

    @property
    def args(self) -> Mapping[str, Any]:
        return self.invocation.args

    @property
    def root(self) -> Delegation | None:
        return self.chain[0] if self.chain else None


class RevocationStore:
    """Revoked delegation CIDs, in SQLite so every service of a platform shares them.

    A revocation is written (committed) before it is acknowledged, and every
    verification reads the table, so a revoked link is refused by every service that
    uses the same file from the moment ``revoke`` returns (bound: 0 s on one platform).
    """

    _SCHEMA = (
        "CREATE TABLE revoked (cid TEXT PRIMARY KEY, revoked_by TEXT NOT NULL, "
        "revoked_at REAL NOT NULL)",
    )

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self._db = _sqlite.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        _sqlite.migrate(self._db, self._SCHEMA)
        self._lock = threading.Lock()

    def revoke(self, cid: str | CID, *, by: str) -> None:
        """Revoke the delegation ``cid`` (a CID, in any multibase form)."""
        try:
            key = bytes(cid if isinstance(cid, CID) else CID.decode(cid)).hex()
        except (ValueError, KeyError) as exc:
            raise UcanError(f"{cid!r} is not a CID: {exc}", errcode="DR_UCAN_MALFORMED") from None
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO revoked (cid, revoked_by, revoked_at) VALUES (?, ?, ?)",
                (key, by, time.time()),
            )

    def first_revoked(self, keys: Sequence[bytes]) -> str | None:
        """The first of ``keys`` (binary CIDs) revoked, as a CID string; ``None`` if none."""
        if not keys:
            return None
        cids = [k.hex() for k in keys]
        marks = ",".join("?" * len(cids))
        with self._lock:
            row = self._db.execute(
                f"SELECT cid FROM revoked WHERE cid IN ({marks}) LIMIT 1",  # noqa: S608 (only ?s)
                tuple(cids),
            ).fetchone()
        return None if row is None else str(CID.decode(bytes.fromhex(row[0])))

    def close(self) -> None:
        self._db.close()


class ReplayGuard:
    """Invocation CIDs seen, each kept until its invocation expires (bounded in size)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # binary CID -> exp

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, inv: Invocation, exp: int, now: float) -> None:
        key = inv.key
        if key in self._seen:
            raise UcanError(
                f"the invocation {inv.cid} was already used: sign a new one (fresh nonce) "
                "for every request",
                errcode="DR_UCAN_REPLAYED",
            )
        if len(self._seen) >= self.max_entries:
            for old in [c for c, e in self._seen.items() if e < now]:
                del self._seen[old]
            if len(self._seen) >= self.max_entries:
                raise UcanError(
                    "too many live invocations to track just now; retry in a moment",
                    errcode="DR_UCAN_BUSY",
                )
        self._seen[key] = exp


class Validator:
    """Verifies invocations addressed to ``audience`` (a service's ``did:key``)."""

    def __init__(
        self,
        audience: str,
        *,
        subjects: Iterable[str] | None = None,
        revocations: RevocationStore | None = None,
        max_lifetime: int = 300,
        replay_entries: int = 100_000,
        memo_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        #: Subjects this service answers for (default: itself).
        self.subjects = frozenset(subjects) if subjects is not None else frozenset({audience})
        self.revocations = revocations or RevocationStore()
        self.max_lifetime = max_lifetime
        self.replays = ReplayGuard(replay_entries)
        self._memo: OrderedDict[bytes, Delegation] = OrderedDict()
        self._memo_entries = memo_entries
        self._clock = clock

    # -- decoding ---------------------------------------------------------------

    def _decode_all(self, token: str) -> tuple[Invocation, dict[bytes, Delegation]]:
        invocation: Invocation | None = None
        delegations: dict[bytes, Delegation] = {}
        for envelope in decode_container(token):
            memo = self._memo.get(envelope)
            if memo is not None:
                self._memo.move_to_end(envelope)
                delegations[memo.key] = memo
                continue
            decoded = decode(envelope)
            if isinstance(decoded, Invocation):
                if invocation is not None:
                    raise UcanError(
                        "the container holds more than one invocation", errcode="DR_UCAN_MALFORMED"
                    )
                invocation = decoded
            else:
                delegations[decoded.key] = decoded
                self._memo[envelope] = decoded
                while len(self._memo) > self._memo_entries:
                    self._memo.popitem(last=False)
        if invocation is None:
            raise UcanError(
                "the container holds no invocation: a request needs an invocation "
                "(ucan/inv) signed by the caller, with its delegations",
                errcode="DR_UCAN_MALFORMED",
            )
        return invocation, delegations

    # -- the checks ---------------------------------------------------------------

    def verify(self, token: str) -> Proven:
        """The proven invocation in the container ``token``; :class:`UcanError` if not."""
        now = self._clock()
        inv, delegations = self._decode_all(token)
        executor = inv.aud if inv.aud is not None else inv.sub
        if executor != self.audience:
            raise UcanError(
                f"the invocation is addressed to {executor}, not to this service "
                f"({self.audience}, see /.well-known/did.json)",
                errcode="DR_UCAN_WRONG_AUDIENCE",
            )
        if inv.sub not in self.subjects:
            raise UcanError(
                f"the invocation's subject {inv.sub} is not one this service answers for",
                errcode="DR_UCAN_WRONG_AUDIENCE",
            )
        if inv.exp is None:
            raise UcanError(
                f"the invocation never expires: give it an exp at most {self.max_lifetime} s ahead",
                errcode="DR_UCAN_LIFETIME",
            )
        self._check_time(inv, None, inv.exp, now)
        if inv.exp - now > self.max_lifetime:
            raise UcanError(
                f"the invocation lives {int(inv.exp - now)} s; this service takes at most "
                f"{self.max_lifetime} s",
                errcode="DR_UCAN_LIFETIME",
            )
        if inv.iat is not None and inv.iat > now + CLOCK_SKEW:
            raise UcanError(
                f"the invocation was issued in the future (iat {inv.iat})",
                errcode="DR_UCAN_NOT_YET_VALID",
            )
        chain = self._chain(inv, delegations, now)
        for hop in chain:
            if not holds(hop.pol, dict(inv.args)):
                raise UcanError(
                    f"the invocation's args do not satisfy the policy {hop.pol!r} of the "
                    f"delegation {hop.cid} (from {hop.iss})",
                    errcode="DR_UCAN_POLICY",
                )
        revoked = self.revocations.first_revoked([h.key for h in chain])
        if revoked is not None:
            raise UcanError(f"the delegation {revoked} was revoked", errcode="DR_UCAN_REVOKED")
        self.replays.check_and_remember(inv, inv.exp, now)
        return Proven(inv, chain)

    def _check_time(
        self, token: Delegation | Invocation, nbf: int | None, exp: int | None, now: float
    ) -> None:
        def what() -> str:
            if isinstance(token, Invocation):
                return f"the invocation {token.cid}"
            return f"the delegation {token.cid} (from {token.iss})"

        if exp is not None and now > exp:
            raise UcanError(f"{what()} expired at {exp}", errcode="DR_UCAN_EXPIRED")
        if nbf is not None and now + CLOCK_SKEW < nbf:
            raise UcanError(f"{what()} is not valid before {nbf}", errcode="DR_UCAN_NOT_YET_VALID")

    def _chain(
        self, inv: Invocation, delegations: Mapping[bytes, Delegation], now: float
    ) -> tuple[Delegation, ...]:
        chain: list[Delegation] = []
        for cid in inv.prf:
            hop = delegations.get(bytes(cid))
            if hop is None:
                raise UcanError(
                    f"the proof {cid} named in prf is not in the container",
                    errcode="DR_UCAN_BROKEN_CHAIN",
                )
            chain.append(hop)
        if not chain:
            if inv.iss != inv.sub:
                raise UcanError(
                    f"{inv.iss} invokes on {inv.sub} without any delegation (prf is empty)",
                    errcode="DR_UCAN_BROKEN_CHAIN",
                )
            return ()
        root = chain[0]
        if root.sub is None or root.iss != root.sub or root.sub != inv.sub:
            raise UcanError(
                f"the first delegation must be issued by the subject {inv.sub} about itself "
                f"(it is from {root.iss} about {root.sub})",
                errcode="DR_UCAN_BROKEN_CHAIN",
            )
        for index, hop in enumerate(chain):
            self._check_time(hop, hop.nbf, hop.exp, now)
            if hop.sub is not None and hop.sub != inv.sub:
                raise UcanError(
                    f"the delegation {hop.cid} is about {hop.sub}, not {inv.sub}",
                    errcode="DR_UCAN_BROKEN_CHAIN",
                )
            nxt_iss = chain[index + 1].iss if index + 1 < len(chain) else inv.iss
            if hop.aud != nxt_iss:
                raise UcanError(
                    f"the chain is broken: the delegation {hop.cid} is to {hop.aud}, but the "
                    f"next link is from {nxt_iss}",
                    errcode="DR_UCAN_BROKEN_CHAIN",
                )
            if index > 0:
                parent = chain[index - 1]
                if not covers(parent.cmd, hop.cmd):
                    raise UcanError(
                        f"the delegation {hop.cid} widens {parent.cmd!r} to {hop.cmd!r}",
                        errcode="DR_UCAN_WIDENS",
                    )
                if parent.exp is not None and (hop.exp is None or hop.exp > parent.exp):
                    raise UcanError(
                        f"the delegation {hop.cid} outlives the one it extends "
                        f"({hop.exp} > {parent.exp})",
                        errcode="DR_UCAN_WIDENS",
                    )
        if not covers(chain[-1].cmd, inv.cmd):
            raise UcanError(
                f"the chain grants {chain[-1].cmd!r}, not {inv.cmd!r}",
                errcode="DR_UCAN_WIDENS",
            )
        return tuple(chain)

    # -- revocation ---------------------------------------------------------------

    def revoke(self, token: str) -> str:
        """Apply a ``/ucan/revoke`` invocation (args ``{"ucan": CID}``): the container
        carries the revoked delegation and the delegations above it; the invoker must
        have issued one of them. Returns the revoked CID."""
        now = self._clock()
        inv, delegations = self._decode_all(token)
        executor = inv.aud if inv.aud is not None else inv.sub
        if executor != self.audience:
            raise UcanError(
                f"the revocation is addressed to {executor}, not {self.audience}",
                errcode="DR_UCAN_WRONG_AUDIENCE",
            )
        if inv.cmd != REVOKE_COMMAND:
            raise UcanError(
                f"a revocation is an invocation of {REVOKE_COMMAND}",
                errcode="DR_UCAN_WRONG_COMMAND",
            )
        if inv.exp is None:
            raise UcanError("the revocation never expires", errcode="DR_UCAN_LIFETIME")
        self._check_time(inv, None, inv.exp, now)
        target = inv.args.get("ucan")
        hop = delegations.get(bytes(target)) if isinstance(target, CID) else None
        if hop is None or not isinstance(target, CID):
            raise UcanError(
                "the revocation's args.ucan must be the CID of a delegation in the container",
                errcode="DR_UCAN_MALFORMED",
            )
        issuers = {hop.iss}
        by_aud = {(d.aud, d.sub): d for d in delegations.values()}
        seen = {hop.key}
        while hop.iss != hop.sub:
            parent = by_aud.get((hop.iss, hop.sub))
            if parent is None or parent.key in seen:
                break
            seen.add(parent.key)
            issuers.add(parent.iss)
            hop = parent
        if inv.iss not in issuers:
            raise UcanError(
                f"{inv.iss} may not revoke {target}: only its issuer or an issuer above it "
                "in its chain (carried in the container) may",
                errcode="DR_UCAN_NOT_ALLOWED",
            )
        self.replays.check_and_remember(inv, inv.exp, now)
        self.revocations.revoke(target, by=inv.iss)
        return str(target.set(base="base58btc"))
