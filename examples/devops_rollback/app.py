"""DevOps: an agent rolls back a bad deploy, then the incident lead calls it off.

Checkout's error rate jumps after v2.14.0 goes out. Sam (on call) starts the agent: it
checks health, freezes deploys, posts to the incident channel and rolls production back to
v2.13.2, which policy holds for an SRE lead (Lee approves). The errors do not stop, so the
agent proposes a regional failover and waits for Lee again. Lee has found the cause
meanwhile: the payment provider is down, nothing a rollback or a failover can fix. She
cancels the run, and Baton undoes the agent's completed steps, newest first: v2.14.0 is
redeployed, then the freeze is lifted. The channel post stays (it declares no undo).

    python examples/devops_rollback/app.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from baton import Baton, Governance, Settings, tool
from baton.agent import AgentLimits, ModelRequest, Reply, ScriptedModel, agent, last_results, say
from baton.cli.render import Tail

HERE = Path(__file__).resolve().parent


@dataclass
class Fleet:
    """A fake deploy system and incident channel, and the books of what they did."""

    running: dict[tuple[str, str], str] = field(default_factory=dict)  # (service, environment) -> version
    previous: dict[tuple[str, str], str] = field(default_factory=dict)
    deploys: list[dict[str, str]] = field(default_factory=list)
    freezes: dict[str, dict[str, Any]] = field(default_factory=dict)
    failovers: list[dict[str, str]] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # results by idempotency key

    def seed(self) -> None:
        """Start with v2.14.0 (just deployed) running everywhere, nothing done yet."""
        self.running, self.previous, self.freezes, self.done = {}, {}, {}, {}
        self.deploys, self.failovers, self.posts = [], [], []
        for environment in ("staging", "production"):
            self.running[("checkout", environment)] = "v2.14.0"
            self.previous[("checkout", environment)] = "v2.13.2"

    def deploy(self, service: str, environment: str, version: str, why: str) -> dict[str, str]:
        replaced = self.running[(service, environment)]
        self.running[(service, environment)] = version
        self.deploys.append({"service": service, "environment": environment, "version": version, "why": why})
        return {"deploy_id": f"DEP-{len(self.deploys):04d}", "from_version": replaced, "to_version": version}


FLEET = Fleet()


@tool(read_only=True, idempotent=True, resource="Service::{environment}/{service}")
def check_health(service: str, environment: str) -> dict[str, Any]:
    """Error rate, latency and the top error of a service, with the version running and the one before."""
    key = (service, environment)
    # The payment provider is down: whatever checkout runs, its calls to payments time out.
    return {"service": service, "environment": environment, "version": FLEET.running[key],
            "previous_version": FLEET.previous[key], "error_rate": 0.124 if FLEET.running[key] == "v2.14.0" else 0.118,
            "p99_ms": 2400, "top_error": "TimeoutError: POST payments-gateway/charges"}


def lift_freeze(result: dict[str, Any]) -> None:
    FLEET.freezes[result["freeze_id"]]["lifted"] = True  # lifting twice is lifting once


@tool(idempotent=True, resource="Pipeline::{service}", compensate=lift_freeze)
def freeze_deploys(service: str, incident: str, *, idempotency_key: str) -> dict[str, Any]:
    """Stop anyone deploying the service while the incident is open. Undone by lifting the freeze."""
    if idempotency_key not in FLEET.done:
        freeze_id = f"FRZ-{len(FLEET.freezes) + 1:04d}"
        FLEET.freezes[freeze_id] = {"service": service, "incident": incident, "lifted": False}
        FLEET.done[idempotency_key] = {"freeze_id": freeze_id, "service": service}
    return FLEET.done[idempotency_key]


@tool(idempotent=True, resource="Channel::{incident}")
def post_incident_update(incident: str, message: str, *, idempotency_key: str) -> dict[str, Any]:
    """Post to the incident's channel. A message cannot be unsent: this tool declares no undo."""
    if idempotency_key not in FLEET.done:
        FLEET.posts.append(f"[{incident}] {message}")
        FLEET.done[idempotency_key] = {"posted": True, "channel": f"#{incident.lower()}"}
    return FLEET.done[idempotency_key]


def roll_forward(service: str, environment: str, result: dict[str, Any], idempotency_key: str) -> None:
    # An undo may run again if the process dies mid-way: Baton gives it a key of its own.
    if idempotency_key not in FLEET.done:
        FLEET.done[idempotency_key] = FLEET.deploy(service, environment, result["from_version"],
                                                   why="undo of the rollback")


@tool(idempotent=True, destructive=True, resource="Service::{environment}/{service}", compensate=roll_forward)
def rollback_service(service: str, environment: str, to_version: str, *, idempotency_key: str) -> dict[str, Any]:
    """Deploy an earlier version of a service. Undone by deploying the version it replaced."""
    if idempotency_key not in FLEET.done:
        FLEET.done[idempotency_key] = FLEET.deploy(service, environment, to_version, why="rollback")
    return FLEET.done[idempotency_key]


def fail_back(service: str, environment: str, result: dict[str, Any], idempotency_key: str) -> None:
    if idempotency_key not in FLEET.done:
        FLEET.failovers.append({"service": service, "environment": environment, "region": result["from_region"]})
        FLEET.done[idempotency_key] = {"region": result["from_region"]}


