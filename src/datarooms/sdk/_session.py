"""The device session: load, create (log in) and persist it; build the nio client on it.

``<store>/session.json`` (mode 0600) holds the homeserver, user, device id, access
token and the key that pickles the crypto store. The device id never changes for
a store: when the token is no longer valid we log in again on the same device, so
the crypto store (every Megolm key) stays valid.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig
from nio.exceptions import LocalProtocolError

from datarooms._fs import atomic_write, harden_tree, private_dir
from datarooms._transport.http import MatrixHttp
from datarooms.account import Credentials
from datarooms.errors import ConfigError, HomeserverError
from datarooms.sdk.keys.olm import DataroomsOlm, KeyedStore


@dataclass
class _Session:
    homeserver_url: str
    user_id: str
    device_id: str
    access_token: str
    pickle_key: str

    def __repr__(self) -> str:
        return f"_Session(user_id={self.user_id!r}, device_id={self.device_id!r})"


class _NioClient(AsyncClient):  # type: ignore[misc]
    """nio's client whose Olm machine is ours (:class:`DataroomsOlm`): nio's
    ``load_store`` with the one class changed, on our own subclass."""

    def load_store(self) -> None:
        if self.store is not None:  # type: ignore[has-type]
            return
        if not self.user_id or not self.device_id:
            raise LocalProtocolError("the user id and device id must be set to load the store")
        if not self.config.encryption_enabled or not self.store_path:
            return
        store = self.config.store(
            self.user_id,
            self.device_id,
            self.store_path,
            self.config.pickle_key,
            self.config.store_name,
        )
        self.store = store
        self.olm = DataroomsOlm(self.user_id, self.device_id, store)
        self.encrypted_rooms = store.load_encrypted_rooms()
        if self.config.store_sync_tokens:
            self.loaded_sync_token = store.load_sync_token()


def nio_client(session: _Session, store: Path) -> AsyncClient:
    """matrix-nio's client on this session, with its crypto store in ``<store>/crypto``."""
    config = AsyncClientConfig(
        encryption_enabled=True,
        store_sync_tokens=False,  # the index stores the position, after processing
        pickle_key=session.pickle_key,
        store=KeyedStore,
        request_timeout=60,
        max_timeouts=5,
    )
    crypto_dir = store / "crypto"
    private_dir(crypto_dir)
    nio = _NioClient(
        session.homeserver_url,
        session.user_id,
        device_id=session.device_id,
        store_path=str(crypto_dir),
        config=config,
    )
    nio.restore_login(session.user_id, session.device_id, session.access_token)
    harden_tree(crypto_dir, warn=False)  # nio creates its store with the process umask
    return nio


async def load_or_create_session(creds: Credentials, store: Path, device_name: str) -> _Session:
    path = store / "session.json"
    session: _Session | None = None
    if path.exists():
        try:
            session = _Session(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the session file {path} is damaged: {exc}") from exc
        if creds.user_id and session.user_id != creds.user_id:
            raise ConfigError(
                f"the store {store} belongs to {session.user_id}, not {creds.user_id}; "
                "use another store directory for another account"
            )
        session.homeserver_url = creds.homeserver_url or session.homeserver_url
        try:
            async with MatrixHttp(session.homeserver_url, session.access_token) as http:
                await http.whoami()
            return session
        except HomeserverError as exc:
            if exc.errcode != "M_UNKNOWN_TOKEN":
                raise
            if not creds.password:
                raise ConfigError(
                    f"the access token of device {session.device_id} is no longer valid and "
                    "no password is configured to log in again"
                ) from None
            # Log in again on the SAME device, so its crypto store stays valid.
            async with MatrixHttp(session.homeserver_url) as http:
                res = await http.login_password(
                    session.user_id, creds.password, device_id=session.device_id
                )
            session.access_token = res["access_token"]
    else:
        pickle_key = secrets.token_urlsafe(32)
        if creds.access_token:
            async with MatrixHttp(creds.homeserver_url, creds.access_token) as http:
                who = await http.whoami()
            if not who.get("device_id"):
                raise ConfigError("the access token is not bound to a device; log in instead")
            session = _Session(
                creds.homeserver_url,
                who["user_id"],
                who["device_id"],
                creds.access_token,
                pickle_key,
            )
        elif creds.password and creds.user_id:
            async with MatrixHttp(creds.homeserver_url) as http:
                res = await http.login_password(
                    creds.user_id, creds.password, device_name=device_name
                )
            session = _Session(
                creds.homeserver_url,
                res["user_id"],
                res["device_id"],
                res["access_token"],
                pickle_key,
            )
        else:
            raise ConfigError("credentials need an access token, or a user id and password")
    atomic_write(path, json.dumps(vars(session)), mode=0o600)
    return session
