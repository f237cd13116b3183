"""Property tests for the journal's encoding: canonical JSON, the stored envelope, and
the round trip of every event type through ``encode_batch`` and ``decode``."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.journal import (
    GENESIS_HASH,
    Event,
    canonical_json,
    decode,
    encode_batch,
    format_time,
    verify_chain,
)
from baton.journal import events as ev
from baton.journal.encoding import envelope_json

FAST = settings(max_examples=100, deadline=None)
PER_TYPE = settings(max_examples=25, deadline=None)

finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=4)
optional_text = st.none() | st.text()
step_ids = st.integers(min_value=0, max_value=2**53)
errors = st.builds(
    ev.ErrorInfo, type=st.text(), message=st.text(), retryable=st.booleans(), code=optional_text
)

effects = st.sampled_from(["allow", "deny", "approval"])

EVENTS: dict[str, st.SearchStrategy[Event]] = {
    "RunStarted": st.builds(
        ev.RunStarted, workflow=st.text(), workflow_ref=st.text(), input=json_objects,
        principal=optional_text, tenant=optional_text, limits=st.none() | json_objects,
    ),
    "RunRecovered": st.builds(
        ev.RunRecovered, worker=st.text(), previous_owner=optional_text, reason=st.text()
    ),
    "RunCompleted": st.builds(ev.RunCompleted, result=json_values),
    "RunFailed": st.builds(ev.RunFailed, error=errors),
    "RunCancelled": st.builds(ev.RunCancelled, reason=st.text()),
    "NeedsAttention": st.builds(ev.NeedsAttention, step_id=step_ids, reason=st.text()),
    "StepStarted": st.builds(
        ev.StepStarted, step_id=step_ids, kind=st.sampled_from(["call", "sleep", "wait", "now", "uuid"]),
        name=st.text(), args=json_objects, attempt=st.integers(min_value=1, max_value=1000),
        idempotency_key=st.text(), idempotent=st.booleans(), role=optional_text,
    ),
    "StepCompleted": st.builds(ev.StepCompleted, step_id=step_ids, result=json_values),
    "StepRan": st.builds(
        ev.StepRan, step_id=step_ids, kind=st.sampled_from(["call", "sleep", "wait", "now", "uuid"]),
        name=st.text(), args=json_objects, attempt=st.integers(min_value=1, max_value=1000),
        idempotency_key=st.text(), role=optional_text, result=json_values,
    ),
    "StepFailed": st.builds(
        ev.StepFailed, step_id=step_ids, attempt=st.integers(min_value=1, max_value=1000),
        error=errors, final=st.booleans(), retry_in=st.none() | finite,
    ),
    "StepReconciled": st.builds(
        ev.StepReconciled, step_id=step_ids, applied=st.booleans(), result=json_values
    ),
    "StepResolved": st.builds(
        ev.StepResolved, step_id=step_ids, applied=st.booleans(), result=json_values, by=st.text(),
        note=st.text(),
    ),
    "ValueRecorded": st.builds(
        ev.ValueRecorded, step_id=step_ids, kind=st.sampled_from(["now", "uuid"]), value=json_values
    ),
    "TimerSet": st.builds(ev.TimerSet, step_id=step_ids, fire_at=finite),
    "TimerFired": st.builds(ev.TimerFired, step_id=step_ids),
    "SignalAwaited": st.builds(
        ev.SignalAwaited, step_id=step_ids, name=st.text(), timeout_at=st.none() | finite
    ),
    "SignalReceived": st.builds(
        ev.SignalReceived, step_id=step_ids, name=st.text(), data=json_values,
        signal_id=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
    ),
    "Compensated": st.builds(
        ev.Compensated, step_id=step_ids, name=st.text(), ok=st.booleans(), error=st.none() | errors
    ),
    "PolicyDecided": st.builds(
        ev.PolicyDecided, step_id=step_ids, tool=st.text(), args=json_objects, principal=optional_text,
        role=optional_text, action=st.text(), resource=st.text(), effect=effects,
        policies=st.lists(st.text(), max_size=3), errors=st.lists(st.text(), max_size=2),
        shadow_effect=st.none() | effects, shadow_policies=st.lists(st.text(), max_size=3),
    ),
    "ApprovalRequested": st.builds(
        ev.ApprovalRequested, step_id=step_ids, approval_id=st.text(), title=st.text(), tool=optional_text,
        args=json_objects, args_hash=st.text(), policies=st.lists(st.text(), max_size=3), evidence=json_values,
        requester=optional_text, tenant=optional_text, approvers=st.lists(st.text(), max_size=3),
        expires_at=finite, expires_after=finite, escalate_to=st.lists(st.text(), max_size=2),
    ),
    "ApprovalGranted": st.builds(
        ev.ApprovalGranted, step_id=step_ids, approval_id=st.text(), by=st.text(), reason=st.text()
    ),
    "ApprovalDenied": st.builds(
        ev.ApprovalDenied, step_id=step_ids, approval_id=st.text(), by=optional_text, reason=st.text()
    ),
    "ApprovalEscalated": st.builds(
        ev.ApprovalEscalated, step_id=step_ids, approval_id=st.text(), approvers=st.lists(st.text(), max_size=3),
        expires_at=finite,
    ),
    "ApprovalWithdrawn": st.builds(
        ev.ApprovalWithdrawn, step_id=step_ids, approval_id=st.text(), reason=st.text()
    ),
    "ApprovalConsumed": st.builds(ev.ApprovalConsumed, step_id=step_ids, approval_id=st.text()),
}
any_event = st.one_of(*EVENTS.values())
run_ids = st.text(min_size=1, max_size=30)
times = st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False)
hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).filter(lambda h: h != GENESIS_HASH)


def test_there_is_a_strategy_for_every_event_type() -> None:
    assert set(EVENTS) == set(Event.registry)


def _check_round_trip(run_id: str, head_seq: int, head_hash: str, events: list[Event], at: float) -> None:
    rows = encode_batch(run_id, head_seq, head_hash, events, at=at)
    assert [r.seq for r in rows] == list(range(head_seq + 1, head_seq + 1 + len(events)))
    for row, event in zip(rows, events, strict=True):
        assert (row.run_id, row.type, row.at) == (run_id, type(event).__name__, format_time(at))
        back = decode(row)
        assert type(back) is type(event)
        assert back == event
        assert json.loads(row.data) == event.model_dump(mode="json")
        assert canonical_json(json.loads(row.data)) == row.data
        assert len(row.hash) == 64 and set(row.hash) <= set("0123456789abcdef")
    assert verify_chain(rows, prev_hash=head_hash) is None


@pytest.mark.parametrize("type_name", sorted(EVENTS))
@PER_TYPE
@given(data=st.data())
def test_every_event_type_round_trips(type_name: str, data: st.DataObject) -> None:
    event = data.draw(EVENTS[type_name])
    _check_round_trip(data.draw(run_ids), 0, GENESIS_HASH, [event], data.draw(times))


@FAST
@given(
    run_id=run_ids,
    head_seq=st.integers(min_value=0, max_value=10**6),
    head_hash=hashes,
    events=st.lists(any_event, min_size=1, max_size=6),
    at=times,
)
def test_a_batch_of_events_round_trips(
    run_id: str, head_seq: int, head_hash: str, events: list[Event], at: float
) -> None:
    if head_seq == 0:
        head_hash = GENESIS_HASH
    _check_round_trip(run_id, head_seq, head_hash, events, at)


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """The same JSON value with every object's keys inserted in another order."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: _shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@FAST
@given(value=json_values, rnd=st.randoms(use_true_random=False))
def test_canonical_json_is_deterministic_and_ignores_insertion_order(value: Any, rnd: random.Random) -> None:
    text = canonical_json(value)
    assert canonical_json(value) == text
    assert canonical_json(_shuffled(value, rnd)) == text
    assert json.loads(text) == value
    assert canonical_json(json.loads(text)) == text
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_canonical_json_sorts_keys_at_every_level() -> None:
    value = {"b": {"z": 1, "a": [{"y": None, "x": True}]}, "a": "é"}
    assert canonical_json(value) == '{"a":"é","b":{"a":[{"x":true,"y":null}],"z":1}}'


