"""The example applications in ``examples/``, run as their README says, and checked: the
approval was asked and decided, the fake services did each thing exactly once, policy
refused what it should, secrets never reached the output or the database, and
compensation undid what it should.

Each example's ``main()`` runs once here (about a second each) and the tests read what it
left: its database, its output and its fake services' books. Each also runs once as its
README says, as a script, and a few probes run other scripts against its tools and policies.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from baton import ApprovalError, Baton, BudgetExceeded, Governance, Limits, RunStatus, Settings
from baton.agent import AgentWorkflow, ScriptedModel, agent, call, say
from baton.journal import events as ev

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
E = TypeVar("E", bound=ev.Event)


def load(name: str) -> ModuleType:
    """Import ``examples/NAME/app.py`` by path, as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and workflow refs look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class Told:
    """One example's story, told: the module, what ``main()`` returned and printed, and a
    copy of its fake services' books as the story left them."""

    app: ModuleType
    story: Any
    output: str
    root: Path
    books: Any

    def baton(self) -> Baton:
        """The story's runtime, opened again on its database."""
        return Baton(Settings(database_url=f"sqlite:///{self.story.database}"),
                     governance=Governance.load(self.app.HERE / "baton.toml"))

    def raw_database(self) -> bytes:
        """Every byte of the database files (not the master key file beside them)."""
        return b"".join(p.read_bytes() for p in self.root.glob("baton.db*") if not p.name.endswith(".master-key"))


def tell(name: str, services: str, tmp_path_factory: pytest.TempPathFactory) -> Told:
    """Run the example's ``main()`` in a directory of its own, keeping what it printed (Rich
    writes to whatever ``sys.stdout`` is when it prints)."""
    app = load(name)
    root = tmp_path_factory.mktemp(name)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        story = app.main(root)
    return Told(app, story, printed.getvalue(), root, copy.deepcopy(getattr(app, services)))


def opened(b: Baton, run_id: str, cls: type[E]) -> list[E]:
    """The run's events of one type, sensitive values opened."""
    return [e for e in b.events(run_id, reveal=True) if isinstance(e, cls)]


def governed(told: Told, tmp_path: Path) -> Baton:
    """A fresh runtime with the example's own baton.toml, for runs of other agents."""
    return Baton(Settings(database_url=f"sqlite:///{tmp_path / 'probe.db'}"),
                 governance=Governance.load(told.app.HERE / "baton.toml"))


def probe(told: Told, *replies: Any) -> AgentWorkflow:
    """An agent with the example's tools and a script of our own."""
    (example,) = [v for v in vars(told.app).values() if isinstance(v, AgentWorkflow)]
    return agent("probe", instructions="Probe the example's policies.", model=ScriptedModel(list(replies)),
                 tools=example.agent.tools)


@pytest.mark.parametrize("name", ["password_reset", "invoice_routing", "devops_rollback"])
def test_each_example_runs_as_its_readme_says(name: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / name / "app.py")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "approval" in done.stdout and ("completed" in done.stdout or "cancelled" in done.stdout)


# -- password reset -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def helpdesk(tmp_path_factory: pytest.TempPathFactory) -> Told:
    return tell("password_reset", "IDP", tmp_path_factory)


def test_helpdesk_resets_once_grants_on_approval_and_is_refused_another_tenant(helpdesk: Told) -> None:
    with helpdesk.baton() as b:
        run_id = helpdesk.story.run_id
        assert b.get_run(run_id).status is RunStatus.COMPLETED
        approval = b.get_approval(helpdesk.story.approval_id)
        assert (approval.tool, approval.status, approval.requester, approval.decided_by) == (
            "grant_group_access", "approved", "alice", "marco")
        assert approval.args["group"] == "prod-access"
        assert approval.policies == ["privileged-groups-need-it-security"]
        decided = {(d.tool, d.resource): (d.effect, d.policies) for d in opened(b, run_id, ev.PolicyDecided)}
        assert decided[("reset_password", "Account::acme/dana")] == ("allow", ["helpdesk-may-use-its-tools"])
        assert decided[("reset_password", "Account::globex/sam.ortiz")] == ("deny", ["stay-in-your-own-tenant"])
        answer = b.result(run_id)["answer"]
    # The world: one reset, one grant, one text, each for Dana; Globex's account untouched.
    idp = helpdesk.books
    assert [r["account"] for r in idp.resets.values()] == ["acme/dana"]
    assert [(g["account"], g["group"]) for g in idp.grants.values()] == [("acme/dana", "prod-access")]
    assert [phone for phone, _ in idp.texts.values()] == ["+1 415 555 0142"]
    assert idp.accounts["acme", "dana"]["locked"] is False
    assert idp.accounts["acme", "dana"]["groups"].count("prod-access") == 1
    assert idp.accounts["globex", "sam.ortiz"]["locked"] is True
    assert "stay-in-your-own-tenant" in answer and "GRT-0001" in answer
    # Who could decide, as printed while the run waited: only Marco.
    assert "alice may decide 0, gina (globex) 0, marco 1" in helpdesk.output


