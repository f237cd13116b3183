"""``baton demo --model openai:…``: the demo's refund agent driven by a model behind the real
openai client, across the demo's worker processes (one of them SIGKILLed), against a local
server speaking the chat-completions wire format."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wire_support import Server, chat_completion


def decide(body: dict[str, Any]) -> dict[str, Any]:
    """A model that reads the goal and the tool results it is sent, as a real one would."""
    if not body.get("tools"):  # asked for a plan
        return {"content": "1. Check the order and payment. 2. Refund. 3. Receipt. 4. Note the ticket."}
    results: dict[str, Any] = {}
    names = {c["id"]: c["function"]["name"] for m in body["messages"] if m["role"] == "assistant"
             for c in m.get("tool_calls") or []}
    for m in body["messages"]:
        if m["role"] == "tool":
            results[names[m["tool_call_id"]]] = json.loads(m["content"]) if m["content"][:1] in "{[" else m["content"]

    def calls(*made: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        return {"content": None, "tool_calls": [
            {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for name, args in made]}

    if "update_crm" in results:
        return {"content": f"Refunded $120.00 on order 98765 ({results['issue_refund']['txn_id']})."}
    if "send_receipt" in results:
        return calls(("update_crm", {"ticket": "T-4321", "note": f"Refunded ({results['issue_refund']['txn_id']})"}))
    if "issue_refund" in results:
        return calls(("send_receipt", {"to": results["check_order"]["email"],
                                       "txn_id": results["issue_refund"]["txn_id"], "amount": 120.0}))
    if "check_payment" in results:
        return calls(("issue_refund", {"order_id": "98765", "amount": 120.0}))
    return calls(("check_order", {"order_id": "98765"}), ("check_payment", {"order_id": "98765"}))


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = Server(lambda body: (200, chat_completion(decide(body), model="fake-gpt", prompt_tokens=100,
                                                       completion_tokens=20)))
    yield f"{server.url}/v1"
    server.close()


def test_the_demo_runs_on_a_model_behind_the_openai_client(tmp_path: Path, endpoint: str) -> None:
    env = {**os.environ, "COLUMNS": "200", "OPENAI_BASE_URL": endpoint, "OPENAI_API_KEY": "sk-test"}
    proc = subprocess.run([sys.executable, "-m", "baton", "demo", "--model", "openai:fake-gpt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "driven by the model openai:fake-gpt" in out and "Killing worker 2" in out
    assert "order 98765 was refunded exactly once" in out and "✗" not in out.split("Proof")[1]
    assert "never twice for the same turn" not in out  # the demo books only its scripted model's calls
    with sqlite3.connect(tmp_path / ".baton" / "demo" / "services.db") as services:
        assert services.execute("SELECT COUNT(*) FROM refunds").fetchone()[0] == 1


def test_a_mistyped_model_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "baton", "demo", "--model", "gpt-4o"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: model 'gpt-4o' is not PROVIDER:MODEL")
    assert "Traceback" not in proc.stderr and not (tmp_path / ".baton").exists()