@FAST
@given(run_id=st.text(), seq=st.integers(min_value=0), type_=st.text(), at=st.text(), data=json_values)
def test_envelope_json_is_the_canonical_json_of_the_envelope(
    run_id: str, seq: int, type_: str, at: str, data: Any
) -> None:
    data_json = canonical_json(data)
    expected = canonical_json(
        {"at": at, "data": json.loads(data_json), "run_id": run_id, "seq": seq, "type": type_}
    )
    assert envelope_json(run_id, seq, type_, at, data_json) == expected


NOT_FINITE = [math.nan, math.inf, -math.inf]


@FAST
@given(value=json_values, bad=st.sampled_from(NOT_FINITE), key=st.text())
def test_nan_and_infinity_are_rejected_anywhere(value: Any, bad: float, key: str) -> None:
    for container in ([value, bad], {key: bad, "ok": value}, {"deep": [value, {key: [bad]}]}):
        with pytest.raises(ValueError):
            canonical_json(container)


@pytest.mark.parametrize("bad", NOT_FINITE, ids=["nan", "inf", "-inf"])
def test_events_holding_nan_or_infinity_cannot_be_encoded(bad: float) -> None:
    for event in (
        ev.StepCompleted(step_id=1, result={"x": [1, bad]}),
        ev.TimerSet(step_id=1, fire_at=bad),
        ev.RunStarted(workflow="w", workflow_ref="m:w", input={"amount": bad}),
    ):
        with pytest.raises(ValueError):
            encode_batch("r1", 0, GENESIS_HASH, [event], at=0.0)
    with pytest.raises(ValueError):
        canonical_json(bad)
