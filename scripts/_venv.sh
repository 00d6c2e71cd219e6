# Shared by scripts/up and scripts/test: make .venv and install the project into it.
# Usage: . scripts/_venv.sh EXTRA   (EXTRA is a pyproject extra: synapse or test)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DATAROOMS_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "error: $py not found; install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: datarooms needs Python >= 3.11; $py is $("$py" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment in $venv" >&2
  if ! "$py" -m venv "$venv"; then
    echo "error: could not create a virtual environment; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
fi
stamp="$venv/.datarooms-installed-$1"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "installing datarooms[$1] into $venv (first run takes half a minute)" >&2
  # uv (from PyPI, into the venv) downloads and installs in parallel, about twice as
  # fast as pip here; pip is the fallback. --compile-bytecode as pip does: where the
  # environment sets PYTHONDONTWRITEBYTECODE (this machine does) an uncompiled Synapse takes
  # 7.2 s of CPU to import instead of 2.0 s, at every start.
  if "$venv/bin/python" -m pip install -q --disable-pip-version-check 'uv>=0.5' >&2 &&
    "$venv/bin/python" -m uv pip install -q --compile-bytecode --python "$venv/bin/python" \
      -e "$root[$1]" >&2; then
    :
  else
    echo "uv could not install; falling back to pip" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$1]" >&2
  fi
  touch "$stamp"
fi
# Our own modules too (an editable install compiles nothing): 0.3 s of CPU at every
# start of a process that imports the SDK, under PYTHONDONTWRITEBYTECODE. Only what
# changed since the last run is compiled again.
"$venv/bin/python" -m compileall -q -j 0 "$root/src" >/dev/null
