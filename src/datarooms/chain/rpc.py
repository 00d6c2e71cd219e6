"""A client for the CometBFT 0.38 RPC: the few methods the watcher and the CLI use.

The same code talks to the embedded devchain and to a real IXO node; nothing in it
knows which. Requests use the URI form (``GET /tx_search?query="..."``), broadcasts
the JSON-RPC form (``POST /`` with a base64 ``tx``), and subscriptions the JSON-RPC
websocket at ``/websocket``. 64-bit integers arrive as strings, as CometBFT sends them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from datarooms._transport.http import JsonHttp, Unreachable
from datarooms.chain.errors import NodeUnreachableError, RpcError

log = logging.getLogger(__name__)

MAX_PER_PAGE = 100  # CometBFT's own cap for tx_search
_SUBSCRIBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TxResult:
    """One executed transaction: where it is, its bytes, its result code and events."""

    height: int
    index: int
    hash: str
    tx: bytes
    code: int
    events: Any  # the raw ``events`` list: parsing it is the consumer's business
    log: str = ""

    @classmethod
    def from_search(cls, item: dict[str, Any]) -> TxResult:
        """From a ``tx_search``/``tx`` result item (``ResultTx``)."""
        result = item.get("tx_result") or {}
        tx = _b64(item.get("tx"))
        return cls(
            height=_int(item.get("height")),
            index=_int(item.get("index")),
            hash=str(item.get("hash") or tx_hash(tx)).upper(),
            tx=tx,
            code=_int(result.get("code")),
            events=result.get("events") or [],
            log=str(result.get("log") or ""),
        )

    @classmethod
    def from_event(cls, value: dict[str, Any]) -> TxResult:
        """From a websocket ``tendermint/event/Tx`` value (``{"TxResult": {...}}``)."""
        inner = value.get("TxResult") or {}
        result = inner.get("result") or {}
        tx = _b64(inner.get("tx"))
        return cls(
            height=_int(inner.get("height")),
            index=_int(inner.get("index")),
            hash=tx_hash(tx),
            tx=tx,
            code=_int(result.get("code")),
            events=result.get("events") or [],
            log=str(result.get("log") or ""),
        )


def tx_hash(tx: bytes) -> str:
    """A transaction's hash as CometBFT shows it: upper-case hex SHA-256 of its bytes."""
    return hashlib.sha256(tx).hexdigest().upper()


def _int(value: Any) -> int:
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=False)
    except ValueError:
        return b""


