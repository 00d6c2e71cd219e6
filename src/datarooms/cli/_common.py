"""What every CLI command shares: settings, the console, running coroutines.

Light to import on purpose (see :mod:`datarooms.cli.app`): rich is imported the
first time something is printed through :data:`console`, not before.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import typer

from datarooms.config import Settings, load_settings
from datarooms.errors import ValidationError

if TYPE_CHECKING:
    from rich.console import Console

    from datarooms.account import Credentials

T = TypeVar("T")


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


@dataclass
class CliState:
    data_dir: Path | None = None
    config_file: Path | None = None
    log_level: str | None = None
    log_format: str = "text"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            s = load_settings(
                data_dir=self.data_dir, config_file=self.config_file, overrides=self.overrides
            )
            if self.log_level:
                s = s.replace(log_level=self.log_level)
            self._settings = s
        return self._settings


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def acting_credentials(settings: Settings) -> Credentials:
    """Who the CLI acts as (``[account]``, else the platform's service account), at the
    homeserver URL of the platform running on this data dir (its run file) when the
    homeserver is embedded, whoever the account is: ``datarooms up --port N`` moves it."""
    from datarooms.account import resolve_credentials

    creds = resolve_credentials(settings)
    if settings.homeserver.mode == "embedded":
        from datarooms.services.platform import running_homeserver_url

        url = running_homeserver_url(settings)
        if url and url != creds.homeserver_url:
            creds = replace(creds, homeserver_url=url)
    return creds


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
