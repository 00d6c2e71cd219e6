"""Structured logging with secrets redacted.

Log records are rendered as one JSON object a line (``--log-format json``) or as
readable text. A filter masks anything that looks like a secret (access tokens,
passwords, recovery keys) in the message and in structured ``extra`` fields, so
a careless log call cannot leak one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_KEYS = re.compile(
    r"(access_token|password|passphrase|recovery_key|secret|pickle_key|private_key|token"
    r"|authorization|session_key|macaroon)",
    re.IGNORECASE,
)
# Names whose values are secrets when they appear as ``name=value`` or in JSON / a repr.
_SECRET_NAMES = "|".join(  # names of secrets, not secrets
    (
        "access_token",
        "as_token",
        "hs_token",
        "refresh_token",
        "id_token",
        "token",
        "password",
        "passphrase",
        "secret",
        "registration_shared_secret",
        "macaroon_secret_key",
        "form_secret",
        "pickle_key",
        "recovery_key",
        "session_key",
        "private_key",
    )
)
_SECRET_PATTERNS = [
    # Synapse access and refresh tokens; our MCP agent tokens.
    re.compile(r"sy[tr]_[A-Za-z0-9_]+"),
    re.compile(r"drmcp_[A-Za-z0-9_-]+"),
    # Authorization headers: Bearer (access, OpenID, MCP, UCAN) and Basic.
    re.compile(r"(?i)((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"),
    # key=value secrets in URLs and forms (``?access_token=``, appservice ``hs_token``).
    re.compile(rf"(?i)((?<![A-Za-z0-9])(?:{_SECRET_NAMES})=)[^&\s\"',]+"),
    # "key": "value" in logged JSON, and 'key': 'value' in a logged dict's repr.
    re.compile(rf"(?i)([\"'](?:{_SECRET_NAMES})[\"']\s*:\s*[\"'])[^\"']+"),
    # A Matrix recovery key: 12 groups of 4 base58 characters.
    re.compile(r"\b(?:[1-9A-HJ-NP-Za-km-z]{4} ){11}[1-9A-HJ-NP-Za-km-z]{4}\b"),
]
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***", text)
    return text


def _redact_value(value: Any) -> Any:
    """Redact a structured ``extra`` value: strings, and dicts and lists of them, nested."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEYS.search(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = redact(str(record.msg))
        for key in list(vars(record)):
            if key in _STANDARD:
                continue
            if _SECRET_KEYS.search(key):
                setattr(record, key, "***")
            else:
                setattr(record, key, _redact_value(getattr(record, key)))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def configure_logging(level: str = "INFO", *, fmt: str = "text", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # nio logs every request at INFO through logbook/logging; keep it quiet.
    for noisy in ("nio", "aiohttp.access", "peewee"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # nio warns about every event whose key has not arrived yet; the SDK keeps such
    # events and decrypts them when the key comes (or says why it cannot): below DEBUG,
    # those warnings are noise on a user's terminal.
    if root.level > logging.DEBUG:
        logging.getLogger("nio.crypto").setLevel(logging.ERROR)