def test_the_temporary_password_reaches_the_user_and_nothing_else(helpdesk: Told) -> None:
    (reset,) = helpdesk.books.resets.values()
    password = reset["temporary_password"]
    ((_, text),) = helpdesk.books.texts.values()
    assert password in text  # the user got it: the one place it belongs
    with helpdesk.baton() as b:
        run_id = helpdesk.story.run_id
        # The engine reads it back with the run's key (so the searches below would find it)...
        assert password in json.dumps([e.to_json() for e in b.events(run_id, reveal=True)])
        # ...but it is not in the events as stored, nor in the rows, nor anywhere in the files.
        stored = [e for e in b.events(run_id) if password in json.dumps(e.to_json())]
        assert [(type(e).__name__, getattr(e, "name", None)) for e in stored] == []
        assert all(password not in row.data for row in b.journal(run_id))
    raw = helpdesk.raw_database()
    assert password.encode() not in raw
    assert password not in helpdesk.output and "temporary_password=\"‹sensitive›\"" in helpdesk.output
    # The phone number on file was never declared sensitive: a detector found it.
    assert b"+1 415 555 0142" not in raw and "+1 415 555 0142" not in helpdesk.output


def test_an_admins_password_reset_waits_for_it_security_of_the_same_tenant(helpdesk: Told, tmp_path: Path) -> None:
    helpdesk.app.IDP.seed()
    wf = probe(helpdesk, call("reset_password", tenant="acme", username="priya"), say("asked"))
    with governed(helpdesk, tmp_path) as b:
        run_id = b.start(wf, goal="Reset Priya's password", principal="alice")
        assert b.drive(run_id).waiting_for == "approval"
        (request,) = b.approvals("marco")
        assert request.policies == ["admin-resets-need-it-security"]
        assert request.title == "reset_password on AdminAccount::acme/priya"
        assert b.approvals("gina") == [] and b.approvals("alice") == []
        with pytest.raises(ApprovalError):
            b.decide(request.approval_id, principal="gina", approve=True, reason="not my tenant")
        with pytest.raises(ApprovalError):
            b.decide(request.approval_id, principal="alice", approve=True, reason="my own request")
    assert helpdesk.app.IDP.resets == {}


def test_another_tenants_accounts_cannot_even_be_looked_up(helpdesk: Told, tmp_path: Path) -> None:
    helpdesk.app.IDP.seed()
    wf = probe(helpdesk, call("lookup_user", tenant="globex", username="sam.ortiz"), say("refused"))
    with governed(helpdesk, tmp_path) as b:
        run_id = b.start(wf, goal="Look up Sam at Globex", principal="marco")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        (decided,) = opened(b, run_id, ev.PolicyDecided)
        assert (decided.effect, decided.policies) == ("deny", ["stay-in-your-own-tenant"])


# -- invoice routing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def invoices(tmp_path_factory: pytest.TempPathFactory) -> Told:
    return tell("invoice_routing", "LEDGER", tmp_path_factory)


