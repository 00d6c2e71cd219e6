"""Driver for the independent UCAN 1.0 implementation in ``tests/interop/ucan`` (iso-ucan).

``ensure_ucan_deps()`` runs ``npm ci`` there when ``node_modules`` is missing or was
installed from another ``package-lock.json``; ``run(request)`` sends one JSON request to
``ucan.mjs`` and returns its JSON answer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

UCAN_DIR = Path(__file__).resolve().parent / "ucan"
LOCK_FILE = UCAN_DIR / "package-lock.json"
HASH_FILE = UCAN_DIR / "node_modules" / ".lock-hash"


def ensure_ucan_deps(timeout: float = 300.0) -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("node and npm are needed for the UCAN interop test (tests/interop/ucan)")
    want = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()

    def current() -> bool:
        return HASH_FILE.is_file() and HASH_FILE.read_text().strip() == want

    if current():
        return
    with open(UCAN_DIR / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--engine-strict=false"],
            cwd=UCAN_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci failed in {UCAN_DIR}:\n{proc.stderr[-2000:]}")
        HASH_FILE.write_text(want)


def run(request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    proc = subprocess.run(
        ["node", str(UCAN_DIR / "ucan.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=UCAN_DIR,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ucan.mjs failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer
