"""Settling an in-doubt step by hand (``baton resolve``): the person says whether the call
took effect, and with what result; it is journaled under the run's lease like any step."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import BatonError, UsageError
from ..journal import RunStatus
from ..journal import events as ev
from ..tools import Tool
from .execution import Execution
from .stops import Fenced, StoreFailed

if TYPE_CHECKING:
    from ..runtime import Baton


def resolve_step(baton: Baton, run_id: str, step_id: int, *, applied: bool, result: Any = None,
                 by: str = "operator", note: str = "") -> None:
    """Settle an in-doubt step by hand: it took effect (with ``result``) or it did not. The
    run's lease is taken for the append, so no worker executes it meanwhile."""
    from ..runtime import json_text

    run_id = baton.resolve_run_id(run_id)
    claim = baton.acquire(run_id)
    if claim is None:
        raise UsageError(f"run {run_id} is being executed by another worker; try again")
    record = claim.record
    try:
        sealer = baton.sealer(run_id)
        events = baton.opened_events(run_id, sealer)
        x = Execution(store=baton.store, settings=baton.settings, clock=baton.clock,
                      pool=baton.pool, run=record, events=events, governance=baton.governance, sealer=sealer)
        rec = x.state.steps.get(step_id)
        if record.status is not RunStatus.NEEDS_ATTENTION or rec is None or not rec.in_flight:
            raise UsageError(f"step {step_id} of run {run_id} is not in doubt")
        tool = _tool_named(baton, record.workflow_ref, rec.name)
        if tool is not None:
            x.tools[step_id] = tool  # its sensitive fields; and the call counts in the principal's history
        if applied:
            json_text(result, "the result")
            if tool is not None:
                _check_resolved_result(tool, result)
        x.append([ev.StepResolved(step_id=step_id, applied=applied, result=result, by=by, note=note)])
    except Fenced:
        raise UsageError(f"run {run_id} moved on while resolving; try again") from None
    except StoreFailed as failed:
        raise failed.error from None
    finally:
        baton.let_go(run_id)


def _tool_named(baton: Baton, workflow_ref: str, tool_name: str) -> Tool[Any, Any] | None:
    """The tool a run's step called, found in its workflow's module, if it loads here."""
    try:
        module = sys.modules[baton.workflow_for(workflow_ref).fn.__module__]
    except (BatonError, KeyError):
        return None  # the code cannot be loaded here; replay will say so if the shape is wrong
    found = [v for v in vars(module).values() if isinstance(v, Tool) and v.name == tool_name]
    return found[0] if found else None


def _check_resolved_result(tool: Tool[Any, Any], result: Any) -> None:
    """A result given by hand must be one the workflow can read back."""
    try:
        tool.decode_result(result)
    except Exception as exc:  # noqa: BLE001 - Pydantic's message, shortened to one line
        wanted = tool.result_adapter.json_schema().get("type", "its return type")
        raise UsageError(
            f"{tool.name} returns {wanted}; the result given does not fit it "
            f"({str(exc).splitlines()[0]}): pass it with --result JSON"
        ) from None
