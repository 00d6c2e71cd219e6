"""Errors of the chain layer: the RPC client, the watcher and the devchain."""

from __future__ import annotations

from datarooms.errors import DataroomsError


class ChainError(DataroomsError):
    """Something about the chain node or its data went wrong."""

    errcode = "DR_CHAIN"
    http_status = 502


class NodeUnreachableError(ChainError):
    """The chain node's RPC could not be reached (or answered with something not JSON)."""

    errcode = "DR_CHAIN_UNREACHABLE"


class RpcError(ChainError):
    """The node answered a JSON-RPC error (``{"error": {"code", "message", "data"}}``)."""

    errcode = "DR_CHAIN_RPC"

    def __init__(self, message: str, *, code: int | None = None, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class ChainCorruptError(ChainError):
    """The devchain's stored blocks fail verification: a block was changed or removed."""

    errcode = "DR_CHAIN_CORRUPT"
    http_status = 500


class TxRejectedError(ChainError):
    """A transaction was refused by CheckTx or failed when executed."""

    errcode = "DR_TX_REJECTED"
    http_status = 400

    def __init__(self, message: str, *, code: int, log: str) -> None:
        super().__init__(message)
        self.code = code
        self.log = log
