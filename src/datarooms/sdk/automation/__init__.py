"""Automation: inbound webhooks into rooms (registry, verification, formats, a durable
outbox and its deliverer). The HTTP side is the automation service
(:mod:`datarooms.services.automation`); see docs/automation.md."""

from __future__ import annotations

from datarooms.sdk.automation.deliver import Deliverer
from datarooms.sdk.automation.formats import (
    ALERT_KEY,
    SOURCE_KEY,
    Delivery,
    PayloadError,
    lookup,
    parse,
    render,
)
from datarooms.sdk.automation.outbox import HookOutbox, OutboxRow
from datarooms.sdk.automation.registry import (
    AUTH_METHODS,
    FORMATS,
    TARGETS,
    Hook,
    HookRegistry,
    check_hook,
)
from datarooms.sdk.automation.signatures import (
    SIGNATURE_HEADER,
    TOKEN_HEADER,
    SignatureError,
    StaleTimestampError,
    github_signature,
    sign,
    verify_github,
    verify_signed,
    verify_token,
)

__all__ = [
    "ALERT_KEY",
    "AUTH_METHODS",
    "FORMATS",
    "SIGNATURE_HEADER",
    "SOURCE_KEY",
    "TARGETS",
    "TOKEN_HEADER",
    "Deliverer",
    "Delivery",
    "Hook",
    "HookOutbox",
    "HookRegistry",
    "OutboxRow",
    "PayloadError",
    "SignatureError",
    "StaleTimestampError",
    "check_hook",
    "github_signature",
    "lookup",
    "parse",
    "render",
    "sign",
    "verify_github",
    "verify_signed",
    "verify_token",
]
