"""Settings: one TOML file plus environment overrides, frozen and typed.

Where settings come from, highest precedence first:

1. explicit arguments (the CLI's ``--data-dir``, ``--config``, ``--port``);
2. environment variables ``DATAROOMS_<SECTION>_<FIELD>``, for example
   ``DATAROOMS_HOMESERVER_PORT=8448`` or ``DATAROOMS_ACCOUNT_ACCESS_TOKEN=...``;
   top-level fields are ``DATAROOMS_<FIELD>`` (``DATAROOMS_DATA_DIR``,
   ``DATAROOMS_LOG_LEVEL``);
3. the config file: ``--config`` / ``DATAROOMS_CONFIG``, else
   ``<data_dir>/datarooms.toml`` if it exists;
4. the defaults below.

See docs/configuration.md for every field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from datarooms.errors import ConfigError

DEFAULT_DATA_DIR = Path(".datarooms")
CONFIG_FILE_NAME = "datarooms.toml"
ENV_PREFIX = "DATAROOMS_"

#: Field names whose values are never printed or logged.
SECRET_FIELDS = frozenset({"password", "access_token", "registration_shared_secret"})


@dataclass(frozen=True)
class HomeserverSettings:
    #: ``embedded``: datarooms starts and manages a Synapse in ``data_dir``.
    #: ``external``: use a homeserver you run, at ``url``.
    mode: Literal["embedded", "external"] = "embedded"
    #: The Matrix server name of the embedded homeserver (the part after ``:`` in ids).
    server_name: str = "localhost"
    #: Where the embedded homeserver listens. Always loopback unless you change it.
    host: str = "127.0.0.1"
    port: int = 8008
    #: Base URL of the homeserver's client API. Required in external mode;
    #: derived from host and port in embedded mode.
    url: str = ""
    #: For ``datarooms user add`` against an external Synapse (its admin
    #: register API); the embedded one generates its own.
    registration_shared_secret: str = ""
    #: Largest upload the embedded homeserver accepts (encrypted files).
    max_upload_size: str = "2G"
    #: Seconds to wait for the embedded homeserver to become healthy.
    start_timeout: float = 90.0

    @property
    def base_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class AccountSettings:
    """The Matrix account the CLI and SDK act as.

    Empty in embedded mode means: the platform's service account, whose
    credentials ``datarooms up`` writes to ``<data_dir>/credentials.json``.
    """

    user_id: str = ""
    password: str = ""
    access_token: str = ""
    device_id: str = ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    #: Which devices receive room keys: all, cross-signed (the spec's advice) or verified.
    trust_policy: str = "cross-signed"
    #: Which services `datarooms up` starts: "all", "none", or a comma-separated list of
    #: devchain, roomsbot, statebot, mcp.
    services: str = "all"
    homeserver: HomeserverSettings = field(default_factory=HomeserverSettings)
    account: AccountSettings = field(default_factory=AccountSettings)
    #: The file these settings were read from, if any.
    config_file: Path | None = None
    #: Raw settings of the platform's services (``[statebot]``, ``[mcp]``, ...), each
    #: validated by its service: see :data:`SERVICE_SECTIONS` and docs/configuration.md.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        """The raw ``[name]`` table of a service (file values, then env overrides)."""
        return self.sections.get(name, {})

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "credentials.json"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def synapse_dir(self) -> Path:
        return self.data_dir / "synapse"

    def running_url(self, service: str) -> str | None:
        """Where the ``service`` of the platform on this data dir listens, if it runs: the
        ``url`` of ``<data_dir>/run/<service>.json``, while the process that wrote it lives."""
        try:
            info = json.loads((self.run_dir / f"{service}.json").read_text())
            pid, url = int(info["pid"]), str(info["url"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return url

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with secrets masked."""
        masked: dict[str, Any] = _to_masked_dict(self)
        return masked


_SECTIONS: dict[str, type[Any]] = {
    "homeserver": HomeserverSettings,
    "account": AccountSettings,
}
_TOP_LEVEL = {"data_dir", "log_level", "trust_policy", "services"}
#: The services `datarooms up` can run, in start order.
PLATFORM_SERVICES = ("devchain", "roomsbot", "statebot", "mcp")
#: Tables that belong to the platform's services; each service validates its own.
SERVICE_SECTIONS = ("statebot", "mcp", "roomsbot", "chain", "devchain", "telemetry")


