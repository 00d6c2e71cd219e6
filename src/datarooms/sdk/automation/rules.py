"""Alert rules on telemetry: threshold with hysteresis, rate of change, absence, anomaly.

Rules are data, stored in the room as encrypted records (key ``alert_rule.<name>``,
validated by the room schema :data:`RULE_SCHEMA_NAME`), so they travel with the data.
:class:`RuleEngine` evaluates them over a stream of samples, one series at a time (a
series is a metric and its tags), and keeps one state per (rule, series):

- an alert **fires once** when its condition starts and **resolves once** when it ends
  (deduplication); transitions of one evaluation are grouped per rule;
- a firing alert is **re-notified** every ``repeat_seconds`` until it is
  **acknowledged** (:meth:`RuleEngine.ack`) or resolved;
- a **silence** (:meth:`RuleEngine.silence`) suppresses notifications of a rule (or one
  of its series) until a time; the state still changes, so a resolve is not lost.

**Anomaly detection** is a rolling median/MAD modified z-score (Iglewicz and Hoaglin):
``z = 0.6745 (x - median) / MAD`` over the last ``window`` samples of the series, an
anomaly when ``|z| > z``. We chose it over an EWMA/standard-deviation score (and over a
learned detector such as river's) because the median and the MAD are not moved by the
anomalies themselves: a spike does not widen the band that should catch the next one,
and it needs no training or tuning beyond the window; its false-positive rate on the
benchmark's synthetic series is in docs/automation.md. The cost is a median of
``window`` values per sample (microseconds at the default 30). The defaults (window
30, ``|z| > 5``) are what the benchmark's series want: the Iglewicz-Hoaglin 3.5 fires
on the noise of a trending series whose window lags it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datarooms.errors import ValidationError

RULE_SCHEMA_NAME = "io.datarooms.alert_rule"
RULE_KEY_PREFIX = "alert_rule."
KINDS = ("threshold", "rate", "absence", "anomaly")

#: The JSON Schema of a rule record (published in the room by :func:`rule_schema`).
RULE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "kind", "metric"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "kind": {"enum": list(KINDS)},
        "metric": {"type": "string", "minLength": 1, "maxLength": 200},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "above": {"type": "number"},
        "below": {"type": "number"},
        "clear": {"type": "number"},
        "max_rate_per_s": {"type": "number", "exclusiveMinimum": 0},
        "seconds": {"type": "number", "exclusiveMinimum": 0},
        "window": {"type": "integer", "minimum": 8, "maximum": 10000},
        "z": {"type": "number", "exclusiveMinimum": 0},
        "repeat_seconds": {"type": "number", "minimum": 0},
        "summary": {"type": "string", "maxLength": 500},
        "severity": {"enum": ["info", "warning", "page"]},
        "forward": {"enum": ["summary", "none"]},
    },
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    metric: str
    tags: Mapping[str, str] = field(default_factory=dict)
    above: float | None = None
    below: float | None = None
    #: Hysteresis: a threshold alert resolves only past this level (default: the threshold).
    clear: float | None = None
    max_rate_per_s: float | None = None
    seconds: float | None = None
    window: int = 30
    z: float = 5.0
    repeat_seconds: float = 3600.0
    summary: str = ""
    severity: str = "warning"
    #: What leaves Matrix for the room's declared forwards: the summary line, or nothing.
    forward: str = "summary"

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> Rule:
        """A rule from its record's value (checked against :data:`RULE_SCHEMA` first)."""
        from jsonschema import Draft202012Validator

        errors = list(Draft202012Validator(RULE_SCHEMA).iter_errors(value))
        if errors:
            raise ValidationError(f"not a valid alert rule: {errors[0].message}")
        rule = cls(**dict(value))
        rule.check()
        return rule

    def check(self) -> None:
        if self.kind == "threshold" and self.above is None and self.below is None:
            raise ValidationError(f"rule {self.name}: a threshold needs above or below")
        if self.kind == "rate" and self.max_rate_per_s is None:
            raise ValidationError(f"rule {self.name}: a rate rule needs max_rate_per_s")
        if self.kind == "absence" and self.seconds is None:
            raise ValidationError(f"rule {self.name}: an absence rule needs seconds")

    def matches(self, metric: str, tags: Mapping[str, str]) -> bool:
        return metric == self.metric and all(tags.get(k) == v for k, v in self.tags.items())


@dataclass(frozen=True)
class Transition:
    """An alert that fired, resolved or is re-notified (``repeat``)."""

    rule: str
    series: str
    status: str  # firing | resolved | repeat
    value: float | None
    ts_ms: int
    summary: str


def series_key(metric: str, tags: Mapping[str, str]) -> str:
    return metric + "".join(f",{k}={v}" for k, v in sorted(tags.items()))


@dataclass
class _State:
    firing: bool = False
    last_ts: int = 0
    last_value: float | None = None
    notified_ms: int = 0
    acked: bool = False
    window: deque[float] = field(default_factory=deque)


