"""``python -m datarooms.services.mcp --agent NAME``: the stdio MCP server of one agent.

The same code path as ``datarooms mcp --agent NAME``. Options: ``--data-dir``,
``--config`` (as for ``datarooms``), ``--log-level``. Logs and audit records go
to stderr (stdout carries the MCP protocol) and to the audit log file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from datarooms._logging import configure_logging
from datarooms.config import load_settings
from datarooms.errors import DataroomsError
from datarooms.services.mcp.stdio import run_stdio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datarooms.mcpserver",
        description="Serve one datarooms agent over MCP stdio.",
    )
    parser.add_argument("--agent", required=True, help="Agent name, as in agents.toml")
    parser.add_argument("--data-dir", "-d", type=Path, default=None)
    parser.add_argument("--config", "-c", type=Path, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, fmt="json", stream=sys.stderr)
    try:
        settings = load_settings(data_dir=args.data_dir, config_file=args.config)
        asyncio.run(run_stdio(settings, args.agent))
    except DataroomsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
