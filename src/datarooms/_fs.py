"""Small, crash-safe file operations used across the package."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from datarooms.errors import AlreadyRunningError, DataDirError

log = logging.getLogger(__name__)

#: Everything datarooms writes is private to the user who runs it: data dirs, device stores,
#: configs with secrets, SQLite databases with tokens and decrypted values.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as a directory only its owner can enter.

    An existing directory whose mode lets the group or others in is tightened, with a warning:
    someone loosened it, or an older version made it.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for parent in reversed(missing):  # ``mkdir(parents=True)`` gives parents the umask's mode
        parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "tightening permissions that let other users in",
            extra={"path": str(path), "mode": oct(mode), "new_mode": oct(mode & 0o700)},
        )
        os.chmod(path, mode & 0o700)
    return path


def private_file(path: Path) -> None:
    """Make an existing file readable and writable by its owner only (no-op if it is)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def harden_tree(root: Path, *, warn: bool = True) -> list[Path]:
    """Check and repair a private tree: no file or directory under ``root`` open to others.

    Returns the paths that were loosened (and are now fixed), and warns (``warn``): a data
    dir holds the homeserver's secrets, access tokens and decrypted data. ``warn=False`` is
    for files a library just created with the process umask (nio's crypto store).
    """
    fixed: list[Path] = []
    if not root.exists():
        return fixed
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in [None, *filenames]:
            path = here if name is None else here / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
                fixed.append(path)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    if fixed and warn:
        log.warning(
            "repaired permissions that let other users read private data",
            extra={"root": str(root), "count": len(fixed), "first": str(fixed[0])},
        )
    return fixed


def atomic_write(path: Path, content: str | bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the new one, never half.

    The data is fsynced before the rename, so a crash cannot leave an empty file. The file is
    private by default (``mode``), and so is a parent directory this creates.
    """
    if not path.parent.exists():
        private_dir(path.parent)
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
        private_dir(path)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataDirError(
            f"the data directory {path} is not writable ({reason}). "
            "Choose another with --data-dir or DATAROOMS_DATA_DIR."
        ) from None


class ProcessLock:
    """An exclusive, crash-safe lock held by one process (``flock``; the file holds its pid).

    The lock dies with the process, so a crash never leaves it behind.
    """

    def __init__(self, path: Path, *, what: str, hint: str = "") -> None:
        self.path = path
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`AlreadyRunningError` naming the holder's pid."""
        if not self.path.parent.exists():
            private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(self.path)
            hint = f". {self.hint}" if self.hint else ""
            raise AlreadyRunningError(
                f"{self.what} is already running (pid {pid or 'unknown'}){hint}", pid=pid
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid holding the lock at ``path`` (-1 if unknown), or None if nobody does."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class DeviceLock:
    """Who has a device's store open (``flock`` on a file in it): any number of
    processes together (shared), or one alone (exclusive). Dies with the process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, *, exclusive: bool) -> bool:
        """Take it without waiting; False if another process holds it in a way that
        excludes this one."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
