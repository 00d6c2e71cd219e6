"""Top-level commands: up, down, status, user, config, whoami.

Kept light to import: ``datarooms --help`` and the data commands must start in a
fraction of a second, so everything heavy (the HTTP client, the platform, the
services, rich tables) is imported inside the command that needs it, and the
services' commands are loaded only when they run (:class:`LazyGroup`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from datarooms._logging import configure_logging
from datarooms.cli import data as data_commands
from datarooms.cli._common import CliState, acting_credentials, console, err_console, run, state
from datarooms.errors import ConfigError, DataroomsError, PlatformError

if TYPE_CHECKING:
    # typer 0.29 vendors click; these are the types its groups are written against.
    from typer import _click as click

    from datarooms.config import Settings
    from datarooms.services.platform import Platform, PlatformInfo, Service

#: The services' commands, imported only when they run, so that `--help`, `up` and
#: the data commands do not pay for importing every service (mcp, FastAPI, nio ...).
#: name -> (module, attribute, "group" for a Typer app | "command" for a function,
#: the one-line help `datarooms --help` shows; a test checks it matches the command's).
LAZY_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "keys": (
        "datarooms.cli.keys",
        "keys_app",
        "group",
        "Cross-signing, recovery key, key backup, device verification.",
    ),
    "telemetry": (
        "datarooms.cli.telemetry",
        "telemetry_app",
        "group",
        "Time-series telemetry: durable, batched, end-to-end encrypted.",
    ),
    "doc": (
        "datarooms.cli.docs",
        "docs_app",
        "group",
        "Collaborative documents (CRDT, IXO matrix-crdt format), end-to-end encrypted.",
    ),
    "state": (
        "datarooms.cli.statebot",
        "state_app",
        "group",
        "Keyed room state and ACLs through the state bot (ixo.room.state).",
    ),
    "statebot": (
        "datarooms.cli.statebot",
        "statebot",
        "command",
        "Run the state bot alone, in the foreground, against the running homeserver.",
    ),
    "entity": (
        "datarooms.cli.roomsbot",
        "entity_app",
        "group",
        "IXO entities on the chain (the devchain by default): register and list them.",
    ),
    "roomsbot": (
        "datarooms.cli.roomsbot",
        "roomsbot_command",
        "command",
        "Run the rooms bot on its own (appservice, REST API, chain watcher) until Ctrl-C.",
    ),
    "devchain": (
        "datarooms.cli.roomsbot",
        "devchain_command",
        "command",
        "Run the embedded devchain on its own until Ctrl-C (or only --verify it).",
    ),
    "claim": (
        "datarooms.cli.evidence",
        "claim_app",
        "group",
        "Signed, content-addressed claims (W3C VCs) in rooms.",
    ),
    "audit": (
        "datarooms.cli.evidence",
        "audit_app",
        "group",
        "The rooms' tamper-evident audit trail: log, anchor on chain, export, verify offline.",
    ),
    "mcp": (
        "datarooms.cli.mcp",
        "mcp",
        "command",
        "Serve one agent over MCP stdio (for Claude Desktop, IDEs, the MCP inspector).",
    ),
    "backup": (
        "datarooms.cli.ops",
        "backup",
        "command",
        "Write an encrypted archive of the whole platform (it may keep running).",
    ),
    "restore": (
        "datarooms.cli.ops",
        "restore",
        "command",
        "Bring a platform back from a backup into --data-dir (new or empty).",
    ),
    "moderation": (
        "datarooms.cli.automation",
        "moderation_app",
        "group",
        "Moderation: Matrix policy lists (bans by glob) and flood control of data rooms.",
    ),
    "migrate-to-postgres": (
        "datarooms.cli.ops",
        "migrate_to_postgres",
        "command",
        "Move a stopped embedded platform's Synapse (SQLite) into the scale profile's PostgreSQL.",
    ),
    "prometheus-config": (
        "datarooms.cli.ops",
        "prometheus_config",
        "command",
        "Print (or write) a Prometheus scrape config for every running service's /metrics.",
    ),
    "agents": (
        "datarooms.cli.mcp",
        "agents_app",
        "group",
        "AI agents of the MCP server: who they are and what they may do.",
    ),
    "hook": (
        "datarooms.cli.automation",
        "hook_app",
        "group",
        "Inbound webhooks into rooms: add, list, rotate (the secret), remove.",
    ),
    "forward": (
        "datarooms.cli.automation",
        "forward_app",
        "group",
        "Notifications out of Matrix (a trust boundary): targets, declarations, status.",
    ),
}


class LazyGroup(TyperGroup):
    """The root group: the services' commands are listed from :data:`LAZY_COMMANDS`
    and imported only when one of them runs (or its own ``--help`` is asked for)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in LAZY_COMMANDS:
            # Listing (the root help): a stand-in with the one-line help, no import.
            return TyperCommand(cmd_name, help=LAZY_COMMANDS[cmd_name][3])
        return cmd

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in LAZY_COMMANDS and args[0] not in self.commands:
            self.add_command(load_lazy_command(args[0]), args[0])
        return super().resolve_command(ctx, args)


