"""Semantic memory with the real sentence model (the ``semantic`` extra: PyTorch, several GB).

Deselected by default; ``make test-semantic`` runs it in a venv of its own, offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from baton import Baton, Context, RunStatus, workflow
from baton.memory import cosine, sentence_embedder, use_embedder
from engine_support import make_settings

pytestmark = pytest.mark.semantic

NOTES = (
    "The customer's parcel arrived with the screen cracked",
    "The March invoice was paid two weeks late",
    "Our Oslo warehouse closes at 5 pm on Fridays",
)


@workflow
def recall_by_meaning(ctx: Context, query: str) -> list[str]:
    for note in NOTES:
        ctx.remember(note, namespace="tenant")
    return [entry.text for entry in ctx.recall(query, namespace="tenant", mode="semantic", limit=3)]


def test_the_sentence_model_recalls_by_meaning_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    embed = sentence_embedder()
    damaged, broken, late = embed(["the delivery was damaged", "my package came broken", "a bill paid late"])
    assert len(damaged) == 384
    assert cosine(tuple(damaged), tuple(broken)) > cosine(tuple(damaged), tuple(late))
    with Baton(make_settings(tmp_path)) as baton:
        use_embedder(baton, embed)
        run_id = baton.start(recall_by_meaning, query="my order came broken", tenant="acme")
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        found = baton.result(run_id)
    assert found[0] == "The customer's parcel arrived with the screen cracked"
    assert sorted(found) == sorted(NOTES)
