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
