#!/usr/bin/env python3
"""End-to-end self-check of the interop harness (not a pytest file).

Starts a throw-away Synapse in a temp dir, registers two users, and checks
that matrix-nio (Python, e2e) and matrix-js-sdk (Node, Rust/wasm crypto,
driven through ``jsclient.JsClient``) interoperate in an encrypted room:

  1. nio creates an encrypted room and invites the JS user; JS joins.
  2. nio -> JS: encrypted custom event ``io.datarooms.record``.
  3. JS ``wait_event`` finds an event that was already in the timeline.
  4. JS -> nio: encrypted custom event, decrypted by nio.
  5. JS ``upload_encrypted`` -> nio downloads (authenticated media) and
     decrypts with ``nio.crypto.attachments.decrypt_attachment``.
  6. nio ``encrypt_attachment`` + upload + m.file event -> JS
     ``download_decrypt`` (plus a tampered-hash negative check).

Run with the project venv's Python (it needs synapse and matrix-nio[e2e])::

    .venv/bin/python tests/interop/selfcheck.py [--keep] [-v]

Exit status 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from jsclient import JsClient, JsClientError, ensure_js_deps  # noqa: E402

try:
    import yaml
    from nio import AsyncClient, AsyncClientConfig, MegolmEvent, RoomCreateError, SyncResponse
    from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
except ImportError as exc:  # pragma: no cover
    sys.exit(f"selfcheck needs the project venv (synapse, matrix-nio[e2e]): {exc}")

BIN = Path(sys.executable).parent
SERVER_NAME = "localhost"
RECORD_TYPE = "io.datarooms.record"


# ---------------------------------------------------------------------------
# Synapse
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Synapse:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "homeserver.yaml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_log = root / "synapse.stdout.log"

    def generate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "synapse.app.homeserver", "--server-name", SERVER_NAME,
             "--config-path", str(self.config_path), "--generate-config", "--report-stats=no"],
            cwd=self.root, check=True, capture_output=True,
        )
        cfg = yaml.safe_load(self.config_path.read_text())
        big = {"per_second": 10000, "burst_count": 10000}
        cfg.update(
            listeners=[{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            database={"name": "sqlite3", "args": {"database": str(self.root / "homeserver.db")}},
            trusted_key_servers=[],
            suppress_key_server_warning=True,
            presence={"enabled": False},
            registration_shared_secret=secrets.token_hex(16),
            enable_registration=False,
            url_preview_enabled=False,
            rc_message=big,
            rc_registration=big,
            rc_login={"address": big, "account": big, "failed_attempts": big},
            rc_joins={"local": big, "remote": big},
            rc_joins_per_room=big,
            rc_invites={"per_room": big, "per_user": big, "per_issuer": big},
            rc_3pid_validation=big,
            rc_admin_redaction=big,
            rc_key_requests=big,
            rc_media_create=big,
            rc_room_creation=big,
            rc_reports=big,
            rc_delayed_event_mgmt=big,
            rc_presence={"per_user": big},
        )
        self.config_path.write_text(yaml.safe_dump(cfg))

    def start(self, timeout: float = 90.0) -> None:
        out = open(self.stdout_log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synapse exited rc={self.proc.returncode}; see {self.stdout_log} "
                                   f"and {self.root / 'homeserver.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"synapse not up after {timeout}s")

    def register(self, user: str, password: str) -> str:
        subprocess.run(
            [str(BIN / "register_new_matrix_user"), "-c", str(self.config_path),
             "-u", user, "-p", password, "--no-admin", self.url],
            check=True, capture_output=True, timeout=120,
        )
        return f"@{user}:{SERVER_NAME}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------
# nio helpers
# ---------------------------------------------------------------------------


class Nio:
    """matrix-nio client with a manual sync loop that records timeline events."""

    def __init__(self, hs: str, user_id: str, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(
            hs, user_id, store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        self.events: dict[str, Any] = {}  # event_id -> nio Event (decrypted if possible)

    async def login(self, password: str) -> None:
        resp = await self.client.login(password, device_name="selfcheck-nio")
        if not getattr(resp, "device_id", None):
            raise RuntimeError(f"nio login failed: {resp}")
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        await self.sync(0)

    async def sync(self, timeout_ms: int = 1000) -> None:
        c = self.client
        resp = await c.sync(timeout=timeout_ms, full_state=c.next_batch is None)
        if not isinstance(resp, SyncResponse):
            raise RuntimeError(f"nio sync failed: {resp}")
        for room in resp.rooms.join.values():
            for ev in room.timeline.events:
                self.events[ev.event_id] = ev
        # retry events whose room key arrived later
        for eid, ev in list(self.events.items()):
            if isinstance(ev, MegolmEvent):
                try:
                    self.events[eid] = c.decrypt_event(ev)
                except Exception:
                    pass
        # the housekeeping sync_forever() would do
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()

    async def sync_until(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"nio: timeout waiting for {what}")
            await self.sync(1000)

    async def download_v1(self, mxc: str) -> bytes:
        server, media_id = mxc[len("mxc://"):].split("/", 1)
        url = f"{self.client.homeserver}/_matrix/client/v1/media/download/{server}/{media_id}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.client.access_token}"})

        def get() -> bytes:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()

        return await asyncio.to_thread(get)


# ---------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, float, str]] = []

    async def step(self, name: str, fn: Callable[[], Awaitable[str | None]], *, fatal: bool = True) -> bool:
        t0 = time.monotonic()
        try:
            detail = await fn() or ""
            ok = True
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if os.environ.get("SELFCHECK_TRACEBACK"):
                traceback.print_exc()
            ok = False
        dt = time.monotonic() - t0
        self.rows.append((name, ok, dt, detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({dt:.2f}s){': ' + detail if detail else ''}", flush=True)
        if not ok and fatal:
            raise _Abort()
        return ok


class _Abort(Exception):
    pass


def _assert(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


async def run(root: Path, verbose: bool) -> bool:
    res = Results()
    syn = Synapse(root)
    nio: Nio | None = None
    js = JsClient(log_path=root / "js-bob.log", name="bob",
                  env={"INTEROP_JS_LOG_LEVEL": "debug"} if verbose else None)
    st: dict[str, Any] = {}
    try:
        async def deps() -> str:
            t0 = time.monotonic()
            ran = await asyncio.to_thread(ensure_js_deps)
            return f"npm ci ran in {time.monotonic() - t0:.1f}s" if ran else "node_modules up to date"

        await res.step("js deps (npm ci if needed)", deps)

        async def synapse_up() -> str:
            await asyncio.to_thread(syn.generate)
            await asyncio.to_thread(syn.start)
            st["alice"] = await asyncio.to_thread(syn.register, "alice", "alice-pw")
            st["bob"] = await asyncio.to_thread(syn.register, "bob", "bob-pw")
            return f"{syn.url} users {st['alice']} {st['bob']}"

        await res.step("synapse up + 2 users registered", synapse_up)

        async def logins() -> str:
            nonlocal nio
            nio = Nio(syn.url, st["alice"], root / "nio-store")
            await nio.login("alice-pw")
            await js.start()
            r = await js.login(syn.url, st["bob"], "bob-pw")
            return f"nio device {nio.client.device_id}, js device {r['device_id']}"

        await res.step("nio + js login (js: rust crypto, first sync)", logins)
        assert nio is not None
        nc = nio.client

        async def room() -> str:
            resp = await nc.room_create(
                name="interop", invite=[st["bob"]],
                initial_state=[{"type": "m.room.encryption", "state_key": "",
                                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
            )
            if isinstance(resp, RoomCreateError):
                raise RuntimeError(f"room_create: {resp}")
            st["room"] = rid = resp.room_id
            await js.join(rid)
            await nio.sync_until(
                lambda: rid in nc.rooms and st["bob"] in nc.rooms[rid].users
                and st["bob"] not in nc.rooms[rid].invited_users,
                30, "bob joined")
            # nio must know bob's (new) device before encrypting
            await nio.sync_until(
                lambda: any(d.id == js.device_id for d in nc.device_store.active_user_devices(st["bob"])),
                30, "bob's JS device in nio's device store")
            return f"room {rid} encrypted={nc.rooms[rid].encrypted}"

        await res.step("nio creates encrypted room, js joins, nio knows js device", room)
        rid = st["room"]

        async def nio_to_js() -> str:
            content = {"key": "k", "value": {"x": 1}}
            r = await nc.room_send(rid, RECORD_TYPE, content, ignore_unverified_devices=True)
            _assert(hasattr(r, "event_id"), f"room_send: {r}")
            ev = await js.wait_event(rid, RECORD_TYPE, match={"key": "k"}, timeout=30)
            _assert(ev["event_id"] == r.event_id, f"event id {ev['event_id']} != {r.event_id}")
            _assert(ev["encrypted"] is True, "event was not encrypted")
            _assert(ev["content"] == content, f"content {ev['content']}")
            _assert(ev["sender"] == st["alice"], f"sender {ev['sender']}")
            return f"decrypted {ev['event_id']} content={ev['content']}"

        await res.step("nio -> js encrypted io.datarooms.record", nio_to_js)

        async def earlier_event() -> str:
            r1 = await nc.room_send(rid, RECORD_TYPE, {"key": "early", "value": 1}, ignore_unverified_devices=True)
            r2 = await nc.room_send(rid, RECORD_TYPE, {"key": "marker", "value": 2}, ignore_unverified_devices=True)
            await js.wait_event(rid, RECORD_TYPE, match={"key": "marker"})
            t0 = time.monotonic()
            ev = await js.wait_event(rid, RECORD_TYPE, match={"key": "early"}, timeout=5)
            _assert(ev["event_id"] == r1.event_id, "wrong event")
            _assert(r2.event_id != r1.event_id, "?")
            return f"found already-received event in {1000 * (time.monotonic() - t0):.0f} ms"

        await res.step("js wait_event finds event received before the call", earlier_event)

        async def wait_timeout() -> str:
            try:
                await js.wait_event(rid, RECORD_TYPE, match={"key": "never-sent"}, timeout=1)
            except JsClientError as exc:
                _assert("timeout" in str(exc), f"unexpected error: {exc}")
                return "error response: " + str(exc).split(": ", 1)[-1][:160]
            raise AssertionError("wait_event for an absent event returned")

        await res.step("js wait_event times out cleanly (error response)", wait_timeout)

        async def js_to_nio() -> str:
            content = {"key": "from-js", "value": {"y": [1, 2, 3]}}
            r = await js.send_event(rid, RECORD_TYPE, content)
            _assert(r["encrypted"] is True, "JS did not consider the room encrypted")
            eid = r["event_id"]
            ev = await nio.sync_until(
                lambda: (e := nio.events.get(eid)) is not None and not isinstance(e, MegolmEvent) and e, 30,
                f"nio to decrypt {eid}")
            _assert(getattr(ev, "decrypted", False), f"nio event not marked decrypted: {type(ev).__name__}")
            _assert(ev.source.get("type") == RECORD_TYPE, f"type {ev.source.get('type')}")
            _assert(ev.source.get("content") == content, f"content {ev.source.get('content')}")
            return f"nio decrypted {eid} ({type(ev).__name__}), recipients={r['recipient_devices']}"

        await res.step("js -> nio encrypted io.datarooms.record", js_to_nio)

        async def js_upload() -> str:
            data = os.urandom(70_000) + b"datarooms js->nio attachment"
            r = await js.upload_encrypted(rid, "from-js.bin", data, "application/x-test")
            eid = r["event_id"]
            ev = await nio.sync_until(
                lambda: (e := nio.events.get(eid)) is not None and not isinstance(e, MegolmEvent) and e, 30,
                f"nio to decrypt m.file {eid}")
            f = ev.source["content"]["file"]
            _assert(f["url"] == r["mxc"], "mxc mismatch")
            _assert(f.get("v") == "v2" and f["key"]["alg"] == "A256CTR", f"file object {f}")
            ciphertext = await nio.download_v1(f["url"])
            _assert(ciphertext != data, "ciphertext equals plaintext?!")
            plain = decrypt_attachment(ciphertext, f["key"]["k"], f["hashes"]["sha256"], f["iv"])
            _assert(plain == data, "decrypted attachment differs")
            return f"{len(data)} bytes, nio event {type(ev).__name__}, mxc {r['mxc']}"

        await res.step("js upload_encrypted -> nio download + decrypt_attachment", js_upload)

        async def nio_upload() -> str:
            data = os.urandom(100_000) + b"datarooms nio->js attachment"
            ciphertext, keys = encrypt_attachment(data)
            up, _ = await nc.upload(io.BytesIO(ciphertext), content_type="application/octet-stream",
                                    filename="from-nio.bin", filesize=len(ciphertext))
            _assert(hasattr(up, "content_uri"), f"upload: {up}")
            file = {"url": up.content_uri, **keys}
            content = {"msgtype": "m.file", "body": "from-nio.bin", "filename": "from-nio.bin",
                       "info": {"mimetype": "application/x-test", "size": len(data)}, "file": file}
            r = await nc.room_send(rid, "m.room.message", content, ignore_unverified_devices=True)
            _assert(hasattr(r, "event_id"), f"room_send: {r}")
            ev = await js.wait_event(rid, "m.room.message", match={"msgtype": "m.file", "body": "from-nio.bin"})
            _assert(ev["encrypted"] is True, "not encrypted")
            got = await js.download_decrypt(ev["content"]["file"], ev["content"]["file"]["url"])
            _assert(got["sha256_ok"] is True, "sha256 mismatch")
            _assert(base64.b64decode(got["plaintext_b64"]) == data, "plaintext differs")
            bad = dict(file, hashes={"sha256": base64.b64encode(b"\0" * 32).decode().rstrip("=")})
            got_bad = await js.download_decrypt(bad)
            _assert(got_bad["sha256_ok"] is False, "tampered hash was accepted")
            return f"{len(data)} bytes ok, tampered hash rejected"

        await res.step("nio encrypt_attachment + upload -> js download_decrypt", nio_upload)
        st["completed"] = True
    except _Abort:
        pass
    finally:
        with_timeout = [js.close()]
        if nio is not None:
            with_timeout.append(nio.client.close())
        for c in with_timeout:
            try:
                await asyncio.wait_for(c, 20)
            except Exception as exc:
                print(f"cleanup: {exc}")
        await asyncio.to_thread(syn.stop)

    ok = bool(st.get("completed")) and all(r[1] for r in res.rows)
    print("\n==== interop self-check summary ====")
    for name, passed, dt, _ in res.rows:
        print(f"  {'PASS' if passed else 'FAIL'}  {dt:6.2f}s  {name}")
    if not ok:
        print(f"  logs: {js.log_path}, {root / 'homeserver.log'}, {syn.stdout_log}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (always kept on failure)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging in the JS client")
    args = ap.parse_args()
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="datarooms-interop-"))
    ok = asyncio.run(run(root, args.verbose))
    print(f"\n{'PASS' if ok else 'FAIL'}: interop self-check in {time.monotonic() - t0:.1f}s (workdir {root})")
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
