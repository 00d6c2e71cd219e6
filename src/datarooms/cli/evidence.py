"""``datarooms claim ...`` and ``datarooms audit ...``: verification evidence. Thin over
the SDK (``client.claims``, ``client.audit``, ``datarooms.sdk.audit_bundle``) and the
chain's anchoring (``datarooms.chain.anchor``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from datarooms.cli._common import console, echo, print_json, run, state
from datarooms.cli.data import RoomArg, with_client
from datarooms.errors import DataroomsError, ValidationError

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

claim_app = typer.Typer(
    help="Signed, content-addressed claims (W3C VCs) in rooms.", no_args_is_help=True
)
audit_app = typer.Typer(
    help="The rooms' tamper-evident audit trail: log, anchor on chain, export, verify offline.",
    no_args_is_help=True,
)

RpcOpt = Annotated[
    str | None,
    typer.Option("--rpc", help="CometBFT RPC of the chain (default: the configured one)"),
]


def _rpc(ctx: typer.Context, rpc: str | None) -> str:
    from datarooms.services.devchain import chain_url

    return rpc or chain_url(state(ctx).settings())


# -- claims --------------------------------------------------------------------------------


@claim_app.command("issue")
def claim_issue(
    ctx: typer.Context,
    room: RoomArg,
    subject: Annotated[str, typer.Argument(help="The subject's DID")],
    claim_type: Annotated[
        str, typer.Argument(help="What is claimed, e.g. SolarInstallationVerified")
    ],
    data: Annotated[str, typer.Option("--data", help="The claim's fields, a JSON object")] = "{}",
    evidence_file: Annotated[
        list[str] | None, typer.Option("--evidence-file", help="Event id of a file in the room")
    ] = None,
    evidence_record: Annotated[
        list[str] | None, typer.Option("--evidence-record", help="Key of a record in the room")
    ] = None,
    collection: Annotated[str, typer.Option(help="The collection to save it into")] = "default",
) -> None:
    """Issue a claim signed by this account's did:key, save it encrypted; print its CID."""
    try:
        fields = json.loads(data)
    except ValueError as exc:
        raise ValidationError(f"--data is not JSON: {exc}") from None

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        evidence: list[Any] = [await c.files.ref(rid, e) for e in evidence_file or []]
        evidence += [await c.records.get(rid, k) for k in evidence_record or []]
        saved = await c.claims.issue(
            rid, subject, claim_type, fields, evidence=evidence, collection=collection
        )
        print_json({"cid": saved.cid, "event_id": saved.event_id, "issuer": c.claims.issuer})

    with_client(ctx, go, rooms_from_index=True)


@claim_app.command("verify")
def claim_verify(
    ctx: typer.Context,
    room: RoomArg,
    cid: Annotated[str, typer.Argument(help="The claim's CID")],
    collection: Annotated[str | None, typer.Option(help="Only in this collection")] = None,
) -> None:
    """Check a claim's signature, CID and evidence bytes; exit 1 unless all pass."""

    async def go(c: DataroomsClient) -> bool:
        rid = await c.rooms.resolve(room)
        verdict = await c.claims.verify(rid, cid, collection=collection)
        print_json(verdict.to_json())
        return verdict.ok

    if not with_client(ctx, go, rooms_from_index=True):
        raise typer.Exit(1)


@claim_app.command("list")
def claim_list(
    ctx: typer.Context,
    room: RoomArg,
    collection: Annotated[str | None, typer.Option(help="Only this collection")] = None,
) -> None:
    """Claims saved in a room, newest first."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        print_json(
            [
                {
                    "cid": s.cid,
                    "collection": s.collection,
                    "type": s.credential.get("type"),
                    "issuer": s.credential.get("issuer"),
                    "subject": (s.credential.get("credentialSubject") or {}).get("id"),
                    "event_id": s.event_id,
                }
                for s in await c.claims.list(rid, collection=collection)
            ]
        )

    with_client(ctx, go, rooms_from_index=True)


# -- audit ----------------------------------------------------------------------------------


@audit_app.command("log")
def audit_log(
    ctx: typer.Context,
    room: RoomArg,
    limit: Annotated[int, typer.Option(help="Show the last N entries")] = 50,
) -> None:
    """The room's audit trail (brought up to date from the room first)."""

    async def go(c: DataroomsClient) -> None:
        from rich.table import Table

        rid = await c.rooms.resolve(room)
        await c.audit.update(rid)
        anchored = {a.last_seq: a.height for a in c.audit.anchors(rid)}
        table = Table("seq", "hash", "type", "sender", "event", "anchored")
        for e in c.audit.entries(rid)[-max(1, limit) :]:
            height = anchored.get(e.seq)
            table.add_row(
                str(e.seq),
                e.hash[:16],
                e.entry["type"],
                e.entry["sender"],
                e.entry["event_id"],
                "" if height is None else f"height {height}",
            )
        console.print(table)

    with_client(ctx, go, rooms_from_index=True)


