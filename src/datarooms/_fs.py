"""Small, crash-safe file operations used across the package."""

from __future__ import annotations

import os
from pathlib import Path

from datarooms.errors import DataDirError


def atomic_write(path: Path, content: str | bytes, *, mode: int = 0o644) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the new one, never half.

    The data is fsynced before the rename, so a crash cannot leave an empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove it is writable, or raise :class:`DataDirError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataDirError(
            f"the data directory {path} is not writable ({reason}). "
            "Choose another with --data-dir or DATAROOMS_DATA_DIR."
        ) from None
