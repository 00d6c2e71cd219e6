"""The devchain's RPC server: the subset of the CometBFT 0.38 RPC the watcher and CLI use.

Served, with the same JSON shapes as a CometBFT 0.38 node:

=========================  ===========================================================
``GET /health``            ``{}``
``GET /status``            node_info, sync_info (latest height/hash/time), validator_info
``GET /block?height=``     block_id and block (header, data.txs, last_commit)
``GET /commit?height=``    signed_header (CometBFT header + the validator's precommit)
``GET /validators``        the validator set (address, ed25519 pub_key, voting_power)
``GET /tx?hash=0x..``      one ``ResultTx`` (``prove=true``: with its Merkle ``proof``)
``GET /tx_search``         ``query``, ``page``, ``per_page`` (max 100), ``order_by``
``/broadcast_tx_sync``     CheckTx, then the tx waits in the mempool
``/broadcast_tx_commit``   CheckTx, then wait for the block: check_tx, tx_result, height
``POST /``                 JSON-RPC 2.0 for all of the above (``tx`` as base64)
``/websocket``             JSON-RPC ``subscribe``/``unsubscribe``/``unsubscribe_all`` and
                           the methods above; events arrive as ``tendermint/event/Tx``
=========================  ===========================================================

The devchain changes state only through ``POST /`` with ``Content-Type: application/json``
(and the websocket): ``GET /broadcast_tx_*`` is refused, so a link or an ``<img>`` on a web
page cannot submit a transaction. A request a browser sent on a page's behalf (an ``Origin``
that is not in ``allowed_origins``, or ``Sec-Fetch-Site: cross-site``) is refused with 403,
websocket included. CometBFT's own node is configured the same way with ``cors_allowed_origins``.

URI arguments follow CometBFT: strings quoted (``query="tm.event='Tx'"``), bytes as
``0x``-hex. Errors are JSON-RPC errors (``-32602`` invalid params, ``-32603`` internal
error, ``-32000`` for a cancelled subscription), with HTTP 500 in the URI form.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from datarooms.chain.devchain.comet import NO_BLOCK_ID, CometView
from datarooms.chain.devchain.node import COMETBFT_VERSION, DevChain, IndexedTx, Subscriber
from datarooms.chain.errors import ChainError
from datarooms.chain.query import Query
from datarooms.errors import PortInUseError

log = logging.getLogger(__name__)

DEFAULT_PORT = 26657
_DEFAULT_PER_PAGE = 30
_MAX_PER_PAGE = 100
_MAX_SUBSCRIPTIONS_PER_CLIENT = 5
#: Methods that change the chain: never over ``GET`` (any web page can make a browser GET).
_WRITES = frozenset({"broadcast_tx_sync", "broadcast_tx_async", "broadcast_tx_commit"})


class _Fault(Exception):
    def __init__(self, code: int, message: str, data: str = "") -> None:
        super().__init__(data or message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


def _invalid(data: str) -> _Fault:
    return _Fault(-32602, "Invalid params", data)


def _internal(data: str) -> _Fault:
    return _Fault(-32603, "Internal error", data)


def _int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _invalid(f"{name}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise _invalid(f"{name}: expected an integer, got {str(value)[:40]!r}")


def _str_param(params: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise _invalid(f"{name}: expected a string")
    return value


def _bytes_param(params: dict[str, Any], name: str, *, uri: bool) -> bytes:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{name} is required")
    try:
        if uri:
            if value.startswith("0x"):
                return bytes.fromhex(value[2:])
            return value.encode()
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise _invalid(f"{name}: not valid {'hex' if uri else 'base64'}") from None


def _uri_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            return raw[1:-1]
        return value if isinstance(value, str) else raw
    return raw


class DevChainServer:
    """Serves one :class:`DevChain` over HTTP and websocket on ``host:port``."""

    def __init__(
        self,
        chain: DevChain,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        commit_timeout: float = 30.0,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.chain = chain
        self.comet = CometView(chain)
        self.allowed_origins = allowed_origins
        self.host = host
        self.port = port
        self.commit_timeout = commit_timeout
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._methods: dict[
            str, tuple[Callable[[dict[str, Any], bool], Awaitable[Any]], tuple[str, ...]]
        ] = {
            "health": (self._health, ()),
            "status": (self._status, ()),
            "block": (self._block, ("height",)),
            "commit": (self._commit, ("height",)),
            "validators": (self._validators, ("height", "page", "per_page")),
            "tx": (self._tx, ("hash", "prove")),
            "tx_search": (self._tx_search, ("query", "prove", "page", "per_page", "order_by")),
            "broadcast_tx_sync": (self._broadcast_sync, ("tx",)),
            "broadcast_tx_async": (self._broadcast_sync, ("tx",)),
            "broadcast_tx_commit": (self._broadcast_commit, ("tx",)),
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> DevChainServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open and verify the chain, start producing blocks, and listen."""
        await self.chain.start()
        try:
            sock = _bind(self.host, self.port)
        except BaseException:
            await self.chain.stop()
            raise
        self.port = int(sock.getsockname()[1])
        app = web.Application(client_max_size=2 * 2**20, middlewares=[self._browser_guard])
        app.router.add_get("/websocket", self._websocket)
        app.router.add_post("/", self._jsonrpc_http)
        app.router.add_get("/", self._index)
        app.router.add_get("/{method}", self._uri)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("devchain RPC listening", extra={"url": self.url})

    async def stop(self) -> None:
        await self.drop_websockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.chain.stop()

    async def drop_websockets(self) -> int:
        """Close every websocket (as a node restart or a network cut would)."""
        sockets = list(self._sockets)
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"going away")
        return len(sockets)

    # -- HTTP ----------------------------------------------------------------------

    @web.middleware
    async def _browser_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse what a web page could make a browser send (CSRF, cross-site websocket)."""
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site", "")
        if (origin is not None and origin not in self.allowed_origins) or site == "cross-site":
            log.warning(
                "devchain refused a cross-origin request",
                extra={"origin": origin, "path": request.path},
            )
            fault = _Fault(-32600, "Invalid Request", f"origin {origin or site!r} is not allowed")
            return web.json_response(_error(None, fault), status=403)
        if request.method == "POST" and request.content_type != "application/json":
            fault = _Fault(-32700, "Parse error", "POST / takes Content-Type: application/json")
            return web.json_response(_error(None, fault), status=415)
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        names = sorted(self._methods)
        return web.Response(
            text="Available endpoints:\n" + "\n".join(f"/{n}" for n in names) + "\n/websocket\n",
            content_type="text/plain",
        )

    async def _uri(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method in _WRITES:
            fault = _Fault(-32600, "Invalid Request", f"{method} takes POST / (JSON-RPC), not GET")
            return web.json_response(_error(-1, fault), status=405)
        params = {k: _uri_value(v) for k, v in request.query.items()}
        body = await self._dispatch(method, params, -1, uri=True)
        return web.json_response(body, status=500 if "error" in body else 200)

    async def _jsonrpc_http(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
        except ValueError:
            return web.json_response(
                _error(None, _Fault(-32700, "Parse error", "the body is not JSON"))
            )
        if isinstance(req, list):
            return web.json_response([await self._jsonrpc(r) for r in req])
        return web.json_response(await self._jsonrpc(req))

    async def _jsonrpc(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return _error(None, _Fault(-32600, "Invalid Request", "expected a JSON-RPC request"))
        params = req.get("params") or {}
        method = req["method"]
        if isinstance(params, list):
            names = self._methods.get(method, (None, ()))[1]
            params = dict(zip(names, params, strict=False))
        if not isinstance(params, dict):
            return _error(req.get("id"), _invalid("params must be an object or an array"))
        return await self._dispatch(method, params, req.get("id"), uri=False)

    async def _dispatch(
        self, method: str, params: dict[str, Any], req_id: Any, *, uri: bool
    ) -> dict[str, Any]:
        entry = self._methods.get(method)
        if entry is None:
            return _error(req_id, _Fault(-32601, "Method not found", method))
        try:
            result = await entry[0](params, uri)
        except _Fault as fault:
            return _error(req_id, fault)
        except ChainError as exc:
            return _error(req_id, _internal(exc.message))
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    # -- methods -------------------------------------------------------------------

    async def _health(self, params: dict[str, Any], uri: bool) -> Any:
        return {}

    async def _status(self, params: dict[str, Any], uri: bool) -> Any:
        c = self.chain
        genesis_time = str(c.genesis.get("genesis_time", ""))
        last = c.blocks[-1] if c.blocks else None
        first = c.blocks[0] if c.blocks else None
        node_id = hashlib.sha256(c.validator_pub_key.encode()).hexdigest()[:40]
        return {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": "0"},
                "id": node_id,
                "listen_addr": "tcp://127.0.0.1:26656",
                "network": c.chain_id,
                "version": COMETBFT_VERSION,
                "channels": "40202122233038606100",
                "moniker": "datarooms-devchain",
                "other": {"tx_index": "on", "rpc_address": f"tcp://{self.host}:{self.port}"},
            },
            "sync_info": {
                "latest_block_hash": last.hash if last else "",
                "latest_app_hash": "",
                "latest_block_height": str(c.height),
                "latest_block_time": last.header["time"] if last else genesis_time,
                "earliest_block_hash": first.hash if first else "",
                "earliest_app_hash": "",
                "earliest_block_height": "1" if first else "0",
                "earliest_block_time": first.header["time"] if first else genesis_time,
                "catching_up": False,
            },
            "validator_info": {
                "address": c.validator_address,
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": c.validator_pub_key},
                "voting_power": "10",
            },
        }

    def _height(self, params: dict[str, Any]) -> int:
        height = _int_param(params, "height")
        if height is None:
            height = self.chain.height
        if height < 1:
            raise _internal(f"height must be greater than 0, but got {height}")
        return height

    async def _block(self, params: dict[str, Any], uri: bool) -> Any:
        height = self._height(params)
        block = self.chain.block(height)
        comet = self.comet.get(height)
        last_commit = (
            self.comet.get(height - 1).commit
            if height > 1
            else {"height": "0", "round": 0, "block_id": NO_BLOCK_ID, "signatures": []}
        )
        return {
            "block_id": comet.block_id,
            "block": {
                "header": comet.header,
                "data": {"txs": [base64.b64encode(t).decode() for t in block.txs]},
                "evidence": {"evidence": []},
                "last_commit": last_commit,
            },
        }

    async def _commit(self, params: dict[str, Any], uri: bool) -> Any:
        """CometBFT's ``/commit``: the block's header and the validators' precommits."""
        comet = self.comet.get(self._height(params))
        return {
            "signed_header": {"header": comet.header, "commit": comet.commit},
            "canonical": True,
        }

    async def _validators(self, params: dict[str, Any], uri: bool) -> Any:
        """CometBFT's ``/validators`` (one page: the devchain has one validator)."""
        height = self._height(params)
        self.chain.block(height)  # past the tip: the same error as CometBFT's
        validators = self.comet.validators()
        return {
            "block_height": str(height),
            "validators": validators,
            "count": str(len(validators)),
            "total": str(len(validators)),
        }

    async def _tx(self, params: dict[str, Any], uri: bool) -> Any:
        raw = _bytes_param(params, "hash", uri=uri)
        itx = self.chain.tx(raw.hex())
        out = itx.result_tx()
        prove = params.get("prove")
        if prove is True or (isinstance(prove, str) and prove.lower() == "true"):
            out["proof"] = self.comet.tx_proof(itx.height, itx.index)
        return out

    async def _tx_search(self, params: dict[str, Any], uri: bool) -> Any:
        text = _str_param(params, "query", required=True)
        try:
            query = Query.parse(text)
        except ValueError as exc:
            raise _internal(f"failed to parse query: {exc}") from None
        order = _str_param(params, "order_by")
        if order not in ("", "asc", "desc"):
            raise _internal("expected order_by to be either `asc` or `desc` or empty")
        per_page = _int_param(params, "per_page")
        if per_page is None or per_page < 1:
            per_page = _DEFAULT_PER_PAGE
        per_page = min(per_page, _MAX_PER_PAGE)
        found = self.chain.search(query)
        if order == "desc":
            found.reverse()
        pages = max(1, math.ceil(len(found) / per_page))
        page = _int_param(params, "page")
        page = 1 if page is None else page
        if page < 1 or page > pages:
            raise _internal(f"page should be within [1, {pages}] range, given {page}")
        chunk = found[(page - 1) * per_page : page * per_page]
        return {"txs": [t.result_tx() for t in chunk], "total_count": str(len(found))}

    async def _broadcast_sync(self, params: dict[str, Any], uri: bool) -> Any:
        tx = _bytes_param(params, "tx", uri=uri)
        check, _fut = self.chain.check_tx(tx)
        return {
            "code": check["code"],
            "data": "",
            "log": check["log"],
            "codespace": check["codespace"],
            "hash": hashlib.sha256(tx).hexdigest().upper(),
        }

    async def _broadcast_commit(self, params: dict[str, Any], uri: bool) -> Any:
        tx = _bytes_param(params, "tx", uri=uri)
        check, fut = self.chain.check_tx(tx)
        hash_hex = hashlib.sha256(tx).hexdigest().upper()
        if fut is None:
            return {"check_tx": check, "tx_result": {}, "hash": hash_hex, "height": "0"}
        try:
            itx = await asyncio.wait_for(asyncio.shield(fut), self.commit_timeout)
        except TimeoutError:
            raise _internal("timed out waiting for tx to be included in a block") from None
        return {
            "check_tx": check,
            "tx_result": itx.result,
            "hash": itx.hash,
            "height": str(itx.height),
        }

    # -- websocket -------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=2 * 2**20)
        await ws.prepare(request)
        self._sockets.add(ws)
        subs: dict[str, tuple[Subscriber, asyncio.Task[None]]] = {}
        send_lock = asyncio.Lock()

        async def send(body: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_json(body)

        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    await send(_error(None, _Fault(-32700, "Parse error", "not JSON")))
                    continue
                if not isinstance(req, dict):
                    await send(_error(None, _Fault(-32600, "Invalid Request", "")))
                    continue
                method = req.get("method")
                params = req.get("params") or {}
                rid = req.get("id")
                if method == "subscribe":
                    await send(self._subscribe(params, rid, subs, send))
                elif method == "unsubscribe":
                    text = params.get("query") if isinstance(params, dict) else None
                    entry = subs.pop(str(text), None)
                    if entry is None:
                        await send(_error(rid, _internal("subscription not found")))
                    else:
                        self.chain.unsubscribe(entry[0])
                        entry[1].cancel()
                        await send({"jsonrpc": "2.0", "id": rid, "result": {}})
                elif method == "unsubscribe_all":
                    for sub, task in subs.values():
                        self.chain.unsubscribe(sub)
                        task.cancel()
                    subs.clear()
                    await send({"jsonrpc": "2.0", "id": rid, "result": {}})
                else:
                    await send(await self._jsonrpc(req))
        finally:
            for sub, task in subs.values():
                self.chain.unsubscribe(sub)
                task.cancel()
            self._sockets.discard(ws)
        return ws

    def _subscribe(
        self,
        params: Any,
        rid: Any,
        subs: dict[str, tuple[Subscriber, asyncio.Task[None]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Any]:
        text = params.get("query") if isinstance(params, dict) else None
        if not isinstance(text, str):
            return _error(rid, _invalid("query is required"))
        if len(subs) >= _MAX_SUBSCRIPTIONS_PER_CLIENT:
            return _error(
                rid,
                _internal(f"max_subscriptions_per_client {_MAX_SUBSCRIPTIONS_PER_CLIENT} reached"),
            )
        if text in subs:
            return _error(rid, _internal("already subscribed"))
        try:
            query = Query.parse(text)
        except ValueError as exc:
            return _error(rid, _internal(f"failed to parse query: {exc}"))
        sub = self.chain.subscribe(query)
        task = asyncio.create_task(self._forward(sub, text, rid, send))
        subs[text] = (sub, task)
        return {"jsonrpc": "2.0", "id": rid, "result": {}}

    async def _forward(
        self,
        sub: Subscriber,
        text: str,
        rid: Any,
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        try:
            while True:
                sub.wake.clear()
                while not sub.queue.empty():
                    itx: IndexedTx = sub.queue.get_nowait()
                    await send(
                        {
                            "jsonrpc": "2.0",
                            "id": rid,
                            "result": {
                                "query": text,
                                "data": itx.event_data(),
                                "events": itx.events,
                            },
                        }
                    )
                if sub.cancelled:
                    await send(
                        _error(
                            rid,
                            _Fault(
                                -32000,
                                "Server error",
                                f"subscription was canceled (reason: {sub.cancelled})",
                            ),
                        )
                    )
                    return
                if sub.queue.empty():
                    await sub.wake.wait()
        except (ConnectionError, RuntimeError):
            return  # the socket went away


def _error(req_id: Any, fault: _Fault) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": fault.to_json()}


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use by another program; choose "
                "another port for the devchain (DATAROOMS_CHAIN_PORT, or 0 for any free one)"
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
