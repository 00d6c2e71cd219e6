"""The MCP server's capability model and agents.toml: pure, no homeserver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datarooms.errors import ConfigError
from datarooms.services.mcp.config import (
    ConfigWatcher,
    add_agent,
    hash_token,
    load_agents,
    match_token,
    remove_agent,
    rotate_token,
)
from datarooms.services.mcp.policy import TOOLS, AgentPolicy, CapabilityDenied, RoomFacts


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def test_full_file_parses_with_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
[mcp]
port = 9100

[agents.ops-bot]
description = "watches pumps"
access = "write"
rooms = ["!abc:example.org", "#ops:example.org"]
room_kinds = ["device"]
dids = ["did:ixo:entity:1a2b"]
tools = ["get_twin", "put_record"]
files_dir = "agent-files"
token_sha256 = "{hash_token("t0ken")}"

[agents.viewer]
access = "read"
""",
    )
    cfg = load_agents(path, data_dir=tmp_path)
    assert cfg.mcp.port == 9100 and cfg.mcp.host == "127.0.0.1"
    assert cfg.mcp.audit_log == tmp_path / "logs" / "mcp-audit.jsonl"
    ops = cfg.agent("ops-bot")
    assert ops.rooms == {"!abc:example.org", "#ops:example.org"}
    assert ops.tools == frozenset({"get_twin", "put_record"})
    assert ops.files_dir == tmp_path / "agent-files"
    viewer = cfg.agent("viewer")
    assert viewer.tools is None and not viewer.rooms
    assert match_token("t0ken", cfg.agents.values()) is ops
    assert match_token("other", cfg.agents.values()) is None
    with pytest.raises(ConfigError, match=r"no agent named 'nobody'.*ops-bot, viewer"):
        cfg.agent("nobody")


def test_missing_file_means_no_agents(tmp_path: Path) -> None:
    assert load_agents(tmp_path / "agents.toml").agents == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[agents.a]\naccess = "admin"\n', 'access must be "read" or "write"'),
        ("[agents.a]\nrooms = []\n", "access is required"),
        ('[agents.a]\naccess = "read"\nroom = ["*"]\n', "unknown setting(s) room"),
        ('[agents.a]\naccess = "read"\nrooms = ["general"]\n', "is not a room id"),
        ('[agents.a]\naccess = "read"\nroom_kinds = ["pumps"]\n', "unknown room kind 'pumps'"),
        ('[agents.a]\naccess = "read"\ndids = ["ixo:1"]\n', "is not a DID"),
        ('[agents.a]\naccess = "read"\ntools = ["sudo"]\n', "unknown tool 'sudo'"),
        ('[agents.a]\naccess = "read"\ntools = ["put_record"]\n', "tool 'put_record' writes"),
        ('[agents.a]\naccess = "read"\ntoken_sha256 = "abc"\n', "64 lower-case hex"),
        ('[agents."Bad Name"]\naccess = "read"\n', "invalid agent name 'Bad Name'"),
        ('[agents.a]\naccess = "read"\nrooms = "*"\n', "must be a list of non-empty strings"),
        ("[mcp]\nport = 0\n", "port must be a whole number"),
        ("[mcp]\nbind = 1\n", "unknown setting(s) bind"),
        ("[server]\n", "unknown section(s) server"),
        ("agents = [1\n", "not valid TOML"),
    ],
)
def test_invalid_files_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_agents(_write(tmp_path, body))
    assert message in err.value.message
    assert str(tmp_path / "agents.toml") in err.value.message


def test_add_rotate_remove_keep_comments_and_store_only_hashes(tmp_path: Path) -> None:
    path = _write(tmp_path, "# operator notes\n[mcp]\nport = 9000 # keep\n")
    t1 = add_agent(path, "alpha", access="write", rooms=["*"], tools=["put_record"])
    t2 = add_agent(path, "beta", access="read", room_kinds=["device"], with_token=False)
    assert t1 and t1.startswith("drmcp_") and t2 is None
    text = path.read_text()
    assert t1 not in text and hash_token(t1) in text
    assert "# operator notes" in text and "port = 9000 # keep" in text
    assert os.stat(path).st_mode & 0o077 == 0
    with pytest.raises(ConfigError, match="already exists"):
        add_agent(path, "alpha", access="read")
    with pytest.raises(ConfigError, match="writes"):
        add_agent(path, "gamma", access="read", tools=["send_message"])

    t3 = rotate_token(path, "alpha")
    cfg = load_agents(path)
    assert match_token(t3, cfg.agents.values()) is cfg.agent("alpha")
    assert match_token(t1, cfg.agents.values()) is None
    t4 = rotate_token(path, "beta")  # an agent without a token gets one
    assert match_token(t4, load_agents(path).agents.values()) is not None

    remove_agent(path, "alpha")
    cfg = load_agents(path)
    assert set(cfg.agents) == {"beta"} and cfg.mcp.port == 9000
    with pytest.raises(ConfigError, match="no agent named 'alpha'"):
        remove_agent(path, "alpha")


