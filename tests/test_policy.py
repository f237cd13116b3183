"""Policy, one story per test: Cedar files read with the line of each mistake, steps decided
by the engine (allow, deny, approval, shadow), files reloaded when they change, and the
decisions as a run meets them and its journal records them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton import Baton, Context, RunStatus, tool, workflow
from baton.config import Governance
from baton.errors import PolicyDenied, PolicyError, UsageError
from baton.identity import Principal
from baton.journal import events as ev
from baton.policy import PolicyEngine, PolicyFile, PolicyRequest, Verdict, parse_policies
from baton.policy.files import load_file, split_policies
from baton.testing import FakeClock
from engine_support import make_settings, of_type

ALICE = Principal("alice", "acme", frozenset({"support"}))
BOB = Principal("bob", "acme", frozenset({"support", "manager"}))
EVE = Principal("eve", "other", frozenset({"manager"}))

REFUNDS = """\
// Support staff may look orders up and refund them.
@id("support-can-refund")
permit(principal in Role::"support", action, resource);

@id("refunds-over-100-need-a-manager")
@approval("role:manager")
@expires("2h")
@escalate("role:director")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };

@id("no-refund-over-1000")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("1000.0")) };
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rewrite(path: Path, text: str) -> None:
    """Replace a file's text so that a reload must notice: its mtime moves on by a second
    even on file systems whose clock is coarse."""
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def engine_for(tmp_path: Path, enforced: str | None, shadow: str | None = None,
               reload_interval: float = 1.0) -> PolicyEngine:
    files = []
    if enforced is not None:
        files.append(PolicyFile(write(tmp_path / "enforced.cedar", enforced)))
    if shadow is not None:
        files.append(PolicyFile(write(tmp_path / "shadow.cedar", shadow), shadow=True))
    return PolicyEngine(files, reload_interval=reload_interval)


def refund(principal: Principal = ALICE, amount: Any = 50.0, **args: Any) -> PolicyRequest:
    return PolicyRequest(principal=principal, tool="issue_refund", resource=("Order", "98765"),
                         args={"order_id": "98765", "amount": amount, **args})


def error_of(text: str, file: str = "refunds.cedar") -> str:
    with pytest.raises(PolicyError) as err:
        parse_policies(text, file)
    return err.value.message


# -- reading policy files ------------------------------------------------------------


def test_a_file_is_split_into_its_policies_at_semicolons_outside_strings_and_comments() -> None:
    text = (
        "// header; not a policy\n"                                     # 1
        '@id("a")\n'                                                     # 2
        "permit(principal, action, resource)\n"                          # 3
        'when { context.args.note == "x; y" };\n'                        # 4
        "\n"                                                             # 5
        "forbid(principal, action, resource) // why; no reason\n"        # 6
        'when { context.args.note == "\\"; still inside" };\n'           # 7
    )
    policies = parse_policies(text, "p.cedar")
    assert [(p.id, p.line, p.effect) for p in policies] == [("a", 2, "permit"), ("p.cedar:6", 6, "forbid")]
    assert [line for line, _ in split_policies(text)] == [2, 6]
    assert policies[1].text.endswith('"\\"; still inside" };')


@pytest.mark.parametrize(("text", "line"), [
    pytest.param(
        '@id("a")\n'
        "permit(principal, actio, resource);\n",
        2, id="second line of the first policy"),
    pytest.param(
        "permit(principal, action, resource)\n"
        'when { context.args.note == "a; b" };\n'
        "\n"
        '@id("b")\n'
        "permit(principal, action, resource)\n"
        "when { context.args.amount = 1 };\n",
        6, id="after a string holding a semicolon"),
    pytest.param(
        "permit(principal, action, resource);\n"
        "forbid(principal, action, resource)\n"
        "// the amount; in cents\n"
        "when { context.args.amount > 1 }\n"
        "unless { context.args.amount === 2 };\n",
        5, id="after a comment holding a semicolon"),
    pytest.param(
        "permit(principal, action, resource);\n"
        "permit(principal, action, resource);\n"
        "\n\n"
        "forbid(principal, action, resource)\n"
        "when { true } blah;\n",
        6, id="third policy after blank lines"),
])
def test_a_syntax_error_names_the_line_of_the_mistake(text: str, line: int) -> None:
    assert error_of(text).startswith(f"refunds.cedar:{line}: ")


def test_a_syntax_error_below_a_comment_line_names_the_line_of_the_mistake() -> None:
    text = (
        "permit(principal, action, resource);\n"   # 1
        "// refunds; only small ones\n"            # 2
        '@id("small")\n'                           # 3
        "forbid(principal, action, resource)\n"    # 4
        "when { context.args.amount = 1 };\n"      # 5
    )
    assert error_of(text).startswith("refunds.cedar:5: ")


