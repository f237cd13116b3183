"""Tools from MCP servers: a real server (``tests/mcpapp/server.py``), started over stdio
or streamable HTTP, whose tools a run calls through ``ctx.call`` with the validation,
policy, approvals, retries and journal of any other tool. The server logs every call it
executes (its pid, the tool, the arguments, the idempotency key it received), which is
how these tests know what ran, how often, and in which process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, Context, RunStatus, ToolValidationError, workflow
from baton.agent import ScriptedModel, agent, call, last_results, say
from baton.agent.mcp import McpConnectionLost, McpServer, McpTool, McpUnavailable, tool_name
from baton.config import Governance
from baton.errors import UsageError
from baton.journal import events as ev
from engine_support import make_settings, of_type

SERVER = str(Path(__file__).parent / "mcpapp" / "server.py")
PROVIDER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

MOUNTED: dict[str, McpTool] = {}
"""The tools of the server a test mounted, by Baton name, for the workflows below."""


@workflow
def help_customer(ctx: Context, account_id: str) -> dict[str, Any]:
    account = ctx.call(MOUNTED["lookup_account"], account_id=account_id)
    sent = ctx.call(MOUNTED["reset_password"], account_id=account_id)
    noted = ctx.call(MOUNTED["notes_add"], account_id=account_id, text="reset asked for by phone")
    return {"account": account, "sent": sent, "noted": noted}


@workflow
async def help_customer_async(ctx: Context, account_id: str) -> dict[str, Any]:
    account = await ctx.call(MOUNTED["lookup_account"], account_id=account_id)
    avatar = await ctx.call(MOUNTED["account_avatar"], account_id=account_id)
    sent = await ctx.call(MOUNTED["reset_password"], account_id=account_id, notify=False)
    return {"account": account, "avatar": avatar, "sent": sent}


@workflow
def call_tool(ctx: Context, tool: str, args: dict[str, Any]) -> Any:
    return ctx.call(MOUNTED[tool], **args)


@workflow
def close_account(ctx: Context, account_id: str) -> Any:
    ctx.call(MOUNTED["lookup_account"], account_id=account_id)
    return ctx.call(MOUNTED["delete_account"], account_id=account_id, reason="asked to be forgotten")


# -- the server, its log, and the runtime ------------------------------------------------


class Executed:
    """What the server ran since a test began, in order: the complete lines of its log
    (one being written is not read yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skip = len(self._lines())

    def _lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").split("\n")[:-1]

    def __call__(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines()[self.skip:]]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "calls.jsonl"
    path.touch()
    return path


@pytest.fixture(scope="module")
def accounts(server_log: Path) -> Iterator[McpServer]:
    """The server over stdio, shared by the tests of this module (starting one takes a
    second or two). A test that stops it leaves the next call to start it again."""
    with McpServer.stdio(sys.executable, [SERVER], env={"MCPAPP_LOG": str(server_log)}) as server:
        yield server


@pytest.fixture
def executed(server_log: Path) -> Executed:
    return Executed(server_log)


@pytest.fixture
def mounted() -> Iterator[dict[str, McpTool]]:
    MOUNTED.clear()
    yield MOUNTED
    MOUNTED.clear()


def mount(server: McpServer, **kwargs: Any) -> dict[str, McpTool]:
    MOUNTED.update({tool.name: tool for tool in server.tools(**kwargs)})
    return MOUNTED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Executed]]:
    """The server over streamable HTTP, in a process of its own, answering before the test
    starts: its URL, and what it ran."""
    log = tmp_path / "http-calls.jsonl"
    log.touch()
    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, "--http", str(port)],
                               env={**os.environ, "MCPAPP_LOG": str(log)})
    try:
        def answers() -> bool:
            assert process.poll() is None, "the MCP server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(answers, timeout=30.0)
        yield f"http://127.0.0.1:{port}/mcp", Executed(log)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def baton(tmp_path: Path) -> Iterator[Baton]:
    with Baton(make_settings(tmp_path)) as b:
        yield b


PRINCIPALS = {
    "alice": {"tenant": "acme", "roles": ["support"]},
    "bob": {"tenant": "acme", "roles": ["support", "manager"]},
}


