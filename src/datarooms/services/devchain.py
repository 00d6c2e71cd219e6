"""The embedded devchain as a platform service, and where the chain to watch is.

``DevchainService`` (``name = "devchain"``) runs the devchain of ``[chain]`` in
``<data_dir>/devchain`` when ``chain.mode = "devchain"`` (nothing in external mode), and
records where its RPC listens in ``<data_dir>/run/devchain.json`` for the CLI and the
rooms bot (:func:`chain_url`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datarooms.chain.devchain.node import DevChain
from datarooms.chain.devchain.rpc import DevChainServer
from datarooms.config import ChainSettings, Settings
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import ServiceRun

NAME = "devchain"


def devchain_dir(data_dir: Path) -> Path:
    return data_dir / "devchain"


def chain_url(settings: Settings, chain: ChainSettings | None = None) -> str:
    """The RPC to watch: the external node, else the devchain running on this data dir
    (else where it would listen)."""
    cs = chain or settings.chain
    if cs.mode == "external":
        return cs.rpc_url.rstrip("/")
    return settings.running_url(NAME) or f"http://{cs.host}:{cs.port}"


class DevchainService:
    """Runs the embedded devchain (chain.mode = devchain); nothing in external mode."""

    name = NAME

    def __init__(
        self, chain: ChainSettings | None = None, *, allow_raw_events: bool = False
    ) -> None:
        self._chain = chain
        self._allow_raw = allow_raw_events
        self.server: DevChainServer | None = None
        self._run: ServiceRun | None = None

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        cs = self._chain or platform.settings.chain
        if cs.mode != "devchain":
            return {"mode": "external", "rpc": cs.rpc_url}
        chain = DevChain(
            devchain_dir(platform.settings.data_dir),
            chain_id=cs.chain_id,
            block_interval=cs.block_interval,
            allow_raw_events=self._allow_raw,
        )
        server = DevChainServer(chain, host=cs.host, port=cs.port)
        await server.start()  # verifies the stored chain first
        self.server, self._run = server, ServiceRun(platform.settings, self.name)
        self._run.publish({"url": server.url})
        return {"rpc": server.url, "chain_id": chain.chain_id, "height": chain.height}

    async def stop(self) -> None:
        server, self.server = self.server, None
        try:
            if server is not None:
                await server.stop()
        finally:
            run, self._run = self._run, None
            if run is not None:
                run.release()


__all__ = ["DevchainService", "chain_url", "devchain_dir"]
