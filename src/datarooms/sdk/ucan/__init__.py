"""UCAN 1.0 (Delegation + Invocation, DAG-CBOR envelopes, varsig, ``did:key`` Ed25519).

::

    from datarooms.sdk.ucan import Principal, delegate, invoke, bearer, Validator

    bot, alice, agent = Principal.generate(), Principal.generate(), Principal.generate()
    root = delegate(bot, alice.did, "/datarooms", subject=bot.did, expires=now + 3600)
    hop = delegate(alice, agent.did, "/datarooms/room/read", subject=bot.did,
                   policy=[["==", ".room", "!r:hs"]], expires=now + 600)
    inv = invoke(agent, "/datarooms/room/read", {"room": "!r:hs"}, [root, hop])
    Validator(bot.did).verify(bearer(inv, [root, hop]))   # -> Proven

See docs/auth.md.
"""

from datarooms.sdk.ucan.client import InvocationAuth
from datarooms.sdk.ucan.did import Principal, did_of, load_or_create_principal, public_key_of
from datarooms.sdk.ucan.errors import STATUS, UcanError
from datarooms.sdk.ucan.policy import Policy, glob_match, holds
from datarooms.sdk.ucan.tokens import (
    MAX_CONTAINER_CHARS,
    Delegation,
    Invocation,
    bearer,
    cid_of,
    covers,
    decode,
    decode_container,
    delegate,
    encode_container,
    invoke,
    looks_like_container,
)
from datarooms.sdk.ucan.validator import (
    REVOKE_COMMAND,
    Proven,
    ReplayGuard,
    RevocationStore,
    Validator,
)

#: Commands of the datarooms services.
ROOM_READ = "/datarooms/room/read"
ROOM_WRITE = "/datarooms/room/write"
STATE_SET = "/datarooms/state/set"
#: IXO's resources (the ``with`` of a capability), carried in ``args.with``.
STATE_BOT = "ixo:matrix-state-bot"
ROOMS_BOT = "ixo:matrix-rooms-bot"
CLAIMS_BOT = "ixo:matrix-claims-bot"
#: The platform's MCP server, and the command of calling it (every request of a session).
MCP_SERVER = "datarooms:mcp"
MCP_CALL = "/datarooms/mcp"

__all__ = [
    "CLAIMS_BOT",
    "MAX_CONTAINER_CHARS",
    "MCP_CALL",
    "MCP_SERVER",
    "REVOKE_COMMAND",
    "ROOMS_BOT",
    "ROOM_READ",
    "ROOM_WRITE",
    "STATE_BOT",
    "STATE_SET",
    "STATUS",
    "Delegation",
    "Invocation",
    "InvocationAuth",
    "Policy",
    "Principal",
    "Proven",
    "ReplayGuard",
    "RevocationStore",
    "UcanError",
    "Validator",
    "bearer",
    "cid_of",
    "covers",
    "decode",
    "decode_container",
    "delegate",
    "did_of",
    "encode_container",
    "glob_match",
    "holds",
    "invoke",
    "load_or_create_principal",
    "looks_like_container",
    "public_key_of",
]
