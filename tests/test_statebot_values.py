"""The state bot's pure parts: JSON Pointer paths, merging, value checks, access rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from datarooms._store.index import LocalIndex, SyncBatch
from datarooms.errors import NotFoundError, ValidationError
from datarooms.services.statebot import events as sev
from datarooms.services.statebot import values
from datarooms.services.statebot.access import CREATOR_POWER, Acl, RoomView
from datarooms.services.statebot.errors import BadPathError, TooLargeError


def test_paths_follow_rfc6901() -> None:
    assert values.parse_path("") == []
    assert values.parse_path(None) == []
    assert values.parse_path("/") == [""]
    assert values.parse_path("/a~1b/~0c/0") == ["a/b", "~c", "0"]
    assert values.format_path(["a/b", "~c"]) == "/a~1b/~0c"
    for bad in ("a/b", "/a~2", "/a~", "/" + "x/" * 40):
        with pytest.raises(BadPathError):
            values.parse_path(bad)


def test_get_at() -> None:
    doc = {"a": {"b": [10, {"c": True}]}, "x/y": 1}
    assert values.get_at(doc, ["a", "b", "1", "c"]) is True
    assert values.get_at(doc, ["x/y"]) == 1
    assert values.get_at(doc, []) == doc
    with pytest.raises(NotFoundError, match="/a/z"):
        values.get_at(doc, ["a", "z"])
    with pytest.raises(NotFoundError, match="2 items"):
        values.get_at(doc, ["a", "b", "5"])
    with pytest.raises(NotFoundError, match="not a container"):
        values.get_at(doc, ["x/y", "q"])
    with pytest.raises(BadPathError, match="array index"):
        values.get_at(doc, ["a", "b", "01"])


def test_merge_and_replace_at_a_path() -> None:
    current = {"unit": "C", "limits": {"min": 0, "max": 40}, "tags": ["a"]}
    merged = values.put_at(current, ["limits"], {"max": 45, "min": None}, "merge")
    assert merged == {"unit": "C", "limits": {"max": 45}, "tags": ["a"]}
    assert current["limits"] == {"min": 0, "max": 40}  # the input is not modified
    assert values.put_at(current, ["limits"], {"max": 1}, "replace")["limits"] == {"max": 1}
    assert values.put_at(current, ["tags", "-"], "b", "merge")["tags"] == ["a", "b"]
    assert values.put_at(current, ["tags", "0"], "z", "merge")["tags"] == ["z"]
    assert values.put_at(current, ["new", "deep"], 1, "merge")["new"] == {"deep": 1}
    assert values.put_at(current, ["unit"], None, "merge") == {
        "limits": {"min": 0, "max": 40},
        "tags": ["a"],
    }
    assert values.put_at(None, [], {"a": 1}, "merge") == {"a": 1}
    assert values.put_at(current, [], {"unit": "F"}, "merge")["unit"] == "F"
    assert values.put_at(current, [], {"unit": "F"}, "replace") == {"unit": "F"}
    with pytest.raises(BadPathError, match="is a string"):
        values.put_at(current, ["unit", "x"], 1, "merge")
    with pytest.raises(BadPathError, match="past the end"):
        values.put_at(current, ["tags", "3"], 1, "merge")


def test_values_must_be_what_matrix_carries() -> None:
    values.check_json({"a": [1, "x", None, True, {"b": -(2**53 - 1)}]}, canonical=True)
    values.check_json({"a": 1.5}, canonical=False)  # secure values travel encrypted
    with pytest.raises(ValidationError, match="fractions"):
        values.check_json({"a": {"b": 1.5}}, canonical=True)
    with pytest.raises(ValidationError, match="2\\*\\*53"):
        values.check_json({"a": 2**53}, canonical=True)
    with pytest.raises(ValidationError, match="NaN"):
        values.check_json({"a": float("nan")}, canonical=False)
    with pytest.raises(ValidationError, match="surrogate"):
        values.check_json({"a": "\ud800"}, canonical=False)
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValidationError, match="deeper"):
        values.check_json(deep, canonical=False)
    with pytest.raises(TooLargeError, match="65,536"):
        values.check_size(values.encoded_size({"a": "x" * 70_000}), 64_000, "it")


def _view(tmp_path: Path, state: list[tuple[str, str, dict[str, object], str]]) -> RoomView:
    index = LocalIndex(tmp_path / "index.db")
    room = "!r:localhost"
    index.apply(SyncBatch([], [], [], [(room, t, k, c, s) for t, k, c, s in state], [], []))
    return RoomView(index, room)


def test_access_rules(tmp_path: Path) -> None:
    admin, writer, reader, outsider = "@admin:hs", "@writer:hs", "@reader:hs", "@out:hs"
    member = {"membership": "join"}
    view = _view(
        tmp_path,
        [
            ("m.room.create", "", {"room_version": "12"}, admin),
            (
                "m.room.power_levels",
                "",
                {
                    "users": {writer: 50},
                    "state_default": 100,
                    "events": {sev.ACL: 100, sev.STATE: 50},
                },
                admin,
            ),
            ("m.room.member", admin, member, admin),
            ("m.room.member", writer, member, writer),
            ("m.room.member", reader, member, reader),
            ("m.room.member", outsider, {"membership": "leave"}, outsider),
        ],
    )
    assert view.power(admin) == CREATOR_POWER  # room version 12: creators are unbounded
    assert view.power(writer) == 50 and view.power(reader) == 0
    assert view.required(sev.STATE) == 50 and view.required(sev.ACL) == 100
    assert view.required("other.type") == 100

    # No ACL: every member reads; power decides writes.
    assert view.can_read(reader, None) and not view.can_read(outsider, None)
    assert view.can_write(writer, None) and not view.can_write(reader, None)
    # An ACL: the read list reads, the write list writes (and reads), power still writes.
    acl = Acl(read=(admin,), write=(reader,))
    assert view.can_read(admin, acl) and view.can_read(reader, acl)
    assert not view.can_read(writer, acl)
    assert view.can_write(reader, acl) and view.can_write(writer, acl)
    assert not view.can_write(outsider, Acl(write=(outsider,)))  # members only
    assert view.can_set_acl(admin) and not view.can_set_acl(writer)
    # A malformed ACL fails closed.
    broken = Acl.from_content({"read": "everyone", "write": [1, None]})
    assert broken == Acl() and not view.can_read(reader, broken)


def test_event_docs_match_the_code() -> None:
    import json

    from jsonschema import Draft202012Validator

    docs = Path(__file__).resolve().parent.parent / "docs" / "events"
    for name, schema in sev.ALL_SCHEMAS.items():
        assert json.loads((docs / f"{name}.json").read_text()) == schema, f"{name} doc is stale"
        Draft202012Validator.check_schema(schema)
    ref = {
        sev.SECURE: {
            "v": 1,
            "record": "ixo.room.state/k",
            "event_id": "$e",
            "algorithm": "m.megolm.v1.aes-sha2",
        }
    }
    assert Draft202012Validator(sev.STATE_SCHEMA).is_valid(ref)
    assert Draft202012Validator(sev.ACL_SCHEMA).is_valid({"read": ["@a:hs"], "write": []})
    assert not Draft202012Validator(sev.ACL_SCHEMA).is_valid({"read": ["bob"], "write": []})
