"""Secrets never reach a log line, whatever the caller passes."""

from __future__ import annotations

import io
import json
import logging

from datarooms._logging import configure_logging


def test_secrets_are_redacted_in_messages_and_fields() -> None:
    buf = io.StringIO()
    configure_logging("INFO", fmt="json", stream=buf)
    log = logging.getLogger("datarooms.test")
    recovery = "EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d"
    log.info(
        "login with access_token=syt_abc_DEF and Bearer abc.def", extra={"password": "hunter2"}
    )
    log.info("recovery key is %s", recovery)
    log.warning("token %s", "syt_ZZZ_123", extra={"url": "http://x/?access_token=zzz"})
    out = buf.getvalue()
    for secret in ("syt_abc_DEF", "abc.def", "hunter2", recovery, "syt_ZZZ_123", "=zzz"):
        assert secret not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["password"] == "***"
    assert len(lines) == 3


def test_service_token_shapes_are_redacted() -> None:
    """Tokens of the MCP server, the appservice, OpenID and Synapse refresh tokens (issue 11)."""
    buf = io.StringIO()
    configure_logging("INFO", fmt="text", stream=buf)
    log = logging.getLogger("datarooms.test")
    mcp = "drmcp_9Qm3-xK2v_LpA0bC4dE5fG6hI7jK8lM9nO0pQ1rS2tU"
    as_token, hs_token = "Zk3pL9qRt2VwX5yB8nC1mD4fG7hJ0kLq", "Hs9kQ2wE5rT8yU1iO4pA7sD0fG3hJ6kL"
    openid = "QbVcXzNmLkJhGfDsApOiUyTr"
    log.info("agent called with Authorization: Bearer %s", mcp)
    log.info("transaction from the homeserver: /transactions/1?access_token=%s", hs_token)
    log.info("registration %s", {"as_token": as_token, "url": "http://127.0.0.1:9"})
    log.info('verified {"access_token": "%s", "matrix_server_name": "localhost"}', openid)
    log.info("a refresh token syr_abc_123 and a bare %s", mcp)
    log.info("nested", extra={"body": {"user": "@a:b", "auth": {"password": "hunter2"}}})
    out = buf.getvalue()
    for secret in (mcp, as_token, hs_token, openid, "syr_abc_123", "hunter2"):
        assert secret not in out, secret
    assert "localhost" in out and "@a:b" in out, "redaction keeps what is not secret"
