"""The audit trail: one structured record per tool call or resource read by an agent.

Records go to the ``datarooms.audit`` logger at INFO, with these fields (never
arguments, message contents, record values, tokens or error texts, which could
carry contents):

=============  =================================================================
``audit``      ``tool_call``, ``resource_read`` or ``auth``
``agent``      the agent's name (``-`` for an unauthenticated HTTP request)
``user_id``    the agent's Matrix user id
``tool``       the tool name (or the resource URI template for resource reads)
``room``       the room id acted on, ``*`` for all rooms, or ``-``
``decision``   ``allowed`` or ``denied``
``capability`` the missing capability when denied (e.g. ``access:write``)
``outcome``    ``ok`` or ``error`` (for allowed calls)
``errcode``    the error code when the outcome is an error (``DR_NOT_FOUND``, ...)
``transport``  ``stdio`` or ``http``
``duration_ms`` how long the call took
=============  =================================================================

:func:`open_audit_file` adds a JSON-lines file as a second destination; in the scale
profile :func:`open_audit_table` adds the table ``audit`` of the services' PostgreSQL
(schema ``mcp``, one row per record, the same fields and ``ts``) instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from datarooms._db import Database, StoreTarget
from datarooms._fs import PRIVATE_FILE, private_dir, private_file
from datarooms._logging import JsonFormatter, RedactingFilter
from datarooms.errors import ConfigError

AUDIT_LOGGER = "datarooms.audit"
log = logging.getLogger(AUDIT_LOGGER)


@dataclass
class AuditRecord:
    kind: str
    agent: str
    user_id: str
    tool: str
    transport: str
    room: str = "-"
    decision: str = "allowed"
    capability: str = "-"
    outcome: str = "ok"
    errcode: str = "-"
    started: float = field(default_factory=time.perf_counter)

    def deny(self, capability: str) -> None:
        self.decision = "denied"
        self.capability = capability
        self.outcome = "error"
        self.errcode = "DR_CAPABILITY"

    def fail(self, errcode: str) -> None:
        self.outcome = "error"
        self.errcode = errcode

    def emit(self) -> None:
        duration = round((time.perf_counter() - self.started) * 1000, 1)
        log.info(
            "%s %s by %s: %s",
            self.kind,
            self.tool,
            self.agent,
            self.decision,
            extra={
                "audit": self.kind,
                "agent": self.agent,
                "user_id": self.user_id,
                "tool": self.tool,
                "room": self.room,
                "decision": self.decision,
                "capability": self.capability,
                "outcome": self.outcome,
                "errcode": self.errcode,
                "transport": self.transport,
                "duration_ms": duration,
            },
        )


_current: contextvars.ContextVar[AuditRecord | None] = contextvars.ContextVar(
    "datarooms_mcp_audit", default=None
)


def current() -> AuditRecord | None:
    return _current.get()


def begin(record: AuditRecord) -> contextvars.Token[AuditRecord | None]:
    return _current.set(record)


def end(token: contextvars.Token[AuditRecord | None]) -> None:
    _current.reset(token)


def note_room(room: str) -> None:
    """Tell the audit record of the running call which room it acts on."""
    rec = _current.get()
    if rec is not None:
        rec.room = room


def auth_denied(reason: str, transport: str = "http") -> None:
    """An HTTP request whose bearer token matched no agent."""
    rec = AuditRecord("auth", "-", "-", "-", transport)
    rec.deny(reason)
    rec.emit()


class _ToProcessLog(logging.Handler):
    """Passes audit records on to the process log, at the process log's own level."""

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        if record.levelno >= root.getEffectiveLevel():
            root.handle(record)


def open_audit_file(path: Path) -> logging.Handler:
    """Append every audit record to ``path`` as JSON lines (whatever the process log level);
    returns the handler to pass to :func:`close_audit_file`."""
    try:
        private_dir(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE))
        private_file(path)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot open the MCP audit log {path}: {exc.strerror or exc}; "
            "set [mcp] audit_log in agents.toml"
        ) from None
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    return _attach(handler)


#: The fields of an audit record, as the file's JSON keys and the table's columns.
FIELDS = (
    "audit",
    "agent",
    "user_id",
    "tool",
    "room",
    "decision",
    "capability",
    "outcome",
    "errcode",
    "transport",
    "duration_ms",
)
AUDIT_STORE = "mcp"
AUDIT_MIGRATIONS = [
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        audit TEXT NOT NULL, agent TEXT NOT NULL, user_id TEXT NOT NULL, tool TEXT NOT NULL,
        room TEXT NOT NULL, decision TEXT NOT NULL, capability TEXT NOT NULL,
        outcome TEXT NOT NULL, errcode TEXT NOT NULL, transport TEXT NOT NULL,
        duration_ms REAL NOT NULL
    );
    CREATE INDEX audit_ts ON audit (ts)
    """
]
_INSERT = (
    f"INSERT INTO audit (ts, {', '.join(FIELDS)}) VALUES ({', '.join('?' * (len(FIELDS) + 1))})"  # noqa: S608
)


class _ToTable(logging.Handler):
    """Writes each audit record as a row (committed before the call's answer)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self._lock_rows = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        row = [record.created, *(getattr(record, f, "-") for f in FIELDS)]
        try:
            with self._lock_rows:
                self.db.execute(_INSERT, row)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self._lock_rows:
            self.db.close()
        super().close()


def open_audit_table(target: StoreTarget, sqlite_path: Path) -> logging.Handler:
    """Append every audit record to the services' store ``mcp`` (a table ``audit``)."""
    return _attach(_ToTable(target.open(AUDIT_STORE, sqlite_path, AUDIT_MIGRATIONS)))


def import_audit_file(path: Path, db: Database) -> int:
    """The records of a JSON-lines audit file as rows of ``db`` (a migration); the rows."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(rec, dict) and "audit" in rec:
            rows.append([rec.get("ts", 0.0), *(rec.get(f, "-") for f in FIELDS)])
    with db.transaction():
        db.execute("DELETE FROM audit")
        db.executemany(_INSERT, rows)
    return len(rows)


def _attach(handler: logging.Handler) -> logging.Handler:
    handler._datarooms_audit = True  # type: ignore[attr-defined]  # one of our destinations
    if not any(isinstance(h, _ToProcessLog) for h in log.handlers):
        log.addHandler(_ToProcessLog())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def close_audit_file(handler: logging.Handler) -> None:
    """Detach a destination made by :func:`open_audit_file` or :func:`open_audit_table`."""
    log.removeHandler(handler)
    handler.close()
    if not any(getattr(h, "_datarooms_audit", False) for h in log.handlers):
        for h in [h for h in log.handlers if isinstance(h, _ToProcessLog)]:
            log.removeHandler(h)
        log.setLevel(logging.NOTSET)
        log.propagate = True