def load_lazy_command(name: str) -> click.Command:
    """Import one of the services' commands."""
    module, attr, kind, _help = LAZY_COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    cmd: Any
    if kind == "group":
        cmd = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name=name)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd  # type: ignore[no-any-return]


app = typer.Typer(
    name="datarooms",
    help="Sovereign, end-to-end encrypted data rooms on Matrix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyGroup,
)
user_app = typer.Typer(help="Manage Matrix accounts on the homeserver.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(config_app, name="config")


@app.callback()
def _root(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="Data directory [default: ./.datarooms]",
            envvar="DATAROOMS_DATA_DIR",
            show_envvar=True,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file [default: <data-dir>/datarooms.toml]",
            envvar="DATAROOMS_CONFIG",
            show_envvar=True,
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    ] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json")] = "text",
) -> None:
    ctx.obj = CliState(
        data_dir=data_dir, config_file=config, log_level=log_level, log_format=log_format
    )
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {log_format!r}")
    configure_logging((log_level or "WARNING"), fmt=log_format)


# -- up / down / status ---------------------------------------------------------


@app.command()
def up(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port of the embedded homeserver")] = None,
) -> None:
    """Start the whole local platform and stay in the foreground until Ctrl-C."""
    st = state(ctx)
    if port is not None:
        st.overrides.setdefault("homeserver", {})["port"] = port
    settings = st.settings()
    configure_logging(st.log_level or settings.log_level, fmt=st.log_format)
    from datarooms.services.platform import Platform

    platform = Platform(
        settings,
        # Imported and built while the homeserver boots (see Platform.start).
        services=lambda: platform_services(settings),
        synapse_extra_config=lambda: synapse_extra_config(settings),
        requires=SERVICE_REQUIRES,
    )
    info = run(_run_platform(platform))
    if info is None:
        err_console.print("interrupted during start-up; everything was stopped")
        raise typer.Exit(130)


#: What each service needs started before it (the rest need only the homeserver):
#: the devchain needs nothing, so it starts while the homeserver boots; the rooms
#: bot watches the devchain.
SERVICE_REQUIRES: dict[str, tuple[str, ...]] = {
    "devchain": (),
    "roomsbot": ("homeserver", "devchain"),
}