def governed(tmp_path: Path, policy: str) -> Baton:
    (tmp_path / "enforced.cedar").write_text(policy, encoding="utf-8")
    governance = Governance.from_dict({"principals": PRINCIPALS, "policies": {"files": ["enforced.cedar"]}},
                                      base=tmp_path, source=str(tmp_path / "baton.toml"))
    return Baton(make_settings(tmp_path), governance=governance)


# -- mounting ----------------------------------------------------------------------------


def test_mounting_lists_the_tools_and_maps_annotations_with_the_specs_defaults(accounts: McpServer) -> None:
    tools = {tool.remote_name: tool for tool in accounts.tools(prefix="crm")}
    assert set(tools) == {"lookup_account", "reset_password", "delete_account", "suspend_account", "notes.add",
                          "account_avatar", "wait"}
    assert tools["notes.add"].name == "crm_notes_add"
    assert all(PROVIDER_NAME.match(tool.name) for tool in tools.values())
    described = {name: (t.read_only, t.destructive, t.idempotent) for name, t in tools.items()}
    assert described["lookup_account"] == (True, False, True)    # read-only: idempotent, never destructive
    assert described["reset_password"] == (False, False, True)   # idempotentHint, destructiveHint=false
    assert described["delete_account"] == (False, True, False)
    assert described["suspend_account"] == (False, False, False)
    assert described["notes.add"] == (False, True, False)        # no annotations: MCP's defaults
    assert tools["lookup_account"].description == "Look an account up by its id."
    # Lost in flight, a call that is not idempotent is not made again on a guess.
    assert tools["notes.add"].retry.give_up_on == (McpConnectionLost,)
    assert tools["lookup_account"].retry.give_up_on == ()


def test_only_and_overrides_choose_tools_and_say_what_the_server_cannot(accounts: McpServer) -> None:
    delete, lookup = accounts.tools(only=["delete_account", "lookup_account"], overrides={
        "delete_account": {"role": "admin", "resource": "Account::{account_id}", "timeout": 5.0, "retries": 2,
                           "idempotent": True, "sensitive": ["reason"]},
        "lookup_account": {"read_only": False}})
    assert (delete.name, lookup.name) == ("delete_account", "lookup_account")
    assert delete.role == "admin" and delete.timeout == 5.0 and delete.retry.retries == 2
    assert delete.idempotent and delete.retry.give_up_on == () and delete.destructive
    assert delete.resource_of({"account_id": "a7", "reason": "x"}) == ("Account", "a7")
    assert "reason" in delete.hints.names
    assert not lookup.read_only and not lookup.idempotent and lookup.destructive  # now the spec's defaults apply

    with pytest.raises(UsageError, match=r"has no tool 'lookup', 'wipe'; it has account_avatar, delete_account"):
        accounts.tools(only=["lookup"], overrides={"wipe": {}})
    with pytest.raises(UsageError, match=r"unknown option 'rol' for tool delete_account .*; the options are"):
        accounts.tools(only=["delete_account"], overrides={"delete_account": {"rol": "admin"}})  # type: ignore[typeddict-unknown-key]


def test_a_tool_name_is_one_model_providers_accept() -> None:
    assert tool_name("notes.add") == "notes_add"
    assert tool_name("lookup", prefix="crm") == "crm_lookup"
    assert tool_name("files/read all", prefix="fs.v2") == "fs_v2_files_read_all"
    long_a, long_b = tool_name("x" * 100 + "a"), tool_name("x" * 100 + "b")
    assert len(long_a) == len(long_b) == 64 and long_a != long_b and PROVIDER_NAME.match(long_a)


def test_the_schema_a_model_sees_is_the_servers_input_schema(accounts: McpServer) -> None:
    (delete,) = accounts.tools(prefix="crm", only=["delete_account"])
    schema = delete.json_schema()
    assert schema["title"] == "crm_delete_account"
    assert schema["description"] == "Delete an account and everything in it."
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"account_id", "reason"}
    assert schema["required"] == ["account_id", "reason"]
    assert delete.input_schema["title"] != "crm_delete_account"  # the server's copy is left alone


