"""The README's governance guide, run as written: its baton.toml and policy file must load
and do what the text says they do, so the guide cannot drift from the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from baton import ApprovalError, Baton, Context, Governance, PolicyDenied, RunStatus, tool, workflow
from baton.journal import events as ev
from baton.testing import FakeClock
from engine_support import make_settings

README = Path(__file__).resolve().parent.parent / "README.md"
REFUNDS: list[float] = []


def fenced(language: str) -> str:
    section = README.read_text().split("## Governance", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"the governance guide should hold one {language} block"
    return blocks[0]


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount, role="support-refund-limited")
def issue_refund(order_id: str, amount: float) -> str:
    REFUNDS.append(amount)
    return f"txn-{order_id}"


@workflow
def refund(ctx: Context, order_id: str, amount: float) -> Any:
    try:
        return ctx.call(issue_refund, order_id=order_id, amount=amount)
    except PolicyDenied as denied:
        return {"denied": denied.message}


@pytest.fixture
def guide(tmp_path: Path) -> Governance:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "refunds.cedar").write_text(fenced("cedar"))
    config = tomllib.loads(fenced("toml"))
    REFUNDS.clear()
    return Governance.from_dict(config, base=tmp_path, source="README.md")


def test_the_guide_holds_a_refund_over_100_for_a_manager(tmp_path: Path, guide: Governance) -> None:
    with Baton(make_settings(tmp_path), governance=guide, clock=FakeClock()) as baton:
        small = baton.drive(baton.start(refund, order_id="1", amount=40.0, principal="alice"))
        assert small.status is RunStatus.COMPLETED and REFUNDS == [40.0]

        run_id = baton.start(refund, order_id="2", amount=120.0, principal="alice")
        assert baton.drive(run_id).waiting_for == "approval"
        (request,) = baton.approvals("bob")
        assert request.policies == ["refunds-over-100-need-a-manager"]
        with pytest.raises(ApprovalError, match="cannot approve"):
            baton.decide(request.approval_id, principal="alice", approve=True, reason="mine")
        baton.decide(request.approval_id, principal="bob", approve=True, reason="gold customer")
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        assert REFUNDS == [40.0, 120.0]
        decided = [e for e in baton.events(run_id) if isinstance(e, ev.PolicyDecided)]
        assert decided[0].role == "support-refund-limited" and decided[0].resource == "Order::2"


def test_the_guide_caps_a_principal_at_500_a_day(tmp_path: Path, guide: Governance) -> None:
    with Baton(make_settings(tmp_path), governance=guide, clock=FakeClock()) as baton:
        for i in range(5):
            assert baton.drive(baton.start(refund, order_id=str(i), amount=100.0, principal="alice")).status \
                is RunStatus.COMPLETED
        over = baton.drive(baton.start(refund, order_id="5", amount=1.0, principal="alice"))
        assert "daily-refund-limit" in (over.outcome or "")
        assert REFUNDS == [100.0] * 5
        assert baton.drive(baton.start(refund, order_id="6", amount=1.0, principal="bob")).status \
            is RunStatus.COMPLETED


def test_the_guide_limits_apply(tmp_path: Path, guide: Governance) -> None:
    assert guide.limits.max_steps == 20 and guide.limits.max_spend == 1000


def test_the_agent_example_in_the_readme_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("## Agents", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Agents)", "exec"), {"__name__": "readme_agent"})
    assert capsys.readouterr().out.strip() == "completed Refunded $40 on order 98765."
    assert (tmp_path / "agent.db").exists()
