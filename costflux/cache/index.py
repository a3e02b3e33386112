"""Nearest stored prompts: one usearch HNSW index for every partition, rebuilt from Redis.

Entries of all partitions share one index (an index per partition would cost ~50 KB each,
and chats make many small partitions). To keep a query's own partition at the top of the
neighbour list, each vector is stored next to a random unit *partition code* derived from the
partition hash: ``[e, p] / √2``. Two entries of one partition score ``(e·e' + 1) / 2``, of
different partitions ``(e·e' + p·p') / 2`` with ``p·p'`` near 0, so same-partition neighbours
rank first. The index only proposes candidates: the hit decision uses the exact vectors and
partitions kept in Redis (``policy.best_hit``).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from costflux.cache.embedder import EMBEDDING_DIM

__all__ = ["PARTITION_CODE_DIM", "VectorIndex"]

PARTITION_CODE_DIM: Final = 64
_HALF: Final = np.float32(1.0 / np.sqrt(2.0))


class VectorIndex:
    """Entry ids by approximate similarity of their prompt within a partition."""

    def __init__(self) -> None:
        # Half precision halves memory; exact similarities come from the stored f32 vectors.
        self._index = Index(ndim=EMBEDDING_DIM + PARTITION_CODE_DIM, metric="ip", dtype="f16")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int) and bool(self._index.contains(entry_id))

    def add(self, entry_id: int, partition: str, vector: npt.NDArray[np.float32]) -> None:
        """Index an entry (replacing one with the same id)."""
        if self._index.contains(entry_id):
            self._index.remove(entry_id)
        self._index.add(entry_id, _coded(partition, vector))

    def add_many(self, entries: list[tuple[int, str, npt.NDArray[np.float32]]]) -> None:
        """Index many new entries at once (rebuilding from Redis), on all cores."""
        fresh = [e for e in entries if not self._index.contains(e[0])]
        if fresh:
            keys = np.array([entry_id for entry_id, _, _ in fresh], dtype=np.uint64)
            self._index.add(keys, np.stack([_coded(p, v) for _, p, v in fresh]))

    def remove(self, entry_id: int) -> None:
        """Forget an entry; unknown ids are ignored."""
        if self._index.contains(entry_id):
            self._index.remove(entry_id)

    def nearest(self, partition: str, vector: npt.NDArray[np.float32], count: int) -> list[int]:
        """Up to ``count`` entry ids, most similar first."""
        if not len(self._index):
            return []
        found = self._index.search(_coded(partition, vector), count)
        return [int(key) for key in found.keys]


def _coded(partition: str, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    seed = int.from_bytes(bytes.fromhex(partition)[:8], "big")
    code = np.random.default_rng(seed).standard_normal(PARTITION_CODE_DIM).astype(np.float32)
    code /= np.linalg.norm(code)
    # Typed apart: numpy 1.x stubs (which focus-validator pins) type the product as Any.
    coded: npt.NDArray[np.float32] = np.concatenate([vector, code]) * _HALF
    return coded
