"""``datarooms hook add|list|rotate|remove``: the inbound webhooks of this data dir.

The hooks live in ``<data_dir>/automation/hooks.db`` (mode 0600), which the running
automation service reads on every request: a new, rotated or removed hook takes effect
at once. A hook's secret is printed once, by ``add`` and ``rotate``; nothing shows it
again.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from datarooms.cli._common import console, print_json, state
from datarooms.config import Settings
from datarooms.errors import ValidationError
from datarooms.sdk.automation.registry import (
    AUTH_METHODS,
    FORMATS,
    TARGETS,
    Hook,
    HookRegistry,
    hook_url,
    registry_path,
)

hook_app = typer.Typer(
    help="Inbound webhooks into rooms: add, list, rotate (the secret), remove.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]


def _registry(ctx: typer.Context) -> tuple[Settings, HookRegistry]:
    settings = state(ctx).settings()
    from datarooms.services.stores import store_target

    return settings, HookRegistry(registry_path(settings), store_target(settings))


def _base_url(settings: Settings) -> str:
    running = settings.running_url("automation")  # the service's run file
    if running:
        return running
    a = settings.automation
    shown = f"[{a.host}]" if ":" in a.host else a.host
    return f"http://{shown}:{a.port}"


def _bot_user(settings: Settings) -> str:
    return f"@{settings.automation.localpart}:{settings.homeserver.server_name}"


def _shown(settings: Settings, hook: Hook, *, secret: bool) -> dict[str, Any]:
    out = hook.public()
    out["url"] = hook_url(_base_url(settings), hook.hook_id)
    if secret:
        out["secret"] = hook.secret
    return out


def _print_secret(settings: Settings, hook: Hook, as_json: bool, verb: str) -> None:
    shown = _shown(settings, hook, secret=True)
    if as_json:
        print_json(shown)
        return
    console.print(f"{verb} hook [bold]{hook.hook_id}[/] ({hook.format} -> {hook.target})")
    console.print(f"  URL:    {shown['url']}", markup=False, highlight=False)
    console.print(f"  secret: {hook.secret}", markup=False, highlight=False)
    console.print(
        "  The secret is shown this once; `datarooms hook rotate` gives a new one.",
        style="yellow",
    )
    console.print(
        f"  The automation bot {_bot_user(settings)} posts into {hook.room_id}: "
        "invite it to the room if it is not a member.",
        markup=False,
    )


@hook_app.command("add")
def add(
    ctx: typer.Context,
    room_id: Annotated[str, typer.Argument(help="The room the hook posts into (!id:server)")],
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"Payload format: {', '.join(FORMATS)}")
    ] = "generic",
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            help=f"Verification: {', '.join(AUTH_METHODS)} [default: github or token]",
        ),
    ] = "",
    target: Annotated[
        str, typer.Option("--target", "-t", help=f"What it becomes: {', '.join(TARGETS)}")
    ] = "message",
    template: Annotated[
        str,
        typer.Option(
            "--template", help="Message template, or record key template: '${path.to[0].x}'"
        ),
    ] = "",
    mapping: Annotated[
        str,
        typer.Option(
            "--mapping",
            help='JSON: record {"value": path}; telemetry {"metric", "value", ...}',
        ),
    ] = "",
    name: Annotated[str, typer.Option("--name", help="A label for `hook list`")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Add a hook; prints its URL and its secret (once)."""
    try:
        parsed = json.loads(mapping) if mapping else {}
    except ValueError as exc:
        raise ValidationError(f"--mapping is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValidationError("--mapping must be a JSON object")
    settings, registry = _registry(ctx)
    try:
        hook = registry.add(
            room_id,
            format=format,
            auth=auth or ("github" if format == "github" else "token"),
            target=target,
            template=template,
            mapping=parsed,
            name=name,
        )
    finally:
        registry.close()
    _print_secret(settings, hook, as_json, "added")


@hook_app.command("list")
def list_hooks(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The hooks, without their secrets."""
    settings, registry = _registry(ctx)
    try:
        hooks = registry.list()
    finally:
        registry.close()
    shown = [_shown(settings, h, secret=False) for h in hooks]
    if as_json:
        print_json(shown)
        return
    if not shown:
        console.print("no hooks; add one with `datarooms hook add ROOM_ID`")
        return
    from rich.table import Table

    table = Table("hook", "name", "room", "format", "auth", "target", "url")
    for h in shown:
        table.add_row(
            h["hook_id"], h["name"], h["room_id"], h["format"], h["auth"], h["target"], h["url"]
        )
    console.print(table)


@hook_app.command("rotate")
def rotate(
    ctx: typer.Context,
    hook_id: Annotated[str, typer.Argument(help="The hook")],
    as_json: JsonOpt = False,
) -> None:
    """Give a hook a new secret (the old one stops working at once); prints it once."""
    settings, registry = _registry(ctx)
    try:
        hook = registry.rotate(hook_id)
    finally:
        registry.close()
    _print_secret(settings, hook, as_json, "rotated")


@hook_app.command("remove")
def remove(ctx: typer.Context, hook_id: Annotated[str, typer.Argument(help="The hook")]) -> None:
    """Remove a hook: its URL answers 404 from now on."""
    _settings, registry = _registry(ctx)
    try:
        registry.remove(hook_id)
    finally:
        registry.close()
    console.print(f"removed hook {hook_id}")


# -- datarooms forward: notifications out of Matrix ------------------------------------

forward_app = typer.Typer(
    help="Notifications out of Matrix (a trust boundary): targets, declarations, status.",
    no_args_is_help=True,
)


def _targets(ctx: typer.Context) -> Any:
    from datarooms.sdk.automation.forward import ForwardTargets
    from datarooms.services.stores import store_target

    settings = state(ctx).settings()
    return ForwardTargets(settings.automation_dir / "forward.db", store_target(settings))


@forward_app.command("add")
def forward_add(
    ctx: typer.Context,
    room_id: Annotated[str, typer.Argument(help="The room whose alerts it forwards (!id:server)")],
    forward_id: Annotated[str, typer.Argument(help="A name for the target: ops, pager, ...")],
    url: Annotated[str, typer.Argument(help="Where to: a Slack webhook, https://ntfy.sh/TOPIC")],
    kind: Annotated[str, typer.Option("--kind", "-k", help="json, slack or ntfy")] = "json",
    secret_stdin: Annotated[
        bool,
        typer.Option(
            "--secret-stdin",
            help="Read the target's secret from stdin (ntfy: an access token; json: the "
            "HMAC key it is signed with)",
        ),
    ] = False,
) -> None:
    """The operator's side: configure a target (its URL and secret stay in the data
    dir). Nothing leaves until a room admin declares it (`datarooms forward declare`)."""
    import sys

    secret = sys.stdin.read().strip() if secret_stdin else ""
    if secret_stdin and not secret:
        raise ValidationError("--secret-stdin: nothing on stdin")
    targets = _targets(ctx)
    try:
        targets.add(forward_id, room_id, kind, url, secret)
    finally:
        targets.close()
    from datarooms.sdk.automation.forward import destination

    console.print(
        f"forward {forward_id}: {room_id} -> {kind} at {destination(url)}"
        f"{' (with a secret)' if secret else ''}",
        markup=False,
        highlight=False,
    )
    console.print(
        "  Only each alert's summary line leaves Matrix, once a room admin runs "
        f"`datarooms forward declare {room_id} {forward_id} --kind {kind} URL`.",
        markup=False,
        style="yellow",
    )


@forward_app.command("list")
def forward_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The targets (destination host only, never the URL or the secret) and what each
    sent, has pending or failed."""
    targets = _targets(ctx)
    try:
        rows, status = targets.list(), targets.status()
    finally:
        targets.close()
    if as_json:
        print_json({"targets": rows, "errors": status["errors"]})
        return
    if not rows:
        console.print("no forwarding targets; add one with `datarooms forward add`")
        return
    from rich.table import Table

    table = Table("forward", "room", "kind", "destination", "secret", "sent", "pending", "failed")
    for r in rows:
        table.add_row(
            r["forward_id"],
            r["room_id"],
            r["kind"],
            r["destination"],
            "yes" if r["secret"] else "-",
            str(r["sent"]),
            str(r["pending"]),
            str(r["failed"]),
        )
    console.print(table)
    for e in status["errors"][:5]:
        console.print(f"  {e['forward_id']}: {e['error']} after {e['attempts']} attempts")


@forward_app.command("remove")
def forward_remove(
    ctx: typer.Context, forward_id: Annotated[str, typer.Argument(help="The target")]
) -> None:
    """Remove a target: nothing more is sent to it (what was pending is marked failed)."""
    targets = _targets(ctx)
    try:
        targets.remove(forward_id)
    finally:
        targets.close()
    console.print(f"removed forward {forward_id}")


@forward_app.command("declare")
def forward_declare(
    ctx: typer.Context,
    room: Annotated[str, typer.Argument(help="The room (!id:server or #alias)")],
    forward_id: Annotated[str, typer.Argument(help="The target's name, as the operator added it")],
    url: Annotated[str, typer.Argument(help="The target's URL (only its host goes in the room)")],
    kind: Annotated[str, typer.Option("--kind", "-k", help="json, slack or ntfy")] = "json",
) -> None:
    """As a room admin: declare in the room (state every member sees) that its alert
    summaries are forwarded outside Matrix, to that host."""
    from datarooms.cli.data import with_client
    from datarooms.sdk.automation.forward import declare

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(room)
        content = await declare(c, rid, forward_id, kind, url)
        dest = content["forwards"][forward_id]["destination"]
        console.print(
            f"{rid} now declares: alert summaries leave Matrix via {forward_id} ({kind}) to {dest}",
            markup=False,
            highlight=False,
        )

    with_client(ctx, go)


@forward_app.command("undeclare")
def forward_undeclare(
    ctx: typer.Context,
    room: Annotated[str, typer.Argument(help="The room")],
    forward_id: Annotated[str, typer.Argument(help="The target's name")],
) -> None:
    """As a room admin: withdraw a declaration; the service stops forwarding at once."""
    from datarooms.cli.data import with_client
    from datarooms.sdk.automation.forward import undeclare

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(room)
        await undeclare(c, rid, forward_id)
        console.print(f"{rid} no longer forwards via {forward_id}", markup=False)

    with_client(ctx, go)


# -- datarooms moderation: policy lists and flood control ------------------------------

moderation_app = typer.Typer(
    help="Moderation: Matrix policy lists (bans by glob) and flood control of data rooms.",
    no_args_is_help=True,
)
KindOpt = Annotated[
    str, typer.Option("--kind", "-k", help="What the rule is about: user, server or room")
]


def _with_client(ctx: typer.Context, fn: Any) -> Any:
    from datarooms.cli.data import with_client

    return with_client(ctx, fn)


@moderation_app.command("create-list")
def moderation_create_list(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The list's name")]
) -> None:
    """Create a policy list room (not encrypted: rules are state, meant to be shared)."""
    from datarooms.sdk.automation.moderation import create_policy_list

    async def go(c: Any) -> None:
        console.print(await create_policy_list(c, name), markup=False, highlight=False)

    _with_client(ctx, go)


@moderation_app.command("ban")
def moderation_ban(
    ctx: typer.Context,
    policy_list: Annotated[str, typer.Argument(help="The policy list room")],
    entity: Annotated[str, typer.Argument(help="A user id, server name or room id; globs * and ?")],
    kind: KindOpt = "user",
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in every ban)")] = "",
) -> None:
    """Add an m.ban rule (m.policy.rule.<kind>) to a policy list."""
    from datarooms.sdk.automation.moderation import put_rule

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(policy_list)
        key = await put_rule(c, rid, kind, entity, reason)
        console.print(f"{rid}: m.policy.rule.{kind} {key}", markup=False, highlight=False)

    _with_client(ctx, go)


