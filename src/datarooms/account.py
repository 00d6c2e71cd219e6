"""Who the CLI and SDK act as: credentials from settings or the platform's file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datarooms._fs import atomic_write
from datarooms.config import Settings
from datarooms.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    homeserver_url: str
    user_id: str = ""
    access_token: str = ""
    device_id: str = ""
    password: str = ""

    def __repr__(self) -> str:  # secrets stay out of reprs and logs
        return (
            f"Credentials(homeserver_url={self.homeserver_url!r}, user_id={self.user_id!r}, "
            f"device_id={self.device_id!r})"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_credentials(path: Path, creds: Credentials) -> None:
    """Write credentials readable by the owner only (mode 0600), atomically."""
    atomic_write(path, json.dumps(creds.to_json(), indent=2), mode=0o600)


def read_credentials(path: Path) -> Credentials | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from exc
    known = {k: str(v) for k, v in data.items() if k in Credentials.__dataclass_fields__}
    return Credentials(**known)


def resolve_credentials(settings: Settings) -> Credentials:
    """The account to act as: ``[account]`` settings first, else the platform's service account."""
    acc = settings.account
    url = settings.homeserver.base_url
    if acc.user_id or acc.access_token:
        if not (acc.access_token or acc.password):
            raise ConfigError(
                "account.user_id is set but neither account.password nor account.access_token "
                "is; set one (DATAROOMS_ACCOUNT_PASSWORD or DATAROOMS_ACCOUNT_ACCESS_TOKEN)"
            )
        return Credentials(
            homeserver_url=url,
            user_id=acc.user_id,
            access_token=acc.access_token,
            device_id=acc.device_id,
            password=acc.password,
        )
    stored = read_credentials(settings.credentials_file)
    if stored is not None:
        return stored
    if settings.homeserver.mode == "external":
        raise ConfigError(
            "no account configured for the external homeserver: set [account] user_id and "
            "password or access_token in the config file (or DATAROOMS_ACCOUNT_* variables)"
        )
    raise ConfigError(
        f"no account yet: run `datarooms up` first (it creates the service account and writes "
        f"{settings.credentials_file}), or configure [account] in the config file"
    )
