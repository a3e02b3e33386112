"""The numpy MiniLM against sentence-transformers' documented example, and the index."""

from __future__ import annotations

import numpy as np
import pytest

from costflux.cache.embedder import EMBEDDING_DIM, MAX_SEQ_LENGTH, Embedder
from costflux.cache.index import VectorIndex
from costflux.cache.policy import CachePolicy, Lookup, classify


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_similarities_match_the_sentence_transformers_readme(embedder: Embedder) -> None:
    # UKPLab/sentence-transformers README.md, "Getting Started": model.similarity() of these
    # three sentences with all-MiniLM-L6-v2 prints [[1, 0.6660, 0.1046], [., 1, 0.1411], ...].
    sentences = ["The weather is lovely today.", "It's so sunny outside!",
                 "He drove to the stadium."]
    vectors = np.stack([e.vector for e in embedder.embed(sentences)])
    assert vectors.shape == (3, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarities = vectors @ vectors.T
    assert round(float(similarities[0, 1]), 4) == 0.6660
    assert round(float(similarities[0, 2]), 4) == 0.1046
    assert round(float(similarities[1, 2]), 4) == 0.1411


def test_batches_pad_without_changing_a_sentence_and_long_texts_say_so(
    embedder: Embedder,
) -> None:
    alone = embedder.embed(["Short."])[0]
    padded = embedder.embed(["Short.", "A much longer sentence that forces padding " * 3])[0]
    np.testing.assert_allclose(alone.vector, padded.vector, atol=1e-5)
    assert not alone.truncated
    assert embedder.embed(["word " * (MAX_SEQ_LENGTH + 10)])[0].truncated


def test_the_index_ranks_the_query_partition_first(embedder: Embedder) -> None:
    texts = ["How do I reverse a list in Python?", "What is the capital of France?"]
    vectors = [e.vector for e in embedder.embed(texts)]
    index = VectorIndex()
    decision = classify("completions", {"model": "m", "prompt": "x"}, {}, CachePolicy())
    assert isinstance(decision, Lookup)
    mine = decision.partition
    others = [f"{i:064x}" for i in range(1, 40)]
    for i, partition in enumerate(others):  # the same prompt in many other partitions
        index.add(100 + i, partition, vectors[0])
    index.add(1, mine, vectors[0])
    index.add(2, mine, vectors[1])
    assert index.nearest(mine, vectors[0], 2)[0] == 1
    index.remove(1)
    assert 1 not in index.nearest(mine, vectors[0], 4) and len(index) == 40

