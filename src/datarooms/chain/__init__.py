"""The chain: a CometBFT RPC client and watcher, and the embedded devchain.

The watcher finds every IXO entity registration (``MsgCreateEntity``) on a node and
hands each to a handler once; the same code watches the devchain and a real IXO node.
See docs/chain.md.
"""

from __future__ import annotations

from datarooms.chain.devchain.node import (
    DEFAULT_CHAIN_ID,
    DevChain,
    create_entity_tx,
    emit_events_tx,
)
from datarooms.chain.devchain.rpc import DEFAULT_PORT, DevChainServer
from datarooms.chain.entity import (
    ENTITY_CREATED_EVENT,
    ENTITY_CREATED_QUERY,
    IID_CREATED_EVENT,
    MSG_CREATE_ENTITY,
    ChainEntity,
    SkippedEvent,
    controller_localpart,
    controller_user_id,
    parse_tx_events,
)
from datarooms.chain.errors import (
    ChainCorruptError,
    ChainError,
    NodeUnreachableError,
    RpcError,
    TxRejectedError,
)
from datarooms.chain.query import Query
from datarooms.chain.rpc import CometRpc, Subscription, TxResult, tx_hash
from datarooms.chain.watcher import (
    ChainWatcher,
    CursorStore,
    EntityRejected,
    MemoryCursor,
    WatcherStatus,
)

__all__ = [
    "DEFAULT_CHAIN_ID",
    "DEFAULT_PORT",
    "ENTITY_CREATED_EVENT",
    "ENTITY_CREATED_QUERY",
    "IID_CREATED_EVENT",
    "MSG_CREATE_ENTITY",
    "ChainCorruptError",
    "ChainEntity",
    "ChainError",
    "ChainWatcher",
    "CometRpc",
    "CursorStore",
    "DevChain",
    "DevChainServer",
    "EntityRejected",
    "MemoryCursor",
    "NodeUnreachableError",
    "Query",
    "RpcError",
    "SkippedEvent",
    "Subscription",
    "TxRejectedError",
    "TxResult",
    "WatcherStatus",
    "controller_localpart",
    "controller_user_id",
    "create_entity_tx",
    "emit_events_tx",
    "parse_tx_events",
    "tx_hash",
]
