"""An account service that speaks MCP, for Baton's MCP tests.

Each tool appends one JSON line to the file named by ``MCPAPP_LOG`` before it acts:
the server's pid, the tool, its arguments and the ``baton/idempotency_key`` it was
sent in the request's ``_meta``, so a test can prove what ran, how often, with which
key, and in which server process.

    python tests/mcpapp/server.py               # stdio
    python tests/mcpapp/server.py --http 8123   # streamable HTTP on 127.0.0.1:8123/mcp
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

KEY = "baton/idempotency_key"

app = MCPServer("accounts", log_level="WARNING")


def record(ctx: Context, tool: str, args: dict[str, Any]) -> None:
    meta = ctx.request_context.meta or {}
    line = {"pid": os.getpid(), "tool": tool, "args": args, "key": meta.get(KEY)}
    with open(os.environ["MCPAPP_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


@app.tool(annotations=ToolAnnotations(read_only_hint=True))
def lookup_account(account_id: str, ctx: Context) -> dict[str, Any]:
    """Look an account up by its id."""
    record(ctx, "lookup_account", {"account_id": account_id})
    return {"account_id": account_id, "email": f"{account_id}@example.com", "status": "active"}


@app.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False), structured_output=False)
def reset_password(account_id: str, ctx: Context, notify: bool = True) -> str:
    """Send a password reset link; sending it again sends the same link."""
    record(ctx, "reset_password", {"account_id": account_id, "notify": notify})
    return f"reset link sent for {account_id}"


@app.tool(annotations=ToolAnnotations(destructive_hint=True))
def delete_account(account_id: str, reason: str, ctx: Context) -> str:
    """Delete an account and everything in it."""
    record(ctx, "delete_account", {"account_id": account_id, "reason": reason})
    return f"deleted {account_id}"


@app.tool(annotations=ToolAnnotations(destructive_hint=False))
def suspend_account(account_id: str, ctx: Context) -> str:
    """Suspend an account (this one always refuses)."""
    record(ctx, "suspend_account", {"account_id": account_id})
    raise ToolError(f"account {account_id} is under a legal hold and cannot be suspended")


@app.tool(name="notes.add")
def add_note(account_id: str, text: str, ctx: Context) -> str:
    """Add a note to an account. No annotations: MCP's defaults apply."""
    record(ctx, "notes.add", {"account_id": account_id, "text": text})
    return "noted"


@app.tool(annotations=ToolAnnotations(read_only_hint=True), structured_output=False)
def account_avatar(account_id: str, ctx: Context) -> list[str | Image]:
    """The account's picture, with a caption."""
    record(ctx, "account_avatar", {"account_id": account_id})
    return [f"avatar of {account_id}", Image(data=b"\x89PNG\r\n\x1a\n", format="png")]


@app.tool(annotations=ToolAnnotations(read_only_hint=True))
async def wait(seconds: float, ctx: Context) -> str:
    """Take its time before answering."""
    record(ctx, "wait", {"seconds": seconds})
    await anyio.sleep(seconds)
    return "done"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port")
    options = parser.parse_args()
    down = os.environ.get("MCPAPP_DOWN")
    if down and os.path.exists(down):  # "under maintenance": the server will not start
        raise SystemExit(1)
    if options.http is None:
        app.run()
    else:
        app.run("streamable-http", host="127.0.0.1", port=options.http)


if __name__ == "__main__":
    main()
