"""Turning a webhook's body into what lands in the room.

Every payload is parsed and validated here, before anything is stored: a malformed
one raises :class:`PayloadError` (``400 DR_BAD_PAYLOAD``) and nothing is posted.

- **Alertmanager** (webhook ``version: "4"``): one message per notification, that is
  per Alertmanager group, firing or resolved, with the alerts as structured data
  under :data:`ALERT_KEY` (encrypted with the rest of the message).
- **GitHub**: one summary line per event (``X-GitHub-Event``), the delivery id
  (``X-GitHub-Delivery``) making redeliveries idempotent.
- **generic** JSON: a message from a template, a record (key template, value path) or
  telemetry samples (a mapping of JSON paths).

Paths are dotted names with list indexes, ``a.b[0].c``; templates put them in
``${...}`` (``$$`` is a literal ``$``). Nothing is evaluated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datarooms.errors import DataroomsError
from datarooms.sdk.automation.registry import Hook

#: The key of the structured alerts inside an Alertmanager message's content.
ALERT_KEY = "io.datarooms.alert"
#: The key of the webhook's origin inside every message's content.
SOURCE_KEY = "io.datarooms.hook"
#: Message bodies are cut here (the SDK refuses text over 32 KiB).
MAX_BODY_CHARS = 8000
#: At most this many alerts of a group are kept in a message's structured data.
MAX_ALERTS = 100
#: At most this many telemetry samples from one request.
MAX_SAMPLES = 10_000


class PayloadError(DataroomsError):
    """The body is not what this hook's format expects."""

    errcode = "DR_BAD_PAYLOAD"
    http_status = 400


@dataclass(frozen=True)
class Delivery:
    """One thing to post: ``kind`` message (``content``), record (``key``, ``value``) or
    telemetry (``samples`` as ``[ts_ms, metric, value, tags]``)."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


# -- paths and templates -----------------------------------------------------------------

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_PLACE = re.compile(r"\$\$|\$\{([^}]{1,200})\}")


def lookup(data: Any, path: str) -> Any:
    """The value at ``path`` (``a.b[0].c``; ``$`` or empty: the whole body), or a
    :class:`PayloadError` naming what is missing."""
    if path in ("", "$"):
        return data
    cur = data
    pos = 0
    text = path[2:] if path.startswith("$.") else path
    for m in _STEP.finditer(text):
        if m.start() != pos and text[pos : m.start()] != ".":
            raise PayloadError(f"bad path {path!r}")
        pos = m.end()
        name, index = m.group(1), m.group(2)
        if name is not None:
            if not isinstance(cur, Mapping) or name not in cur:
                raise PayloadError(f"the body has no {path!r}")
            cur = cur[name]
        else:
            if not isinstance(cur, list) or int(index) >= len(cur):
                raise PayloadError(f"the body has no {path!r}")
            cur = cur[int(index)]
    if pos != len(text):
        raise PayloadError(f"bad path {path!r}")
    return cur


def render(template: str, data: Any) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        value = lookup(data, m.group(1).strip())
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    return _PLACE.sub(one, template)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_BODY_CHARS else text[: MAX_BODY_CHARS - 1] + "…"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"the body is not JSON: {exc}") from None


def parse(hook: Hook, body: bytes, headers: Mapping[str, str]) -> list[Delivery]:
    """What ``body`` (with lower-cased ``headers``) becomes in ``hook``'s room."""
    data = _json(body)
    if hook.format == "alertmanager":
        return [alertmanager(hook, data)]
    if hook.format == "github":
        return [github(hook, data, headers.get("x-github-event", ""))]
    return generic(hook, data)


def _source(hook: Hook, **extra: Any) -> dict[str, Any]:
    return {"hook_id": hook.hook_id, "format": hook.format, **extra}


# -- Alertmanager ------------------------------------------------------------------------


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PayloadError(f"Alertmanager payload: {where} must be an object of strings")
    return dict(value)


def _pairs(labels: Mapping[str, str], skip: str = "alertname") -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != skip)


def alertmanager(hook: Hook, data: Any) -> Delivery:
    """One Alertmanager notification (a group of alerts) as one message."""
    if not isinstance(data, Mapping):
        raise PayloadError("Alertmanager payload: the body must be a JSON object")
    if data.get("version") != "4":
        raise PayloadError(
            f'Alertmanager payload: version must be "4", got {data.get("version")!r}'
        )
    status = data.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"Alertmanager payload: status must be firing or resolved: {status!r}")
    alerts = data.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise PayloadError("Alertmanager payload: alerts must be a non-empty list")
    group_labels = _labels(data.get("groupLabels"), "groupLabels")
    common = _labels(data.get("commonLabels"), "commonLabels")
    group_key = data.get("groupKey")
    if not isinstance(group_key, str):
        raise PayloadError("Alertmanager payload: groupKey must be a string")
    parsed = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise PayloadError(f"Alertmanager payload: alerts[{i}] must be an object")
        a_status = alert.get("status")
        if a_status not in ("firing", "resolved"):
            raise PayloadError(f"Alertmanager payload: alerts[{i}].status: {a_status!r}")
        parsed.append(
            {
                "status": a_status,
                "labels": _labels(alert.get("labels"), f"alerts[{i}].labels"),
                "annotations": _labels(alert.get("annotations"), f"alerts[{i}].annotations"),
                "starts_at": str(alert.get("startsAt", "")),
                "ends_at": str(alert.get("endsAt", "")),
                "fingerprint": str(alert.get("fingerprint", "")),
            }
        )
    firing = sum(1 for a in parsed if a["status"] == "firing")
    name = group_labels.get("alertname") or common.get("alertname") or "alerts"
    head = (f"🔥 [FIRING:{firing}] {name}" if status == "firing" else f"✅ [RESOLVED] {name}") + (
        f" ({_pairs(group_labels)})" if _pairs(group_labels) else ""
    )
    lines = [head]
    for a in parsed[:MAX_ALERTS]:
        ann = a["annotations"]
        text = ann.get("summary") or ann.get("description") or _pairs(a["labels"]) or "(no labels)"
        mark = "resolved" if a["status"] == "resolved" else "firing"
        lines.append(f"- [{mark}] {a['labels'].get('alertname', name)}: {text}")
    if len(parsed) > MAX_ALERTS:
        lines.append(f"(and {len(parsed) - MAX_ALERTS} more)")
    content = {
        "msgtype": "m.notice",
        "body": _cut("\n".join(lines)),
        ALERT_KEY: {
            "source": "alertmanager",
            "status": status,
            "group_key": group_key,
            "receiver": str(data.get("receiver", "")),
            "group_labels": group_labels,
            "common_labels": common,
            "alerts": parsed[:MAX_ALERTS],
            "truncated": max(0, len(parsed) - MAX_ALERTS),
        },
        SOURCE_KEY: _source(hook),
    }
    return Delivery("message", {"content": content})


