"""CLI pieces for the main ``datarooms`` app (registered there):

- ``mcp``: the command ``datarooms mcp --agent NAME`` (stdio transport);
- ``agents_app``: ``datarooms agents add | list | remove | token``.

Register with::

    from datarooms.cli.mcp import agents_app, mcp
    app.command()(mcp)
    app.add_typer(agents_app, name="agents")
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from datarooms._logging import configure_logging
from datarooms.cli._common import console, err_console, run, state
from datarooms.errors import ConfigError
from datarooms.events import ROOM_KINDS
from datarooms.services.mcp.config import (
    add_agent,
    agent_localpart,
    agents_file,
    load_agents,
    remove_agent,
    rotate_token,
)
from datarooms.services.mcp.policy import TOOLS

agents_app = typer.Typer(
    help="AI agents of the MCP server: who they are and what they may do.",
    no_args_is_help=True,
)


def mcp(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", "-a", help="Agent name, as in agents.toml")],
) -> None:
    """Serve one agent over MCP stdio (for Claude Desktop, IDEs, the MCP inspector)."""
    from datarooms.services.mcp.stdio import run_stdio

    st = state(ctx)
    settings = st.settings()
    # stdout carries the protocol: logs and audit records go to stderr.
    configure_logging(st.log_level or "WARNING", fmt="json", stream=sys.stderr)
    run(run_stdio(settings, agent))


@agents_app.command("add")
def agents_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Agent name: lower-case letters, digits, . _ = -")],
    access: Annotated[str, typer.Option(help="read or write")] = "read",
    room: Annotated[
        list[str] | None,
        typer.Option(
            "--room", help='Room id or alias it may use (repeat); "*" = any room it is in'
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help=f"Data-room kind it may use (repeat): {', '.join(ROOM_KINDS)}"),
    ] = None,
    did: Annotated[
        list[str] | None, typer.Option("--did", help="Entity DID whose rooms it may use (repeat)")
    ] = None,
    tool: Annotated[
        list[str] | None,
        typer.Option(
            "--tool", help="Allow only these tools (repeat); default: all its access permits"
        ),
    ] = None,
    files_dir: Annotated[
        str | None, typer.Option(help="Directory it may upload from and save files to")
    ] = None,
    description: Annotated[str, typer.Option(help="What the agent is for")] = "",
    no_token: Annotated[
        bool, typer.Option("--no-token", help="No HTTP bearer token (stdio only)")
    ] = False,
) -> None:
    """Add an agent and print its bearer token (shown once; only its hash is stored)."""
    settings = state(ctx).settings()
    path = agents_file(settings.data_dir)
    if access not in ("read", "write"):
        raise ConfigError(f"--access must be read or write, got {access!r}")
    token = add_agent(
        path,
        name,
        access=access,
        rooms=room or [],
        room_kinds=kind or [],
        dids=did or [],
        tools=tool,
        files_dir=files_dir,
        description=description,
        with_token=not no_token,
    )
    server = settings.homeserver.server_name
    console.print(f"added agent {name} (@{agent_localpart(name)}:{server}) to {path}")
    if token:
        console.print(f"bearer token (shown once; store it safely): {token}")
    if not (room or kind or did):
        err_console.print(
            "note: it may use no room yet; add --room, --kind or --did "
            "(edit agents.toml, or remove and add it again)"
        )
    console.print(
        "Grant it rooms with `datarooms room grant ROOM @"
        + agent_localpart(name)
        + ":"
        + server
        + " read|write`; restart `datarooms up` to bring a new agent online."
    )


@agents_app.command("list")
def agents_list(ctx: typer.Context) -> None:
    """List the agents and their capabilities (never their tokens)."""
    settings = state(ctx).settings()
    config = load_agents(agents_file(settings.data_dir), data_dir=settings.data_dir)
    table = Table("agent", "access", "rooms", "kinds", "DIDs", "tools", "files dir", "HTTP token")
    for name, p in sorted(config.agents.items()):
        table.add_row(
            name,
            p.access,
            ", ".join(sorted(p.rooms)) or "-",
            ", ".join(sorted(p.room_kinds)) or "-",
            ", ".join(sorted(p.dids)) or "-",
            "all" if p.tools is None else ", ".join(sorted(p.tools)),
            str(p.files_dir) if p.files_dir else "-",
            "yes" if p.token_sha256 else "no",
        )
    console.print(table)
    if not config.agents:
        err_console.print("no agents yet: datarooms agents add NAME --access read --room ROOM")


@agents_app.command("remove")
def agents_remove(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Agent name")]
) -> None:
    """Remove an agent: its token stops working at once (its account and device stay)."""
    settings = state(ctx).settings()
    remove_agent(agents_file(settings.data_dir), name)
    console.print(f"removed agent {name}")


@agents_app.command("token")
def agents_token(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Agent name")]
) -> None:
    """Give an agent a new bearer token; the old one stops working at once."""
    settings = state(ctx).settings()
    token = rotate_token(agents_file(settings.data_dir), name)
    console.print(f"new bearer token for {name} (shown once; store it safely): {token}")


def _until(text: str) -> int:
    """``+3600``, ``+30m``, ``+12h``, ``+7d`` from now, or an ISO 8601 time (UTC if bare)."""
    import datetime as dt
    import time as _time

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text.startswith("+"):
        body, unit = (text[1:-1], text[-1]) if text[-1] in units else (text[1:], "s")
        if not body.isdigit():
            raise typer.BadParameter(f"{text!r}: use +SECONDS, +30m, +12h, +7d or ISO 8601")
        return int(_time.time()) + int(body) * units[unit]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use +SECONDS, +30m, +12h, +7d or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


@agents_app.command("grant")
def agents_grant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Agent name (in agents.toml)")],
    to: Annotated[str, typer.Option("--to", help="The holder's did:key (Ed25519)")],
    until: Annotated[
        str, typer.Option("--until", help="Expiry: +SECONDS, +30m, +12h, +7d or ISO 8601")
    ],
    access: Annotated[
        str | None, typer.Option("--access", help="read: the holder may only read")
    ] = None,
    rooms: Annotated[
        list[str] | None, typer.Option("--room", help="Only this room (repeat for more)")
    ] = None,
    tools: Annotated[
        list[str] | None, typer.Option("--tool", help="Only this tool (repeat for more)")
    ] = None,
) -> None:
    """Delegate acting as agent NAME to a did:key, as a UCAN, until a time.

    Prints the delegation (a UCAN container) and its CID. The holder signs an invocation
    of /datarooms/mcp per request (or delegates onwards, narrowing); the MCP server takes
    it at once, no restart. Revoke with `datarooms agents revoke CID`.

    --access/--room/--tool narrow the grant: every invocation must then state
    `access`, `rooms` or `tools` within them, and the agent acts with its agents.toml
    policy narrowed to what the invocation states.
    """
    from datarooms.services.openid import mcp_gate

    settings = state(ctx).settings()
    config = load_agents(agents_file(settings.data_dir), data_dir=settings.data_dir)
    config.agent(name)  # exists
    expires = _until(until)
    gate = mcp_gate(settings)
    policy: list[object] = []
    if access is not None:
        if access != "read":
            raise typer.BadParameter("--access narrows to read; leave it out for the agent's own")
        policy.append(["==", ".access", "read"])
    for key, values in (("rooms", rooms), ("tools", tools)):
        if values:
            policy.append(["all", f".{key}", ["or", [["==", ".", v] for v in values]]])
    d = gate.grant_agent(name, to, until=expires, policy=policy)
    err_console.print(f"granted agent {name} to {to} until {expires} (MCP server {gate.did})")
    err_console.print(f"cid: {d.cid}")
    console.print(d.encode(), soft_wrap=True)


@agents_app.command("revoke")
def agents_revoke(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of the delegation to revoke (zdpu...)")],
) -> None:
    """Revoke a UCAN delegation platform-wide: every service refuses it from now on."""
    from datarooms.services.openid import platform_revocations

    if not cid.startswith(("zdpu", "bafy")) or len(cid) > 100:
        raise typer.BadParameter(f"{cid!r} is not a UCAN CID")
    settings = state(ctx).settings()
    platform_revocations(settings).revoke(cid, by="operator")
    console.print(f"revoked {cid}")


@agents_app.command("tools")
def agents_tools() -> None:
    """List every MCP tool and the access level it needs."""
    table = Table("tool", "needs")
    for name, spec in TOOLS.items():
        table.add_row(name, spec.access)
    console.print(table)


__all__ = ["agents_app", "mcp"]
