"""Every event type we define is documented with the same JSON Schema the code uses."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

from datarooms.events import ALL_SCHEMAS, RECORD, RECORD_SCHEMA

DOCS = Path(__file__).resolve().parent.parent / "docs" / "events"


def test_docs_match_code() -> None:
    for name, schema in ALL_SCHEMAS.items():
        doc = DOCS / f"{name}.json"
        assert doc.exists(), f"{name} has no schema in docs/events/"
        assert json.loads(doc.read_text()) == schema, f"docs/events/{name}.json is stale"
        Draft202012Validator.check_schema(schema)


def test_record_schema_accepts_what_we_send() -> None:
    validator = Draft202012Validator(RECORD_SCHEMA)
    assert validator.is_valid({"key": "k", "value": {"a": 1}, "txn": "t1", "schema": "s"})
    assert not validator.is_valid({"key": "", "value": 1, "txn": "t"})
    assert not validator.is_valid({"key": "k", "txn": "t"})
    assert RECORD == "io.datarooms.record"
