"""``<data_dir>/agents.toml``: the operator's agents, their capabilities and tokens.

Format (see docs/mcp.md)::

    [mcp]                          # optional; these are the defaults
    host = "127.0.0.1"
    port = 8012
    audit_log = "logs/mcp-audit.jsonl"   # relative to the data dir; "" = process log only
    max_inline_file_bytes = 1048576
    max_wait_seconds = 120

    [agents.ops-bot]
    description = "Watches the pump twins"
    access = "read"                      # or "write"
    rooms = ["!abc:example.org", "#ops:example.org"]   # "*" = any room it is in
    room_kinds = ["device"]
    dids = ["did:ixo:entity:1a2b"]
    tools = ["get_twin", "read_messages"]  # optional allow-list
    files_dir = "/srv/agents/ops-bot"    # optional; relative = inside the data dir
    token_sha256 = "..."                 # SHA-256 of its bearer token (HTTP)

Only the SHA-256 of a bearer token is stored; the token is shown once, when
created. The helpers here (:func:`add_agent`, :func:`remove_agent`,
:func:`rotate_token`) edit the file in place, keeping the operator's comments,
and validate the result before writing it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datarooms._fs import atomic_write
from datarooms.errors import ConfigError, ValidationError
from datarooms.events import ROOM_KINDS
from datarooms.ids import did as check_did
from datarooms.ids import is_room_alias
from datarooms.ids import room_id as check_room_id
from datarooms.ids import user_id as check_user_id
from datarooms.services.mcp.policy import ACCESS_LEVELS, ANY_ROOM, TOOLS, AgentPolicy

log = logging.getLogger(__name__)

AGENTS_FILE_NAME = "agents.toml"
TOKEN_PREFIX = "drmcp_"  # noqa: S105 - a public prefix, not a secret
DEFAULT_PORT = 8012

_NAME = re.compile(r"^[a-z0-9][a-z0-9._=-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AGENT_KEYS = {
    "description",
    "access",
    "rooms",
    "room_kinds",
    "dids",
    "tools",
    "files_dir",
    "token_sha256",
}
_MCP_KEYS = {
    "host",
    "port",
    "audit_log",
    "max_inline_file_bytes",
    "max_wait_seconds",
    "operators",
}


@dataclass(frozen=True)
class McpSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Where audit records go as JSON lines (besides the process log); None: nowhere else.
    audit_log: Path | None = None
    #: Largest file returned inline (base64) by download_file, or accepted inline by upload_file.
    max_inline_file_bytes: int = 1024 * 1024
    #: Longest wait_for_messages may block.
    max_wait_seconds: float = 120.0
    #: Matrix users whose ``io.datarooms.room`` (kind, DID) and canonical alias the
    #: agents trust, besides the platform's own accounts (docs/mcp.md, "Whose word").
    operators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AgentsConfig:
    mcp: McpSettings = field(default_factory=McpSettings)
    agents: dict[str, AgentPolicy] = field(default_factory=dict)
    path: Path | None = None

    def agent(self, name: str) -> AgentPolicy:
        policy = self.agents.get(name)
        if policy is None:
            known = ", ".join(sorted(self.agents)) or "none"
            where = self.path or AGENTS_FILE_NAME
            raise ConfigError(
                f"no agent named {name!r} in {where} (agents: {known}); "
                "add one with `datarooms agents add`"
            )
        return policy


def agents_file(data_dir: Path) -> Path:
    return data_dir / AGENTS_FILE_NAME


def agent_localpart(name: str) -> str:
    """The Matrix localpart of an agent's account: ``agent-<name>``."""
    return f"agent-{check_agent_name(name)}"


def check_agent_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"invalid agent name {name!r}: 1-63 of lower-case letters, digits and . _ = -, "
            "starting with a letter or digit"
        )
    return name


# -- tokens --------------------------------------------------------------------


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def match_token(token: str, agents: Iterable[AgentPolicy]) -> AgentPolicy | None:
    """The agent whose token this is, comparing hashes in constant time (all are compared)."""
    digest = hash_token(token)
    found: AgentPolicy | None = None
    for policy in agents:
        stored = policy.token_sha256 or ("0" * 64)
        if hmac.compare_digest(digest, stored) and policy.token_sha256:
            found = policy
    return found


# -- loading -------------------------------------------------------------------


