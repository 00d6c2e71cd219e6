"""A real Prometheus (Debian's package) scrapes every service of a running platform that
serves /metrics (all six HTTP services), from the scrape config the platform writes, and
finds each service's request counter (``<service>_requests_total``, from
``scaffold.http_metrics``) in what it scraped (issue 16)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from datarooms.homeserver.embedded import free_port
from datarooms.services.prometheus import METRICS_PATHS
from tests._cli import clean_env, cli, start_up
from tests._system import require_program


def _targets(port: int) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success"
    return list(body["data"]["activeTargets"])


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_every_service(tmp_path: Path) -> None:
    prometheus = require_program("prometheus", "prometheus")
    data = tmp_path / "data"
    env = clean_env(DATAROOMS_SERVICES=",".join(METRICS_PATHS))
    missing = cli("prometheus-config", data_dir=data, env=env)
    assert missing.returncode != 0 and "not running" in missing.stderr + missing.stdout
    up = start_up(data, "--port", str(free_port()), env=env)
    prom: subprocess.Popen[bytes] | None = None
    try:
        state = up.wait_running()
        written = (data / "run" / "prometheus.yml").read_text()
        services = state["services"]
        assert isinstance(services, dict)
        for name in METRICS_PATHS:
            # The service's listener (the MCP server's URL ends in /mcp: its endpoint).
            assert f'"{urllib.parse.urlsplit(services[name]["url"]).netloc}"' in written, name
        printed = cli("prometheus-config", "--interval", "1s", data_dir=data, env=env)
        assert printed.returncode == 0, printed.stderr
        config = tmp_path / "prometheus.yml"
        config.write_text(printed.stdout)
        port = free_port()
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 25
        targets: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                targets = _targets(port)
            except OSError:
                targets = []
            if len(targets) == len(METRICS_PATHS) and all(t["health"] == "up" for t in targets):
                break
            assert prom.poll() is None, "prometheus exited"
            time.sleep(0.3)
        health = {t["labels"]["service"]: (t["health"], t["lastError"]) for t in targets}  # type: ignore[index]
        assert health == {name: ("up", "") for name in METRICS_PATHS}, health
        # Every service's request counter, as Prometheus scraped it (its own scrapes of
        # /metrics are requests too, so each has a sample once two scrapes are in).
        found: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline + 5 and len(found) < len(METRICS_PATHS):
            for name in METRICS_PATHS:
                if name not in found:
                    rows = _query(port, f'{name}_requests_total{{service="{name}"}}')
                    if rows:
                        found[name] = rows
            time.sleep(0.3)
        assert sorted(found) == sorted(METRICS_PATHS), sorted(found)
        for name, rows in found.items():
            for row in rows:
                labels = row["metric"]
                assert labels["job"] == f"datarooms_{name}"
                assert set(labels) == {
                    "__name__", "instance", "job", "service", "server_name",
                    "method", "route", "status",
                }, labels  # fmt: skip
                # Route templates, never raw paths (no room id, token or user path).
                assert "!" not in labels["route"] and "@" not in labels["route"], labels
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        code, _out, err = up.interrupt()
        assert code == 0, err
