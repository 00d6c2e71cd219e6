"""Operating a platform: backup, restore, prometheus-config, migrate-to-postgres."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from datarooms.cli._common import console, err_console, state
from datarooms.errors import ValidationError


def _passphrase() -> str:
    phrase = sys.stdin.readline().rstrip("\n")
    if not phrase:
        raise ValidationError("--passphrase-stdin was given but stdin held no passphrase")
    return phrase


def backup(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="The archive to write (a new file)")],
    recipient: Annotated[
        list[str] | None,
        typer.Option("--recipient", "-r", help="Encrypt to this age public key (age1...); repeat"),
    ] = None,
    passphrase_stdin: Annotated[
        bool, typer.Option("--passphrase-stdin", help="Encrypt with a passphrase read from stdin")
    ] = False,
) -> None:
    """Write an encrypted archive of the whole platform (it may keep running)."""
    from datarooms.services.backup import backup as run_backup

    settings = state(ctx).settings()
    phrase = _passphrase() if passphrase_stdin else None
    count = 0

    def progress(name: str) -> None:
        nonlocal count
        count += 1
        if sys.stderr.isatty() and count % 50 == 0:
            err_console.print(f"  {count} files ...", highlight=False)

    report = run_backup(
        settings, out, recipients=recipient or [], passphrase=phrase, progress=progress
    )
    console.print(
        f"backup written: {report.path} ({report.files} files, {report.databases} databases "
        f"copied online, {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s)",
        highlight=False,
    )
    if report.skipped:
        err_console.print(f"gone while copying (left out): {', '.join(report.skipped)}")
    for note in report.notes:
        err_console.print(f"not in the backup: {note}", highlight=False)


def restore(
    ctx: typer.Context,
    archive: Annotated[Path, typer.Argument(help="A backup written by `datarooms backup`")],
    identity: Annotated[
        list[Path] | None,
        typer.Option("--identity", "-i", help="An age identity file (AGE-SECRET-KEY-1...); repeat"),
    ] = None,
    passphrase_stdin: Annotated[
        bool, typer.Option("--passphrase-stdin", help="Read the backup's passphrase from stdin")
    ] = False,
) -> None:
    """Bring a platform back from a backup into --data-dir (new or empty)."""
    from datarooms.services.backup import restore as run_restore

    st = state(ctx)
    data_dir = st.data_dir or st.settings().data_dir
    identities = [p.read_text() for p in identity or []]
    phrase = _passphrase() if passphrase_stdin else None
    report = run_restore(archive, data_dir, identities=identities, passphrase=phrase)
    loaded = f", PostgreSQL: {', '.join(report.databases)}" if report.databases else ""
    console.print(
        f"restored {report.files} files ({report.bytes / 1e6:.1f} MB{loaded}) into "
        f"{report.data_dir} in {report.seconds:.1f} s; start it with "
        f"`datarooms --data-dir {report.data_dir} up`",
        highlight=False,
    )


def prometheus_config(
    ctx: typer.Context,
    interval: Annotated[
        str, typer.Option("--interval", help="Prometheus scrape_interval (15s, 500ms, 1m)")
    ] = "15s",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file (else stdout)")
    ] = None,
) -> None:
    """Print (or write) a Prometheus scrape config for every running service's /metrics."""
    from datarooms.cli._common import run
    from datarooms.errors import NotRunningError
    from datarooms.services.platform import platform_status
    from datarooms.services.prometheus import scrape_config

    settings = state(ctx).settings()
    st = run(platform_status(settings))
    if not st.running or st.info is None:
        raise NotRunningError(
            f"datarooms is not running on {settings.data_dir}: start it with `datarooms up` "
            "(it also writes run/prometheus.yml)"
        )
    text = scrape_config(st.info, interval=interval)
    if output is None:
        sys.stdout.write(text)
        return
    from datarooms._fs import atomic_write

    atomic_write(output, text)
    console.print(f"wrote {output}", markup=False)


def migrate_to_postgres(ctx: typer.Context) -> None:
    """Move a stopped embedded platform's Synapse (SQLite) into the scale profile's PostgreSQL."""
    from datarooms.cli._common import run
    from datarooms.services.migrate import migrate_to_postgres as run_migrate

    settings = state(ctx).settings()

    def progress(line: str) -> None:
        err_console.print(line, markup=False, highlight=False)

    report = run(run_migrate(settings, progress=progress))
    if not report.migrated:
        console.print(f"already migrated ({report.config_file}): nothing changed", markup=False)
        return
    counts = ", ".join(
        f"{n} {t}" for t, n in report.counts.items() if t in ("users", "rooms", "events")
    )
    console.print(
        f"migrated to PostgreSQL in {report.seconds:.1f} s ({counts}); {report.config_file} now "
        f'says profile = "scale"; the SQLite database is kept as {report.sqlite_kept}; '
        "start it with `datarooms up`",
        markup=False,
        highlight=False,
    )