def test_watcher_applies_changes_and_ignores_a_broken_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[agents.a]\naccess = "read"\n')
    seen: list[set[str]] = []
    watcher = ConfigWatcher(load_agents(path), tmp_path, interval=0)
    watcher.on_change(lambda cfg: seen.append(set(cfg.agents)))
    path.write_text('[agents.a]\naccess = "read"\n[agents.b]\naccess = "write"\n')
    assert set(watcher.current().agents) == {"a", "b"} and seen == [{"a", "b"}]
    path.write_text('[agents.a]\naccess = "root"\n')
    assert set(watcher.current().agents) == {"a", "b"}  # the last good file stays
    assert seen == [{"a", "b"}]


def _policy(**kw: object) -> AgentPolicy:
    return AgentPolicy(**{"name": "bot", "access": "read", **kw})  # type: ignore[arg-type]


def test_tool_capabilities() -> None:
    reader = _policy()
    reader.check_tool("get_record")
    with pytest.raises(CapabilityDenied) as err:
        reader.check_tool("put_record")
    assert err.value.capability == "access:write"
    assert "lacks the capability access:write" in err.value.message
    narrow = _policy(access="write", tools=frozenset({"get_record"}))
    with pytest.raises(CapabilityDenied) as err:
        narrow.check_tool("send_message")
    assert err.value.capability == "tool:send_message"
    assert not narrow.tool_allowed("send_message") and narrow.tool_allowed("get_record")
    assert {t for t in TOOLS if reader.tool_allowed(t)} == {
        t for t, spec in TOOLS.items() if spec.access == "read"
    }


def test_room_scope() -> None:
    p = _policy(
        rooms=frozenset({"!a:x", "#ops:x"}),
        room_kinds=frozenset({"device"}),
        dids=frozenset({"did:ixo:entity:1"}),
        resolved={"#ops:x": "!ops:x"},
    )
    assert p.room_allowed(RoomFacts("!a:x"))
    assert p.room_allowed(RoomFacts("!ops:x"))  # through the resolved alias
    assert p.room_allowed(RoomFacts("!b:x", aliases=frozenset({"#ops:x"})))
    assert p.room_allowed(RoomFacts("!c:x", kind="device"))
    assert p.room_allowed(RoomFacts("!d:x", kind="entity", did="did:ixo:entity:1"))
    assert not p.room_allowed(RoomFacts("!e:x", kind="project"))
    with pytest.raises(CapabilityDenied) as err:
        p.check_room(RoomFacts("!e:x", kind="project"))
    assert err.value.capability == "room:!e:x" and "a project room" in err.value.message
    assert p.alias_allowed("#did-ixo-entity-1:x", "x") and not p.alias_allowed("#other:x", "x")
    # A DID alias counts only on the agent's own server (where the rooms bot owns them).
    assert not p.alias_allowed("#did-ixo-entity-1:evil.example", "x")
    assert not p.alias_allowed("#did-ixo-entity-1:x")
    assert _policy(rooms=frozenset({"*"})).room_allowed(RoomFacts("!z:x"))
    assert not _policy().room_allowed(RoomFacts("!z:x"))
    p.check_new_room("device", None)
    with pytest.raises(CapabilityDenied, match="room_kind:project"):
        p.check_new_room("project", None)


def test_files_stay_inside_the_files_directory(tmp_path: Path) -> None:
    base = tmp_path / "files"
    (base / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (base / "link").symlink_to(tmp_path / "outside")
    p = _policy(files_dir=base)
    assert p.file_path("sub/a.txt", purpose="x") == (base / "sub" / "a.txt").resolve()
    assert p.file_path(str(base / "b.txt"), purpose="x") == (base / "b.txt").resolve()
    for bad in ("../x", "/etc/passwd", "sub/../../x", "link/secret", ""):
        with pytest.raises(CapabilityDenied) as err:
            p.file_path(bad, purpose="x")
        assert err.value.capability == "files_dir"
    with pytest.raises(CapabilityDenied, match="none is configured"):
        _policy().file_path("a", purpose="uploading")
