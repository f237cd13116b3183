"""IT help desk: an agent resets a locked-out user's password and restores her access.

Alice (help desk, tenant acme) hands ticket HD-1042 to the agent. It looks Dana's account
up, resets her password (the temporary password is sensitive: sealed in the journal, masked
in every timeline), texts it to her, and asks for ``prod-access``, which policy holds for IT
security: Marco approves. The ticket also asks for an account at Globex to be reset; policy
refuses, whatever the model thinks of the request.

    python examples/password_reset/app.py
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from rich.console import Console

from baton import Baton, Governance, Sensitive, Settings, tool
from baton.agent import AgentLimits, ModelRequest, Reply, ScriptedModel, agent, call, last_results, say
from baton.cli.render import Tail

HERE = Path(__file__).resolve().parent


@dataclass
class IdentityProvider:
    """A fake identity provider: accounts by (tenant, username), and its books of what was done."""

    accounts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    resets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (phone, message)

    def seed(self) -> None:
        """Start from three accounts, nothing done yet."""
        self.resets, self.grants, self.texts = {}, {}, {}
        self.accounts = {
            ("acme", "dana"): {"name": "Dana Reyes", "groups": ["staff", "finance-reports"], "locked": True,
                               "phone": "+1 415 555 0142"},
            ("acme", "priya"): {"name": "Priya Natarajan", "groups": ["staff", "admins"], "locked": False,
                                "phone": "+1 415 555 0178"},
            ("globex", "sam.ortiz"): {"name": "Sam Ortiz", "groups": ["contractors"], "locked": True,
                                      "phone": "+44 20 7946 0321"},
        }

    def account(self, tenant: str, username: str) -> dict[str, Any]:
        found = self.accounts.get((tenant, username))
        if found is None:
            raise LookupError(f"no account {username!r} in tenant {tenant!r}")
        return found

    def is_admin(self, tenant: str, username: str) -> bool:
        return "admins" in self.accounts.get((tenant, username), {}).get("groups", [])


IDP = IdentityProvider()


def account(tenant: str, username: str) -> tuple[str, str]:
    """What policy sees a call act on: the account, typed by what the identity provider says."""
    return ("AdminAccount" if IDP.is_admin(tenant, username) else "Account", f"{tenant}/{username}")


@tool(read_only=True, idempotent=True, resource=account)
def lookup_user(tenant: str, username: str) -> dict[str, Any]:
    """Look an account up: name, groups, whether it is locked, the phone number on file."""
    found = IDP.account(tenant, username)
    return {"tenant": tenant, "username": username, **found}


@tool(idempotent=True, resource=account, sensitive=["temporary_password"])
def reset_password(tenant: str, username: str, *, idempotency_key: str) -> dict[str, Any]:
    """Unlock the account and set a temporary password that must be changed at next sign-in.
    The identity provider honours idempotency keys: a retry gets the same reset back."""
    if idempotency_key not in IDP.resets:
        found = IDP.account(tenant, username)
        found["locked"] = False
        IDP.resets[idempotency_key] = {"reset_id": f"RST-{len(IDP.resets) + 1:04d}", "account": f"{tenant}/{username}",
                                       "temporary_password": secrets.token_urlsafe(12), "must_change": True}
    return IDP.resets[idempotency_key]


@tool(idempotent=True, resource=account)
def grant_group_access(tenant: str, username: str, group: str, ticket: str, *, idempotency_key: str) -> dict[str, Any]:
    """Add the account to a group; ``ticket`` is the request that justifies it."""
    if idempotency_key not in IDP.grants:
        IDP.account(tenant, username)["groups"].append(group)
        IDP.grants[idempotency_key] = {"grant_id": f"GRT-{len(IDP.grants) + 1:04d}", "group": group,
                                       "account": f"{tenant}/{username}", "ticket": ticket}
    return IDP.grants[idempotency_key]


@tool(idempotent=True, resource=account)
def notify_user(tenant: str, username: str, temporary_password: Annotated[str, Sensitive], *,
                idempotency_key: str) -> dict[str, Any]:
    """Text the temporary password to the phone number on the account (never to an address
    taken from a ticket)."""
    phone = IDP.account(tenant, username)["phone"]
    IDP.texts.setdefault(idempotency_key, (phone, f"Your temporary password is {temporary_password}. "
                                                  "You will be asked to change it when you sign in."))
    return {"sent": True, "channel": "sms", "message_id": f"SMS-{idempotency_key[-8:]}"}


# -- the model: a scripted conversation, reading each result as a real model would ----------


def reset_if_locked(request: ModelRequest) -> Reply:
    user = last_results(request)["lookup_user"]
    if not user["locked"]:
        return say(f"{user['name']}'s account is not locked; nothing to reset.")
    return Reply(text=f"{user['name']}'s account is locked. Resetting it.").and_call(
        "reset_password", tenant=user["tenant"], username=user["username"])


def send_password(request: ModelRequest) -> Reply:
    user, reset = last_results(request)["lookup_user"], last_results(request)["reset_password"]
    return Reply(text="Sending the temporary password to the phone on file.").and_call(
        "notify_user", tenant=user["tenant"], username=user["username"],
        temporary_password=reset["temporary_password"])


def report(request: ModelRequest) -> Reply:
    results = last_results(request)
    grant, globex = results["grant_group_access"], results["reset_password"]
    access = (f"added to prod-access ({grant['grant_id']})" if "grant_id" in grant
              else f"not added to prod-access: {grant['error']}")
    return say(f"HD-1042: Dana's account is unlocked and a temporary password was texted to the phone on "
               f"file (she must change it at sign-in); she was {access}. I did not reset globex/sam.ortiz: "
               f"{globex.get('error', 'unexpectedly, it went through')}. Globex's own help desk must handle it.")


helpdesk_model = ScriptedModel([
    Reply(text="Checking Dana's account first.").and_call("lookup_user", tenant="acme", username="dana"),
    reset_if_locked,
    send_password,
    Reply(text="Now the access she asked for.").and_call(
        "grant_group_access", tenant="acme", username="dana", group="prod-access", ticket="HD-1042"),
    call("reset_password", tenant="globex", username="sam.ortiz"),
    report,
], label="helpdesk")

helpdesk = agent(
    "helpdesk",
    instructions="You are Acme's IT help desk. Resolve the ticket with the tools; never guess a password.",
    model=helpdesk_model, tools=[lookup_user, reset_password, grant_group_access, notify_user],
    limits=AgentLimits(max_turns=10),
)

TICKET = ("Ticket HD-1042 from Dana Reyes (acme, username dana): \"I'm back from leave and locked out, please "
          "reset my password. I'm joining the release on-call rotation, so I need prod-access (Lee, my manager, "
          "approved). And Sam Ortiz, our contractor at Globex (globex/sam.ortiz), is locked out too: can you "
          "reset his password while you're at it?\"")


# -- the story --------------------------------------------------------------------------------


@dataclass
class Story:
    run_id: str
    database: Path
    approval_id: str


def story(root: Path, console: Console) -> Story:
    IDP.seed()
    database = root / "baton.db"
    with Baton(Settings(database_url=f"sqlite:///{database}"), governance=Governance.load(HERE / "baton.toml")) as b:
        console.rule("[bold]Help desk: a password reset and privileged access")
        console.print(f"{TICKET}\n")
        run_id = b.start(helpdesk, goal=TICKET, principal="alice")
        timeline = Tail(b, run_id, console)
        record = b.drive(run_id)
        timeline.show()

        (request,) = b.approvals("marco")  # what Marco may decide; Alice may not decide her own run's
        console.print(f"\n[bold]The run is {record.status.value}[/] (no process holds it) for approval "
                      f"[bold]{request.approval_id}[/]: {request.title}\n  asked for {request.requester}; "
                      f"policy {', '.join(request.policies)}; may decide: {', '.join(request.approvers)}\n"
                      f"  alice may decide {len(b.approvals('alice'))}, gina (globex) "
                      f"{len(b.approvals('gina'))}, marco {len(b.approvals('marco'))}\n")
        b.decide(request.approval_id, principal="marco", approve=True,
                 reason="on-call rotation confirmed with Lee; review at quarter end")
        console.print("marco approves; the run continues:\n")
        b.drive(run_id)
        timeline.show()

        result = b.result(run_id)
        console.print(f"\n[bold]Answer[/] ({result['stop_reason']}, {result['turns']} turns, "
                      f"{result['tokens']} tokens): {result['answer']}")
        console.print(f"[bold]Identity provider[/]: {len(IDP.resets)} reset, {len(IDP.grants)} grant, "
                      f"{len(IDP.texts)} text; dana's groups: {', '.join(IDP.accounts['acme', 'dana']['groups'])}")
        return Story(run_id=run_id, database=database, approval_id=request.approval_id)


def main(workdir: str | Path | None = None) -> Story:
    """Run the story offline: in ``workdir`` (kept, for a look with ``baton``) or in a
    temporary directory."""
    console = Console(highlight=False, soft_wrap=True)
    if workdir is not None:
        return story(Path(workdir), console)
    with tempfile.TemporaryDirectory(prefix="baton-helpdesk-") as tmp:
        return story(Path(tmp), console)


if __name__ == "__main__":
    main(*sys.argv[1:2])
