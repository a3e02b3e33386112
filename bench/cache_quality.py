"""Semantic cache quality on real paraphrase pairs: hit rate and false-hit rate by threshold.

    python bench/cache_quality.py [--pairs tests/fixtures/paraphrases/msr_paraphrase_test_head.tsv]
                                  [--thresholds 0.90,0.95,0.98]

Every pair's first sentence is stored in one cache partition (as earlier prompts of one
model, parameters and tenant); then every second sentence is asked. It is served from the
cache when the proxy's own decision (the usearch index's candidates, exact similarity,
``policy.best_hit``) finds an entry at or above the threshold. A paraphrase pair counts as a
hit when it is served by its own first sentence; any other entry serving a query is a false
hit (a wrong answer). False-hit rate: non-paraphrase pairs served by any entry, plus
paraphrase pairs served by another pair's entry, over all pairs of that kind.
Pairs: the MRPC test split's head (tests/fixtures/paraphrases/SOURCE.txt).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costflux.cache.embedder import Embedder  # noqa: E402
from costflux.cache.index import VectorIndex  # noqa: E402
from costflux.cache.policy import Candidate, best_hit  # noqa: E402

PAIRS = ROOT / "tests" / "fixtures" / "paraphrases" / "msr_paraphrase_test_head.tsv"
PARTITION = "0" * 64
CANDIDATES = 8


@dataclass(frozen=True)
class Pair:
    paraphrase: bool
    stored: str
    asked: str


@dataclass(frozen=True)
class Quality:
    threshold: float
    paraphrases: int
    hits: int  # paraphrase served by its own pair's entry
    wrong_entry_hits: int  # paraphrase served by another pair's entry
    others: int
    false_hits: int  # non-paraphrase served by any entry

    @property
    def hit_rate(self) -> float:
        return self.hits / self.paraphrases if self.paraphrases else 0.0

    @property
    def false_hit_rate(self) -> float:
        wrong = self.false_hits + self.wrong_entry_hits
        return wrong / (self.others + self.paraphrases) if self.others + self.paraphrases else 0.0

    @property
    def non_paraphrase_false_hit_rate(self) -> float:
        return self.false_hits / self.others if self.others else 0.0


def read_pairs(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [Pair(row[0] == "1", row[3], row[4]) for row in rows[1:]]


Vectors = list[np.ndarray]  # type: ignore[type-arg]


def embed_pairs(pairs: list[Pair], embedder: Embedder) -> tuple[Vectors, Vectors]:
    """(stored, asked) embeddings, one sentence at a time as the proxy embeds prompts."""
    stored = [embedder.embed([p.stored])[0].vector for p in pairs]
    asked = [embedder.embed([p.asked])[0].vector for p in pairs]
    return stored, asked


def served_by(stored: Vectors, asked: Vectors, threshold: float) -> list[int | None]:
    """For each question, the index of the stored sentence that answers it, if any."""
    index = VectorIndex()
    for entry_id, vector in enumerate(stored):
        index.add(entry_id, PARTITION, vector)
    answers: list[int | None] = []
    for vector in asked:
        candidates = [Candidate(i, PARTITION, float(stored[i] @ vector), None)
                      for i in index.nearest(PARTITION, vector, CANDIDATES)]
        hit = best_hit(candidates, PARTITION, threshold, None)
        answers.append(hit.entry_id if hit else None)
    return answers


def evaluate(pairs: list[Pair], thresholds: list[float], embedder: Embedder) -> list[Quality]:
    stored, asked = embed_pairs(pairs, embedder)
    results = []
    for threshold in thresholds:
        answers = served_by(stored, asked, threshold)
        paraphrase = [i for i, p in enumerate(pairs) if p.paraphrase]
        other = [i for i, p in enumerate(pairs) if not p.paraphrase]
        results.append(Quality(
            threshold=threshold, paraphrases=len(paraphrase),
            hits=sum(answers[i] == i for i in paraphrase),
            wrong_entry_hits=sum(answers[i] is not None and answers[i] != i for i in paraphrase),
            others=len(other), false_hits=sum(answers[i] is not None for i in other),
        ))
    return results


def similarity_quantiles(pairs: list[Pair], embedder: Embedder) -> dict[str, list[float]]:
    stored, asked = embed_pairs(pairs, embedder)
    sims = (np.stack(stored) * np.stack(asked)).sum(axis=1)
    kinds = {"paraphrase": [p.paraphrase for p in pairs],
             "not": [not p.paraphrase for p in pairs]}
    return {kind: [round(float(np.quantile(sims[np.array(mask)], q)), 3)
                   for q in (0.1, 0.5, 0.9)] for kind, mask in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--thresholds", default="0.90,0.95,0.98")
    args = parser.parse_args()
    pairs = read_pairs(args.pairs)
    embedder = Embedder()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"{len(pairs)} pairs ({sum(p.paraphrase for p in pairs)} paraphrases) from "
          f"{args.pairs.relative_to(ROOT) if args.pairs.is_relative_to(ROOT) else args.pairs}")
    print("similarity p10/p50/p90:", similarity_quantiles(pairs, embedder))
    stored, asked = embed_pairs(pairs, embedder)
    for i, pair in enumerate(pairs):
        similarity = float(stored[i] @ asked[i])
        if not pair.paraphrase and similarity >= min(thresholds):
            print(f"  not a paraphrase, similarity {similarity:.3f}: {pair.stored!r} / "
                  f"{pair.asked!r}")
    print()
    print("| threshold | hit rate (paraphrases served by their own entry) | "
          "false-hit rate (non-paraphrases served) | wrong entry for a paraphrase |")
    print("|---|---|---|---|")
    for q in evaluate(pairs, thresholds, embedder):
        print(f"| {q.threshold:.2f} | {q.hit_rate:.1%} ({q.hits}/{q.paraphrases}) | "
              f"{q.non_paraphrase_false_hit_rate:.1%} ({q.false_hits}/{q.others}) | "
              f"{q.wrong_entry_hits}/{q.paraphrases} |")


if __name__ == "__main__":
    main()
