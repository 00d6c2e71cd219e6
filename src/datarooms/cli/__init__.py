"""The ``datarooms`` command line. Thin: every command calls the SDK or the platform.

The app is imported when :func:`main` runs, so that modules of this package
(shared helpers) can be imported by the services' own CLI modules without a cycle.
"""

from __future__ import annotations

import os
import sys

from datarooms.errors import DataroomsError


def main() -> None:
    """Entry point: run the CLI; print errors as one clear message, never a traceback."""
    from datarooms.cli._console import err_console
    from datarooms.cli._fast import try_fast

    try:
        # `put`/`get`/`history`/`send` while the platform runs: without typer or nio.
        code = try_fast(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        # typer's rich help (typer 0.29) costs ~0.5 s of a --help; click's plain help
        # says the same. TYPER_USE_RICH=1 brings the boxes back.
        os.environ.setdefault("TYPER_USE_RICH", "0")
        from datarooms.cli.app import click_command

        click_command().main(prog_name="datarooms")
    except DataroomsError as exc:
        from rich.markup import escape

        err_console.print("[bold red]error:[/] " + escape(exc.message), highlight=False)
        sys.exit(1)
    except OSError as exc:  # a file or socket problem nothing above turned into a message
        from rich.markup import escape

        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err_console.print(
            "[bold red]error:[/] " + escape(f"{exc.strerror or exc}{where}"), highlight=False
        )
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["main"]
