from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datarooms.testing import TestHomeserver


@pytest.fixture(scope="session")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHomeserver]:
    """One real Synapse for the whole test session."""
    with TestHomeserver(tmp_path_factory.mktemp("homeserver")) as hs:
        yield hs


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
