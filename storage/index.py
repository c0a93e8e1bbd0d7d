"""The ANN index over image vectors: its shape, its query settings, and who builds it.

IVF partitions of ~4k rows, each an HNSW graph over 8-bit quantised vectors; a query walks the
graphs of the NPROBES partitions nearest to it. benchmarks/query.py measures recall and latency.
Storage builds it in process; a caller may pass an IndexBuilder that builds the same index
elsewhere (the Ray engine builds it in Ray tasks), so storage never needs to know how.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

INDEX_NAME = "vector_idx"
INDEX_TYPE = "IVF_HNSW_SQ"
ROWS_PER_PARTITION = 4096
TRAINING_ROWS_PER_PARTITION = 256
NPROBES = 64
HNSW_EF = 300  # candidates kept while walking a graph: recall against latency
REFINE_FACTOR = 4  # re-rank k * this candidates with the full-precision vectors


@dataclass(frozen=True)
class IndexSpec:
    """The index to build over a table's vector column."""

    column: str
    name: str
    kind: str  # a Lance index type: IVF_HNSW_SQ
    metric: Literal["l2", "cosine", "dot"]
    num_partitions: int
    sample_rate: int  # training rows per partition, at most all

    @classmethod
    def for_rows(cls, rows: int) -> IndexSpec:
        """The image-vector index for a table of this many rows."""
        partitions = max(1, rows // ROWS_PER_PARTITION)
        return cls(
            column="vector",
            name=INDEX_NAME,
            kind=INDEX_TYPE,
            metric="cosine",
            num_partitions=partitions,
            sample_rate=min(TRAINING_ROWS_PER_PARTITION, rows // partitions),
        )


# (the table's Lance dataset URI, what to build): builds the index somewhere else (Ray tasks)
IndexBuilder = Callable[[str, IndexSpec], None]
# (the table's Lance dataset URI): compacts its fragments somewhere else
Compactor = Callable[[str], None]