def load_agents(path: Path, *, data_dir: Path | None = None) -> AgentsConfig:
    """Read and validate ``agents.toml``. A missing file means: no agents."""
    base = data_dir if data_dir is not None else path.parent
    if not path.exists():
        return AgentsConfig(McpSettings(audit_log=base / "logs" / "mcp-audit.jsonl"), {}, path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_agents(data, path=path, data_dir=base)


def parse_agents(data: Mapping[str, Any], *, path: Path, data_dir: Path) -> AgentsConfig:
    unknown = set(data) - {"mcp", "agents"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; known: [mcp], [agents.NAME]"
        )
    mcp = _parse_mcp(data.get("mcp", {}), path, data_dir)
    raw_agents = data.get("agents", {})
    if not isinstance(raw_agents, dict):
        raise ConfigError(f"{path}: [agents] must be a table of [agents.NAME] tables")
    agents = {}
    for name, raw in raw_agents.items():
        agents[name] = _parse_agent(name, raw, path, data_dir)
    return AgentsConfig(mcp, agents, path)


def _parse_mcp(raw: Any, path: Path, data_dir: Path) -> McpSettings:
    where = f"{path}: [mcp]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(raw) - _MCP_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_MCP_KEYS))}"
        )
    host = _text(raw.get("host", "127.0.0.1"), f"{where} host")
    port = raw.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{where} port must be a whole number from 1 to 65535, got {port!r}")
    audit = _text(raw.get("audit_log", "logs/mcp-audit.jsonl"), f"{where} audit_log")
    audit_path = None if not audit else _under(data_dir, audit)
    cap = raw.get("max_inline_file_bytes", 1024 * 1024)
    if not isinstance(cap, int) or isinstance(cap, bool) or not 0 < cap <= 32 * 1024 * 1024:
        raise ConfigError(
            f"{where} max_inline_file_bytes must be a whole number from 1 to 33554432, got {cap!r}"
        )
    wait = raw.get("max_wait_seconds", 120)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 < wait <= 3600:
        raise ConfigError(f"{where} max_wait_seconds must be a number from 1 to 3600, got {wait!r}")
    operators = _strings(raw.get("operators", []), f"{where} operators")
    for u in operators:
        try:
            check_user_id(u)
        except ValidationError as exc:
            raise ConfigError(f"{where} operators: {exc.message}") from None
    return McpSettings(host, port, audit_path, cap, float(wait), frozenset(operators))


