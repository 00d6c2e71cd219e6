"""The automation service: inbound webhooks into end-to-end encrypted rooms
(docs/automation.md). The logic (registry, verification, formats, outbox, deliverer)
is in :mod:`datarooms.sdk.automation`; this is its HTTP side and platform service."""

from __future__ import annotations

from datarooms.services.automation.service import (
    AutomationBot,
    AutomationService,
    hook_url,
    outbox_path,
    registry_path,
    running_url,
)

__all__ = [
    "AutomationBot",
    "AutomationService",
    "hook_url",
    "outbox_path",
    "registry_path",
    "running_url",
]
