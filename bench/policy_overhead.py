"""Cost of Baton's policy check per tool step, with a 50-policy Cedar set.

Run from the repository root::

    .venv/bin/python bench/policy_overhead.py
    .venv/bin/python bench/policy_overhead.py --checks 20000 --steps 2000

Prints four figures, measured in the same run:

0. the floor: one ``cedarpy.is_authorized`` call with a single ``permit`` and an empty
   context (what the Cedar binding costs per call before any policy work);
1. the policy check alone (``PolicyEngine.decide``: building the Cedar request, the Cedar
   evaluation, reading the answer), median and p99 over many calls;
2. a whole idempotent step without policy (µs per step, durability=normal so fsync does not
   drown the difference);
3. the same step with the 50 policies in force (the decision is journaled with the step,
   in the same append).

Target: the median policy check is under 100 µs. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cedarpy

from baton import Baton, Context, RunStatus, Settings, tool, workflow
from baton.config import Governance
from baton.identity import Principal
from baton.policy import PolicyEngine, PolicyFile, PolicyRequest

TARGET_US = 100.0
ROLES = ["support", "billing", "ops", "sales", "legal"]
TOOLS = ["issue_refund", "check_order", "send_receipt", "update_crm", "close_ticket", "reset_password",
         "export_invoice", "apply_discount", "cancel_order", "escalate"]


def fifty_policies() -> str:
    """A realistic mix: per-role permits, conditional forbids, gates, tenant checks."""
    out = ['@id("p-tenant")\nforbid(principal, action, resource) unless { principal.tenant == "acme" };']
    for i, name in enumerate(TOOLS):
        role = ROLES[i % len(ROLES)]
        out.append(f'@id("permit-{name}")\npermit(principal in Role::"{role}", action == Action::"{name}", '
                   f'resource);')
        out.append(f'@id("permit-{name}-support")\npermit(principal in Role::"support", '
                   f'action == Action::"{name}", resource) when {{ context.run.steps < 1000 }};')
        out.append(f'@id("cap-{name}")\nforbid(principal, action == Action::"{name}", resource) '
                   f'when {{ context.history.run.count > 100000 }};')
        out.append(f'@id("gate-{name}")\n@approval("role:manager")\nforbid(principal, action == '
                   f'Action::"{name}", resource) when {{ context.tool.cost.greaterThan(decimal("10000.0")) }};')
    while len(out) < 50:
        i = len(out)
        out.append(f'@id("misc-{i}")\nforbid(principal, action, resource) when {{ principal has '
                   f'blocked_{i} }};')
    return "\n\n".join(out[:50]) + "\n"


@tool(idempotent=True, cost=lambda amount: amount, resource="Order::{order_id}")
def issue_refund(order_id: str, amount: float, *, idempotency_key: str) -> str:
    return idempotency_key


@workflow
def refunds(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(issue_refund, order_id=str(i), amount=1.0)
    return n


def binding_floor(count: int) -> float:
    """Median µs of the cheapest possible Cedar call through cedarpy."""
    policies = cedarpy.PolicySet.from_str("permit(principal, action, resource);")
    entities = cedarpy.Entities.from_json_str("[]")
    request = {"principal": 'User::"alice"', "action": 'Action::"issue_refund"', "resource": 'Order::"1"',
               "context": "{}"}
    samples = []
    for i in range(count + 1000):
        t0 = time.perf_counter()
        cedarpy.is_authorized(request, policies, entities)
        if i >= 1000:
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def per_step(baton: Baton, n: int, principal: str | None) -> float:
    baton.drive(baton.start(refunds, n=10, principal=principal))  # warm up
    start = time.perf_counter()
    record = baton.drive(baton.start(refunds, n=n, principal=principal))
    elapsed = time.perf_counter() - start
    assert record.status is RunStatus.COMPLETED, record.outcome
    return elapsed / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=20000, help="policy checks to time")
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=".") as folder:
        root = Path(folder)
        policy = root / "policies.cedar"
        policy.write_text(fifty_policies())
        engine = PolicyEngine([PolicyFile(policy)], reload_interval=3600)
        assert len(engine.sources) == 50
        alice = Principal("alice", "acme", frozenset({"support"}))
        request = PolicyRequest(
            principal=alice, tool="issue_refund", resource=("Order", "98765"),
            args={"order_id": "98765", "amount": 120.0},
            context={"tool": {"name": "issue_refund", "role": None, "idempotent": True, "cost": 120.0},
                     "run": {"id": "r", "steps": 3, "spend": 50.0},
                     "history": {"run": {"count": 1, "total": 50.0, "after": 170.0},
                                 "day": {"count": 0, "total": 0.0, "after": 120.0}}},
        )
        assert engine.decide(request).effect == "allow"
        for _ in range(1000):
            engine.decide(request)
        samples = []
        for _ in range(args.checks):
            t0 = time.perf_counter()
            engine.decide(request)
            samples.append(time.perf_counter() - t0)
        samples.sort()
        median_us = statistics.median(samples) * 1e6
        p99_us = samples[int(len(samples) * 0.99)] * 1e6
        floor_us = binding_floor(args.checks)

        settings = Settings(database_url=f"sqlite:///{root / 'plain.db'}", durability="normal")
        with Baton(settings, governance=Governance()) as plain:
            without = per_step(plain, args.steps, None)
        governed = Governance.from_dict({
            "principals": {"alice": {"tenant": "acme", "roles": ["support"]}},
            "policies": {"files": [str(policy)]},
        })
        settings = Settings(database_url=f"sqlite:///{root / 'governed.db'}", durability="normal")
        with Baton(settings, governance=governed) as checked:
            with_policy = per_step(checked, args.steps, "alice")

    print("Baton policy overhead")
    print("=" * 78)
    print(f"date        {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    uname = platform.uname()
    print(f"machine     {uname.machine}, {os.cpu_count()} CPUs, {uname.system} {uname.release}")
    print(f"python      {platform.python_version()}; policy set: 50 Cedar policies "
          "(10 gates, 10 conditional forbids, 20 permits, tenant check)")
    print()
    print(f"0. cedarpy floor           median {floor_us:7.1f} µs   (one permit, empty context: the binding's "
          "own cost per call)")
    print(f"1. policy check alone      median {median_us:7.1f} µs   p99 {p99_us:7.1f} µs   "
          f"({args.checks} checks)")
    print(f"2. step without policy            {without:7.1f} µs   ({args.steps} idempotent steps, "
          "durability=normal)")
    print(f"3. step with 50 policies          {with_policy:7.1f} µs   (+{with_policy - without:.1f} µs: "
          "the check, the context, the journaled decision)")
    ok = median_us < TARGET_US
    print()
    print(f"{'PASS' if ok else 'FAIL'} median check < {TARGET_US:.0f} µs "
          f"({median_us / floor_us:.1f}× the binding's floor)")
    return 0  # benchmarks inform; CI does not run them


if __name__ == "__main__":
    sys.exit(main())