def _parse_agent(name: str, raw: Any, path: Path, data_dir: Path) -> AgentPolicy:
    try:
        check_agent_name(name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    where = f"{path}: [agents.{name}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(raw) - _AGENT_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_AGENT_KEYS))}"
        )
    if "access" not in raw:
        raise ConfigError(f'{where}: access is required: "read" or "write"')
    access = raw["access"]
    if access not in ACCESS_LEVELS:
        raise ConfigError(f'{where}: access must be "read" or "write", got {access!r}')
    rooms = _strings(raw.get("rooms", []), f"{where} rooms")
    for r in rooms:
        if r == ANY_ROOM or is_room_alias(r):
            continue
        try:
            check_room_id(r)
        except ValidationError:
            raise ConfigError(
                f"{where}: rooms entry {r!r} is not a room id (!...:server), an alias "
                f'(#...:server) or "*"'
            ) from None
    kinds = _strings(raw.get("room_kinds", []), f"{where} room_kinds")
    for k in kinds:
        if k not in ROOM_KINDS:
            raise ConfigError(
                f"{where}: unknown room kind {k!r} in room_kinds; known: {', '.join(ROOM_KINDS)}"
            )
    dids = _strings(raw.get("dids", []), f"{where} dids")
    for d in dids:
        try:
            check_did(d)
        except ValidationError as exc:
            raise ConfigError(f"{where}: dids: {exc.message}") from None
    tools: frozenset[str] | None = None
    if "tools" in raw:
        names = _strings(raw["tools"], f"{where} tools")
        for t in names:
            spec = TOOLS.get(t)
            if spec is None:
                raise ConfigError(
                    f"{where}: unknown tool {t!r} in tools; known: {', '.join(sorted(TOOLS))}"
                )
            if spec.access == "write" and access != "write":
                raise ConfigError(
                    f'{where}: tool {t!r} writes, but access is "read"; remove it or set '
                    'access = "write"'
                )
        tools = frozenset(names)
    files_dir = None
    if raw.get("files_dir"):
        files_dir = _under(data_dir, _text(raw["files_dir"], f"{where} files_dir"))
    token_sha = raw.get("token_sha256")
    if token_sha is not None and (not isinstance(token_sha, str) or not _SHA256.match(token_sha)):
        raise ConfigError(
            f"{where}: token_sha256 must be 64 lower-case hex digits (the SHA-256 of the token); "
            "create one with `datarooms agents token NAME`"
        )
    return AgentPolicy(
        name=name,
        access=access,
        rooms=frozenset(rooms),
        room_kinds=frozenset(kinds),
        dids=frozenset(dids),
        tools=tools,
        files_dir=files_dir,
        token_sha256=token_sha,
        description=_text(raw.get("description", ""), f"{where} description"),
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be text, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings, got {value!r}")
    return list(value)


def _under(data_dir: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else data_dir / p


# -- editing -------------------------------------------------------------------


def add_agent(
    path: Path,
    name: str,
    *,
    access: str,
    rooms: Sequence[str] = (),
    room_kinds: Sequence[str] = (),
    dids: Sequence[str] = (),
    tools: Sequence[str] | None = None,
    files_dir: str | None = None,
    description: str = "",
    with_token: bool = True,
) -> str | None:
    """Add ``[agents.NAME]`` to the file (created if missing); return its new bearer token.

    The token is returned once and only its SHA-256 is stored.
    """
    check_agent_name(name)
    text = path.read_text() if path.exists() else _HEADER
    current = load_agents(path) if path.exists() else AgentsConfig()
    if name in current.agents:
        raise ConfigError(f"agent {name!r} already exists in {path}; remove it first")
    token = new_token() if with_token else None
    table: dict[str, Any] = {"access": access}
    if description:
        table["description"] = description
    table["rooms"] = list(rooms)
    if room_kinds:
        table["room_kinds"] = list(room_kinds)
    if dids:
        table["dids"] = list(dids)
    if tools is not None:
        table["tools"] = list(tools)
    if files_dir:
        table["files_dir"] = files_dir
    if token:
        table["token_sha256"] = hash_token(token)
    block = f"[agents.{_key(name)}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in table.items())
    new_text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    _validated_write(path, new_text)
    return token


def remove_agent(path: Path, name: str) -> None:
    text = _existing(path, name)
    start, end = _section(text, name)
    head, tail = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    new_text = head + ("\n\n" if head and tail else "\n" if head else "") + tail
    _validated_write(path, new_text)


def rotate_token(path: Path, name: str) -> str:
    """Give the agent a new bearer token (the old one stops working); return it once."""
    text = _existing(path, name)
    start, end = _section(text, name)
    body = text[start:end]
    token = new_token()
    line = f"token_sha256 = {_value(hash_token(token))}\n"
    pattern = re.compile(r"^token_sha256\s*=.*\n?", re.MULTILINE)
    if pattern.search(body):
        body = pattern.sub(lambda _m: line, body, count=1)
    else:
        body = body.rstrip("\n") + "\n" + line + ("\n" if end < len(text) else "")
    _validated_write(path, text[:start] + body + text[end:])
    return token


_HEADER = (
    "# Agents of the datarooms MCP server: who they are and what they may do.\n"
    "# Format: docs/mcp.md. Bearer tokens are stored as SHA-256 only.\n"
)


def _existing(path: Path, name: str) -> str:
    if not path.exists():
        raise ConfigError(f"{path} does not exist: there are no agents")
    load_agents(path).agent(name)
    return path.read_text()


def _section(text: str, name: str) -> tuple[int, int]:
    """Character span of the ``[agents.NAME]`` table, header to the next header."""
    header = re.compile(
        r'^\[\s*agents\s*\.\s*(?:"' + re.escape(name) + r'"|' + re.escape(name) + r")\s*\]\s*$",
        re.MULTILINE,
    )
    m = header.search(text)
    if m is None:
        raise ConfigError(
            f"cannot find the [agents.{name}] header in the file to edit it; edit the file by hand"
        )
    nxt = re.compile(r"^\s*\[", re.MULTILINE).search(text, m.end())
    return m.start(), (nxt.start() if nxt else len(text))


def _validated_write(path: Path, text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - our own output
        raise ConfigError(f"editing {path} would make it invalid TOML: {exc}") from None
    parse_agents(data, path=path, data_dir=path.parent)
    atomic_write(path, text, mode=0o600)


def _key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else _value(name)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


__all__ = [
    "AGENTS_FILE_NAME",
    "AgentsConfig",
    "ConfigWatcher",
    "McpSettings",
    "add_agent",
    "agent_localpart",
    "agents_file",
    "hash_token",
    "load_agents",
    "match_token",
    "new_token",
    "parse_agents",
    "remove_agent",
    "rotate_token",
]


class ConfigWatcher:
    """Re-reads ``agents.toml`` when it changes (checked at most once a second).

    A changed policy applies to the next call; a removed agent or a rotated token
    stops working at once, without a restart. A file that no longer validates is
    ignored (the last good one stays in force) and the error is logged.
    """

    def __init__(self, config: AgentsConfig, data_dir: Path, *, interval: float = 1.0) -> None:
        self.config = config
        self._data_dir = data_dir
        self._interval = interval
        self._checked = time.monotonic()
        self._stamp = self._stat()
        self._listeners: list[Callable[[AgentsConfig], None]] = []

    def on_change(self, listener: Callable[[AgentsConfig], None]) -> None:
        """Call ``listener(config)`` after each successful reload."""
        self._listeners.append(listener)

    def _stat(self) -> tuple[int, int] | None:
        path = self.config.path
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def fresh(self) -> AgentsConfig:
        """:meth:`current`, checking the file now (a token or agent not known yet: it may
        have been added a moment ago)."""
        self._checked = time.monotonic() - self._interval
        return self.current()

    def current(self) -> AgentsConfig:
        now = time.monotonic()
        if now - self._checked < self._interval or self.config.path is None:
            return self.config
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return self.config
        self._stamp = stamp
        try:
            new = load_agents(self.config.path, data_dir=self._data_dir)
        except ConfigError as exc:
            log.error(
                "agents file changed but is invalid; keeping the previous one",
                extra={"error": exc.message},
            )
            return self.config
        self.config = new
        log.info("agents file reloaded", extra={"agents": ", ".join(sorted(new.agents))})
        for listener in self._listeners:
            listener(new)
        return new