def test_arguments_are_checked_against_the_input_schema_before_anything_is_sent(accounts: McpServer) -> None:
    (delete,) = accounts.tools(only=["delete_account"])
    with pytest.raises(ToolValidationError) as err:
        delete.validate({"account_id": 7})
    assert str(err.value) == ("invalid arguments for delete_account: arguments: 'reason' is a required property; "
                              "account_id: 7 is not of type 'string'")
    with pytest.raises(ToolValidationError, match="not JSON values"):
        delete.validate({"account_id": "a1", "reason": float("nan")})
    with pytest.raises(ToolValidationError, match="keyword arguments only"):
        delete.bind(("a1", "why"), {})
    values, args_json = delete.validate({"account_id": "a1", "reason": "gone"})
    assert values == args_json == {"account_id": "a1", "reason": "gone"}


# -- calls in a run ----------------------------------------------------------------------


def test_a_run_calls_tools_over_stdio_with_its_idempotency_keys_and_journals_the_results(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts)
    first = baton.run(help_customer, {"account_id": "a1"})
    assert first.status == RunStatus.COMPLETED
    assert baton.result(first.run_id) == {
        "account": {"account_id": "a1", "email": "a1@example.com", "status": "active"},  # structuredContent
        "sent": "reset link sent for a1",                                                 # text content
        "noted": {"result": "noted"},
    }
    run_id = first.run_id
    # Idempotent calls journal one event each; the note (not idempotent) its intent, then its outcome.
    ran = of_type(baton, run_id, ev.StepRan)
    assert [(e.name, e.args, e.idempotency_key) for e in ran] == [
        ("lookup_account", {"account_id": "a1"}, f"{run_id}:1"),
        ("reset_password", {"account_id": "a1"}, f"{run_id}:2"),
    ]
    assert "a1@example.com" not in json.dumps(ran[0].result)  # an email address is sealed, as from any tool
    (opened, _) = [e for e in baton.events(run_id, reveal=True) if isinstance(e, ev.StepRan)]
    assert opened.result == {"account_id": "a1", "email": "a1@example.com", "status": "active"}
    (started,) = of_type(baton, run_id, ev.StepStarted)
    assert started.name == "notes_add" and started.idempotency_key == f"{run_id}:3" and not started.idempotent
    assert [e.result for e in of_type(baton, run_id, ev.StepCompleted)] == [{"result": "noted"}]

    second = baton.run(help_customer, {"account_id": "a2"})
    assert second.status == RunStatus.COMPLETED
    calls = executed()
    assert [(c["tool"], c["key"]) for c in calls] == [
        ("lookup_account", f"{run_id}:1"), ("reset_password", f"{run_id}:2"), ("notes.add", f"{run_id}:3"),
        ("lookup_account", f"{second.run_id}:1"), ("reset_password", f"{second.run_id}:2"),
        ("notes.add", f"{second.run_id}:3"),
    ]
    assert calls[2]["args"] == {"account_id": "a1", "text": "reset asked for by phone"}
    assert len({c["pid"] for c in calls}) == 1  # one server process for both runs: the session is reused


def test_a_run_calls_tools_over_streamable_http_from_an_async_workflow(
        baton: Baton, http_server: tuple[str, Executed], mounted: dict[str, McpTool]) -> None:
    url, executed = http_server
    with McpServer.http(url, headers={"Authorization": "Bearer test"}) as accounts:
        mount(accounts)
        record = baton.run(help_customer_async, {"account_id": "a9"})
    assert record.status == RunStatus.COMPLETED
    assert baton.result(record.run_id) == {
        "account": {"account_id": "a9", "email": "a9@example.com", "status": "active"},
        "avatar": [{"type": "text", "text": "avatar of a9"}, {"type": "image", "mimeType": "image/png"}],
        "sent": "reset link sent for a9",
    }
    ran = of_type(baton, record.run_id, ev.StepRan)
    assert [(e.name, e.args) for e in ran] == [("lookup_account", {"account_id": "a9"}),
                                               ("account_avatar", {"account_id": "a9"}),
                                               ("reset_password", {"account_id": "a9", "notify": False})]
    assert [(c["tool"], c["key"]) for c in executed()] == [
        ("lookup_account", f"{record.run_id}:1"), ("account_avatar", f"{record.run_id}:2"),
        ("reset_password", f"{record.run_id}:3")]


