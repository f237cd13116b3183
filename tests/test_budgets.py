"""Budgets, one story per test: each limit (steps, lifetime, spend, model tokens) stops the
run before the step that would break it; limits come from the config and from ``start``,
are fixed in the run's first event, and apply with or without policies."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, Context, RunStatus, tool, workflow
from baton.budgets import Limits
from baton.config import Governance
from baton.errors import BudgetExceeded, UsageError
from baton.journal import events as ev
from baton.testing import FakeClock
from engine_support import make_settings, of_type

# What the tools did: the side effects a budget must stop.
charged: list[float] = []
prompted: list[str] = []


@pytest.fixture(autouse=True)
def _empty_ledgers() -> None:
    charged.clear()
    prompted.clear()


@tool(idempotent=True, cost=lambda amount: amount)
def charge(amount: float) -> float:
    charged.append(amount)
    return amount


@tool(idempotent=True, tokens=lambda result: result["tokens"])
def ask_model(prompt: str, tokens: int) -> dict[str, Any]:
    prompted.append(prompt)
    return {"answer": f"re: {prompt}", "tokens": tokens}


@workflow
def charges(ctx: Context, amounts: list[float]) -> float:
    return sum(ctx.call(charge, amount=a) for a in amounts)


@workflow
def charges_then_more(ctx: Context, before: list[float], after: list[float]) -> float:
    """Charges, waits for the signal ``go``, then charges again."""
    total = sum(ctx.call(charge, amount=a) for a in before)
    ctx.wait_for("go")
    return total + sum(ctx.call(charge, amount=a) for a in after)


@workflow
def conversation(ctx: Context, usage: list[int]) -> int:
    return sum(ctx.call(ask_model, prompt=f"turn {i}", tokens=n)["tokens"] for i, n in enumerate(usage))


@workflow
def stubborn(ctx: Context, amounts: list[float]) -> str:
    """Tries to carry on whatever goes wrong."""
    for a in amounts:
        try:
            ctx.call(charge, amount=a)
        except Exception:  # noqa: BLE001 - the point: a budget cannot be caught
            return "carried on"
    return "done"


def runtime(tmp_path: Path, clock: FakeClock, gov: Governance | None = None) -> Baton:
    return Baton(make_settings(tmp_path), clock=clock, governance=gov or Governance())


def budget_failure(b: Baton, run_id: str) -> str:
    """The run failed for its budget: the message of its RunFailed."""
    assert b.get_run(run_id).status is RunStatus.FAILED
    (failed,) = of_type(b, run_id, ev.RunFailed)
    assert failed.error.code == BudgetExceeded.code
    return failed.error.message


def started_limits(b: Baton, run_id: str) -> dict[str, Any] | None:
    (started,) = of_type(b, run_id, ev.RunStarted)
    return started.limits


# -- each limit -------------------------------------------------------------------------


def test_max_steps_stops_before_the_step_after_the_last_allowed(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges, {"amounts": [1, 2, 3, 4]}, limits=Limits(max_steps=2))
        b.drive(run_id)
        assert charged == [1, 2]
        message = budget_failure(b, run_id)
        assert "limit of 2 steps" in message and "before step 3 (charge)" in message
        assert len(of_type(b, run_id, ev.StepRan)) == 2


def test_max_steps_counts_the_steps_made_before_a_resume(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges_then_more, {"before": [1], "after": [2, 3, 4]}, limits=Limits(max_steps=2))
        assert b.drive(run_id).status is RunStatus.WAITING
        b.signal(run_id, "go")
        b.drive(run_id)
        assert charged == [1, 2]
        assert "limit of 2 steps" in budget_failure(b, run_id)


def test_max_steps_of_zero_runs_no_step(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges, {"amounts": [1]}, limits=Limits(max_steps=0))
        b.drive(run_id)
        assert charged == []
        assert "limit of 0 steps" in budget_failure(b, run_id)


@pytest.mark.parametrize(("waited", "completes"), [(59.0, True), (60.0, True), (61.0, False)])
def test_max_seconds_stops_the_next_step_once_the_run_is_too_old(
        tmp_path: Path, clock: FakeClock, waited: float, completes: bool) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges_then_more, {"before": [1], "after": [2]}, limits=Limits(max_seconds=60))
        assert b.drive(run_id).status is RunStatus.WAITING
        clock.advance(waited)
        b.signal(run_id, "go")
        record = b.drive(run_id)
        if completes:
            assert record.status is RunStatus.COMPLETED
            assert charged == [1, 2]
        else:
            assert charged == [1]
            message = budget_failure(b, run_id)
            assert "older than its limit of 60s (61.0s)" in message and "before step 3 (charge)" in message


@pytest.mark.parametrize(("amounts", "ran"), [([40, 60, 1], [40, 60]), ([40, 61, 1], [40]), ([101], [])])
def test_max_spend_stops_the_step_whose_cost_would_exceed_it(
        tmp_path: Path, clock: FakeClock, amounts: list[float], ran: list[float]) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges, {"amounts": amounts}, limits=Limits(max_spend=100))
        b.drive(run_id)
        assert charged == ran
        would_be = sum(ran) + amounts[len(ran)]
        message = budget_failure(b, run_id)
        assert f"bring the run's spend to {would_be:g}, over its limit of 100" in message
        assert f"spent so far: {sum(ran):g}" in message


def test_spend_within_the_limit_completes(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges, {"amounts": [40, 60]}, limits=Limits(max_spend=100))
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert charged == [40, 60]


@pytest.mark.parametrize(("usage", "ran"), [([50, 50, 1], 2), ([150, 1], 1), ([99, 0, 1], 3)])
def test_max_tokens_stops_the_next_step_once_reached(
        tmp_path: Path, clock: FakeClock, usage: list[int], ran: int) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(conversation, {"usage": usage}, limits=Limits(max_tokens=100))
        record = b.drive(run_id)
        assert prompted == [f"turn {i}" for i in range(ran)]
        if ran == len(usage):
            assert record.status is RunStatus.COMPLETED
        else:
            used = sum(usage[:ran])
            assert f"the run used {used} model tokens, its limit is 100" in budget_failure(b, run_id)


def test_a_budget_cannot_be_caught_by_the_workflow(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(stubborn, {"amounts": [1, 2, 3]}, limits=Limits(max_steps=1))
        b.drive(run_id)
        assert charged == [1]
        assert "limit of 1 steps" in budget_failure(b, run_id)
        assert not of_type(b, run_id, ev.RunCompleted)


# -- where limits come from -------------------------------------------------------------


def test_config_defaults_apply_and_start_overrides_them(tmp_path: Path, clock: FakeClock) -> None:
    gov = Governance.from_dict({"limits": {"max_steps": 2, "max_spend": 50}}, base=tmp_path, source="baton.toml")
    assert gov.limits == Limits(max_steps=2, max_spend=50)
    with runtime(tmp_path, clock, gov) as b:
        default = b.start(charges, {"amounts": [1, 1, 1, 1]})
        b.drive(default)
        assert charged == [1, 1]
        assert "limit of 2 steps" in budget_failure(b, default)
        assert started_limits(b, default) == {"max_steps": 2, "max_spend": 50}

        charged.clear()
        more_steps = b.start(charges, {"amounts": [1, 1, 1, 1]}, limits=Limits(max_steps=3))
        b.drive(more_steps)
        assert charged == [1, 1, 1]
        assert started_limits(b, more_steps) == {"max_steps": 3, "max_spend": 50}

        charged.clear()  # overriding one limit keeps the others' defaults
        spendy = b.start(charges, {"amounts": [30, 30]}, limits=Limits(max_steps=10))
        b.drive(spendy)
        assert charged == [30]
        assert "over its limit of 50" in budget_failure(b, spendy)

        charged.clear()
        richer = b.start(charges, {"amounts": [30, 30]}, limits=Limits(max_spend=60))
        assert b.drive(richer).status is RunStatus.COMPLETED
        assert charged == [30, 30]
        assert started_limits(b, richer) == {"max_steps": 2, "max_spend": 60}


def test_limits_are_fixed_when_the_run_starts(tmp_path: Path, clock: FakeClock) -> None:
    strict = Governance.from_dict({"limits": {"max_steps": 1}})
    with runtime(tmp_path, clock, strict) as b:
        run_id = b.start(charges_then_more, {"before": [1], "after": [2, 3]})
        assert b.drive(run_id).status is RunStatus.WAITING
    lenient = Governance.from_dict({"limits": {"max_steps": 10}})
    with runtime(tmp_path, clock, lenient) as b:  # a later process with a looser config
        b.signal(run_id, "go")
        b.drive(run_id)
        assert charged == [1]
        assert "limit of 1 steps" in budget_failure(b, run_id)


def test_a_run_without_limits_is_unaffected(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path, clock) as b:
        run_id = b.start(charges, {"amounts": [500.0] * 6})
        clock.advance(10 * 86400)
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert charged == [500.0] * 6
        assert started_limits(b, run_id) is None
        assert not of_type(b, run_id, ev.RunFailed)


def test_limits_apply_alongside_policies(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "allow.cedar").write_text('@id("anyone")\npermit(principal, action, resource);\n')
    gov = Governance.from_dict({
        "principals": {"alice": {"tenant": "acme", "roles": ["support"]}},
        "policies": {"files": ["allow.cedar"]},
        "limits": {"max_spend": 10},
    }, base=tmp_path, source="baton.toml")
    with runtime(tmp_path, clock, gov) as b:
        run_id = b.start(charges, {"amounts": [5, 5, 5]}, principal="alice")
        b.drive(run_id)
        assert charged == [5, 5]
        assert "over its limit of 10" in budget_failure(b, run_id)


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"max_steps": -1},
    {"max_steps": 1.5},
    {"max_steps": True},
    {"max_steps": "3"},
    {"max_tokens": 2.5},
    {"max_tokens": -10},
    {"max_spend": -0.01},
    {"max_seconds": math.inf},
    {"max_seconds": math.nan},
])
def test_limits_reject_what_is_not_a_count_or_amount(bad: dict[str, Any]) -> None:
    (name,) = bad
    with pytest.raises(UsageError, match=f"limit {name} must be"):
        Limits(**bad)


def test_limits_accept_whole_numbers_and_amounts() -> None:
    limits = Limits(max_steps=3, max_seconds=1.5, max_spend=99.99, max_tokens=0)
    assert limits.to_json() == {"max_steps": 3, "max_seconds": 1.5, "max_spend": 99.99, "max_tokens": 0}
    assert limits and not Limits()


@pytest.mark.parametrize(("table", "message"), [
    ({"max_steps": -1}, "limit max_steps must be a number of 0 or more"),
    ({"max_steps": 2.5}, "limit max_steps must be a whole number"),
    ({"max_step": 3}, "unknown limit 'max_step'"),
])
def test_the_config_rejects_bad_limits(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Governance.from_dict({"limits": table}, base=tmp_path, source="baton.toml")


# -- limits and approvals ---------------------------------------------------------------


@tool(idempotent=True, cost=lambda amount: amount)
def issue_refund(amount: float) -> float:
    charged.append(amount)
    return amount


@workflow
def refund(ctx: Context, amount: float) -> float:
    return ctx.call(issue_refund, amount=amount)


def test_a_step_approved_after_the_run_outlived_its_limit_does_not_run(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "gate.cedar").write_text(
        '@id("anyone")\npermit(principal, action, resource);\n'
        '@id("refunds-need-a-manager")\n@approval("role:manager")\n'
        'forbid(principal, action == Action::"issue_refund", resource);\n'
    )
    gov = Governance.from_dict({
        "principals": {"alice": {"tenant": "acme", "roles": ["support"]},
                       "bob": {"tenant": "acme", "roles": ["manager"]}},
        "policies": {"files": ["gate.cedar"]},
    }, base=tmp_path, source="baton.toml")
    with runtime(tmp_path, clock, gov) as b:
        run_id = b.start(refund, {"amount": 10}, principal="alice", limits=Limits(max_seconds=60))
        assert b.drive(run_id).status is RunStatus.WAITING
        clock.advance(600)  # still within the request's 24h, long past the run's 60s
        (request,) = b.approvals("bob")
        b.decide(request.approval_id, principal="bob", approve=True, reason="late but fine")
        b.drive(run_id)
        assert charged == []
        assert "older than its limit of 60s (600.0s)" in budget_failure(b, run_id)
        assert not of_type(b, run_id, ev.ApprovalConsumed)  # the approval was not used
        assert b.get_approval(request.approval_id).consumed_at is None
