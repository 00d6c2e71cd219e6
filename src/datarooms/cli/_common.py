"""What every CLI command shares: settings, the console, running coroutines.

Light to import on purpose (see :mod:`datarooms.cli.app`): rich is imported the
first time something is printed through :data:`console`, not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from datarooms.cli._console import (
    console,
    echo,
    err_console,
    parse_value,
    print_json,
    real_console,
)
from datarooms.cli._device import acting_credentials
from datarooms.config import Settings, load_settings

if TYPE_CHECKING:
    pass

T = TypeVar("T")


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


__all__ = [
    "CliState",
    "acting_credentials",
    "console",
    "echo",
    "err_console",
    "parse_value",
    "print_json",
    "real_console",
    "run",
    "state",
]