def test_invalid_arguments_fail_the_step_and_never_reach_the_server(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts)
    record = baton.run(call_tool, {"tool": "delete_account", "args": {"account_id": 42}})
    assert record.status == RunStatus.FAILED
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.final and failed.error.code == ToolValidationError.code
    assert failed.error.message == ("invalid arguments for delete_account: arguments: 'reason' is a required "
                                    "property; account_id: 42 is not of type 'string'")
    assert of_type(baton, record.run_id, ev.RunFailed)[0].error.code == ToolValidationError.code
    assert executed() == []


def test_an_error_result_fails_the_step_with_the_servers_message_and_is_not_retried(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts, overrides={"suspend_account": {"retries": 3, "backoff": 0.01}})
    record = baton.run(call_tool, {"tool": "suspend_account", "args": {"account_id": "a5"}})
    assert record.status == RunStatus.FAILED
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.final and not failed.error.retryable and failed.error.type == "McpToolError"
    assert "account a5 is under a legal hold and cannot be suspended" in failed.error.message
    assert [c["tool"] for c in executed()] == ["suspend_account"]  # once, despite three retries allowed


def test_a_call_out_of_time_is_cancelled_and_retried_with_the_same_key(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts, overrides={"wait": {"timeout": 0.3, "retries": 1, "backoff": 0.01}})
    started = time.monotonic()
    record = baton.run(call_tool, {"tool": "wait", "args": {"seconds": 5}})
    assert time.monotonic() - started < 4  # neither attempt waited for the server's answer
    assert record.status == RunStatus.FAILED
    failures = of_type(baton, record.run_id, ev.StepFailed)
    assert [(f.attempt, f.error.code, f.final) for f in failures] == [(1, "tool_timeout", False),
                                                                      (2, "tool_timeout", True)]
    wait_until(lambda: len(executed()) == 2)
    assert {c["key"] for c in executed()} == {f"{record.run_id}:1"}


# -- governance --------------------------------------------------------------------------

NOTHING_DESTRUCTIVE = """\
@id("support-may-act")
permit(principal in Role::"support", action, resource);

@id("nothing-destructive")
forbid(principal, action, resource) when { context.tool.destructive };
"""


def test_a_policy_on_mcp_annotations_denies_a_destructive_tool_which_never_runs(
        tmp_path: Path, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts)
    with governed(tmp_path, NOTHING_DESTRUCTIVE) as baton:
        record = baton.run(close_account, {"account_id": "a3"}, principal="alice")
        assert record.status == RunStatus.FAILED
        decisions = of_type(baton, record.run_id, ev.PolicyDecided)
        assert [(d.action, d.effect, d.policies) for d in decisions] == [
            ("Action::lookup_account", "allow", ["support-may-act"]),
            ("Action::delete_account", "deny", ["nothing-destructive"])]
        assert of_type(baton, record.run_id, ev.RunFailed)[0].error.type == "PolicyDenied"
    assert [c["tool"] for c in executed()] == ["lookup_account"]


def test_an_agent_uses_a_servers_tools_and_policy_refuses_the_destructive_one(
        tmp_path: Path, accounts: McpServer, executed: Executed) -> None:
    model = ScriptedModel([
        call("lookup_account", account_id="a9"),
        call("delete_account", account_id="a9", reason="the customer asked"),
        lambda r: say(f"could not delete: {last_results(r)['delete_account']['error']}"),
    ])
    support = agent("support", instructions="You manage accounts.", model=model, tools=[accounts])
    with governed(tmp_path, NOTHING_DESTRUCTIVE) as baton:
        record = baton.run(support, goal="Delete account a9", principal="alice")
        assert record.status is RunStatus.COMPLETED, record
        answer = baton.result(record.run_id)["answer"]
    assert "refused by policy" in answer and "nothing-destructive" in answer
    assert [c["tool"] for c in executed()] == ["lookup_account"]
    shown = {t.name: t for t in model.calls[0].tools}
    assert {"lookup_account", "delete_account", "reset_password"} <= set(shown)
    assert shown["lookup_account"].parameters["properties"]["account_id"]["type"] == "string"