def test_invoices_are_paid_once_held_or_refused_as_policy_says(invoices: Told) -> None:
    with invoices.baton() as b:
        run_id = invoices.story.run_id
        assert b.get_run(run_id).status is RunStatus.COMPLETED
        approval = b.get_approval(invoices.story.approval_id)
        assert (approval.tool, approval.status, approval.requester, approval.decided_by) == (
            "schedule_payment", "approved", "nora", "victor")
        assert approval.args == {"invoice_id": "INV-1002", "vendor": "Contoso Cloud", "amount": 18400.0}
        assert approval.policies == ["payments-over-5000-need-a-controller"]
        decisions = [(d.args["invoice_id"], d.effect, d.policies) for d in opened(b, run_id, ev.PolicyDecided)
                     if d.tool == "schedule_payment"]
        assert decisions == [
            ("INV-1001", "allow", ["accounts-payable-may-route-invoices"]),
            ("INV-1002", "approval", ["payments-over-5000-need-a-controller"]),
            ("INV-1002", "approval", ["payments-over-5000-need-a-controller"]),  # asked again before it ran
            ("INV-1004", "deny", ["daily-payment-limit"]),
        ]
        result = b.result(run_id)
        started = opened(b, run_id, ev.RunStarted)[0]
        assert started.limits == {"max_steps": 60, "max_spend": 25000}
    ledger = invoices.books
    assert sorted((p["invoice_id"], p["amount"]) for p in ledger.payments.values()) == [
        ("INV-1001", 1240.0), ("INV-1002", 18400.0)]
    assert [(h["invoice_id"], h["reason"]) for h in ledger.holds.values()] == [
        ("INV-1003", "invoice $3,900.00 but PO-7802 is for $3,100.00")]
    assert len(ledger.matches) == 4
    assert result["spend"] == 0.0 and "INV-1004, $2,750.00 to Tailspin Print: NOT paid" in result["answer"]


def test_vendor_bank_details_are_sealed(invoices: Told) -> None:
    ibans = [i["iban"] for i in invoices.books.invoices.values()]
    raw = invoices.raw_database()
    assert all(iban.encode() not in raw and iban not in invoices.output for iban in ibans)
    assert invoices.output.count("‹iban›") >= 4


def test_a_payment_past_the_runs_own_budget_fails_the_run_before_money_moves(invoices: Told,
                                                                             tmp_path: Path) -> None:
    invoices.app.LEDGER.seed()
    with governed(invoices, tmp_path) as b:
        run_id = b.start(invoices.app.invoice_router, goal=invoices.app.GOAL, principal="nora",
                         limits=Limits(max_spend=1000))
        assert b.drive(run_id).status is RunStatus.FAILED
        (failed,) = opened(b, run_id, ev.RunFailed)
        assert failed.error.code == BudgetExceeded.code and "schedule_payment" in failed.error.message
    assert invoices.app.LEDGER.payments == {}


# -- devops rollback ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def oncall(tmp_path_factory: pytest.TempPathFactory) -> Told:
    return tell("devops_rollback", "FLEET", tmp_path_factory)


def test_cancelling_the_remediation_undoes_its_steps_newest_first(oncall: Told) -> None:
    with oncall.baton() as b:
        run_id = oncall.story.run_id
        assert b.get_run(run_id).status is RunStatus.CANCELLED
        rollback, failover = (b.get_approval(a) for a in oncall.story.approvals)
        assert (rollback.tool, rollback.status, rollback.requester, rollback.decided_by) == (
            "rollback_service", "approved", "sam", "lee")
        assert rollback.args == {"service": "checkout", "environment": "production", "to_version": "v2.13.2"}
        assert (failover.tool, failover.status) == ("failover_region", "withdrawn")
        undone = opened(b, run_id, ev.Compensated)
        assert [(c.name, c.ok) for c in undone] == [("rollback_service", True), ("freeze_deploys", True)]
        assert [c.step_id for c in undone] == sorted((c.step_id for c in undone), reverse=True)
    fleet = oncall.books
    assert [(d["version"], d["why"]) for d in fleet.deploys] == [("v2.13.2", "rollback"),
                                                                 ("v2.14.0", "undo of the rollback")]
    assert fleet.running["checkout", "production"] == "v2.14.0"
    assert [f["lifted"] for f in fleet.freezes.values()] == [True]
    assert fleet.failovers == [] and len(fleet.posts) == 1  # the post declares no undo
    assert "↶ step" in oncall.output and "rollback_service undone" in oncall.output


def test_a_staging_rollback_needs_no_approval(oncall: Told, tmp_path: Path) -> None:
    oncall.app.FLEET.seed()
    wf = probe(oncall, call("rollback_service", service="checkout", environment="staging", to_version="v2.13.2"),
               say("rolled back"))
    with governed(oncall, tmp_path) as b:
        run_id = b.start(wf, goal="Roll staging back", principal="sam")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert b.approvals(status=None) == []
    assert oncall.app.FLEET.running["checkout", "staging"] == "v2.13.2"
    assert oncall.app.FLEET.running["checkout", "production"] == "v2.14.0"
