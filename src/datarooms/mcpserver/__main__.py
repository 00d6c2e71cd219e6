"""``python -m datarooms.mcpserver --agent NAME``: kept for users' MCP configs.

The same entry point as ``python -m datarooms.services.mcp`` and ``datarooms mcp``.
"""

from __future__ import annotations

import sys

from datarooms.services.mcp.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
