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
  echo "installing datarooms[$1] into $venv (first run takes a minute)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$1]" >&2
  touch "$stamp"
fi