def test_an_agent_whose_server_is_down_waits_for_it_and_a_resumed_run_needs_no_listing(
        tmp_path: Path, server_log: Path, executed: Executed) -> None:
    down = tmp_path / "down"
    down.touch()
    server = McpServer.stdio(sys.executable, [SERVER], env={"MCPAPP_LOG": str(server_log), "MCPAPP_DOWN": str(down)},
                             timeout=10)
    model = ScriptedModel([call("lookup_account", account_id="a7"), say("found")])
    support = agent("support", instructions="You manage accounts.", model=model, tools=[server])
    with server, Baton(make_settings(tmp_path, retry_wait=0.0)) as baton:
        run_id = baton.start(support, goal="Look a7 up")
        record = baton.drive(run_id)
        assert record.status is RunStatus.SLEEPING, record  # a retry is due later, not a failure
        (failed,) = of_type(baton, run_id, ev.StepFailed)
        assert failed.error.type == "McpUnavailable" and not failed.final
        down.unlink()
        record = baton.drive(run_id, wait_for_timers=True)
        assert record.status is RunStatus.COMPLETED, record
        listed = [e for e in of_type(baton, run_id, ev.StepRan) if e.name == "tools.list"]
        assert len(listed) == 1 and any(t["name"] == "lookup_account" for t in listed[0].result)  # type: ignore[union-attr]
    assert [c["tool"] for c in executed()] == ["lookup_account"]


