"""Every section of the config file goes through one typed loader, with env overrides."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from datarooms.config import load_settings
from datarooms.errors import ConfigError


def _settings(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    (tmp_path / "datarooms.toml").write_text(toml)
    return load_settings(data_dir=tmp_path, env=env or {})


def test_every_section_is_read_from_the_file(tmp_path: Path) -> None:
    s = _settings(
        tmp_path,
        """
[statebot]
port = 9001
homeservers = { "other.org" = "https://matrix.other.org" }
auto_join = false
[roomsbot]
port = 9999
operators = "@op:localhost"
[roomsbot.homeservers]
"b.org" = "https://matrix.b.org/"
[chain]
mode = "external"
rpc_url = "https://rpc.example.org"
start_height = -1
[mcp]
port = 8100
""",
    )
    assert s.statebot.port == 9001 and s.statebot.auto_join is False
    assert s.statebot.homeservers == {"other.org": "https://matrix.other.org"}
    assert s.roomsbot.port == 9999 and s.roomsbot.operator_ids == {"@op:localhost"}
    assert s.roomsbot.trusted_homeserver_urls == {"b.org": "https://matrix.b.org"}
    assert (s.chain.mode, s.chain.rpc_url, s.chain.start_height) == (
        "external",
        "https://rpc.example.org",
        -1,
    )
    assert s.mcp.port == 8100
    assert s.section("roomsbot")["port"] == 9999  # the mapping view of a typed section


def test_the_environment_overrides_each_section(tmp_path: Path) -> None:
    s = _settings(
        tmp_path,
        "[statebot]\nport = 9001\n[roomsbot]\nport = 9999\n"
        "[chain]\nport = 3000\n[mcp]\nport = 8100\n",
        env={
            "DATAROOMS_STATEBOT_PORT": "7001",
            "DATAROOMS_STATEBOT_HOMESERVERS": '{"other.org": "https://matrix.other.org"}',
            "DATAROOMS_ROOMSBOT_PORT": "7002",
            "DATAROOMS_ROOMSBOT_ON_DEMAND": "off",
            "DATAROOMS_CHAIN_PORT": "7003",
            "DATAROOMS_CHAIN_BLOCK_INTERVAL": "0.5",
            "DATAROOMS_MCP_PORT": "7004",
            "DATAROOMS_HOMESERVER_PORT": "7005",
            # The CLI's own variables share the prefix: not settings, not errors.
            "DATAROOMS_STATEBOT_URL": "http://127.0.0.1:1",
        },
    )
    assert s.statebot.port == 7001
    assert s.statebot.homeservers == {"other.org": "https://matrix.other.org"}
    assert s.roomsbot.port == 7002 and s.roomsbot.on_demand is False
    assert s.chain.port == 7003 and s.chain.block_interval == 0.5
    assert s.mcp.port == 7004 and s.homeserver.port == 7005


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[roomsbot]\nport = 'abc'\n", {}, r"\[roomsbot\] port: expected a whole number"),
        ("", {"DATAROOMS_ROOMSBOT_PORT": "99999"}, "roomsbot.port must be between 0 and 65535"),
        ("[roomsbot]\nprot = 1\n", {}, r"\[roomsbot\]: unknown setting\(s\) prot"),
        ("[roomsbot]\nconcurrency = 0\n", {}, "roomsbot.concurrency must be at least 1"),
        ("[roomsbot]\nroom_kinds = 'entity,bogus'\n", {}, "unknown room kind 'bogus'"),
        ("[chain]\nmode = 'external'\n", {}, "chain.rpc_url is not set"),
        ("[chain]\nmode = 'moon'\n", {}, "must be one of devchain, external"),
        ("", {"DATAROOMS_CHAIN_WATCH": "maybe"}, "expected true or false"),
        ("", {"DATAROOMS_STATEBOT_HOMESERVERS": "a=https://a"}, "expected a JSON object"),
        ("", {"DATAROOMS_STATEBOT_HOMESERVERS": "{nope"}, "not valid JSON"),
        ("[statebot]\nhomeservers = { a = 'ftp://a' }\n", {}, "must start with http"),
        ("[statebot]\ntoken_cache_seconds = 7200\n", {}, "between 0 and 3600"),
        ("[roomsbot]\nhomeservers = 'x'\n", {}, "expected a JSON object"),
        ("[mcp]\nport = -1\n", {}, "mcp.port must be between 0 and 65535"),
    ],
)
def test_bad_values_are_clear_config_errors(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, toml, env)


def test_the_rooms_bots_old_homeserver_list_is_deprecated_but_read(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = _settings(tmp_path, "[roomsbot]\ntrusted_homeservers = 'a.org=https://matrix.a.org'\n")
    assert s.roomsbot.trusted_homeserver_urls == {"a.org": "https://matrix.a.org"}
    assert any(
        issubclass(w.category, FutureWarning) and "roomsbot.homeservers" in str(w.message)
        for w in caught
    )
    with pytest.raises(ConfigError, match="must look like"):
        _settings(tmp_path, "[roomsbot]\ntrusted_homeservers = 'nonsense'\n")


def test_the_platform_services_take_their_sections(tmp_path: Path) -> None:
    from datarooms.services.roomsbot.service import write_appservice_registration
    from datarooms.services.statebot.service import load_config

    s = _settings(tmp_path, "[statebot]\nlocalpart = 'sb'\n[roomsbot]\nport = 9321\n")
    assert load_config(s).localpart == "sb"
    assert load_config(None, env={"DATAROOMS_STATEBOT_PORT": "1234"}).port == 1234
    reg = write_appservice_registration(s)
    assert reg.port == 9321 and reg.url == "http://127.0.0.1:9321"