def test_load_file_names_the_file_it_read(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.cedar", "permit(principal, action, resource);\npermit(principal, act);\n")
    with pytest.raises(PolicyError) as err:
        load_file(path)
    assert err.value.message.startswith(f"{path}:2: ")
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_file(tmp_path / "missing.cedar")


def test_an_unknown_annotation_is_refused_at_its_policy() -> None:
    message = error_of('permit(principal, action, resource);\n@id("a")\n@owner("ops")\n'
                       "permit(principal, action, resource);\n")
    assert message.startswith("refunds.cedar:2: unknown annotation @owner")


def test_approval_belongs_on_a_forbid_only() -> None:
    message = error_of('\n@approval("role:manager")\npermit(principal, action, resource);\n')
    assert message.startswith("refunds.cedar:2: @approval belongs on a forbid")
    empty = error_of('@approval("")\nforbid(principal, action, resource);')
    assert empty.startswith("refunds.cedar:1: @approval needs")
    unknown = error_of('@approval("group:x")\nforbid(principal, action, resource);')
    assert "must be role:NAME or principal:ID" in unknown


def test_expires_must_be_a_duration_on_a_gate() -> None:
    bad = error_of('@approval("role:manager")\n@expires("soon")\nforbid(principal, action, resource);')
    assert bad.startswith("refunds.cedar:1: @expires: 'soon' is not a duration")
    lone = error_of('@expires("1h")\nforbid(principal, action, resource);')
    assert lone.startswith("refunds.cedar:1: @expires and @escalate only apply to a policy with @approval")


def test_templates_are_refused() -> None:
    message = error_of("permit(principal, action, resource);\n\npermit(principal == ?principal, action, resource);")
    assert message.startswith("refunds.cedar:3: policy templates")


def test_annotations_are_read_into_the_policy() -> None:
    gate, hard = [p for p in parse_policies(REFUNDS, "refunds.cedar") if p.effect == "forbid"]
    assert gate.id == "refunds-over-100-need-a-manager" and gate.line == 5 and gate.gate
    assert gate.approvers == ("role:manager",)
    assert gate.expires_after == 7200.0 and gate.escalate_to == ("role:director",)
    assert hard.id == "no-refund-over-1000" and not hard.gate and hard.expires_after is None
    (mixed,) = parse_policies('@approval("manager, principal:carol")\nforbid(principal, action, resource);', "f")
    assert mixed.approvers == ("role:manager", "principal:carol") and mixed.id == "f:1"


def test_a_config_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "baton.toml", '[principals.alice]\ntenant = "acme"\nroles = ["support"\n')
    with pytest.raises(PolicyError) as err:
        Governance.load(path)
    assert err.value.message.startswith(f"{path}: ")


def test_a_config_names_the_policy_file_and_line_of_a_mistake(tmp_path: Path) -> None:
    write(tmp_path / "refunds.cedar", "permit(principal, action, resource);\nforbid(principal, actoin, resource);\n")
    path = write(tmp_path / "baton.toml", '[policies]\nfiles = ["refunds.cedar"]\n')
    with pytest.raises(PolicyError) as err:
        Governance.load(path)
    assert err.value.message.startswith(f"{tmp_path / 'refunds.cedar'}:2: ")


def test_a_config_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"unknown section \[polices\]"):
        Governance.from_dict({"polices": {}})
    with pytest.raises(PolicyError, match="unknown key 'file'"):
        Governance.from_dict({"policies": {"file": "x.cedar"}})
    with pytest.raises(UsageError, match="unknown keys role"):
        Governance.from_dict({"principals": {"alice": {"tenant": "acme", "role": "support"}}})
    write(tmp_path / "p.cedar", REFUNDS)
    loaded = Governance.load(write(tmp_path / "baton.toml", '[policies]\nfiles = ["p.cedar"]\n'))
    assert loaded.enforcing and loaded.policies is not None
    assert [s.id for s in loaded.policies.sources] == [
        "support-can-refund", "refunds-over-100-need-a-manager", "no-refund-over-1000"]


# -- deciding ------------------------------------------------------------------------


def test_a_permitted_step_is_allowed_by_the_permit(tmp_path: Path) -> None:
    verdict = engine_for(tmp_path, REFUNDS).decide(refund(amount=50.0))
    assert verdict == Verdict("allow", ("support-can-refund",))


def test_a_matching_forbid_wins_over_a_permit(tmp_path: Path) -> None:
    verdict = engine_for(tmp_path, REFUNDS).decide(refund(amount=5000.0))
    assert verdict.effect == "deny" and verdict.approvers == ()
    assert set(verdict.policies) == {"no-refund-over-1000", "refunds-over-100-need-a-manager"}
    assert "support-can-refund" not in verdict.policies