def _uri_param(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # CometBFT takes strings quoted


class CometRpc:
    """An async CometBFT RPC client for one node URL (``http://host:26657``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._transport = JsonHttp(self.url, session=session, timeout=timeout)
        self._ids = itertools.count(1)

    async def __aenter__(self) -> CometRpc:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    def _http(self) -> aiohttp.ClientSession:
        return self._transport.session()

    @property
    def websocket_url(self) -> str:
        if self.url.startswith("https://"):
            return "wss://" + self.url[len("https://") :] + "/websocket"
        if self.url.startswith("http://"):
            return "ws://" + self.url[len("http://") :] + "/websocket"
        return self.url + "/websocket"

    # -- transport -------------------------------------------------------------

    async def call(self, method: str, **params: str | int | bool | None) -> Any:
        """``GET /<method>?...`` and return ``result``; raise :class:`RpcError` on an error."""
        query = {k: _uri_param(v) for k, v in params.items() if v is not None}
        return await self._send("GET", f"{self.url}/{method}", params=query, what=method)

    async def call_jsonrpc(self, method: str, params: dict[str, Any]) -> Any:
        """``POST /`` with a JSON-RPC 2.0 request; return ``result``."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        # Reads (tx, abci_query...) are safe to repeat; a broadcast is repeated only by
        # its caller, who knows whether the node has it.
        return await self._send(
            "POST",
            self.url + "/",
            json_body=body,
            what=method,
            idempotent=not method.startswith("broadcast"),
        )

    async def _send(
        self,
        http_method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        what: str,
        idempotent: bool | None = None,
    ) -> Any:
        try:
            answer = await self._transport.send(
                http_method, url, params=params, json=json_body, idempotent=idempotent
            )
        except Unreachable as exc:
            if exc.timed_out:
                raise NodeUnreachableError(
                    f"the chain node at {self.url} did not answer {what} in time"
                ) from None
            raise NodeUnreachableError(
                f"cannot reach the chain node at {self.url}: {exc.detail}"
            ) from None
        body, status = answer.body, answer.status
        if body is None:
            raise NodeUnreachableError(
                f"the chain node at {self.url} answered {what} with HTTP {status} and no JSON"
            )
        if not isinstance(body, dict):
            raise NodeUnreachableError(f"the chain node answered {what} with unexpected JSON")
        error = body.get("error")
        if error:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            data = error.get("data") if isinstance(error, dict) else None
            raise RpcError(
                f"the chain node refused {what}: {message}" + (f": {data}" if data else ""),
                code=code if isinstance(code, int) else None,
                data=str(data) if data is not None else None,
            )
        if "result" not in body:
            raise NodeUnreachableError(f"the chain node answered {what} without a result")
        return body["result"]

    # -- methods ---------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("status")
        return result

    async def latest_height(self) -> int:
        status = await self.status()
        return _int((status.get("sync_info") or {}).get("latest_block_height"))

    async def block(self, height: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("block", height=height)
        return result

    async def tx(self, hash_hex: str) -> TxResult:
        result = await self.call_jsonrpc(
            "tx", {"hash": base64.b64encode(bytes.fromhex(hash_hex)).decode(), "prove": False}
        )
        return TxResult.from_search(result)

    async def tx_search(
        self, query: str, *, page: int = 1, per_page: int = MAX_PER_PAGE, order_by: str = "asc"
    ) -> tuple[list[TxResult], int]:
        """One page of ``tx_search``: the transactions and the total count."""
        result = await self.call(
            "tx_search",
            query=query,
            prove=False,
            page=page,
            per_page=per_page,
            order_by=order_by,
        )
        txs = [TxResult.from_search(t) for t in (result.get("txs") or [])]
        return txs, _int(result.get("total_count"))

    async def search_pages(
        self, query: str, *, min_height: int, max_height: int, per_page: int = MAX_PER_PAGE
    ) -> AsyncIterator[list[TxResult]]:
        """Every transaction matching ``query`` with ``min_height <= height <= max_height``,
        a page at a time, in (height, index) order."""
        if max_height < min_height:
            return
        full = f"{query} AND tx.height>={min_height} AND tx.height<={max_height}"
        page = 1
        seen = 0
        while True:
            txs, total = await self.tx_search(full, page=page, per_page=per_page)
            if not txs:
                return
            seen += len(txs)
            yield txs
            if seen >= total:
                return
            page += 1

    async def broadcast_tx_sync(self, tx: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self.call_jsonrpc(
            "broadcast_tx_sync", {"tx": base64.b64encode(tx).decode()}
        )
        return result

    async def broadcast_tx_commit(self, tx: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self.call_jsonrpc(
            "broadcast_tx_commit", {"tx": base64.b64encode(tx).decode()}
        )
        return result

    def subscribe(self, query: str, *, heartbeat: float = 15.0) -> Subscription:
        """A websocket subscription to ``query``: ``async with rpc.subscribe(q) as sub``."""
        return Subscription(self, query, heartbeat)


class Subscription:
    """An open ``subscribe`` on the node's websocket, yielding :class:`TxResult` events.

    Iteration ends with :class:`NodeUnreachableError` when the socket drops and with
    :class:`RpcError` when the node cancels the subscription (for example because the
    client was too slow): the caller reconnects and backfills.
    """

    def __init__(self, rpc: CometRpc, query: str, heartbeat: float) -> None:
        self._rpc = rpc
        self.query = query
        self._heartbeat = heartbeat
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._id = 0

    async def __aenter__(self) -> Subscription:
        try:
            self._ws = await self._rpc._http().ws_connect(
                self._rpc.websocket_url,
                heartbeat=self._heartbeat,
                max_msg_size=16 * 2**20,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeUnreachableError(
                f"cannot open the chain node's websocket {self._rpc.websocket_url}: "
                f"{exc or type(exc).__name__}"
            ) from None
        self._id = next(self._rpc._ids)
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                await self._ws.send_json(
                    {
                        "jsonrpc": "2.0",
                        "id": self._id,
                        "method": "subscribe",
                        "params": {"query": self.query},
                    }
                )
                while True:
                    msg = await self._receive()
                    if msg.get("id") != self._id:
                        continue
                    if msg.get("error"):
                        raise _rpc_error("subscribe", msg["error"])
                    return self
        except TimeoutError:
            await self.close()
            raise NodeUnreachableError(
                f"the chain node did not answer the subscription within {_SUBSCRIBE_TIMEOUT_S} s"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        try:
            msg = await self._ws.receive()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeUnreachableError(f"the chain node's websocket failed: {exc}") from None
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            raise NodeUnreachableError("the chain node closed the websocket")
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {}
        try:
            body = json.loads(msg.data)
        except ValueError:
            log.warning("ignoring a websocket message that is not JSON")
            return {}
        return body if isinstance(body, dict) else {}

    def __aiter__(self) -> AsyncIterator[TxResult]:
        return self._events()

    async def _events(self) -> AsyncIterator[TxResult]:
        while True:
            msg = await self._receive()
            if msg.get("id") != self._id:
                continue
            if msg.get("error"):
                raise _rpc_error("the subscription", msg["error"])
            result = msg.get("result")
            if not isinstance(result, dict):
                continue
            data = result.get("data")
            if not isinstance(data, dict) or data.get("type") != "tendermint/event/Tx":
                continue
            value = data.get("value")
            if isinstance(value, dict):
                yield TxResult.from_event(value)


def _rpc_error(what: str, error: Any) -> RpcError:
    if isinstance(error, dict):
        data = error.get("data")
        code = error.get("code")
        return RpcError(
            f"the chain node ended {what}: {error.get('message', '')}"
            + (f": {data}" if data else ""),
            code=code if isinstance(code, int) else None,
            data=str(data) if data is not None else None,
        )
    return RpcError(f"the chain node ended {what}: {error}")
