"""The CometBFT event query language (the subset real nodes accept for subscribe and tx_search).

A query is conditions joined by ``AND``::

    tm.event='Tx' AND message.action='/ixo.entity.v1beta1.MsgCreateEntity' AND tx.height>5

A condition is ``<composite key> <op> <operand>`` with ``op`` one of ``=``, ``<``, ``<=``,
``>``, ``>=``, ``CONTAINS`` or ``EXISTS``; operands are single-quoted strings or numbers.
A condition holds when *any* value recorded under its key satisfies it, as in CometBFT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<and>AND\b)
      | (?P<op><=|>=|=|<|>|CONTAINS\b|EXISTS\b)
      | '(?P<str>[^']*)'
      | (?P<num>-?\d+(?:\.\d+)?)(?![\w.])
      | (?P<key>[A-Za-z_][\w./-]*)
    )""",
    re.VERBOSE,
)
MAX_QUERY_LENGTH = 512


@dataclass(frozen=True)
class Condition:
    key: str
    op: str
    operand: str | float | None

    def holds(self, values: Sequence[str] | None) -> bool:
        if not values:
            return False
        if self.op == "EXISTS":
            return True
        return any(self._holds_for(v) for v in values)

    def _holds_for(self, value: str) -> bool:
        operand = self.operand
        if self.op == "CONTAINS":
            return isinstance(operand, str) and operand in value
        if isinstance(operand, float):
            try:
                number = float(value)
            except ValueError:
                return False
            if math.isnan(number):
                return False
            return _compare(number, self.op, operand)
        if isinstance(operand, str):
            return _compare(value, self.op, operand)
        return False


def _compare(a: float | str, op: str, b: float | str) -> bool:
    if op == "=":
        return a == b
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    if op == ">=":
        return a >= b  # type: ignore[operator]
    return False


@dataclass(frozen=True)
class Query:
    text: str
    conditions: tuple[Condition, ...]

    @classmethod
    def parse(cls, text: str) -> Query:
        """Parse a query; raise ``ValueError`` saying what is wrong and where."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the query is empty")
        if len(text) > MAX_QUERY_LENGTH:
            raise ValueError("maximum query length exceeded")
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ValueError(f"unexpected input at offset {pos}: {text[pos : pos + 20]!r}")
            kind = m.lastgroup or ""
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        conditions: list[Condition] = []
        i = 0
        while i < len(tokens):
            if tokens[i][0] != "key":
                raise ValueError(f"expected a key, got {tokens[i][1]!r}")
            key = tokens[i][1]
            if i + 1 >= len(tokens) or tokens[i + 1][0] != "op":
                raise ValueError(f"expected an operator after {key!r}")
            op = tokens[i + 1][1]
            i += 2
            operand: str | float | None = None
            if op != "EXISTS":
                if i >= len(tokens) or tokens[i][0] not in ("str", "num"):
                    raise ValueError(f"expected a quoted string or a number after {key} {op}")
                kind, raw = tokens[i]
                operand = raw if kind == "str" else float(raw)
                if op == "CONTAINS" and not isinstance(operand, str):
                    raise ValueError("CONTAINS needs a quoted string")
                i += 1
            conditions.append(Condition(key, op, operand))
            if i < len(tokens):
                if tokens[i][0] != "and":
                    raise ValueError(f"expected AND, got {tokens[i][1]!r}")
                i += 1
                if i >= len(tokens):
                    raise ValueError("the query ends with AND")
        return cls(text, tuple(conditions))

    def matches(self, events: Mapping[str, Sequence[str]]) -> bool:
        return all(c.holds(events.get(c.key)) for c in self.conditions)

    def height_bounds(self) -> tuple[int | None, int | None]:
        """The ``tx.height`` range this query allows (inclusive), for index lookups."""
        lo: int | None = None
        hi: int | None = None
        for c in self.conditions:
            if c.key != "tx.height" or not isinstance(c.operand, float):
                continue
            v = c.operand
            bounds = {
                "=": (math.ceil(v), math.floor(v)),
                ">": (math.floor(v) + 1, None),
                ">=": (math.ceil(v), None),
                "<": (None, math.ceil(v) - 1),
                "<=": (None, math.floor(v)),
            }.get(c.op, (None, None))
            if bounds[0] is not None:
                lo = bounds[0] if lo is None else max(lo, bounds[0])
            if bounds[1] is not None:
                hi = bounds[1] if hi is None else min(hi, bounds[1])
        return lo, hi