def test_a_destructive_tool_waits_for_a_manager_and_then_runs_once(
        tmp_path: Path, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    policy = NOTHING_DESTRUCTIVE.replace('@id("nothing-destructive")', '@id("destructive-needs-a-manager")\n'
                                         '@approval("role:manager")')
    mount(accounts)
    with governed(tmp_path, policy) as baton:
        record = baton.run(close_account, {"account_id": "a4"}, principal="alice")
        assert record.status == RunStatus.WAITING
        (request,) = of_type(baton, record.run_id, ev.ApprovalRequested)
        assert request.tool == "delete_account"
        assert request.args == {"account_id": "a4", "reason": "asked to be forgotten"}
        assert [c["tool"] for c in executed()] == ["lookup_account"]

        baton.decide(request.approval_id, principal="bob", approve=True, reason="verified by phone")
        assert baton.drive(record.run_id).status == RunStatus.COMPLETED
        assert baton.result(record.run_id) == {"result": "deleted a4"}
    deletes = [c for c in executed() if c["tool"] == "delete_account"]
    assert deletes == [{"pid": deletes[0]["pid"], "tool": "delete_account",
                        "args": {"account_id": "a4", "reason": "asked to be forgotten"},
                        "key": f"{record.run_id}:2"}]


# -- the session -------------------------------------------------------------------------


def test_one_session_serves_calls_from_many_threads(accounts: McpServer, executed: Executed) -> None:
    (lookup,) = accounts.tools(only=["lookup_account"])
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        results[i] = asyncio.run(lookup.fn(account_id=f"t{i}", idempotency_key=f"key-{i}"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["account_id"] for r in results.values()) == [f"t{i}" for i in range(8)]
    calls = executed()
    assert sorted(c["key"] for c in calls) == [f"key-{i}" for i in range(8)]
    assert len({c["pid"] for c in calls}) == 1


def test_a_server_that_died_between_calls_is_started_again_for_the_next(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts)
    assert baton.run(call_tool, {"tool": "lookup_account", "args": {"account_id": "a1"}}).status == \
        RunStatus.COMPLETED
    first_pid = executed()[0]["pid"]
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: gone(first_pid))
    time.sleep(0.2)  # for the session to see its pipe close
    # Not idempotent, and no retries: it succeeds only if it is sent on a new session.
    record = baton.run(call_tool, {"tool": "notes_add", "args": {"account_id": "a1", "text": "hello"}})
    assert record.status == RunStatus.COMPLETED
    assert [(c["tool"], c["pid"] != first_pid) for c in executed()] == [("lookup_account", False),
                                                                        ("notes.add", True)]


def run_killing_the_server_mid_call(baton: Baton, executed: Executed) -> Any:
    """Run the ``wait`` tool and SIGKILL the server once the call has reached it."""
    def kill_the_server_mid_call() -> None:
        wait_until(lambda: len(executed()) == 1)
        os.kill(executed()[0]["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_server_mid_call)
    killer.start()
    try:
        return baton.run(call_tool, {"tool": "wait", "args": {"seconds": 1.0}})
    finally:
        killer.join()


def test_a_read_only_call_cut_off_by_a_dying_server_is_retried_on_a_new_session(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts, overrides={"wait": {"retries": 1, "backoff": 0.01}})

    record = run_killing_the_server_mid_call(baton, executed)
    assert record.status == RunStatus.COMPLETED and baton.result(record.run_id) == {"result": "done"}
    (lost,) = of_type(baton, record.run_id, ev.StepFailed)
    assert lost.error.type == "McpConnectionLost" and lost.error.retryable and not lost.final
    assert "may or may not have taken effect" in lost.error.message
    calls = executed()
    assert [c["key"] for c in calls] == [f"{record.run_id}:1"] * 2 and calls[0]["pid"] != calls[1]["pid"]


def test_a_call_that_is_not_idempotent_cut_off_by_a_dying_server_is_in_doubt_not_failed(
        baton: Baton, accounts: McpServer, mounted: dict[str, McpTool], executed: Executed) -> None:
    mount(accounts, overrides={"wait": {"retries": 3, "backoff": 0.01, "idempotent": False, "read_only": False}})

    record = run_killing_the_server_mid_call(baton, executed)
    # It may have taken effect: neither a failure (a model would try again) nor a retry.
    assert record.status == RunStatus.NEEDS_ATTENTION, record
    assert of_type(baton, record.run_id, ev.StepFailed) == []
    (attention,) = of_type(baton, record.run_id, ev.NeedsAttention)
    assert "not idempotent and has no reconcile hook" in attention.reason
    assert len(executed()) == 1


def test_close_stops_the_server_and_a_later_call_starts_it_again(accounts: McpServer, executed: Executed) -> None:
    (lookup,) = accounts.tools(only=["lookup_account"])
    asyncio.run(lookup.fn(account_id="a1", idempotency_key="k1"))
    first_pid = executed()[0]["pid"]
    accounts.close()
    assert gone(first_pid)
    asyncio.run(lookup.fn(account_id="a1", idempotency_key="k2"))
    assert executed()[1]["pid"] != first_pid


def test_the_server_is_stopped_when_the_interpreter_exits(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    log.touch()
    program = "\n".join([
        "import asyncio, sys",
        "from baton.agent.mcp import McpServer",
        f"accounts = McpServer.stdio(sys.executable, [{SERVER!r}], env={{'MCPAPP_LOG': {str(log)!r}}})",
        "(lookup,) = accounts.tools(only=['lookup_account'])",
        "asyncio.run(lookup.fn(account_id='a1', idempotency_key='k1'))",
    ])  # and no close(): exiting is enough
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    (call,) = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert gone(call["pid"])


# -- servers that cannot be used ---------------------------------------------------------


def test_a_wrong_command_is_a_one_line_error(capfd: pytest.CaptureFixture[str]) -> None:
    with McpServer.stdio("no-such-mcp-server", ["--stdio"]) as server, pytest.raises(McpUnavailable) as err:
        server.tools()
    assert str(err.value) == ("cannot start MCP server 'no-such-mcp-server --stdio': "
                              "command 'no-such-mcp-server' not found")
    assert err.value.retryable
    assert "Traceback" not in capfd.readouterr().err


def test_a_server_that_never_answers_or_cannot_be_reached_is_a_one_line_error(
        capfd: pytest.CaptureFixture[str]) -> None:
    silent = McpServer.stdio(sys.executable, ["-c", "import sys; sys.stdin.read()"], name="silent", timeout=1.0)
    with silent, pytest.raises(McpUnavailable, match=r"^MCP server 'silent' did not answer within 1s$"):
        silent.tools()
    port = free_port()
    nowhere = McpServer.http(f"http://baton:s3cret@127.0.0.1:{port}/mcp?key=s3cret", headers={"X-Key": "s3cret"})
    with nowhere, pytest.raises(McpUnavailable) as err:
        nowhere.tools()
    assert str(err.value) == (f"cannot reach MCP server 'http://127.0.0.1:{port}/mcp': "
                              "ConnectError: All connection attempts failed")
    assert "s3cret" not in repr(nowhere)
    assert "Traceback" not in capfd.readouterr().err