@moderation_app.command("unban")
def moderation_unban(
    ctx: typer.Context,
    policy_list: Annotated[str, typer.Argument(help="The policy list room")],
    entity: Annotated[str, typer.Argument(help="The rule's entity, as `rules` shows it")],
    kind: KindOpt = "user",
) -> None:
    """Withdraw a rule (bans already made stay; unban in the rooms themselves)."""
    from datarooms.sdk.automation.moderation import remove_rule

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(policy_list)
        await remove_rule(c, rid, kind, entity)
        console.print(f"{rid}: withdrew the {kind} rule {entity}", markup=False)

    _with_client(ctx, go)


@moderation_app.command("rules")
def moderation_rules(
    ctx: typer.Context,
    policy_list: Annotated[str, typer.Argument(help="The policy list room")],
    as_json: JsonOpt = False,
) -> None:
    """The rules of a policy list (any list: ours, Draupnir's, Mjolnir's)."""
    from datarooms.sdk.automation.moderation import policy_rules

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(policy_list)
        await c.ensure_room(rid)
        rules = policy_rules(c, rid)
        if as_json:
            print_json([
                {"kind": r.kind, "entity": r.entity, "recommendation": r.recommendation,
                 "reason": r.reason, "state_key": r.state_key} for r in rules
            ])  # fmt: skip
            return
        for r in rules:
            console.print(
                f"{r.kind:<7} {r.entity}  {r.recommendation}  {r.reason}",
                markup=False,
                highlight=False,
            )

    _with_client(ctx, go)


