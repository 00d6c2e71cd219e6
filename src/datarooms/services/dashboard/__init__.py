"""The web dashboard: rooms, twins (live), telemetry charts, files, messages and access,
served to each signed-in user from their own E2EE device (docs/dashboard.md)."""

from __future__ import annotations

from datarooms.services.dashboard.service import Dashboard, DashboardService, running_url

__all__ = ["Dashboard", "DashboardService", "running_url"]
