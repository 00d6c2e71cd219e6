"""A Prometheus scrape config for every service of a running platform that serves
``/metrics``: all six HTTP services (the state bot, the rooms bot, the claims service,
the MCP HTTP server, the automation service, the dashboard), each through
:func:`datarooms.services.scaffold.http_metrics`.

``datarooms up`` writes it to ``<data_dir>/run/prometheus.yml`` once every service has
started (their ports may be chosen at start, ``port = 0``); ``datarooms
prometheus-config`` prints it for the running platform. Point Prometheus at it:
``prometheus --config.file=<data_dir>/run/prometheus.yml``. Each service is a job of its
own (``datarooms_<service>``), labelled ``service`` and ``server_name``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from datarooms.errors import ValidationError

#: The services that serve Prometheus metrics, and where.
METRICS_PATHS: dict[str, str] = {
    "statebot": "/metrics",
    "roomsbot": "/metrics",
    "claims": "/metrics",
    "mcp": "/metrics",
    "automation": "/metrics",
    "dashboard": "/metrics",
}
_INTERVAL = re.compile(r"^[1-9][0-9]*(ms|s|m|h)$")


def scrape_targets(info: dict[str, Any]) -> list[dict[str, str]]:
    """One target per running service that serves metrics (from run/state.json)."""
    out = []
    for name, svc in sorted((info.get("services") or {}).items()):
        path = METRICS_PATHS.get(name)
        url = svc.get("url") if isinstance(svc, dict) else None
        if path is None or not isinstance(url, str):
            continue
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            continue
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(
            {
                "service": name,
                "scheme": parts.scheme or "http",
                "target": f"{host}:{parts.port}",
                "path": path,
            }
        )
    return out


def scrape_config(info: dict[str, Any], *, interval: str = "15s") -> str:
    """The scrape config (YAML; every string is JSON-quoted, which YAML reads as is)."""
    if not _INTERVAL.match(interval):
        raise ValidationError(f"interval must be like 15s, 500ms or 1m, got {interval!r}")
    q = json.dumps
    server = str(info.get("server_name", ""))
    lines = [
        "# Written by datarooms for the platform on " + str(info.get("data_dir", "?")),
        "# (every service that serves /metrics; docs/operations.md)",
        "global:",
        f"  scrape_interval: {q(interval)}",
        f"  scrape_timeout: {q(interval if _seconds(interval) < 10 else '10s')}",
        "scrape_configs:",
    ]
    for t in scrape_targets(info):
        lines += [
            f"  - job_name: {q('datarooms_' + t['service'])}",
            f"    scheme: {q(t['scheme'])}",
            f"    metrics_path: {q(t['path'])}",
            "    static_configs:",
            f"      - targets: [{q(t['target'])}]",
            "        labels:",
            f"          service: {q(t['service'])}",
            f"          server_name: {q(server)}",
        ]
    return "\n".join(lines) + "\n"


def _seconds(interval: str) -> float:
    value, unit = re.match(r"^(\d+)(ms|s|m|h)$", interval).groups()  # type: ignore[union-attr]
    return int(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


__all__ = ["METRICS_PATHS", "scrape_config", "scrape_targets"]