def _flood(spec: str, action: str) -> dict[str, Any] | None:
    if not spec:
        return None
    count, sep, seconds = spec.partition("/")
    try:
        if not sep or not seconds.endswith("s"):
            raise ValueError
        return {"max_messages": int(count), "per_seconds": int(seconds[:-1]), "action": action}
    except ValueError:
        raise ValidationError(f"--flood is N/SECONDSs, e.g. 10/30s, got {spec!r}") from None


@moderation_app.command("subscribe")
def moderation_subscribe(
    ctx: typer.Context,
    room: Annotated[str, typer.Argument(help="The data room (you must be its admin)")],
    lists: Annotated[
        list[str] | None, typer.Option("--list", "-l", help="A policy list room (repeat)")
    ] = None,
    redact: Annotated[
        bool, typer.Option("--redact", help="Also redact a banned user's recent events")
    ] = False,
    flood: Annotated[
        str, typer.Option("--flood", help="Flood control: at most N events per S seconds, N/Ss")
    ] = "",
    flood_action: Annotated[
        str, typer.Option("--flood-action", help="mute, redact or mute_and_redact")
    ] = "mute",
) -> None:
    """As a room admin: make the room follow policy lists and flood control; the
    automation service (an admin of the room) applies them."""
    from datarooms.sdk.automation.moderation import subscribe

    flood_cfg = _flood(flood, flood_action)

    async def go(c: Any) -> None:
        rid = await c.rooms.resolve(room)
        ids = [await c.rooms.resolve(x) for x in lists or []]
        content = await subscribe(c, rid, ids, redact=redact, flood=flood_cfg)
        console.print(
            f"{rid} follows {len(ids)} policy list(s)"
            + (", redacting banned users' events" if redact else "")
            + (f"; flood control {flood} -> {flood_action}" if "flood" in content else ""),
            markup=False,
            highlight=False,
        )

    _with_client(ctx, go)
