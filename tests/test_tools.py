"""What ``@tool`` derives from a function: the schema a model is shown, argument binding,
and the retry policy."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field

from baton import RetryPolicy, ToolValidationError, tool


@tool(idempotent=True, retries=3, timeout=5.0)
def issue_refund(
    order_id: str,
    amount: Annotated[float, Field(gt=0, description="In the order's currency")],
    reason: Literal["damaged", "late", "other"] = "other",
    *,
    idempotency_key: str,
) -> dict[str, str]:
    """Move money back to the customer."""
    return {"order_id": order_id, "key": idempotency_key}


def test_the_schema_is_what_a_model_needs_and_nothing_else() -> None:
    schema = issue_refund.json_schema()
    assert schema["title"] == "issue_refund"
    assert schema["description"] == "Move money back to the customer."
    assert set(schema["properties"]) == {"order_id", "amount", "reason"}  # no idempotency_key
    assert schema["required"] == ["order_id", "amount"]
    assert schema["properties"]["amount"]["exclusiveMinimum"] == 0
    assert schema["properties"]["amount"]["description"] == "In the order's currency"
    assert schema["properties"]["reason"]["enum"] == ["damaged", "late", "other"]
    assert schema["additionalProperties"] is False


def test_validation_names_every_bad_field() -> None:
    with pytest.raises(ToolValidationError) as err:
        issue_refund.validate({"order_id": 98765, "amount": -5, "reason": "bored", "extra": 1})
    message = str(err.value)
    for field in ("order_id", "amount", "reason", "extra"):
        assert field in message


def test_positional_arguments_bind_by_name() -> None:
    assert issue_refund.bind(("98765", 120.0), {}) == {"order_id": "98765", "amount": 120.0}
    with pytest.raises(ToolValidationError, match="multiple values for argument 'order_id'"):
        issue_refund.bind(("98765",), {"order_id": "1"})
    with pytest.raises(ToolValidationError, match="takes 3 positional arguments but 4 were given"):
        issue_refund.bind(("a", 1.0, "late", "x"), {})


def test_a_tool_is_still_a_plain_function_outside_a_run() -> None:
    assert issue_refund("98765", 1.0, idempotency_key="k") == {"order_id": "98765", "key": "k"}
    assert issue_refund.idempotent and issue_refund.timeout == 5.0 and issue_refund.wants_key


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(retries=5, backoff=1.0, max_backoff=5.0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(base * 0.5 <= d < base for d in delays)
        assert max(delays) - min(delays) > base * 0.2  # jittered, not constant


def test_retryable_errors_follow_the_policy_and_the_exception() -> None:
    class Permanent(Exception):
        retryable = False

    policy = RetryPolicy(retries=2, retry_on=(ConnectionError, ValueError), give_up_on=(UnicodeError,))
    assert policy.is_retryable(ConnectionError())
    assert not policy.is_retryable(KeyError())  # not in retry_on
    assert not policy.is_retryable(UnicodeDecodeError("utf-8", b"", 0, 1, "x"))  # a ValueError, given up on
    assert not RetryPolicy().is_retryable(Permanent())