def load_settings(
    *,
    data_dir: Path | str | None = None,
    config_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the effective settings. Raises :class:`ConfigError` with a clear message."""
    env = os.environ if env is None else env

    explicit_cfg = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    file_data: dict[str, Any] = {}
    cfg_path: Path | None = None
    if explicit_cfg:
        cfg_path = Path(explicit_cfg).expanduser()
        if not cfg_path.is_file():
            raise ConfigError(f"config file {cfg_path} does not exist")
        file_data = _read_toml(cfg_path)

    # The data dir decides where the default config file lives.
    dd: Path | str | None = data_dir or env.get(ENV_PREFIX + "DATA_DIR") or None
    if dd is None and "data_dir" in file_data:
        dd = file_data["data_dir"]
        if cfg_path is not None and not Path(dd).expanduser().is_absolute():
            dd = cfg_path.parent / dd
    resolved_dd = Path(dd).expanduser() if dd else DEFAULT_DATA_DIR
    if cfg_path is None and (resolved_dd / CONFIG_FILE_NAME).is_file():
        cfg_path = resolved_dd / CONFIG_FILE_NAME
        file_data = _read_toml(cfg_path)

    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    services: dict[str, dict[str, Any]] = {}
    for key, value in file_data.items():
        if key in SERVICE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{cfg_path}: [{key}] must be a table")
            services.setdefault(key, {}).update(value)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{cfg_path}: [{key}] must be a table")
            sections[key].update(value)
        elif key in _TOP_LEVEL:
            top[key] = value
        else:
            raise ConfigError(
                f"{cfg_path}: unknown setting {key!r}; known: "
                + ", ".join(sorted(_TOP_LEVEL | set(_SECTIONS) | set(SERVICE_SECTIONS)))
            )

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest in _TOP_LEVEL:
            top[rest] = raw
            continue
        section, _, fname = rest.partition("_")
        if section in _SECTIONS and fname:
            sections[section][fname] = raw
        elif section in SERVICE_SECTIONS and fname:
            services.setdefault(section, {})[fname] = raw
        # Other DATAROOMS_* variables belong to other tools; ignore them.

    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})

    top["data_dir"] = resolved_dd
    built = {name: _build(cls, sections[name], f"[{name}]") for name, cls in _SECTIONS.items()}
    settings: Settings = _build(
        Settings, {**top, **built, "config_file": cfg_path, "sections": services}, "settings"
    )
    _check(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def _build(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where} {name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return value
    if hint is Path or hint == (Path | None):
        return None if value is None else Path(value).expanduser()
    origin_args = get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"1", "true", "yes", "on"}:
            return True
        if str(value).lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    if origin_args and all(isinstance(a, str) for a in origin_args):  # Literal[...]
        if value not in origin_args:
            raise ConfigError(f"{where}: must be one of {', '.join(origin_args)}, got {value!r}")
        return value
    return value


def _check(s: Settings) -> None:
    hs = s.homeserver
    if hs.mode == "external" and not hs.url:
        raise ConfigError(
            "homeserver.mode is 'external' but homeserver.url is not set; "
            "set it in the config file or DATAROOMS_HOMESERVER_URL"
        )
    if hs.url and not hs.url.startswith(("http://", "https://")):
        raise ConfigError(f"homeserver.url must start with http:// or https://, got {hs.url!r}")
    if not 0 < hs.port < 65536:
        raise ConfigError(f"homeserver.port must be between 1 and 65535, got {hs.port}")
    wanted = {x.strip() for x in s.services.split(",") if x.strip()}
    if not wanted <= {"all", "none", *PLATFORM_SERVICES}:
        raise ConfigError(
            f"services must be all, none or a list of {', '.join(PLATFORM_SERVICES)}; "
            f"got {s.services!r}"
        )
    if s.trust_policy not in ("all", "cross-signed", "verified"):
        raise ConfigError(
            f"trust_policy must be all, cross-signed or verified, got {s.trust_policy!r}"
        )
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")
    if s.account.user_id and not (s.account.user_id.startswith("@") and ":" in s.account.user_id):
        raise ConfigError(f"account.user_id must look like @name:server, got {s.account.user_id!r}")


def mask_secret(value: str) -> str:
    if not value:
        return ""
    return "***"


def _to_masked_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in SECRET_FIELDS and isinstance(value, str):
                out[f.name] = mask_secret(value)
            else:
                out[f.name] = _to_masked_dict(value)
        return out
    if isinstance(obj, Path):
        return str(obj)
    return obj