@audit_app.command("anchor")
def audit_anchor(ctx: typer.Context, room: RoomArg, rpc: RpcOpt = None) -> None:
    """Anchor the room's new entries on the chain now (idempotent; resumes a crashed run)."""
    from datarooms.chain.anchor import ChainAnchor

    chain = ChainAnchor(_rpc(ctx, rpc))

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        anchor = await c.audit.anchor(rid, chain)
        if anchor is None:
            head = c.audit.head(rid)
            echo(f"nothing new to anchor (head {head.seq if head else 0})")
        else:
            print_json(anchor.to_json())

    with_client(ctx, go, rooms_from_index=True)


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    room: RoomArg,
    out: Annotated[Path, typer.Argument(help="The bundle file to write (JSON)")],
    rpc: RpcOpt = None,
) -> None:
    """Write an auditor's bundle of the room (it discloses the room's content: keep it safe)."""
    from datarooms._fs import atomic_write
    from datarooms.chain.anchor import ChainAnchor

    chain = ChainAnchor(_rpc(ctx, rpc))

    async def go(c: DataroomsClient) -> dict[str, Any]:
        rid = await c.rooms.resolve(room)
        has_anchors = bool(c.audit.anchors(rid))
        return await c.audit.export(
            rid,
            anchor_proof=chain.inclusion_proof if has_anchors else None,
            chain=await chain.identity() if has_anchors else None,
        )

    bundle = with_client(ctx, go, rooms_from_index=True)
    atomic_write(out, json.dumps(bundle), mode=0o600)
    echo(f"{out}: {len(bundle['entries'])} entries, {len(bundle['anchors'])} anchors")


@audit_app.command("verify")
def audit_verify(
    bundle_path: Annotated[Path, typer.Argument(help="A bundle from `audit export`")],
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="Check the anchors against this chain's RPC, not the bundle"),
    ] = None,
    validator_key: Annotated[
        list[str] | None,
        typer.Option(
            help="A genesis validator's public key (base64) to trust; repeat for each. "
            "The bundle's pinned validator set is used only if all its keys are given"
        ),
    ] = None,
    validators_hash: Annotated[
        str | None,
        typer.Option(help="The trusted validator set's hash (hex), from the chain's genesis"),
    ] = None,
) -> None:
    """Verify a bundle offline (no homeserver): exit 0 verified, 1 broken, 2 incomplete."""
    from datarooms.chain.anchor import bundle_anchor_check
    from datarooms.sdk.audit_bundle import verify_bundle

    try:
        bundle = json.loads(bundle_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read the bundle {bundle_path}: {exc}") from None
    if not isinstance(bundle, dict):
        raise ValidationError(f"{bundle_path} is not an audit bundle")
    notes: list[str] = []
    chain = bundle.get("chain") if isinstance(bundle.get("chain"), dict) else {}
    if rpc:
        chain = run(_proofs_from_rpc(bundle, rpc, notes)) or chain
    check = bundle_anchor_check(
        chain or {}, validators_hash_=validators_hash, validator_pub_keys=validator_key or ()
    )
    report = verify_bundle(bundle, check_anchor=check)
    report.unverified.extend(notes)
    pinned = validator_key or validators_hash
    if not rpc and not pinned and report.layers.get("anchors", {}).get("checked"):
        report.unverified.append(
            "the validator keys to trust came from the bundle: pin them with --validator-key "
            "or --validators-hash (from the chain's genesis), or check against the chain "
            "with --rpc"
        )
    print_json(report.to_json())
    sys.stderr.write(_summary(report.to_json()) + "\n")
    if report.verdict != "ok":
        raise typer.Exit(1 if report.verdict == "broken" else 2)


def _summary(report: dict[str, Any]) -> str:
    """One line for people: the verdict and where the first break is."""
    counts = ", ".join(
        f"{name} {info.get('checked', 0)}" for name, info in report["layers"].items()
    )
    if report["breaks"]:
        b = report["breaks"][0]
        where = next(
            (f" at {k} {b[k]}" for k in ("seq", "event", "anchor") if b.get(k) is not None), ""
        )
        return f"BROKEN: layer {b['layer']}{where}: {b['detail']} (checked: {counts})"
    if report["unverified"]:
        return (
            f"INCOMPLETE: {len(report['unverified'])} thing(s) could not be checked, first: "
            f"{report['unverified'][0]} (checked: {counts})"
        )
    return f"VERIFIED: {report['entries']} entries of {report['room']} (checked: {counts})"


async def _proofs_from_rpc(bundle: dict[str, Any], url: str, notes: list[str]) -> dict[str, Any]:
    """Replace each anchor's proof with the chain's own; the chain's identity (or {})."""
    import base64

    from datarooms.chain.anchor import ChainAnchor

    chain = ChainAnchor(url)
    try:
        identity = await chain.identity()
    except (TimeoutError, DataroomsError, OSError) as exc:
        for a in bundle.get("anchors") or []:
            if isinstance(a, dict):
                a["proof"] = {"unreachable": f"the chain at {url} is unreachable: {exc}"}
        return {}
    for a in bundle.get("anchors") or []:
        if not isinstance(a, dict):
            continue
        try:
            tx = base64.b64decode(str(a.get("tx")), validate=True)
            a["proof"] = await chain.inclusion_proof(tx, int(a.get("height") or 0))
        except (DataroomsError, ValueError) as exc:
            a["proof"] = {"missing": f"the chain has no block {a.get('height')} for it ({exc})"}
    return identity