def platform_services(settings: Settings) -> list[Service]:
    """The services `datarooms up` runs, in the order it lists them."""
    # Each service is imported only if it runs: `datarooms up` starts faster.
    mcp_port = settings.mcp.port
    wanted = _wanted_services(settings)
    from datarooms.services.clidevice import CliDeviceService

    # Part of the platform, whatever services run: it serves the CLI's record and
    # message commands on the CLI's device, so that they need not open it each time.
    services: list[Service] = [CliDeviceService()]
    if settings.homeserver.mode == "embedded":
        # The rooms bot is an application service: datarooms loads its registration
        # into the embedded Synapse. On an external homeserver its admin loads it
        # (docs/roomsbot.md) and you run `datarooms roomsbot` yourself.
        if "devchain" in wanted:
            from datarooms.services.devchain import DevchainService

            services.append(DevchainService())
        if "roomsbot" in wanted:
            from datarooms.services.roomsbot.service import RoomsBotService

            services.append(RoomsBotService())
    if "statebot" in wanted:
        from datarooms.services.statebot import StateBotService

        services.append(StateBotService())
    if "claims" in wanted:
        from datarooms.services.claims import ClaimsService

        services.append(ClaimsService())
    if "mcp" in wanted:
        from datarooms.services.mcp import McpService

        services.append(McpService(port=mcp_port))
    if "automation" in wanted:
        from datarooms.services.automation import AutomationService

        services.append(AutomationService())
    if "dashboard" in wanted:
        from datarooms.services.dashboard import DashboardService

        services.append(DashboardService())
    return services


def _wanted_services(settings: Settings) -> set[str]:
    from datarooms.config import PLATFORM_SERVICES

    names = {x.strip() for x in settings.services.split(",") if x.strip()}
    if "all" in names:
        return set(PLATFORM_SERVICES)
    return names - {"none"}


def synapse_extra_config(settings: Settings) -> dict[str, Any]:
    """What the embedded Synapse must load before it starts (the rooms bot's registration)."""
    if settings.homeserver.mode != "embedded" or "roomsbot" not in _wanted_services(settings):
        return {}
    from datarooms.services.roomsbot.service import appservice_synapse_config

    return appservice_synapse_config(settings)


