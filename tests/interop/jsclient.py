"""Asyncio driver for the third-party Matrix client in ``tests/interop/js``.

The client is matrix-js-sdk (pinned in ``js/package.json``) with its bundled
Rust crypto (wasm), running as a long-lived Node process that speaks a
JSON-lines protocol on stdin/stdout (see ``js/client.mjs``)::

    from jsclient import JsClient, ensure_js_deps   # tests/interop on sys.path

    ensure_js_deps()                      # npm ci if needed (idempotent)
    async with JsClient() as js:
        await js.login(hs_url, "@bob:localhost", "secret")
        await js.join(room_id)
        ev = await js.wait_event(room_id, "io.datarooms.record", match={"key": "k"})
        await js.send_event(room_id, "io.datarooms.record", {"key": "k2"})

Everything the Node process logs goes to ``JsClient.log_path`` (stderr of the
process); ``JsClient.log_tail()`` is appended to error messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
LOCK_FILE = JS_DIR / "package-lock.json"
NODE_MODULES = JS_DIR / "node_modules"
LOCK_HASH_FILE = NODE_MODULES / ".lock-hash"

MIN_NODE_MAJOR = 20

__all__ = ["JS_DIR", "JsClient", "JsClientError", "JsDepsError", "ensure_js_deps"]


class JsDepsError(RuntimeError):
    """Node/npm missing or ``npm ci`` failed."""


class JsClientError(RuntimeError):
    """The JS client reported an error, timed out, or died."""


# ---------------------------------------------------------------------------
# dependency installation
# ---------------------------------------------------------------------------


def _lock_hash(js_dir: Path = JS_DIR) -> str:
    return hashlib.sha256((js_dir / "package-lock.json").read_bytes()).hexdigest()


def _node_major(node: str) -> int:
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return int(out.lstrip("v").split(".")[0])


def ensure_js_deps(
    *,
    force: bool = False,
    timeout: float = 600.0,
    js_dir: Path = JS_DIR,
    marker: str = "matrix-js-sdk",
) -> bool:
    """Install the JS client's dependencies with ``npm ci`` if needed.

    Runs ``npm ci --no-audit --no-fund`` in ``tests/interop/js`` when
    ``node_modules`` is missing or was installed from a different
    ``package-lock.json`` (its sha256 is kept in ``node_modules/.lock-hash``).
    Safe to call from several processes at once (file lock).

    Returns True if an install ran, False if everything was up to date.
    Raises JsDepsError if node/npm are missing, too old, or the install fails.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise JsDepsError(
            f"{missing} not found on PATH: the interop tests need Node.js >= {MIN_NODE_MAJOR} "
            "with npm to run the matrix-js-sdk client (tests/interop/js)."
        )
    try:
        major = _node_major(node)
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        raise JsDepsError(f"could not determine node version ({node}): {exc}") from exc
    if major < MIN_NODE_MAJOR:
        raise JsDepsError(
            f"Node.js >= {MIN_NODE_MAJOR} required, found major version {major} at {node}"
        )

    want = _lock_hash(js_dir)
    node_modules = js_dir / "node_modules"
    lock_hash_file = node_modules / ".lock-hash"

    def up_to_date() -> bool:
        return (
            not force
            and lock_hash_file.is_file()
            and lock_hash_file.read_text().strip() == want
            and (node_modules / marker / "package.json").is_file()
        )

    if up_to_date():
        return False

    import fcntl  # POSIX only; the interop tests don't run on Windows

    with open(js_dir / ".npm-ci.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if up_to_date():  # someone else installed while we waited
                return False
            cmd = [npm, "ci", "--no-audit", "--no-fund", "--engine-strict=false"]
            try:
                proc = subprocess.run(
                    cmd, cwd=js_dir, capture_output=True, text=True, timeout=timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise JsDepsError(
                    f"`{' '.join(cmd)}` timed out after {timeout}s in {js_dir}"
                ) from exc
            if proc.returncode != 0:
                raise JsDepsError(
                    f"`{' '.join(cmd)}` failed in {js_dir} (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
            lock_hash_file.write_text(want + "\n")
            return True
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


class JsClient:
    """One matrix-js-sdk client (one Matrix device) in a Node subprocess.

    Args:
        log_path: where to write the process' stderr; default: a fresh temp file.
        name: label used in error messages (e.g. "bob").
        default_timeout: seconds to wait for a response when a call doesn't
            specify one.
        install_deps: run :func:`ensure_js_deps` in :meth:`start`.
        env: extra environment variables for the Node process (e.g.
            ``{"INTEROP_JS_LOG_LEVEL": "debug", "INTEROP_JS_RUST_LOG": "debug"}``).
    """

    def __init__(
        self,
        *,
        log_path: str | os.PathLike[str] | None = None,
        name: str = "js",
        default_timeout: float = 60.0,
        install_deps: bool = True,
        env: dict[str, str] | None = None,
        node: str | None = None,
    ) -> None:
        self.name = name
        self.default_timeout = default_timeout
        self.install_deps = install_deps
        self.env = env or {}
        self.node = node
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"interop-js-{name}-", suffix=".log")
            os.close(fd)
            log_path = tmp
        self.log_path = Path(log_path)
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._dead: str | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> JsClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, timeout: float = 60.0) -> None:
        if self._proc is not None:
            raise JsClientError(f"[{self.name}] already started")
        if self.install_deps:
            await asyncio.to_thread(ensure_js_deps)
        node = self.node or shutil.which("node")
        if node is None:
            raise JsDepsError("node not found on PATH")
        self._log_file = open(self.log_path, "ab", buffering=0)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(CLIENT_SCRIPT),
            cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            env={**os.environ, **self.env},
            limit=64 * 1024 * 1024,  # responses can carry base64 payloads
            start_new_session=True,  # so close() can kill the whole group
        )
        self._reader = asyncio.create_task(self._read_loop(), name=f"jsclient-{self.name}-reader")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.close()
            raise JsClientError(
                f"[{self.name}] node process did not become ready in {timeout}s{self._tail()}"
            ) from None
        except JsClientError:
            await self.close()
            raise

    async def close(self, timeout: float = 10.0) -> None:
        """Ask the client to stop, then make sure the process is gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and self._dead is None:
            with contextlib.suppress(Exception):
                await self.request("stop", timeout=min(timeout, 5.0))
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            self._kill(proc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
        if proc.returncode is None:
            self._kill(proc)
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._fail_pending(f"[{self.name}] client closed")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._proc = None

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    # -- plumbing ----------------------------------------------------------

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_chars:].decode("utf-8", "replace")

    def _tail(self) -> str:
        tail = self.log_tail()
        return f"\n--- {self.name} node log tail ({self.log_path}) ---\n{tail}" if tail else ""

    def _fail_pending(self, reason: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(JsClientError(reason))
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(JsClientError(reason))

    async def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    self._write_log(b"[jsclient.py] non-JSON stdout line: " + line)
                    continue
                rid = msg.get("id")
                if rid is None:
                    if (
                        msg.get("event") == "ready"
                        and self._ready is not None
                        and not self._ready.done()
                    ):
                        self._ready.set_result(msg)
                    elif "error" in msg:
                        self._write_log(f"[jsclient.py] protocol error: {msg['error']}\n".encode())
                    continue
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            rc = await self._proc.wait() if self._proc is not None else None
            self._dead = f"[{self.name}] node process exited (rc={rc})"
            self._fail_pending(self._dead + self._tail())

    def _write_log(self, data: bytes) -> None:
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.write(data)

    async def request(
        self, cmd: str, *, timeout: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """Send one command; return the result dict (without ``id``).

        Raises JsClientError on an error response, timeout or process death.
        """
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise JsClientError(f"[{self.name}] not started")
        if self._dead:
            raise JsClientError(self._dead + self._tail())
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        line = json.dumps({"id": rid, "cmd": cmd, **params}) + "\n"
        try:
            async with self._write_lock:
                proc.stdin.write(line.encode())
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._pending.pop(rid, None)
            raise JsClientError(
                f"[{self.name}] cannot write to node process: {exc}{self._tail()}"
            ) from exc
        timeout = self.default_timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise JsClientError(
                f"[{self.name}] no response to {cmd!r} within {timeout}s{self._tail()}"
            ) from None
        if "error" in msg:
            raise JsClientError(
                f"[{self.name}] {cmd} failed after {time.monotonic() - started:.1f}s: "
                f"{msg['error']}"
            )
        msg.pop("id", None)
        return msg

    # -- commands ----------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self.request("ping", timeout=10)

    async def login(
        self, homeserver_url: str, user_id: str, password: str, *, timeout: float = 90.0
    ) -> dict[str, Any]:
        res = await self.request(
            "login",
            homeserver_url=homeserver_url,
            user_id=user_id,
            password=password,
            timeout_ms=int((timeout - 5) * 1000),
            timeout=timeout,
        )
        self.user_id, self.device_id = res["user_id"], res["device_id"]
        return res

    async def join(self, room_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        return await self.request(
            "join", room_id=room_id, timeout_ms=int(timeout * 1000), timeout=timeout + 10
        )

    async def create_room(self, name: str = "js room", history_visibility: str = "shared") -> str:
        res = await self.request(
            "create_room", name=name, history_visibility=history_visibility, timeout=60
        )
        return str(res["room_id"])

    async def create_plain_room(self, name: str = "js plain room", room_type: str = "") -> str:
        """A room that is not encrypted (``room_type``: its ``m.room.create`` type)."""
        res = await self.request("create_plain_room", name=name, room_type=room_type, timeout=60)
        return str(res["room_id"])

    async def send_state(
        self, room_id: str, type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        """Send a state event with matrix-js-sdk's ``sendStateEvent``; its event id."""
        res = await self.request(
            "send_state", room_id=room_id, type=type, content=content, state_key=state_key,
            timeout=60,
        )  # fmt: skip
        return str(res["event_id"])

    async def invite(self, room_id: str, user_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        return await self.request("invite", room_id=room_id, user_id=user_id, timeout=timeout)

    async def accept_invite(self, room_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        return await self.request(
            "accept_invite", room_id=room_id, timeout_ms=int(timeout * 1000), timeout=timeout + 10
        )

    async def history(
        self, room_id: str, event_type: str, want: int, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Page back to the room's creation; the decrypted events of ``event_type`` and the
        decryption failures (with matrix-js-sdk's ``decryptionFailureReason``)."""
        return await self.request(
            "history",
            room_id=room_id,
            type=event_type,
            want=want,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 30,
        )

    async def wait_event(
        self,
        room_id: str,
        type: str,
        match: dict[str, Any] | None = None,
        *,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait for a (decrypted) event; returns {event_id, sender, type, content, encrypted}."""
        return await self.request(
            "wait_event",
            room_id=room_id,
            type=type,
            match=match or {},
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    async def send_event(
        self, room_id: str, type: str, content: dict[str, Any], *, timeout: float = 60.0
    ) -> dict[str, Any]:
        return await self.request(
            "send_event",
            room_id=room_id,
            type=type,
            content=content,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    async def ydoc_catch_up(
        self,
        doc: str,
        room_id: str,
        want: int,
        *,
        snapshot_only: bool = False,
        texts: list[str] | None = None,
        maps: list[str] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """A fresh Yjs document ``doc`` caught up from the room as IXO's reader does (see
        ``ydoc_catch_up`` in client.mjs); returns its state and the snapshot it used."""
        return await self.request(
            "ydoc_catch_up",
            doc=doc,
            room_id=room_id,
            want=want,
            snapshot_only=snapshot_only,
            texts=texts or [],
            maps=maps or [],
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 30,
        )

    async def ydoc_edit(
        self,
        doc: str,
        room_id: str,
        edits: list[dict[str, Any]],
        *,
        texts: list[str] | None = None,
        maps: list[str] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """One Yjs transaction on ``doc``, sent as a ``matrix-crdt.doc_update``."""
        return await self.request(
            "ydoc_edit",
            doc=doc,
            room_id=room_id,
            edits=edits,
            texts=texts or [],
            maps=maps or [],
            timeout=timeout,
        )

    async def ydoc_snapshot(
        self, doc: str, room_id: str, last_event_id: str, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """An inline ``matrix-crdt.doc_snapshot`` of ``doc``."""
        return await self.request(
            "ydoc_snapshot", doc=doc, room_id=room_id, last_event_id=last_event_id, timeout=timeout
        )

    async def download_decrypt(
        self, file: dict[str, Any], mxc_url: str | None = None, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Returns {plaintext_b64, sha256_ok, ciphertext_sha256}."""
        params: dict[str, Any] = {"file": file}
        if mxc_url is not None:
            params["mxc_url"] = mxc_url
        return await self.request("download_decrypt", timeout=timeout, **params)

    async def upload_encrypted(
        self,
        room_id: str,
        filename: str,
        data: bytes,
        mimetype: str = "application/octet-stream",
        *,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Returns {event_id, mxc, file (the EncryptedFile object sent)}."""
        return await self.request(
            "upload_encrypted",
            room_id=room_id,
            filename=filename,
            data_b64=base64.b64encode(data).decode(),
            mimetype=mimetype,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    async def bootstrap_cross_signing(self, password: str) -> dict[str, Any]:
        return await self.request("bootstrap_cross_signing", password=password, timeout=60)

    async def device_status(self, user_id: str, device_id: str) -> dict[str, Any]:
        return await self.request("device_status", user_id=user_id, device_id=device_id, timeout=30)

    # -- key backup ------------------------------------------------------------

    async def restore_backup_with_recovery_key(
        self, recovery_key: str, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Unlock secret storage with ``recovery_key``, load the backup key, restore.

        Returns {version, algorithm, restored: {total, imported}, trust: {trusted,
        matches_decryption_key}, check (checkKeyBackupAndEnable), active_version}.
        """
        return await self.request(
            "restore_backup_with_recovery_key", recovery_key=recovery_key, timeout=timeout
        )

    async def cross_signing_from_secret_storage(self) -> dict[str, Any]:
        """Import cross-signing keys from secret storage (after the recovery key was given).

        Returns {ready, status, device_signed_by_owner, backup_trust: {trusted,
        matches_decryption_key}}.
        """
        return await self.request("cross_signing_from_secret_storage", timeout=60)

    async def setup_key_backup(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """New secret storage + key backup: {recovery_key, key_id, version, ready}."""
        return await self.request(
            "setup_key_backup", timeout_ms=int((timeout - 5) * 1000), timeout=timeout
        )

    async def wait_backup_sessions(
        self, version: str, min_sessions: int, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until backup ``version`` holds ``min_sessions``: {sessions: {room: [ids]}}."""
        return await self.request(
            "wait_backup_sessions",
            version=version,
            min_sessions=min_sessions,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    # -- interactive verification (SAS) --------------------------------------
    # A flow is named by its flow_id: the to-device transaction id, or the event
    # id of the in-room request. Requests describe themselves as
    # {flow_id, other_user, other_device, room_id, initiated_by_me, phase, cancellation_code}.

    async def request_verification(
        self, user_id: str, device_id: str | None = None, room_id: str | None = None
    ) -> dict[str, Any]:
        """Ask to verify: to-device (``device_id``) or in-room (``room_id``)."""
        where = {"room_id": room_id} if room_id else {"device_id": device_id}
        return await self.request("request_verification", user_id=user_id, timeout=30, **where)

    async def wait_verification_request(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """The next incoming request (each is returned once)."""
        return await self.request(
            "wait_verification_request", timeout_ms=int(timeout * 1000), timeout=timeout + 10
        )

    async def accept_verification(self, flow_id: str) -> dict[str, Any]:
        return await self.request("accept_verification", flow_id=flow_id, timeout=30)

    async def start_verification(self, flow_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Send the SAS start (waits for the ready first)."""
        return await self.request(
            "start_verification",
            flow_id=flow_id,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    async def sas(self, flow_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Accept the SAS and wait for it: {emoji: [[symbol, name]...], decimal: [n, n, n]}."""
        return await self.request(
            "sas", flow_id=flow_id, timeout_ms=int(timeout * 1000), timeout=timeout + 10
        )

    async def sas_confirm(self, flow_id: str) -> dict[str, Any]:
        return await self.request("sas_confirm", flow_id=flow_id, timeout=30)

    async def sas_mismatch(self, flow_id: str) -> dict[str, Any]:
        return await self.request("sas_mismatch", flow_id=flow_id, timeout=30)

    async def cancel_verification(self, flow_id: str) -> dict[str, Any]:
        return await self.request("cancel_verification", flow_id=flow_id, timeout=30)

    async def wait_verification(
        self, flow_id: str, phase: str = "done", *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait for phase "done" or "cancelled" (fails at once if it ends the other way)."""
        return await self.request(
            "wait_verification",
            flow_id=flow_id,
            phase=phase,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 10,
        )

    async def stop(self) -> None:
        await self.close()
