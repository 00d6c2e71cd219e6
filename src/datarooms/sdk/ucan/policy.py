"""The UCAN 1.0 policy language: predicates over an invocation's ``args``.

A policy is a list of statements, all of which must hold (an implicit ``and``):
``["==" | "!=", sel, value]``, ``["<" | "<=" | ">" | ">=", sel, number]``,
``["like", sel, glob]``, ``["not", stmt]``, ``["and" | "or", [stmt, ...]]``,
``["all" | "any", sel, stmt]``. Selectors are the spec's jq-like subset: ``.``,
``.field``, ``.["field"]``, ``.[index]``, chained, each part optionally ``?``.

A selector that finds nothing makes its statement false (``?`` turns it into ``null``).
Every policy along a delegation chain applies to the invocation, so each hop can
only narrow what the chain allows.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any

from datarooms.sdk.ucan.errors import UcanError

Policy = list[Any]

_MAX_DEPTH = 16
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FIELD = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(\?)?")
_BRACKET = re.compile(r"\.?\[(-?\d+|\"(?:[^\"\\]|\\.)*\")\](\?)?")


class _Missing(Exception):
    pass


def _bad(message: str) -> UcanError:
    return UcanError(f"the policy is malformed: {message}", errcode="DR_UCAN_MALFORMED")


def parse_selector(sel: object) -> list[tuple[str | int, bool]]:
    """The parts of a selector: (field name or index, optional)."""
    if not isinstance(sel, str) or not sel.startswith(".") or len(sel) > 256:
        raise _bad(f"{sel!r} is not a selector")
    if sel == ".":
        return []
    parts: list[tuple[str | int, bool]] = []
    pos = 0
    while pos < len(sel):
        m = _FIELD.match(sel, pos)
        if m:
            parts.append((m.group(1), m.group(2) == "?"))
            pos = m.end()
            continue
        m = _BRACKET.match(sel, pos)
        if m:
            token = m.group(1)
            key: str | int = json.loads(token) if token.startswith('"') else int(token)
            parts.append((key, m.group(2) == "?"))
            pos = m.end()
            continue
        raise _bad(f"cannot read the selector {sel!r} at position {pos}")
    return parts


def select(sel: str, value: Any) -> Any:
    for key, optional in parse_selector(sel):
        try:
            if isinstance(key, int):
                if not isinstance(value, list):
                    raise _Missing
                value = value[key]
            else:
                if not isinstance(value, dict) or key not in value:
                    raise _Missing
                value = value[key]
        except (_Missing, IndexError):
            if optional:
                return None
            raise _Missing from None
    return value


def check(policy: object) -> Policy:
    """``policy`` if it is a well-formed policy; :class:`UcanError` otherwise."""
    if not isinstance(policy, list):
        raise _bad("a policy is a list of statements")
    for statement in policy:
        _check_statement(statement, 0)
    return policy


def _check_statement(st: object, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _bad("statements nest too deeply")
    if not isinstance(st, list) or not st or not isinstance(st[0], str):
        raise _bad(f"{st!r} is not a statement")
    op = st[0]
    if op in ("==", "!=") and len(st) == 3:
        parse_selector(st[1])
    elif op in ("<", "<=", ">", ">=") and len(st) == 3:
        parse_selector(st[1])
        if not _is_number(st[2]):
            raise _bad(f"{op} compares with a number, not {st[2]!r}")
    elif op == "like" and len(st) == 3:
        parse_selector(st[1])
        if not isinstance(st[2], str):
            raise _bad("like takes a glob string")
    elif op == "not" and len(st) == 2:
        _check_statement(st[1], depth + 1)
    elif op in ("and", "or") and len(st) == 2 and isinstance(st[1], list):
        for sub in st[1]:
            _check_statement(sub, depth + 1)
    elif op in ("all", "any") and len(st) == 3:
        parse_selector(st[1])
        _check_statement(st[2], depth + 1)
    else:
        raise _bad(f"unknown statement {st!r}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def glob_match(pattern: str, text: str) -> bool:
    """The spec's ``like``: ``*`` matches any run of characters, ``\\*`` a literal star."""
    regex = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] == "*":
            regex.append(re.escape("*"))
            i += 2
            continue
        regex.append(".*" if c == "*" else re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), text, flags=re.DOTALL) is not None


def holds(policy: Policy, args: dict[str, Any]) -> bool:
    """Whether every statement of ``policy`` holds for ``args``."""
    return all(_eval(st, args) for st in policy)


def _eval(st: list[Any], args: Any) -> bool:
    op = st[0]
    try:
        if op == "not":
            return not _eval(st[1], args)
        if op == "and":
            return all(_eval(s, args) for s in st[1])
        if op == "or":
            return any(_eval(s, args) for s in st[1])
        value = select(st[1], args)
        if op == "==":
            return _equal(value, st[2])
        if op == "!=":
            return not _equal(value, st[2])
        if op in ("<", "<=", ">", ">="):
            if not _is_number(value):
                return False
            return bool(_COMPARE[op](value, st[2]))
        if op == "like":
            return isinstance(value, str) and glob_match(st[2], value)
        if op in ("all", "any"):
            items = list(value.values()) if isinstance(value, dict) else value
            if not isinstance(items, list):
                return False
            test = all if op == "all" else any
            return test(_eval(st[2], item) for item in items)
    except _Missing:
        return False
    raise _bad(f"unknown statement {st!r}")


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)