@tool(idempotent=True, destructive=True, resource="Service::{environment}/{service}", compensate=fail_back)
def failover_region(service: str, environment: str, to_region: str, *, idempotency_key: str) -> dict[str, Any]:
    """Move a service's traffic to another region. Undone by moving it back."""
    if idempotency_key not in FLEET.done:
        FLEET.failovers.append({"service": service, "environment": environment, "region": to_region})
        FLEET.done[idempotency_key] = {"from_region": "us-east-1", "to_region": to_region}
    return FLEET.done[idempotency_key]


# -- the model: a scripted conversation, reading each result as a real model would ----------


def contain(request: ModelRequest) -> Reply:
    health = last_results(request)["check_health"]
    return Reply(text=f"Errors at {health['error_rate']:.1%} since {health['version']} went out. Freezing deploys "
                      "and telling the channel.").and_call(
        "freeze_deploys", service=health["service"], incident="INC-311").and_call(
        "post_incident_update", incident="INC-311",
        message=f"checkout errors at {health['error_rate']:.1%} after {health['version']}; rolling back to "
                f"{health['previous_version']}, deploys frozen")


def roll_back(request: ModelRequest) -> Reply:
    health = last_results(request)["check_health"]
    return Reply(text=f"Rolling back to {health['previous_version']}.").and_call(
        "rollback_service", service=health["service"], environment=health["environment"],
        to_version=health["previous_version"])


def judge(request: ModelRequest) -> Reply:
    health = last_results(request)["check_health"]  # the check made after the rollback
    if health["error_rate"] < 0.01:
        return say(f"Recovered on {health['version']}: errors at {health['error_rate']:.1%}.")
    return Reply(text=f"Still {health['error_rate']:.1%} errors on {health['version']} ({health['top_error']}). "
                      "The us-east-1 path to payments may be at fault: failing over to us-west-2.").and_call(
        "failover_region", service=health["service"], environment=health["environment"], to_region="us-west-2")


oncall_model = ScriptedModel([
    Reply(text="Checking checkout in production.").and_call("check_health", service="checkout",
                                                            environment="production"),
    contain,
    roll_back,
    Reply(text="Checking whether the rollback helped.").and_call("check_health", service="checkout",
                                                                 environment="production"),
    judge,
    say("Failed over to us-west-2; errors are being watched."),
], label="oncall")

oncall = agent(
    "oncall",
    instructions="You are on call for Acme's checkout service. Contain the incident, then fix it.",
    model=oncall_model, tools=[check_health, freeze_deploys, post_incident_update, rollback_service, failover_region],
    limits=AgentLimits(max_turns=10),
)

GOAL = "INC-311: checkout's error rate jumped after this morning's deploy of v2.14.0. Contain it and fix it."


# -- the story --------------------------------------------------------------------------------


@dataclass
class Story:
    run_id: str
    database: Path
    approvals: list[str]


def story(root: Path, console: Console) -> Story:
    FLEET.seed()
    database = root / "baton.db"
    with Baton(Settings(database_url=f"sqlite:///{database}"), governance=Governance.load(HERE / "baton.toml")) as b:
        console.rule("[bold]On call: a bad deploy, a rollback, and a remediation called off")
        run_id = b.start(oncall, goal=GOAL, principal="sam")
        console.print(f"sam: {GOAL}  (run {run_id})\n")
        timeline = Tail(b, run_id, console)
        b.drive(run_id)
        timeline.show()

        (rollback,) = b.approvals("lee")
        console.print(f"\n[bold]Waiting for approval {rollback.approval_id}[/]: {rollback.title} to "
                      f"{rollback.args['to_version']} ({', '.join(rollback.policies)})\n")
        b.decide(rollback.approval_id, principal="lee", approve=True, reason="clear regression window; go")
        console.print("lee approves the rollback; the run continues:\n")
        b.drive(run_id)
        timeline.show()

        (failover,) = b.approvals("lee")
        console.print(f"\n[bold]Waiting for approval {failover.approval_id}[/]: {failover.title} to "
                      f"{failover.args['to_region']}\n\nlee finds the cause on the payment provider's status "
                      "page: a provider-wide outage, which no rollback or failover can fix; v2.14.0 should stay. "
                      "She cancels the run:\n")
        b.cancel(run_id)
        b.drive(run_id)  # the next step sees the cancellation; compensations run, newest first
        timeline.show()

        versions = ", ".join(f"{d['version']} ({d['why']})" for d in FLEET.deploys)
        frozen = [f for f, state in FLEET.freezes.items() if not state["lifted"]]
        console.print(f"\n[bold]Fleet[/]: checkout runs {FLEET.running['checkout', 'production']}; deploys: "
                      f"{versions}; freezes in force: {len(frozen)}; failovers: {len(FLEET.failovers)}; "
                      f"channel posts: {len(FLEET.posts)}")
        return Story(run_id=run_id, database=database, approvals=[rollback.approval_id, failover.approval_id])


def main(workdir: str | Path | None = None) -> Story:
    """Run the story offline: in ``workdir`` (kept, for a look with ``baton``) or in a
    temporary directory."""
    console = Console(highlight=False, soft_wrap=True)
    if workdir is not None:
        return story(Path(workdir), console)
    with tempfile.TemporaryDirectory(prefix="baton-oncall-") as tmp:
        return story(Path(tmp), console)


if __name__ == "__main__":
    main(*sys.argv[1:2])