# -- GitHub ------------------------------------------------------------------------------


def _get(data: Any, path: str, default: str = "") -> str:
    try:
        value = lookup(data, path)
    except PayloadError:
        return default
    return value if isinstance(value, str) else str(value) if value is not None else default


def github(hook: Hook, data: Any, event: str) -> Delivery:
    """One GitHub webhook event as a summary line."""
    if not event or not re.fullmatch(r"[a-z_]{1,64}", event):
        raise PayloadError("a GitHub hook wants the X-GitHub-Event header")
    if not isinstance(data, Mapping):
        raise PayloadError("GitHub payload: the body must be a JSON object")
    repo = _get(data, "repository.full_name", "GitHub")
    who = _get(data, "sender.login", "someone")
    action = _get(data, "action")
    if event == "ping":
        text = f"{repo}: webhook configured ({_get(data, 'zen')})"
    elif event == "push":
        raw = data.get("commits")
        commits: list[Any] = raw if isinstance(raw, list) else []
        ref = _get(data, "ref").removeprefix("refs/heads/")
        first = _get(data, "head_commit.message").splitlines()[:1]
        text = f"{repo}: {who} pushed {len(commits)} commit(s) to {ref}" + (
            f": {first[0]}" if first else ""
        )
    elif event in ("pull_request", "issues"):
        item = "pull_request" if event == "pull_request" else "issue"
        kind = "PR" if event == "pull_request" else "issue"
        text = (
            f"{repo}: {who} {action} {kind} #{_get(data, item + '.number')}: "
            f"{_get(data, item + '.title')}"
        )
    elif event == "release":
        text = f"{repo}: {who} {action} release {_get(data, 'release.tag_name')}"
    elif event == "workflow_run":
        text = (
            f"{repo}: workflow {_get(data, 'workflow_run.name')} {action} "
            f"({_get(data, 'workflow_run.conclusion') or 'running'})"
        )
    else:
        text = f"{repo}: {event}" + (f" {action}" if action else "") + f" by {who}"
    content = {
        "msgtype": "m.notice",
        "body": _cut(text),
        SOURCE_KEY: _source(hook, event=event),
    }
    return Delivery("message", {"content": content})


# -- generic JSON ------------------------------------------------------------------------


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def generic(hook: Hook, data: Any) -> list[Delivery]:
    if hook.target == "message":
        text = (
            render(hook.template, data)
            if hook.template
            else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        )
        if not text.strip():
            raise PayloadError("the template rendered an empty message")
        content = {"msgtype": "m.text", "body": _cut(text), SOURCE_KEY: _source(hook)}
        return [Delivery("message", {"content": content})]
    if hook.target == "record":
        key = render(hook.template, data)
        value = lookup(data, str(hook.mapping.get("value", "$")))
        return [Delivery("record", {"key": key, "value": value})]
    return [Delivery("telemetry", {"samples": telemetry_samples(hook.mapping, data)})]


def telemetry_samples(mapping: Mapping[str, Any], data: Any) -> list[list[Any]]:
    """Samples ``[ts_ms, metric, value, tags]`` from ``data`` as ``mapping`` says:
    ``each`` (optional) a path to a list, each item giving one sample; ``metric`` a
    template; ``value`` a path; ``ts`` (optional) a path to milliseconds since the
    epoch (default: now, when the deliverer posts it); ``tags`` ``{name: path}``."""
    each = mapping.get("each")
    items = lookup(data, str(each)) if each else [data]
    if not isinstance(items, list) or not items:
        raise PayloadError(f"{each!r} must be a non-empty list")
    if len(items) > MAX_SAMPLES:
        raise PayloadError(f"at most {MAX_SAMPLES} samples per request, got {len(items)}")
    tags_map = mapping.get("tags") or {}
    out: list[list[Any]] = []
    for i, item in enumerate(items):
        metric = render(str(mapping["metric"]), item)
        if not metric or len(metric) > 200:
            raise PayloadError(f"sample {i}: the metric name must be 1-200 characters")
        value = _number(lookup(item, str(mapping["value"])), f"sample {i} value")
        ts: int | None = None
        if mapping.get("ts"):
            ts = int(_number(lookup(item, str(mapping["ts"])), f"sample {i} ts"))
        tags = {str(k): str(lookup(item, str(p))) for k, p in dict(tags_map).items()}
        out.append([ts, metric, value, tags])
    return out
