"""``datarooms doc show | edit | watch``: thin over the SDK's ``client.docs``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from datarooms.cli._common import echo, parse_value, print_json
from datarooms.cli.data import with_client
from datarooms.errors import ValidationError
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.docs import DEFAULT_NAME, DocChange

docs_app = typer.Typer(
    help="Collaborative documents (CRDT, IXO matrix-crdt format), end-to-end encrypted.",
    no_args_is_help=True,
)

RoomArg = Annotated[str, typer.Argument(help="Room id (!...) or alias (#...)")]
NameOpt = Annotated[
    str, typer.Option("--name", help="Which document of the room (default: the IXO one)")
]


@docs_app.command("show")
def show(ctx: typer.Context, room: RoomArg, name: NameOpt = DEFAULT_NAME) -> None:
    """Print the document as JSON (text roots as strings, maps as objects, arrays as lists)."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        print_json(await c.docs.read(rid, name))

    with_client(ctx, go)


@docs_app.command("edit")
def edit(
    ctx: typer.Context,
    room: RoomArg,
    name: NameOpt = DEFAULT_NAME,
    text: Annotated[str, typer.Option("--text", help="The root text to open in $EDITOR")] = "body",
    set_: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--set",
            metavar="PATH VALUE",
            help="Set PATH (ROOT for a text, ROOT/KEY/... in a map) to VALUE (JSON, else text)",
        ),
    ] = None,
) -> None:
    """Edit the document: ``--set PATH VALUE``, or a root text in $EDITOR (merged, not replaced)."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        doc = await c.docs.open(rid, name, live=False, batch_ms=0)
        try:
            if set_ is not None:
                path, raw = set_
                try:
                    value = parse_value(raw, text=False)
                except ValidationError:
                    value = raw  # plain text
                if "/" not in path.strip("/") and not isinstance(value, str):
                    value = raw
                doc.set(path, value)
            else:
                before = str(doc.text(text))
                after = _run_editor(before)
                if after == before:
                    echo("no change")
                    return
                doc.replace_text(text, after)
            await doc.flush()
            echo(f"saved {name}")
        finally:
            await doc.close()

    with_client(ctx, go)


def _run_editor(initial: str) -> str:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="datarooms-doc-") as tmp:
        path = Path(tmp) / "document.txt"
        path.write_text(initial, encoding="utf-8")
        path.chmod(0o600)
        result = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if result.returncode != 0:
            raise ValidationError(
                f"the editor {editor!r} exited with {result.returncode}; not saved"
            )
        return path.read_text(encoding="utf-8")


@docs_app.command("watch")
def watch(
    ctx: typer.Context,
    room: RoomArg,
    name: NameOpt = DEFAULT_NAME,
    count: Annotated[
        int, typer.Option(help="Stop after this many remote changes (0: until Ctrl-C)")
    ] = 0,
) -> None:
    """Print the document, then one JSON line of it after every change, until Ctrl-C."""
    if count < 0:
        raise ValidationError("--count must not be negative")

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        doc = await c.docs.open(rid, name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        seen = 0
        print(json.dumps(doc.to_json(), ensure_ascii=False), flush=True)

        def changed(change: DocChange) -> None:
            nonlocal seen
            if change.local:
                return
            seen += 1
            print(json.dumps(doc.to_json(), ensure_ascii=False), flush=True)
            if count and seen >= count:
                stop.set()

        unsubscribe = doc.observe(changed)
        try:
            await stop.wait()
        finally:
            unsubscribe()
            with contextlib.suppress(Exception):
                await doc.close()

    with_client(ctx, go)


__all__ = ["docs_app"]