async def _run_platform(platform: Platform) -> PlatformInfo | None:
    import contextlib
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with console.status("starting datarooms ...") as status:
        start = asyncio.create_task(
            platform.start(progress=lambda msg: status.update(f"{msg} ..."))
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
            return None
    info = start.result()
    _print_running(info)
    try:
        await stopper
    finally:
        console.print("stopping datarooms ...")
        await platform.stop()
        console.print("stopped.")
    return info


def _print_running(info: PlatformInfo) -> None:
    from rich.table import Table

    table = Table(title="datarooms is running", show_header=False, title_justify="left")
    table.add_row(
        "homeserver",
        f"{info.homeserver_url}  ({info.mode}"
        f"{', scale profile' if info.homeserver_processes else ''}, "
        f"server name {info.server_name})",
    )
    if info.federation_url:
        table.add_row(
            "federation", f"{info.federation_url}  (TLS; federates with {info.federates_with})"
        )
    table.add_row("service account", info.service_user)
    table.add_row("credentials", info.credentials_file)
    table.add_row("data dir", info.data_dir)
    if info.homeserver_log:
        table.add_row("homeserver log", info.homeserver_log)
    for name, proc in (info.homeserver_processes or {}).items():
        table.add_row(f"  {name}", f"{proc['role']}, {proc['where']} (pid {proc['pid']})")
    for name, svc in info.services.items():
        table.add_row(name, ", ".join(f"{k}: {v}" for k, v in svc.items()))
    table.add_row("pid", str(info.pid))
    console.print(table)
    console.print("Press Ctrl-C to stop, or run `datarooms down` from another terminal.")
    sys.stdout.flush()


@app.command()
def down(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to stop")] = 60.0,
) -> None:
    """Stop the platform started by `datarooms up` on this data directory."""
    from datarooms.services.platform import request_stop

    pid = run(request_stop(state(ctx).settings(), timeout=timeout))
    console.print(f"stopped datarooms (pid {pid}).")


#: `datarooms status` exit codes (0: running and healthy).
STATUS_NOT_RUNNING = 3
STATUS_STARTING = 4
STATUS_UNHEALTHY = 5


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show whether the platform is running on this data directory, and where."""
    from datarooms.services.platform import platform_status

    settings = state(ctx).settings()
    st = run(platform_status(settings))
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "running": st.running,
                    "starting": st.starting,
                    "healthy": st.healthy,
                    "pid": st.pid,
                    "homeserver_healthy": st.homeserver_healthy,
                    "info": st.info,
                }
            )
        )
    elif not st.running:
        console.print(f"datarooms is not running on {settings.data_dir}.")
    elif st.starting:
        console.print(f"datarooms is starting (pid {st.pid}) on {settings.data_dir}")
    else:
        info = st.info or {}
        health = "healthy" if st.homeserver_healthy else "NOT answering"
        console.print(f"datarooms is running (pid {st.pid}) on {settings.data_dir}")
        console.print(f"  homeserver  {info.get('homeserver_url', '?')}  {health}")
        if info.get("federation_url"):
            console.print(f"  federation  {info['federation_url']}")
        for name, proc in (info.get("homeserver_processes") or {}).items():
            pid = proc.get("pid")
            alive = (
                "external"
                if pid is None and proc.get("external")
                else (f"pid {pid} running" if _alive(pid) else f"pid {pid} NOT running")
            )
            console.print(f"    {name:<19} {proc['role']:<17} {proc['where']}  {alive}")
        for name, svc in (info.get("services") or {}).items():
            console.print(f"  {name:<11} " + ", ".join(f"{k}: {v}" for k, v in svc.items()))
    # Scripts wait on this: 0 only once the platform is up and its homeserver answers.
    if not st.running:
        raise typer.Exit(STATUS_NOT_RUNNING)
    if not st.healthy:
        raise typer.Exit(STATUS_STARTING if st.starting else STATUS_UNHEALTHY)


# -- users ---------------------------------------------------------------------


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (localpart), e.g. alice")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin")
    ] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Make a server admin")] = False,
) -> None:
    """Register a user on the homeserver (embedded, or Synapse with a shared secret)."""
    settings = state(ctx).settings()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    if password_stdin and not password:
        raise ConfigError("--password-stdin was given but stdin held no password")
    from datarooms.homeserver.admin import register_user
    from datarooms.services.platform import live_homeserver_url

    secret = _registration_secret(settings)
    user = run(register_user(live_homeserver_url(settings), secret, name, password, admin=admin))
    console.print(f"registered {user.user_id}")
    if not password_stdin:
        console.print(f"password: {user.password}  (shown once; store it safely)")


def _registration_secret(settings: Any) -> str:
    if settings.homeserver.registration_shared_secret:
        return str(settings.homeserver.registration_shared_secret)
    if settings.homeserver.mode == "embedded":
        from datarooms.homeserver.embedded import EmbeddedSynapse

        secrets_file = EmbeddedSynapse(settings.synapse_dir).secrets_path
        if secrets_file.exists():
            return EmbeddedSynapse(settings.synapse_dir).registration_shared_secret
        raise PlatformError("the embedded homeserver has not been set up yet: run `datarooms up`")
    raise ConfigError(
        "registering users on an external homeserver needs its registration shared secret: "
        "set homeserver.registration_shared_secret "
        "(DATAROOMS_HOMESERVER_REGISTRATION_SHARED_SECRET)"
    )


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Show which Matrix account the CLI acts as, checked against the homeserver."""
    from datarooms.homeserver.api import MatrixApi

    creds = acting_credentials(state(ctx).settings())

    async def _who() -> dict[str, Any]:
        if creds.access_token:
            async with MatrixApi(creds.homeserver_url, creds.access_token) as http:
                return await http.whoami()
        # Password only: a short-lived login, logged out again so no device is left behind.
        async with MatrixApi(creds.homeserver_url) as http:
            res = await http.login_password(creds.user_id, creds.password)
            http.access_token = res["access_token"]
            try:
                return await http.whoami()
            finally:
                await http.request("POST", "/_matrix/client/v3/logout", json={})

    who = run(_who())
    console.print(
        f"{who['user_id']} (device {who.get('device_id', '?')}) on {creds.homeserver_url}"
    )


# -- config --------------------------------------------------------------------


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration, with secrets masked."""
    settings = state(ctx).settings()
    console.print_json(json.dumps(settings.masked()))


data_commands.register(app)


def click_command() -> TyperGroup:
    """The root command."""
    return typer.main.get_group(app)


__all__ = ["DataroomsError", "app"]
