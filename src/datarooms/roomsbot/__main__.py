"""``python -m datarooms.roomsbot``: the rooms bot's commands, runnable on their own.

The same commands are meant for the main CLI (``datarooms roomsbot``, ``datarooms
devchain``, ``datarooms entity ...``); this entry point serves until they are wired
there, and for running the bot as a separate process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from datarooms._logging import configure_logging
from datarooms.config import Settings, load_settings
from datarooms.errors import DataroomsError
from datarooms.roomsbot.cli import devchain_command, entity_app, roomsbot_command

err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class _State:
    data_dir: Path | None

    def settings(self) -> Settings:
        return load_settings(data_dir=self.data_dir)


app = typer.Typer(
    name="datarooms-roomsbot",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", "-d", envvar="DATAROOMS_DATA_DIR")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "WARNING",
    log_format: Annotated[str, typer.Option("--log-format")] = "text",
) -> None:
    ctx.obj = _State(data_dir)
    configure_logging(log_level, fmt=log_format)


app.command("roomsbot")(roomsbot_command)
app.command("devchain")(devchain_command)
app.add_typer(entity_app, name="entity")


def main() -> None:
    try:
        app()
    except DataroomsError as exc:
        err_console.print("[bold red]error:[/] " + escape(exc.message), highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
