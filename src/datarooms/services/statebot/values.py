"""JSON values of state keys: JSON Pointer paths, merging, and Matrix's limits.

Paths are JSON Pointers (RFC 6901): ``""`` is the whole value, ``/a/b`` the member
``b`` of the member ``a``, ``/list/0`` the first item of an array, ``~1`` is ``/``
and ``~0`` is ``~`` inside a name. In a write, ``/list/-`` appends.

A write *merges* at its path by default, as JSON Merge Patch (RFC 7386) does: an
object merges into an object member by member, ``null`` removes a member, and
anything else replaces what was there. ``mode="replace"`` puts the value as given.
Members missing on the way to the path are created as objects.

State content goes into Matrix events in the clear, so it must be *canonical
JSON* as room versions 6 and later enforce it: integers within +-(2**53 - 1), no
fractions, no NaN or infinities. Values marked secure travel encrypted and may
hold any JSON number.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Literal

from datarooms.errors import NotFoundError, ValidationError
from datarooms.services.statebot.errors import BadPathError, TooLargeError

Mode = Literal["merge", "replace"]

MAX_PATH_LENGTH = 1_024
MAX_PATH_DEPTH = 32
MAX_DEPTH = 64
_MAX_SAFE_INT = 2**53 - 1


# -- paths ------------------------------------------------------------------------


def parse_path(path: str | None) -> list[str]:
    """The reference tokens of a JSON Pointer.

    ``""`` (or None) is the whole value; every other pointer starts with ``/``
    (so ``"/"`` is the member named ``""``, as RFC 6901 says).
    """
    if path is None or path == "":
        return []
    if not isinstance(path, str):
        raise BadPathError("a path must be a string (a JSON Pointer such as /a/b)")
    if len(path) > MAX_PATH_LENGTH:
        raise BadPathError(f"the path is longer than {MAX_PATH_LENGTH} characters")
    if not path.startswith("/"):
        raise BadPathError(
            f"invalid path {_show(path)}: a JSON Pointer is empty or starts with '/', e.g. /a/b"
        )
    tokens = path[1:].split("/")
    if len(tokens) > MAX_PATH_DEPTH:
        raise BadPathError(f"the path is deeper than {MAX_PATH_DEPTH} levels")
    out = []
    for raw in tokens:
        i = raw.find("~")
        while i != -1:
            if i + 1 >= len(raw) or raw[i + 1] not in "01":
                raise BadPathError(
                    f"invalid path {_show(path)}: '~' must be followed by 0 ('~') or 1 ('/')"
                )
            i = raw.find("~", i + 2)
        out.append(raw.replace("~1", "/").replace("~0", "~"))
    return out


def format_path(tokens: list[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _show(path: str) -> str:
    return repr(path if len(path) <= 80 else path[:77] + "...")


def _index(tokens: list[str], i: int, size: int, *, append: bool) -> int:
    tok = tokens[i]
    if append and tok == "-":
        return size
    if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0") or not tok.isascii():
        raise BadPathError(
            f"at {format_path(tokens[: i + 1])}: {tok!r} is not an array index "
            "(0, 1, ...; or '-' to append)"
        )
    return int(tok)


def get_at(value: Any, tokens: list[str], *, key: str = "") -> Any:
    """The value at ``tokens``; :class:`NotFoundError` if nothing is there."""
    node = value
    for i, tok in enumerate(tokens):
        if isinstance(node, dict):
            if tok not in node:
                raise NotFoundError(f"key {key!r} has no value at {format_path(tokens[: i + 1])}")
            node = node[tok]
        elif isinstance(node, list):
            idx = _index(tokens, i, len(node), append=False)
            if idx >= len(node):
                raise NotFoundError(
                    f"key {key!r} has no value at {format_path(tokens[: i + 1])}: "
                    f"the array has {len(node)} items"
                )
            node = node[idx]
        else:
            raise NotFoundError(
                f"key {key!r} has no value at {format_path(tokens[: i + 1])}: "
                f"{format_path(tokens[:i]) or 'the value'} is {kind_of(node)}, not a container"
            )
    return node


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch of ``patch`` onto ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, member in patch.items():
        if member is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), member)
    return result


def put_at(current: Any, tokens: list[str], value: Any, mode: Mode) -> Any:
    """A new document: ``current`` with ``value`` merged (or replaced) at ``tokens``."""
    if not tokens:
        return merge_patch(current, value) if mode == "merge" else copy.deepcopy(value)
    root = copy.deepcopy(current) if current is not None else {}
    if not isinstance(root, (dict, list)):
        raise BadPathError(f"cannot write at {format_path(tokens)}: the value is {kind_of(root)}")
    node: Any = root
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(node, dict):
            if last:
                if mode == "merge" and value is None:
                    node.pop(tok, None)
                else:
                    node[tok] = (
                        merge_patch(node.get(tok), value)
                        if mode == "merge"
                        else copy.deepcopy(value)
                    )
                break
            child = node.get(tok)
            if child is None:
                child = node[tok] = {}
            node = child
        elif isinstance(node, list):
            idx = _index(tokens, i, len(node), append=True)
            if idx > len(node) or (idx == len(node) and tokens[i] != "-"):
                raise BadPathError(
                    f"at {format_path(tokens[: i + 1])}: index {idx} is past the end of an "
                    f"array of {len(node)} items (use '-' to append)"
                )
            if last:
                new = (
                    merge_patch(node[idx] if idx < len(node) else None, value)
                    if mode == "merge"
                    else copy.deepcopy(value)
                )
                if idx == len(node):
                    node.append(new)
                else:
                    node[idx] = new
                break
            if idx == len(node):
                node.append({})
            elif node[idx] is None:
                node[idx] = {}
            node = node[idx]
        else:
            raise BadPathError(
                f"cannot write at {format_path(tokens)}: "
                f"{format_path(tokens[:i])} is {kind_of(node)}, not an object or array"
            )
        if not isinstance(node, (dict, list)):
            raise BadPathError(
                f"cannot write at {format_path(tokens)}: "
                f"{format_path(tokens[: i + 1])} is {kind_of(node)}, not an object or array"
            )
    return root


def kind_of(node: Any) -> str:
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "a boolean"
    if isinstance(node, (int, float)):
        return "a number"
    if isinstance(node, str):
        return "a string"
    if isinstance(node, list):
        return "an array"
    return "an object"


# -- checking values ----------------------------------------------------------------


def check_json(value: Any, *, canonical: bool, what: str = "the value") -> None:
    """Reject what Matrix (or JSON) cannot carry, with a message that says where.

    ``canonical``: also apply canonical JSON's rules for clear state (no fractions,
    integers within +-(2**53 - 1)).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for name, member in node.items():
                if not isinstance(name, str):
                    raise ValidationError(f"{what} has a member name that is not a string")
                _check_text(name, what, where)
                stack.append((member, f"{where}/{name}", depth + 1))
        elif isinstance(node, list):
            stack.extend((m, f"{where}/{i}", depth + 1) for i, m in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, what, where)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if canonical and abs(node) > _MAX_SAFE_INT:
                raise ValidationError(
                    f"{what} at {where or '/'}: the integer is outside +-(2**53 - 1), which "
                    "Matrix cannot carry in the clear; store it as a string"
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValidationError(f"{what} at {where or '/'}: NaN and infinities are not JSON")
            if canonical:
                raise ValidationError(
                    f"{what} at {where or '/'}: {node!r} is not an integer, and Matrix state "
                    "(canonical JSON) holds no fractions; store it as a string, scale it to "
                    "an integer, or mark the value secure"
                )
        else:
            raise ValidationError(f"{what} at {where or '/'} is not JSON")


def _check_text(text: str, what: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what} at {where or '/'} holds text that is not valid Unicode (a lone surrogate)"
        ) from None


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (about its canonical JSON size)."""
    return len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    )


def check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise TooLargeError(
            f"{what} is {size} bytes; the limit is {limit} bytes (Matrix caps an event at "
            "65,536 bytes). Split it over several keys, or store it as a file and keep a "
            "reference here"
        )
