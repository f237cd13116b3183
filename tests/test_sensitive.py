"""Sensitive data in process: what the detectors recognise, what tools and workflows
declare, sealing and opening, the master key, and how sealed values behave in runs
(replay, approvals, signals, large values, erasure)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from baton import Baton, Context, DataErased, RunStatus, Sensitive, Settings, UsageError, tool, workflow
from baton.errors import StoreError
from baton.journal import events as ev
from baton.sensitive import DataKey, MasterKey, Sealer, detect, hints_of, masked, redact
from baton.sensitive.detect import luhn_valid, secret_name
from baton.sensitive.seal import SEALED, is_sealed
from baton.testing import FakeClock
from engine_support import make_settings

# -- detectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), [
    ("write to alice@example.com today", "email"),
    ("a.b-c+tag@mail.example.co.uk", "email"),
    ("card 4111 1111 1111 1111 expires", "card"),
    ("4111-1111-1111-1111", "card"),
    ("378282246310005", "card"),  # American Express, 15 digits
    ("call +1 415 555 0100", "phone"),
    ("(415) 555-0100", "phone"),
    ("415-555-0100", "phone"),
    ("+44 20 7946 0958", "phone"),
    ("key AKIAIOSFODNN7EXAMPLE here", "aws-key"),
    ("ASIAY34FZKBOKMUTVV7A", "aws-key"),
    ("pay to DE89 3704 0044 0532 0130 00 now", "iban"),
    ("GB82WEST12345698765432", "iban"),
    ("ssn 123-45-6789 on file", "ssn"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "token"),
])
def test_detectors_recognise(text: str, kind: str) -> None:
    assert detect(text) == kind
    assert kind in redact(text) and "\u2039" in redact(text)


@pytest.mark.parametrize("text", [
    "order 98765", "4111 1111 1111 1112",  # Luhn fails
    "2026-11-26T11:44:14.123456Z", "2026-11-26", "120.00", "ORD-2024-000123",
    "550e8400-e29b-41d4-a716-446655440000", "run 19ad0f0b2c1a4e5f9b3",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "refund approved by bob",
    "version 1.2.3", "AKIA-too-short", "not@an", "12345678",
    "DE89 3704 0044 0532 0130 01",  # IBAN check digits wrong
    "000-12-3456", "ORDER12345678901234",
    "check idempotency key 1a21923501815557a43d1:6",  # a Luhn-valid digit run inside a run id
    "sha 9f21923501815557e0", "ref X123-45-6789",
])
def test_detectors_leave_ordinary_text_alone(text: str) -> None:
    assert detect(text) is None
    assert redact(text) == text


@given(st.lists(st.integers(0, 9), min_size=12, max_size=18), st.sampled_from(["", " ", "-"]))
def test_every_luhn_valid_card_number_is_detected(digits: list[int], sep: str) -> None:
    body = "".join(map(str, digits))
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    number = body + check
    grouped = sep.join(number[i:i + 4] for i in range(0, len(number), 4))
    text = f"paid with {grouped}."
    assert detect(text) == "card"
    assert number not in redact(text).replace(sep, "")


@pytest.mark.parametrize(("key", "secret"), [
    ("password", True), ("db_password", True), ("apiKey", True), ("api_key", True),
    ("access_token", True), ("aws_secret_access_key", True), ("client_secret", True),
    ("private_key", True), ("max_tokens", False), ("token_count", False), ("keyword", False),
    ("idempotency_key", False), ("secretary", False), ("token", True), ("authorization", True),
    ("pin", True), ("spin", False),
])
def test_secret_names(key: str, secret: bool) -> None:
    assert secret_name(key) is secret


def test_redact_removes_declared_values_too() -> None:
    assert redact("no customer Z-7731-Q found", ("Z-7731-Q",)) == "no customer \u2039sensitive\u203a found"
    # The longer of two overlapping values first: nothing of either is left.
    assert redact("nick Lapin-Blanc-77", ("Lapin", "Lapin-Blanc-77")) == "nick \u2039sensitive\u203a"


# -- sealing -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30) | st.sampled_from(["alice@example.com", "4242424242424242", "\u0000sealed"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["password", "\u0000sealed", "\u0000x", "ssn"]),
                      children, max_size=4),
    max_leaves=20,
)


def sealer(run_id: str = "run-1", key: bytes = b"k" * 32) -> Sealer:
    return Sealer(run_id, DataKey(key))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_sealing_then_opening_gives_back_the_value(value: Any) -> None:
    s = sealer()
    sealed = s.seal_data(value, frozenset({"ssn"}))
    assert json.loads(json.dumps(sealed)) == sealed  # plain JSON
    assert sealer().open_data(sealed) == value
    assert SEALED not in json.dumps(masked(sealed))


@settings(max_examples=200)
@given(json_values)
def test_no_detected_value_survives_sealing(value: Any) -> None:
    text = json.dumps(sealer().seal_data(value))
    assert "alice@example.com" not in text and "4242424242424242" not in text


def test_a_user_key_that_looks_like_a_marker_is_not_one() -> None:
    s = sealer()
    forged = {SEALED: ["email", "AAAA"]}
    stored = s.seal_data({"x": forged})
    assert not is_sealed(stored["x"])
    assert s.open_data(stored) == {"x": forged}


def test_a_declared_value_inside_later_text_seals_that_text() -> None:
    s = sealer()
    s.seal_data({"temporary_password": "Blue-Otter-42"}, frozenset({"temporary_password"}))
    stored = s.seal_data({"answer": "Told Dana her password is Blue-Otter-42.", "other": "nothing here"})
    assert is_sealed(stored["answer"]) and stored["other"] == "nothing here"
    assert s.open_data(stored)["answer"] == "Told Dana her password is Blue-Otter-42."


def test_sealing_is_deterministic_within_a_run_and_differs_across_runs() -> None:
    one, again, other = sealer("r1").seal_value("x", "sensitive"), sealer("r1").seal_value("x", "sensitive"), \
        sealer("r2").seal_value("x", "sensitive")
    assert one == again
    assert one != other


def test_a_changed_or_moved_ciphertext_is_refused() -> None:
    sealed = sealer("r1").seal_value("alice@example.com", "email")
    kind, data = sealed[SEALED]
    raw = bytearray(base64.b64decode(data))
    raw[-1] ^= 1
    with pytest.raises(StoreError, match="does not decrypt"):
        sealer("r1").open_value({SEALED: [kind, base64.b64encode(bytes(raw)).decode()]})
    with pytest.raises(StoreError, match="copied from another run"):
        sealer("r2").open_value(sealed)
    with pytest.raises(StoreError):  # the kind is bound too: relabelling it is tampering
        sealer("r1").open_value({SEALED: ["phone", data]})


def test_without_the_key_nothing_opens_and_nothing_new_is_sealed() -> None:
    sealed = sealer().seal_value("secret", "sensitive")
    erased = Sealer("run-1", None)
    with pytest.raises(DataErased):
        erased.open_value(sealed)
    with pytest.raises(DataErased):
        erased.seal_value("x", "sensitive")


def test_free_text_is_redacted_in_events() -> None:
    s = sealer()
    s.seal_data({"ssn": "078-05-1120"}, frozenset({"ssn"}))
    failed = ev.StepFailed(step_id=1, attempt=1, final=True,
                           error=ev.ErrorInfo(type="E", message="078-05-1120 and bob@example.org"))
    stored = s.seal(failed)
    assert isinstance(stored, ev.StepFailed)
    assert stored.error.message == "\u2039sensitive\u203a and \u2039email\u203a"
    plain = ev.StepFailed(step_id=1, attempt=1, final=True, error=ev.ErrorInfo(type="E", message="boom"))
    assert s.seal(plain) is plain  # nothing sensitive: the same object, no copy


# -- declarations --------------------------------------------------------------------------


class Card(BaseModel):
    holder: str
    number: Annotated[str, Sensitive]


class Wallet(BaseModel):
    cards: list[Card]


def test_hints_come_from_annotations_models_and_names() -> None:
    @tool(sensitive=["note"])
    def pay(account: Annotated[str, Sensitive], wallet: Wallet, amount: float) -> Annotated[str, Sensitive]:
        return "ok"

    assert pay.hints.names == {"account", "number", "note"}
    assert pay.hints.result is True

    @workflow(sensitive=["email"])
    def flow(ctx: Context, ssn: Annotated[str, Sensitive], email: str) -> Card:
        raise NotImplementedError

    assert flow.hints.names == {"ssn", "email", "number"}
    assert flow.hints.result is False
    assert hints_of({"x": int}, None).names == frozenset()


class Taxed(BaseModel):
    tax: Annotated[str, Sensitive] = Field(alias="taxId")
    extra: list[Annotated[str, Sensitive]] | None = None


def test_hints_see_through_optional_containers_and_aliases() -> None:
    @tool
    def file(ssn: Annotated[str, Sensitive] | None, pins: list[Annotated[str, Sensitive]], who: Taxed
             ) -> dict[str, Annotated[str, Sensitive]]:
        return {}

    assert file.hints.names == {"ssn", "pins", "tax", "taxId", "extra"}
    assert file.hints.result is True


# -- the master key ------------------------------------------------------------------------


def test_master_key_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = os.urandom(32)
    monkeypatch.setenv("BATON_MASTER_KEY", base64.b64encode(secret).decode())
    from_env = MasterKey.load(None)
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(secret).decode() + "\n")
    monkeypatch.setenv("BATON_MASTER_KEY", str(key_file))
    assert MasterKey.load(None).id == from_env.id
    monkeypatch.setenv("BATON_MASTER_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(UsageError, match="cannot read the master key"):
        MasterKey.load(None)
    key_file.write_text("not a key")
    monkeypatch.setenv("BATON_MASTER_KEY", str(key_file))
    with pytest.raises(UsageError, match="does not hold a master key"):
        MasterKey.load(None)


def test_a_default_key_file_is_made_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_MASTER_KEY", raising=False)
    path = tmp_path / "b.db.master-key"
    first = MasterKey.load(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert MasterKey.load(path).id == first.id


@tool(idempotent=True)
def look_up(email: str) -> str:
    return f"customer of {email}"


@workflow
def contact(ctx: Context, email: str) -> str:
    found = ctx.call(look_up, email=email)
    ctx.sleep(60)
    return str(found)


def test_a_run_under_another_master_key_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(contact, email="alice@example.com").run_id
    monkeypatch.setenv("BATON_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with Baton(make_settings(tmp_path)) as baton, pytest.raises(UsageError, match="wrapped by master key"):
        baton.events(run_id, reveal=True)


# -- in runs -------------------------------------------------------------------------------


def test_a_resumed_run_gets_its_sealed_values_back(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, short_sleep=0.0)
    with Baton(settings) as baton:
        record = baton.run(contact, email="alice@example.com")
        assert record.status is RunStatus.SLEEPING
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("b.db*"))
    assert b"alice@example.com" not in raw
    with Baton(settings, clock=FakeClock()) as baton:  # another process, as far as the run can tell
        finished = baton.drive(record.run_id, wait_for_timers=True)
        assert finished.status is RunStatus.COMPLETED
        assert baton.result(record.run_id) == "customer of alice@example.com"


def test_a_large_sensitive_value_repeated_every_step_is_stored_once(tmp_path: Path) -> None:
    context = "notes about alice@example.com: " + "x" * 100_000

    @tool(idempotent=True)
    def think(context: str, turn: int) -> int:
        return turn

    @workflow
    def chat(ctx: Context) -> int:
        for turn in range(50):
            ctx.call(think, context=context, turn=turn)
        return 50

    with Baton(make_settings(tmp_path)) as baton:
        assert baton.run(chat).status is RunStatus.COMPLETED
        stored = baton.store.blob_bytes()
    assert stored < 2 * 140_000, stored  # one ciphertext (base64: 4/3 of the value), not fifty


def test_signal_data_is_sealed_in_the_inbox(tmp_path: Path) -> None:
    @workflow
    def waits(ctx: Context) -> Any:
        return ctx.wait_for("answer")

    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(waits).run_id
        baton.signal(run_id, "answer", {"email": "carol@example.com"})
        (pending,) = baton.store.pending_signals(run_id)
        assert "carol@example.com" not in pending.data and "email" not in pending.data  # sealed whole
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        assert baton.result(run_id) == {"email": "carol@example.com"}


def test_forget_refuses_a_live_run_and_works_on_a_finished_one(tmp_path: Path) -> None:
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(contact, email="alice@example.com").run_id
        with pytest.raises(UsageError, match="cancel it"):
            baton.forget(run_id)
        baton.cancel(run_id)
        assert baton.drive(run_id).status is RunStatus.CANCELLED
        assert baton.forget(run_id).now
        with pytest.raises(DataErased):
            baton.events(run_id, reveal=True)
        shown = [masked(e.to_json()) for e in baton.events(run_id)]
        assert "\u2039email\u203a" in json.dumps(shown, ensure_ascii=False)


def test_settings_from_the_environment_use_a_key_file_beside_the_database(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_MASTER_KEY", raising=False)
    with Baton(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")) as baton:
        baton.run(contact, email="alice@example.com")
    assert (tmp_path / "x.db.master-key").exists()


def test_the_approval_hash_is_keyed_by_the_run(tmp_path: Path) -> None:
    """A plain hash of the arguments would let anyone test guesses of a sensitive one, even
    after the run's data is erased; the run's key makes the hash useless without it."""
    import hashlib

    from baton.approvals import args_hash
    from baton.journal import canonical_json

    args = {"order_id": "1", "ssn": "078-05-1120"}
    one, other = sealer("r1"), sealer("r2", key=b"o" * 32)  # every run has its own key
    assert args_hash("t", args, one) == args_hash("t", args, sealer("r1"))
    assert args_hash("t", args, one) != args_hash("t", args, other)
    plain = hashlib.sha256(canonical_json({"tool": "t", "args": args}).encode()).hexdigest()
    assert args_hash("t", args, one) != plain


@tool
def charge_card(ssn: Annotated[str, Sensitive], amount: float) -> str:
    return "ok"


@workflow
def charge_badly(ctx: Context, ssn: Annotated[str, Sensitive]) -> str:
    try:
        ctx.call(charge_card, ssn, "not a number")  # positional, and invalid
    except Exception:  # noqa: BLE001 - the failure is what is being tested
        return "refused"
    return "charged"


def test_invalid_positional_arguments_are_sealed_by_parameter_name(tmp_path: Path) -> None:
    with Baton(make_settings(tmp_path)) as baton:
        record = baton.run(charge_badly, ssn="Q-5550-X")
        assert baton.result(record.run_id) == "refused"
        (started,) = [e for e in baton.events(record.run_id) if isinstance(e, ev.StepStarted)]
        assert is_sealed(started.args["ssn"]) and started.args["amount"] == "'not a number'"
    assert not any(b"Q-5550-X" in p.read_bytes() for p in tmp_path.glob("b.db*"))


def test_a_changing_reason_is_not_journaled_again_on_every_resume(tmp_path: Path) -> None:
    """A step that changed under a run makes it need attention, with a reason naming the new
    step; the reason is stored redacted, and every later attempt must still see it as the
    same reason rather than append another."""
    flag = tmp_path / "changed"

    @tool(idempotent=True)
    def ping() -> str:
        return "pong"

    @workflow
    def drifting(ctx: Context) -> Any:
        if flag.exists():
            return ctx.wait_for("for dan@example.com")
        ctx.call(ping)
        return ctx.wait_for("go")

    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(drifting).run_id
        flag.write_text("x")
        for _ in range(3):
            assert baton.drive(run_id).status is RunStatus.NEEDS_ATTENTION
        attention = [e for e in baton.events(run_id) if isinstance(e, ev.NeedsAttention)]
        assert len(attention) == 1
        assert "dan@example.com" not in attention[0].reason and "\u2039email\u203a" in attention[0].reason


def test_master_key_mistakes_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for size in (16, 24, 31, 33, 48, 64) * 20:  # keys of the wrong length, some with "/" in them
        almost = base64.b64encode(os.urandom(size)).decode()
        monkeypatch.setenv("BATON_MASTER_KEY", almost)
        with pytest.raises(UsageError) as caught:
            MasterKey.load(None)
        assert almost not in caught.value.message  # never echoed
    raw = tmp_path / "raw.key"
    raw.write_bytes(os.urandom(32))  # raw bytes, not base64
    monkeypatch.setenv("BATON_MASTER_KEY", str(raw))
    with pytest.raises(UsageError, match="does not hold a master key"):
        MasterKey.load(None)


def test_a_database_copied_without_its_key_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_MASTER_KEY", raising=False)
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(contact, email="alice@example.com").run_id
    (tmp_path / "b.db.master-key").unlink()
    with Baton(make_settings(tmp_path)) as baton, pytest.raises(UsageError, match=r"key file .* is missing"):
        baton.events(run_id, reveal=True)
    assert not (tmp_path / "b.db.master-key").exists()  # no new key was made in its place


def test_processes_racing_to_create_the_key_file_agree(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "race.master-key"
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: MasterKey.load(path).id, range(16)))
    assert len(ids) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_run_from_before_data_keys_is_not_given_one_by_reading(tmp_path: Path) -> None:
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.run(contact, email="nobody").run_id  # nothing sensitive, as before data keys
        baton.cancel(run_id)
        baton.drive(run_id)
        # As a database upgraded from before data keys: the run has none.
        conn = sqlite3.connect(tmp_path / "b.db")
        conn.execute("DELETE FROM data_keys")
        conn.commit()
        conn.close()
        baton.events(run_id, reveal=True)
        assert baton.store.data_key(run_id) is None
        with pytest.raises(UsageError, match="recorded before Baton sealed"):
            baton.forget(run_id)
