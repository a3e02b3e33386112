"""bench/cache_quality.py's evaluation against a brute-force recomputation on real pairs."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

from costflux.cache.embedder import Embedder
from tests.paths import REPO


def _load_bench_script() -> object:
    spec = importlib.util.spec_from_file_location("cache_quality",
                                                  REPO / "bench" / "cache_quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


quality: Any = _load_bench_script()


def test_hits_and_false_hits_match_a_brute_force_search() -> None:
    pairs = quality.read_pairs(quality.PAIRS)
    assert len(pairs) >= 100 and any(p.paraphrase for p in pairs)
    assert any(not p.paraphrase for p in pairs)
    sample = pairs[:16]
    embedder = Embedder()
    thresholds = [0.80, 0.90, 0.95]
    results = quality.evaluate(sample, thresholds, embedder)

    # Batch-embedded here (the bench embeds one sentence at a time, as the proxy does).
    stored = np.stack([e.vector for e in embedder.embed([p.stored for p in sample])])
    asked = np.stack([e.vector for e in embedder.embed([p.asked for p in sample])])
    similarities = asked @ stored.T  # every question against every stored sentence
    best = similarities.argmax(axis=1)
    paraphrases = [i for i, p in enumerate(sample) if p.paraphrase]
    others = [i for i, p in enumerate(sample) if not p.paraphrase]
    for threshold, result in zip(thresholds, results, strict=True):
        served = [int(b) if similarities[i, b] >= threshold else None
                  for i, b in enumerate(best)]
        assert result.paraphrases == len(paraphrases) and result.others == len(others)
        assert result.hits == sum(served[i] == i for i in paraphrases)
        assert result.wrong_entry_hits == sum(served[i] not in (None, i) for i in paraphrases)
        assert result.false_hits == sum(served[i] is not None for i in others)
    assert results[0].hits >= results[-1].hits  # a higher threshold never serves more
