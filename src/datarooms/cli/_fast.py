"""The fast path of the record and message commands: no typer, no SDK, no nio.

``datarooms put ROOM KEY VALUE`` (and ``get``, ``history``, ``send``) from a
script in a loop: while ``datarooms up`` runs on the data dir, the command is
parsed here and run on the platform's copy of the CLI device
(:mod:`datarooms.services.clidevice`), so the process costs about what Python's
start-up and the settings cost. Anything this parser does not know for certain
(``--help``, an unknown option, a missing argument, a global option other than
``--data-dir``/``--config``), and any request the platform declines, goes to the
full command line instead, which parses, reports and runs it as it always did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datarooms.errors import DataroomsError

#: command -> (positional names, of which optional at the end; option -> (key, takes a value))
_COMMANDS: dict[str, tuple[tuple[str, ...], int, dict[str, tuple[str, bool]]]] = {
    "put": (
        ("room", "key", "value"),
        0,
        {"--schema": ("schema", True), "--txn": ("txn", True), "--text": ("text", False)},
    ),
    "get": (("room", "key"), 1, {"--json": ("as_json", False)}),
    "history": (("room", "key"), 0, {"--limit": ("limit", True)}),
    "send": (("room", "text"), 0, {}),
}
_GLOBAL = {"--data-dir": "data_dir", "-d": "data_dir", "--config": "config", "-c": "config"}


class _NotMine(Exception):
    """Leave this command line to the full CLI."""


def _parse(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    glob: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, val = argv[i].partition("=")
        if name not in _GLOBAL:
            raise _NotMine
        if not eq:
            i += 1
            if i >= len(argv):
                raise _NotMine
            val = argv[i]
        glob[_GLOBAL[name]] = val
        i += 1
    if i >= len(argv) or argv[i] not in _COMMANDS:
        raise _NotMine
    command = argv[i]
    names, optional, options = _COMMANDS[command]
    positional: list[str] = []
    opts: dict[str, Any] = {}
    rest = argv[i + 1 :]
    j = 0
    only_args = False
    while j < len(rest):
        arg = rest[j]
        if not only_args and arg == "--":
            only_args = True
        elif not only_args and arg.startswith("-") and arg != "-":
            name, eq, val = arg.partition("=")
            if name not in options:
                raise _NotMine  # --help, a negative number, a typo: typer says what it is
            key, takes_value = options[name]
            if takes_value:
                if not eq:
                    j += 1
                    if j >= len(rest):
                        raise _NotMine
                    val = rest[j]
                opts[key] = val
            elif eq:
                raise _NotMine
            else:
                opts[key] = True
        else:
            positional.append(arg)
        j += 1
    if not len(names) - optional <= len(positional) <= len(names):
        raise _NotMine
    values: dict[str, Any] = dict(zip(names, positional, strict=False))
    values.update(opts)
    return command, values, glob


def try_fast(argv: list[str]) -> int | None:
    """Run ``argv`` on the platform's device and return the exit code, or None to
    leave it to the full CLI (nothing was done). Errors are raised, for
    :func:`datarooms.cli.main` to print as it prints every command's."""
    if os.environ.get("DATAROOMS_CLI_DEVICE", "").strip().lower() == "local":
        return None
    try:
        command, v, glob = _parse(argv)
    except _NotMine:
        return None
    from datarooms.account import resolve_credentials
    from datarooms.cli import _device
    from datarooms.cli._console import parse_value
    from datarooms.config import load_settings
    from datarooms.services import clidevice

    try:
        settings = load_settings(
            data_dir=Path(glob["data_dir"]) if "data_dir" in glob else None,
            config_file=Path(glob["config"]) if "config" in glob else None,
        )
        if not clidevice.socket_path(settings).exists():
            return None
        creds = resolve_credentials(settings)
    except DataroomsError:
        return None  # the full CLI reports it as it always has
    if not creds.user_id:
        return None
    if command == "history" and "limit" in v:
        try:
            v["limit"] = int(v["limit"])
        except ValueError:
            return None
    if command == "put":
        v["value"] = parse_value(v["value"], bool(v.pop("text", False)))
    as_json = bool(v.pop("as_json", False))
    if command == "get":
        v.setdefault("key", None)
    try:
        result = clidevice.call(settings, creds, command, v)
    except clidevice.Declined:
        # Nothing was done, but stdin may have been read: run it here, as the full
        # CLI would have.
        from datarooms._logging import configure_logging

        configure_logging("WARNING")
        result = _device.run_here(settings, command, v)
    if command == "put":
        _device.show_put(result)
    elif command == "get":
        _device.show_get(result, whole=v["key"] is None, as_json=as_json)
    elif command == "history":
        _device.show_history(result)
    else:
        _device.show_send(result)
    return 0
