"""The CLI's console and its plain-data output, without typer: light enough for the
fast path (:mod:`datarooms.cli._fast`), which prints before typer is imported.

rich is imported the first time something is printed through :data:`console` on a
terminal, not before.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, cast

from datarooms.errors import ValidationError

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich ``Console`` made on first use (importing rich costs more than a `put`'s I/O)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def real_console(c: Any) -> Console:
    """The rich Console behind :data:`console` or :data:`err_console`, for rich objects
    (progress bars, live displays) that want the real thing."""
    return c.real if isinstance(c, _LazyConsole) else cast("Console", c)


# Piped output is read by scripts: do not fold tables to 80 columns.
console = cast("Console", _LazyConsole(soft_wrap=True, width=None if sys.stdout.isatty() else 250))
err_console = cast("Console", _LazyConsole(stderr=True, soft_wrap=True))


def echo(text: str) -> None:
    """Print one line of data (ids, keys, values): verbatim, never read as markup;
    through rich only on a terminal, so that a script's `put` does not load it."""
    if sys.stdout.isatty():
        console.print(text, markup=False)
    else:
        print(text, flush=True)


def print_json(value: Any) -> None:
    """Print a JSON value indented, as ``console.print_json`` does (colours on a terminal)."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if sys.stdout.isatty():
        console.print_json(text)
    else:
        print(text, flush=True)


def parse_value(raw: str, text: bool) -> Any:
    """A value given on the command line: JSON (``-`` reads stdin), or text with ``--text``."""
    if raw == "-":
        raw = sys.stdin.read()
    if text:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"the value is not JSON ({exc.msg} at column {exc.colno}); quote text as "
            "'\"like this\"' or pass --text"
        ) from None