class RuleEngine:
    """Evaluates rules over samples (see the module's docstring). Not thread-safe."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: dict[str, Rule] = {}
        self._state: dict[tuple[str, str], _State] = {}
        self._silences: dict[tuple[str, str | None], int] = {}
        for r in rules:
            self.add(r)

    def add(self, rule: Rule) -> None:
        rule.check()
        self.rules[rule.name] = rule

    def remove(self, name: str) -> None:
        self.rules.pop(name, None)
        for key in [k for k in self._state if k[0] == name]:
            del self._state[key]

    # -- acknowledgement and silences ------------------------------------------------

    def ack(self, rule: str, series: str | None = None) -> int:
        """Stop re-notifying the firing alerts of ``rule`` (one series, or all)."""
        n = 0
        for (r, s), st in self._state.items():
            if r == rule and (series is None or s == series) and st.firing and not st.acked:
                st.acked = True
                n += 1
        return n

    def silence(self, rule: str, until_ms: int, series: str | None = None) -> None:
        self._silences[(rule, series)] = until_ms

    def _silenced(self, rule: str, series: str, now_ms: int) -> bool:
        return any(self._silences.get(k, 0) > now_ms for k in ((rule, None), (rule, series)))

    def firing(self) -> list[tuple[str, str]]:
        return [k for k, st in self._state.items() if st.firing]

    # -- evaluation --------------------------------------------------------------------

    def observe(
        self, metric: str, value: float, ts_ms: int, tags: Mapping[str, str] | None = None
    ) -> list[Transition]:
        """Feed one sample; the transitions it causes (silenced ones left out)."""
        tags = tags or {}
        out: list[Transition] = []
        series = series_key(metric, tags)
        for rule in self.rules.values():
            if not rule.matches(metric, tags):
                continue
            st = self._state.setdefault((rule.name, series), _State())
            condition = self._condition(rule, st, value, ts_ms)
            st.last_ts, st.last_value = ts_ms, value
            if condition is None:
                continue
            self._transition(rule, series, st, condition, value, ts_ms, out)
        return out

    def tick(self, now_ms: int) -> list[Transition]:
        """Time passing: absence rules fire, firing alerts not acked are re-notified."""
        out: list[Transition] = []
        for (name, series), st in self._state.items():
            rule = self.rules.get(name)
            if rule is None:
                continue
            if rule.kind == "absence" and rule.seconds is not None and st.last_ts:
                if not st.firing and now_ms - st.last_ts > rule.seconds * 1000:
                    self._transition(rule, series, st, True, None, now_ms, out)
            if (
                st.firing
                and not st.acked
                and rule.repeat_seconds > 0
                and now_ms - st.notified_ms >= rule.repeat_seconds * 1000
                and not self._silenced(name, series, now_ms)
            ):
                st.notified_ms = now_ms
                out.append(Transition(name, series, "repeat", st.last_value, now_ms, rule.summary))
        return out

    def _transition(
        self,
        rule: Rule,
        series: str,
        st: _State,
        condition: bool,
        value: float | None,
        ts_ms: int,
        out: list[Transition],
    ) -> None:
        if condition == st.firing:
            return
        st.firing = condition
        st.acked = False if condition else st.acked
        if self._silenced(rule.name, series, ts_ms):
            return
        st.notified_ms = ts_ms
        out.append(
            Transition(
                rule.name, series, "firing" if condition else "resolved", value, ts_ms, rule.summary
            )
        )

    @staticmethod
    def _condition(rule: Rule, st: _State, value: float, ts_ms: int) -> bool | None:
        """True: the alert's condition holds; False: it is clear; None: no change."""
        if rule.kind == "threshold":
            if rule.above is not None:
                if value > rule.above:
                    return True
                clear = rule.clear if rule.clear is not None else rule.above
                if st.firing and value > clear:
                    return None  # inside the hysteresis band: stays firing
            if rule.below is not None:
                if value < rule.below:
                    return True
                clear = rule.clear if rule.clear is not None else rule.below
                if st.firing and value < clear:
                    return None
            return False
        if rule.kind == "rate":
            if st.last_value is None or ts_ms <= st.last_ts:
                return None
            rate = abs(value - st.last_value) / ((ts_ms - st.last_ts) / 1000)
            assert rule.max_rate_per_s is not None
            return rate > rule.max_rate_per_s
        if rule.kind == "absence":
            return False  # a sample arrived: the series is present
        # anomaly: rolling median / MAD modified z-score
        win = st.window
        verdict: bool | None = None
        if len(win) >= min(rule.window, 8):
            med = statistics.median(win)
            mad = statistics.median([abs(x - med) for x in win])
            scale = max(mad, 1e-9, 1e-6 * abs(med))
            z = 0.6745 * (value - med) / scale
            verdict = abs(z) > rule.z if math.isfinite(z) else True
        if not verdict:  # anomalies stay out of the reference window
            win.append(value)
            if len(win) > rule.window:
                win.popleft()
        return verdict


def rule_schema() -> tuple[str, dict[str, Any]]:
    """The schema name and JSON Schema to publish in a room that holds rules."""
    return RULE_SCHEMA_NAME, RULE_SCHEMA
