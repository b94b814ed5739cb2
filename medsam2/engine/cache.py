"""Per-session cache of slice embeddings: computed in batches, only when asked, bounded in size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class EmbeddingCache:
    """Least-recently-used map slice index -> embedding, filled by batched calls to `encode`."""

    def __init__(self, slices: np.ndarray, encode: Callable[[np.ndarray], list[Any]], max_entries: int):
        if max_entries < 1:
            raise ValueError("the embedding cache needs room for at least one slice")
        self._slices = slices
        self._encode = encode
        self._max_entries = max_entries
        self._entries: OrderedDict[int, Any] = OrderedDict()
        self.encoded_count = 0  # slices encoded so far, re-encodes after eviction included

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, index: int, prefetch: Sequence[int] = ()) -> Any:
        """The embedding of slice `index`; when it must be computed, the uncached slices of
        `prefetch` (those propagation will reach next) are encoded in the same batch."""
        if index not in self._entries:
            batch = [index] + [i for i in prefetch if i != index and i not in self._entries]
            batch = batch[: self._max_entries]
            for i, embedding in zip(batch, self._encode(self._slices[batch])):
                self._store(i, embedding)
            self.encoded_count += len(batch)
        self._entries.move_to_end(index)
        return self._entries[index]

    def _store(self, index: int, embedding: Any) -> None:
        self._entries[index] = embedding
        self._entries.move_to_end(index)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
