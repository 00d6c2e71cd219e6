"""The embedded devchain: a small chain that speaks CometBFT RPC, for local use and tests.

``node`` holds the chain (blocks, txs, entity registry); ``rpc`` serves it over
CometBFT's JSON-RPC and WebSocket, so the same watcher watches it and a real IXO node.
"""

from __future__ import annotations

from datarooms.chain.devchain.node import (
    DEFAULT_CHAIN_ID,
    DevChain,
    create_entity_tx,
    emit_events_tx,
)
from datarooms.chain.devchain.rpc import DEFAULT_PORT, DevChainServer

__all__ = [
    "DEFAULT_CHAIN_ID",
    "DEFAULT_PORT",
    "DevChain",
    "DevChainServer",
    "create_entity_tx",
    "emit_events_tx",
]
