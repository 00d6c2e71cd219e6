"""A web page cannot make a browser change the devchain (issue 11, item 8).

Any page the developer visits can make the browser send a GET (a link, an ``<img>``), a
"simple" cross-origin POST (``text/plain`` or a form) or open a websocket. Each is tried here
as the browser would send it; the chain must not grow, and our own client still works.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from datarooms.chain import ENTITY_CREATED_QUERY, CometRpc, create_entity_tx
from tests._roomsbot import register, running_devchain


async def test_browser_requests_cannot_broadcast(tmp_path: Path) -> None:
    tx = create_entity_tx(entity_type="asset/device", controllers=[])
    async with running_devchain(tmp_path / "chain") as srv, aiohttp.ClientSession() as http:
        # 1. <img src="http://127.0.0.1:26657/broadcast_tx_commit?tx=0x...">
        async with http.get(f"{srv.url}/broadcast_tx_commit", params={"tx": "0x" + tx.hex()}) as r:
            assert r.status == 405
            assert "POST" in (await r.json())["error"]["data"]
        # 2. fetch(url, {method: "POST", mode: "no-cors", body}) from another origin.
        body = '{"jsonrpc":"2.0","id":1,"method":"broadcast_tx_sync","params":{"tx":"AA=="}}'
        for headers in (
            {"Content-Type": "text/plain", "Origin": "https://evil.example"},
            {"Content-Type": "application/json", "Origin": "https://evil.example"},
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "application/x-www-form-urlencoded"},  # an HTML form, Origin stripped
        ):
            async with http.post(srv.url + "/", data=body, headers=headers) as r:
                assert r.status in (403, 415), headers
        # 3. new WebSocket("ws://127.0.0.1:26657/websocket") from a page.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                srv.url + "/websocket", headers={"Origin": "https://evil.example"}
            )
        assert refused.value.status == 403

        async with CometRpc(srv.url) as rpc:
            _, total = await rpc.tx_search(ENTITY_CREATED_QUERY)
            assert total == 0, "nothing reached the chain"
        # Our own client (JSON-RPC POST, websocket without Origin) is unaffected.
        assert len(await register(srv.url, 1)) == 1
        async with CometRpc(srv.url) as rpc:
            assert (await rpc.tx_search(ENTITY_CREATED_QUERY))[1] == 1
