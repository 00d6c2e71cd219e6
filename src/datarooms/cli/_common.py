"""What every CLI command shares: settings, the console, running coroutines."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from datarooms.config import Settings, load_settings

T = TypeVar("T")

# Piped output is read by scripts: do not fold tables to 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class CliState:
    data_dir: Path | None = None
    config_file: Path | None = None
    log_level: str | None = None
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
