"""``python -m datarooms.cli``: the same as the ``datarooms`` command."""

from __future__ import annotations

from datarooms.cli import main

main()