def test_nothing_permits_means_deny_with_no_policy(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("managers") permit(principal in Role::"manager", action, resource);')
    assert engine.decide(refund(ALICE)) == Verdict("deny")
    assert engine.decide(refund(BOB)) == Verdict("allow", ("managers",))


def test_no_enforced_file_allows_everything(tmp_path: Path) -> None:
    engine = PolicyEngine([])
    assert not engine.active
    assert engine.decide(refund(amount=10**6)).effect == "allow"


def test_a_gate_alone_asks_for_approval(tmp_path: Path) -> None:
    verdict = engine_for(tmp_path, REFUNDS).decide(refund(amount=100.01))
    assert verdict == Verdict("approval", ("refunds-over-100-need-a-manager",), approvers=("role:manager",),
                              expires_after=7200.0, escalate_to=("role:director",))
    assert engine_for(tmp_path, REFUNDS).decide(refund(amount=100.0)).effect == "allow"  # not greater


def test_a_gate_and_a_hard_forbid_deny(tmp_path: Path) -> None:
    verdict = engine_for(tmp_path, REFUNDS).decide(refund(amount=1000.5))
    assert verdict.effect == "deny" and verdict.approvers == ()
    assert "no-refund-over-1000" in verdict.policies


def test_a_gate_over_a_missing_permit_denies(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("managers") permit(principal in Role::"manager", action, resource);\n'
                                  '@id("gate") @approval("role:cfo") forbid(principal, action, resource);')
    assert engine.decide(refund(ALICE)).effect == "deny"  # opening the gate would not permit alice
    assert engine.decide(refund(BOB)).effect == "approval"


GATES = """\
@id("all") permit(principal, action, resource);
@id("g1") @approval("role:manager, role:cfo") @expires("2h") forbid(principal, action, resource);
@id("g2") @approval("{second}") @expires("1h") forbid(principal, action, resource);
"""


def test_two_gates_need_an_approver_both_accept(tmp_path: Path) -> None:
    shared = engine_for(tmp_path, GATES.format(second="role:cfo")).decide(refund())
    assert shared.effect == "approval" and set(shared.policies) == {"g1", "g2"}
    assert shared.approvers == ("role:cfo",) and shared.expires_after == 3600.0  # the shorter wait
    disjoint = engine_for(tmp_path, GATES.format(second="principal:carol")).decide(refund())
    assert disjoint.effect == "deny" and set(disjoint.policies) == {"g1", "g2"} and disjoint.approvers == ()
    assert any("no approver in common" in e for e in disjoint.errors)


def test_a_forbid_that_fails_to_evaluate_denies(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("all") permit(principal, action, resource);\n'
                                  '@id("vip-only") forbid(principal, action, resource) '
                                  "unless { context.args.customer.vip };")
    verdict = engine.decide(refund())
    assert verdict.effect == "deny" and verdict.policies == ("vip-only",)
    assert len(verdict.errors) == 1 and "policy `vip-only`" in verdict.errors[0]
    assert engine.decide(refund(customer={"vip": True})) == Verdict("allow", ("all",))


def test_a_permit_that_fails_to_evaluate_just_does_not_permit(tmp_path: Path) -> None:
    broken = '@id("vip") permit(principal, action, resource) when { context.args.customer.vip };\n'
    alone = engine_for(tmp_path, broken).decide(refund())
    assert alone.effect == "deny" and alone.policies == ()
    assert len(alone.errors) == 1 and "policy `vip`" in alone.errors[0]
    other = engine_for(tmp_path, broken + '@id("small") permit(principal, action, resource) '
                                          'when { context.args.amount.lessThan(decimal("100.0")) };')
    assert other.decide(refund(amount=10.0)).effect == "allow"
    assert other.decide(refund(amount=500.0)).effect == "deny"


def test_shadow_policies_are_reported_not_enforced(tmp_path: Path) -> None:
    tighter = ('@id("tighter") forbid(principal, action, resource) '
               'when { context.args.amount.greaterThan(decimal("20.0")) };')
    engine = engine_for(tmp_path, REFUNDS, shadow=tighter)
    verdict = engine.decide(refund(amount=50.0))
    assert verdict.effect == "allow" and verdict.policies == ("support-can-refund",)
    assert verdict.shadow_effect == "deny" and verdict.shadow_policies == ("tighter",)
    agreed = engine.decide(refund(amount=10.0))
    assert agreed.effect == "allow" and agreed.shadow_effect is None and agreed.shadow_policies == ()
    (tmp_path / "watching").mkdir()
    watching = engine_for(tmp_path / "watching", None, shadow=tighter).decide(refund(amount=50.0))
    assert watching.effect == "allow" and watching.shadow_effect == "deny"


def test_a_shadow_gate_reports_approval(tmp_path: Path) -> None:
    gate = '@id("soon") @approval("role:manager") forbid(principal, action, resource);'
    verdict = engine_for(tmp_path, REFUNDS, shadow=gate).decide(refund(amount=50.0))
    assert verdict.effect == "allow" and verdict.approvers == ()
    assert verdict.shadow_effect == "approval" and verdict.shadow_policies == ("soon",)


def test_roles_are_parents_of_the_principal(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("managers") permit(principal in Role::"manager", action, resource);\n'
                                  '@id("support-set") permit(principal, action == Action::"lookup", resource) '
                                  'when { principal.roles.contains("support") };')
    assert engine.decide(refund(BOB)).effect == "allow"
    assert engine.decide(refund(EVE)).effect == "allow"
    assert engine.decide(refund(ALICE)).effect == "deny"
    lookup = PolicyRequest(ALICE, "lookup", ("Order", "1"), {})
    assert engine.decide(lookup) == Verdict("allow", ("support-set",))


def test_the_tenant_and_attributes_of_the_principal_are_visible(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("acme") permit(principal, action, resource)\n'
                                  'when { principal.tenant == "acme" };\n'
                                  '@id("eu-only") forbid(principal, action, resource)\n'
                                  'when { principal.region != "eu" };')
    eu_alice = Principal("alice", "acme", frozenset({"support"}), attributes={"region": "eu"})
    us_bob = Principal("bob", "acme", frozenset(), attributes={"region": "us"})
    eu_eve = Principal("eve", "other", frozenset(), attributes={"region": "eu"})
    assert engine.decide(refund(eu_alice)) == Verdict("allow", ("acme",))
    assert engine.decide(refund(us_bob)) == Verdict("deny", ("eu-only",))
    assert engine.decide(refund(eu_eve)) == Verdict("deny")


def test_a_service_principal_is_a_service_entity(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("bots") permit(principal is Service, action, resource) '
                                  'when { principal.kind == "service" };')
    bot = Principal("billing-bot", "acme", frozenset({"billing"}), kind="service")
    assert engine.decide(refund(bot)).effect == "allow"
    assert engine.decide(refund(ALICE)).effect == "deny"


def test_the_decision_follows_the_principal_in_the_request(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '@id("managers") permit(principal in Role::"manager", action, resource);')
    assert engine.decide(refund(Principal("alice", "acme", frozenset({"support"})))).effect == "deny"
    assert engine.decide(refund(Principal("alice", "acme", frozenset({"manager"})))).effect == "allow"


def test_argument_values_become_cedar_values(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """\
@id("p") permit(principal, action, resource)
when {
  context.args.amount.greaterThan(decimal("99.9999")) && context.args.amount.lessThan(decimal("100.0001")) &&
  context.args.items > 2 && context.args.tags.contains("damaged") && context.args.tags.containsAll(["late"]) &&
  context.args.urgent && !(context.args has note) && context.args.meta.source == "email"
};""")
    good: dict[str, Any] = {"amount": 100.0, "items": 3, "tags": ["damaged", "late", "damaged"], "urgent": True,
                            "note": None, "meta": {"source": "email", "extra": None}}
    assert engine.decide(refund(**good)).effect == "allow"
    for change in ({"amount": 100.01}, {"items": 2}, {"tags": ["late"]}, {"urgent": False}, {"note": "hi"}):
        assert engine.decide(refund(**{**good, **change})).effect == "deny", change


def test_policies_that_do_not_match_the_schema_name_their_line(tmp_path: Path) -> None:
    schema = write(tmp_path / "baton.cedarschema", """\
entity Role;
entity User in [Role] { tenant: String, roles: Set<String>, kind: String };
entity Order;
action issue_refund appliesTo { principal: [User], resource: [Order], context: { args: { amount: decimal } } };
""")
    good = ('@id("ok")\npermit(principal, action == Action::"issue_refund", resource)\n'
            'when { principal.tenant == "acme" };\n')
    path = write(tmp_path / "p.cedar", good)
    assert PolicyEngine([PolicyFile(path)], schema=schema).decide(refund()).effect == "allow"
    write(path, good + '\n@id("typo")\npermit(principal, action == Action::"issue_refund", resource)\n'
                       "when { principal.nickname == \"x\" };\n")
    with pytest.raises(PolicyError) as err:
        PolicyEngine([PolicyFile(path)], schema=schema)
    assert err.value.message.startswith(f"{path}:5: does not match the schema")


# -- a property: the verdict is the threshold rule ----------------------------------

THRESHOLD = 250


@pytest.fixture(scope="module")
def threshold_engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    path = tmp_path_factory.mktemp("threshold") / "t.cedar"
    write(path, f"""\
@id("all") permit(principal, action, resource);
@id("gate") @approval("role:manager")
forbid(principal, action, resource) when {{ context.args.amount.greaterThan(decimal("{THRESHOLD}.0")) }};
@id("cap")
forbid(principal, action, resource) when {{ context.args.amount.greaterThan(decimal("{5 * THRESHOLD}.0")) }};
""")
    return PolicyEngine([PolicyFile(path)])


@settings(max_examples=100, deadline=None)
@given(cents=st.one_of(st.integers(0, 1_000_000),
                       st.sampled_from([0, THRESHOLD * 100, THRESHOLD * 100 + 1, THRESHOLD * 500,
                                        THRESHOLD * 500 + 1, 1_000_000])))
def test_the_verdict_is_the_threshold_rule(threshold_engine: PolicyEngine, cents: int) -> None:
    expected = "deny" if cents > 5 * THRESHOLD * 100 else "approval" if cents > THRESHOLD * 100 else "allow"
    verdict = threshold_engine.decide(refund(amount=cents / 100))
    assert verdict.effect == expected
    assert set(verdict.policies) == {"allow": {"all"}, "approval": {"gate"}, "deny": {"gate", "cap"}}[expected]
    assert verdict.approvers == (("role:manager",) if expected == "approval" else ())


# -- reloading -----------------------------------------------------------------------


def test_a_changed_file_is_reloaded_and_a_broken_one_is_not(tmp_path: Path) -> None:
    path = write(tmp_path / "p.cedar", '@id("open") permit(principal, action, resource);\n')
    engine = PolicyEngine([PolicyFile(path)], reload_interval=0)
    assert engine.decide(refund()) == Verdict("allow", ("open",))

    rewrite(path, '@id("open") permit(principal, action, resource);\n'
                  '@id("closed") forbid(principal, action == Action::"issue_refund", resource);\n')
    assert engine.decide(refund()) == Verdict("deny", ("closed",))
    assert engine.last_error is None

    rewrite(path, '@id("open") permit(principal, action, resource);\n\nforbid(principal, action resource);\n')
    assert engine.decide(refund()) == Verdict("deny", ("closed",))  # the policies in force stay
    assert engine.last_error is not None and engine.last_error.startswith(f"{path}:3: ")

    rewrite(path, '@id("open-again") permit(principal, action, resource);\n')
    assert engine.decide(refund()) == Verdict("allow", ("open-again",))
    assert engine.last_error is None


def test_files_are_checked_at_most_every_reload_interval(tmp_path: Path) -> None:
    path = write(tmp_path / "p.cedar", '@id("open") permit(principal, action, resource);\n')
    engine = PolicyEngine([PolicyFile(path)], reload_interval=3600)
    rewrite(path, '@id("open") forbid(principal, action, resource);\n')
    assert engine.decide(refund()).effect == "allow"
    engine.reload_interval = 0
    assert engine.decide(refund()).effect == "deny"


def test_a_deleted_file_keeps_the_policies_in_force(tmp_path: Path) -> None:
    path = write(tmp_path / "p.cedar", '@id("open") permit(principal, action, resource);\n')
    engine = PolicyEngine([PolicyFile(path)], reload_interval=0)
    path.unlink()
    assert engine.decide(refund()) == Verdict("allow", ("open",))
    assert engine.last_error is not None and "cannot read policy file" in engine.last_error


# -- through the runtime -------------------------------------------------------------

CALLS: list[tuple[str, float]] = []


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount, role="refunder")
def issue_refund(order_id: str, amount: float, *, idempotency_key: str) -> str:
    CALLS.append((order_id, amount))
    return f"txn-{order_id}"


@tool(idempotent=True, resource="Order::{order_id}", role="refunder")
def refund_on_behalf(order_id: str, amount: float, principal: str, *, idempotency_key: str) -> str:
    CALLS.append((order_id, amount))
    return f"txn-{order_id}"


@workflow
def refund_order(ctx: Context, order_id: str, amount: float) -> str:
    return ctx.call(issue_refund, order_id=order_id, amount=amount)


@workflow
def refund_or_settle(ctx: Context, order_id: str, amount: float) -> dict[str, Any]:
    try:
        txn = ctx.call(issue_refund, order_id=order_id, amount=amount)
    except PolicyDenied as denied:
        txn = ctx.call(issue_refund, order_id=order_id, amount=50.0)
        return {"denied_by": list(denied.policies), "txn": txn}
    return {"denied_by": [], "txn": txn}


@workflow
def refund_twice(ctx: Context, amount: float) -> list[str]:
    return [ctx.call(issue_refund, order_id="1", amount=amount), ctx.call(issue_refund, order_id="2", amount=amount)]


@workflow
def refund_claiming(ctx: Context, order_id: str, who: str) -> str:
    return ctx.call(refund_on_behalf, order_id=order_id, amount=10.0, principal=who)


PRINCIPALS = {
    "alice": {"tenant": "acme", "roles": ["support"]},
    "bob": {"tenant": "acme", "roles": ["support", "manager"]},
}
SMALL_REFUNDS = """\
@id("support-can-refund")
permit(principal in Role::"support", action, resource);

@id("no-refund-over-100")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };
"""


@pytest.fixture
def calls() -> Iterator[list[tuple[str, float]]]:
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def governed(tmp_path: Path, policy: str, *, shadow: str | None = None, clock: FakeClock | None = None,
             principals: dict[str, Any] | None = None) -> Baton:
    table: dict[str, Any] = {"files": ["enforced.cedar"]}
    write(tmp_path / "enforced.cedar", policy)
    if shadow is not None:
        write(tmp_path / "shadow.cedar", shadow)
        table["shadow"] = ["shadow.cedar"]
    governance = Governance.from_dict({"principals": PRINCIPALS if principals is None else principals,
                                       "policies": table}, base=tmp_path, source=str(tmp_path / "baton.toml"))
    return Baton(make_settings(tmp_path), governance=governance, clock=clock)


def decided(baton: Baton, run_id: str) -> list[ev.PolicyDecided]:
    return of_type(baton, run_id, ev.PolicyDecided)


def test_an_allowed_step_runs_and_its_decision_is_journaled(tmp_path: Path, calls: list[Any]) -> None:
    with governed(tmp_path, SMALL_REFUNDS) as baton:
        run_id = baton.start(refund_order, {"order_id": "98765", "amount": 42.5}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.COMPLETED
        (decision,) = decided(baton, run_id)
        assert decision.effect == "allow" and decision.policies == ["support-can-refund"]
        assert decision.principal == "alice" and decision.role == "refunder"
        assert decision.action == "Action::issue_refund" and decision.resource == "Order::98765"
        assert decision.args == {"order_id": "98765", "amount": 42.5}
        assert decision.shadow_effect is None
        assert calls == [("98765", 42.5)]
        assert of_type(baton, run_id, ev.RunCompleted)[0].result == "txn-98765"


def test_a_denied_step_fails_the_run_and_never_runs_the_tool(tmp_path: Path, calls: list[Any]) -> None:
    with governed(tmp_path, SMALL_REFUNDS) as baton:
        run_id = baton.start(refund_order, {"order_id": "98765", "amount": 500.0}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.FAILED
        (decision,) = decided(baton, run_id)
        assert decision.effect == "deny" and decision.policies == ["no-refund-over-100"]
        (step_failed,) = of_type(baton, run_id, ev.StepFailed)
        assert step_failed.final and step_failed.error.type == "PolicyDenied"
        assert "no-refund-over-100" in step_failed.error.message
        (run_failed,) = of_type(baton, run_id, ev.RunFailed)
        assert run_failed.error.type == "PolicyDenied"
        assert not of_type(baton, run_id, ev.StepRan) and not of_type(baton, run_id, ev.StepStarted)
        assert calls == []


def test_a_workflow_may_catch_a_denial_and_go_on(tmp_path: Path, calls: list[Any]) -> None:
    with governed(tmp_path, SMALL_REFUNDS) as baton:
        run_id = baton.start(refund_or_settle, {"order_id": "7", "amount": 500.0}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.COMPLETED
        assert of_type(baton, run_id, ev.RunCompleted)[0].result == {"denied_by": ["no-refund-over-100"],
                                                                   "txn": "txn-7"}
        assert [d.effect for d in decided(baton, run_id)] == ["deny", "allow"]
        assert calls == [("7", 50.0)]


DAILY = """\
@id("support-can-refund")
permit(principal in Role::"support", action, resource);

@id("daily-limit")
forbid(principal, action == Action::"issue_refund", resource)
when { context.history.day.count >= 2 };
"""


def test_a_daily_count_spans_runs_and_is_per_principal(tmp_path: Path, calls: list[Any]) -> None:
    clock = FakeClock()
    with governed(tmp_path, DAILY, clock=clock) as baton:
        def refund_as(who: str) -> tuple[RunStatus, list[str]]:
            run_id = baton.start(refund_order, {"order_id": who, "amount": 10.0}, principal=who)
            status = baton.drive(run_id).status
            (decision,) = decided(baton, run_id)
            clock.advance(60)
            return status, [decision.effect, *decision.policies]

        assert refund_as("alice") == (RunStatus.COMPLETED, ["allow", "support-can-refund"])
        assert refund_as("alice") == (RunStatus.COMPLETED, ["allow", "support-can-refund"])
        assert refund_as("alice") == (RunStatus.FAILED, ["deny", "daily-limit"])
        assert refund_as("bob") == (RunStatus.COMPLETED, ["allow", "support-can-refund"])
        clock.advance(86400)
        assert refund_as("alice") == (RunStatus.COMPLETED, ["allow", "support-can-refund"])  # a day later
        assert len(calls) == 4


def test_a_daily_total_sums_the_cost_of_completed_calls(tmp_path: Path, calls: list[Any]) -> None:
    policy = ('@id("all") permit(principal, action, resource);\n'
              '@id("daily-spend") forbid(principal, action == Action::"issue_refund", resource) '
              'when { context.history.day.total.greaterThan(decimal("150.0")) };\n')
    with governed(tmp_path, policy) as baton:
        statuses = []
        for amount in (100.0, 60.0, 1.0):
            run_id = baton.start(refund_order, {"order_id": "1", "amount": amount}, principal="alice")
            statuses.append(baton.drive(run_id).status)
        assert statuses == [RunStatus.COMPLETED, RunStatus.COMPLETED, RunStatus.FAILED]
        assert decided(baton, run_id)[0].policies == ["daily-spend"]
        assert calls == [("1", 100.0), ("1", 60.0)]


def test_a_second_call_in_the_same_run_waits_for_approval(tmp_path: Path, calls: list[Any]) -> None:
    policy = ('@id("all") permit(principal, action, resource);\n'
              '@id("one-per-run") @approval("role:manager")\n'
              'forbid(principal, action == Action::"issue_refund", resource)\n'
              'when { context.history.run.count >= 1 };\n')
    with governed(tmp_path, policy) as baton:
        run_id = baton.start(refund_twice, {"amount": 30.0}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.WAITING
        assert [(d.step_id, d.effect, d.policies) for d in decided(baton, run_id)] == [
            (1, "allow", ["all"]), (2, "approval", ["one-per-run"])]
        (request,) = of_type(baton, run_id, ev.ApprovalRequested)
        assert request.approvers == ["role:manager"] and request.requester == "alice"
        assert calls == [("1", 30.0)]

        baton.decide(request.approval_id, principal="bob", approve=True, reason="a known customer")
        assert baton.drive(run_id).status == RunStatus.COMPLETED
        assert calls == [("1", 30.0), ("2", 30.0)]


def test_shadow_policies_are_journaled_through_a_run(tmp_path: Path, calls: list[Any]) -> None:
    shadow = '@id("no-refunds-at-all") forbid(principal, action == Action::"issue_refund", resource);'
    with governed(tmp_path, SMALL_REFUNDS, shadow=shadow) as baton:
        run_id = baton.start(refund_order, {"order_id": "5", "amount": 20.0}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.COMPLETED
        (decision,) = decided(baton, run_id)
        assert decision.effect == "allow" and decision.policies == ["support-can-refund"]
        assert decision.shadow_effect == "deny" and decision.shadow_policies == ["no-refunds-at-all"]
        assert calls == [("5", 20.0)]


def test_a_tool_argument_cannot_change_who_the_run_acts_for(tmp_path: Path, calls: list[Any]) -> None:
    policy = ('@id("bob-only") permit(principal == User::"bob", action, resource);\n'
              '@id("sees-the-claim") forbid(principal, action, resource) unless { context.args.principal == "bob" };\n')
    with governed(tmp_path, policy) as baton:
        run_id = baton.start(refund_claiming, {"order_id": "9", "who": "bob"}, principal="alice")
        assert baton.drive(run_id).status == RunStatus.FAILED
        (decision,) = decided(baton, run_id)
        assert decision.principal == "alice" and decision.effect == "deny" and decision.policies == []
        assert decision.args["principal"] == "bob"  # the claim reached policy, as an argument only
        assert calls == []
        run_id = baton.start(refund_claiming, {"order_id": "9", "who": "bob"}, principal="bob")
        assert baton.drive(run_id).status == RunStatus.COMPLETED


def test_a_run_needs_a_known_principal(tmp_path: Path, calls: list[Any]) -> None:
    with governed(tmp_path, SMALL_REFUNDS) as baton:
        with pytest.raises(UsageError, match="unknown principal 'mallory'"):
            baton.start(refund_order, {"order_id": "1", "amount": 1.0}, principal="mallory")
        with pytest.raises(UsageError, match="say who is acting"):
            baton.start(refund_order, {"order_id": "1", "amount": 1.0})
        with pytest.raises(UsageError, match="belongs to tenant 'acme'"):
            baton.start(refund_order, {"order_id": "1", "amount": 1.0}, principal="alice", tenant="other")
        assert baton.store.all_run_ids() == []  # nothing was recorded
        run_id = baton.start(refund_order, {"order_id": "1", "amount": 1.0}, principal="alice")
    # The directory changes: alice is gone by the time the run is driven.
    with governed(tmp_path, SMALL_REFUNDS, principals={"bob": PRINCIPALS["bob"]}) as baton:
        assert baton.drive(run_id).status == RunStatus.FAILED
        (decision,) = decided(baton, run_id)
        assert decision.effect == "deny" and "not a known principal" in decision.errors[0]
        assert calls == []


# -- leaving attributes out of the context never changes a decision -------------------------

PRUNING_POLICIES = """
permit(principal, action, resource);
@approval("role:manager")
forbid(principal, action == Action::"pay", resource) when { context.args has amount && context.args.amount > 50 };
forbid(principal, action, resource) when { context.a == context.b };
forbid(principal, action, resource) when { context has c && context.c.d == "x" };
forbid(principal, action, resource) when { [context.e].contains(context.f) };
forbid(principal, action == Action::"pay", resource) when { context["args"]["flag"] == true };
forbid(principal, action, resource) when { context.args has "force-delete" };
permit(principal, action == Action::"look", resource) when { context has "dry-run" && context["dry-run"] == true };
"""
names = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "x", "amount", "flag", "force-delete", "dry-run"])
leaves = st.integers(min_value=0, max_value=100) | st.booleans() | st.sampled_from(["x", "y"])
records = st.recursive(st.dictionaries(names, leaves, max_size=3),
                       lambda inner: st.dictionaries(names, leaves | inner, max_size=3), max_leaves=8)


# Contexts where the compared attributes are often records that differ only in keys no
# policy names: exactly where leaving keys out could make two records look equal.
unnamed = st.dictionaries(st.sampled_from(["g", "h", "x"]), leaves, max_size=2)
contexts = st.fixed_dictionaries({}, optional={"a": unnamed | leaves, "b": unnamed | leaves, "c": records,
                                               "e": unnamed, "f": unnamed, "g": records, "dry-run": leaves})


@settings(max_examples=300, deadline=None)
@given(context=contexts, args=st.dictionaries(names, leaves, max_size=3), tool=st.sampled_from(["pay", "look"]))
def test_pruning_the_context_never_changes_a_decision(tmp_path_factory: pytest.TempPathFactory,
                                                      context: dict[str, Any], args: dict[str, Any],
                                                      tool: str) -> None:
    import baton.policy.engine as engine_module

    folder = tmp_path_factory.mktemp("pruning")
    (folder / "p.cedar").write_text(PRUNING_POLICIES)
    pruned = PolicyEngine([PolicyFile(folder / "p.cedar")])
    request = PolicyRequest(ALICE, tool, ("Order", "1"), args, context)
    original = engine_module.pruning
    engine_module.pruning = lambda text: None
    try:
        whole = PolicyEngine([PolicyFile(folder / "p.cedar")])
        expected = whole.decide(request)
    finally:
        engine_module.pruning = original
    assert pruned.enforced.slice(tool).keep is not None  # the property is about pruning: it must happen
    got = pruned.decide(request)
    assert (got.effect, got.policies) == (expected.effect, expected.policies)


def test_an_amount_with_more_places_than_cedar_holds_is_denied_not_rounded(tmp_path: Path) -> None:
    """Rounded to Cedar's four places, 100.00004 would pass a "> 100.0" gate unseen."""
    engine = engine_for(tmp_path, 'permit(principal, action, resource);\n'
                                  '@approval("role:manager")\nforbid(principal, action, resource)\n'
                                  'when { context.args.amount.greaterThan(decimal("100.0")) };')
    assert engine.decide(PolicyRequest(ALICE, "pay", ("Order", "1"), {"amount": 100.00004})).effect == "deny"
    assert engine.decide(PolicyRequest(ALICE, "pay", ("Order", "1"), {"amount": 100.0})).effect == "allow"
    assert engine.decide(PolicyRequest(ALICE, "pay", ("Order", "1"), {"amount": 0.1 + 0.2})).effect == "allow"
    assert engine.decide(PolicyRequest(ALICE, "pay", ("Order", "1"), {"amount": 100.0001})).effect == "approval"
