"""The local engine: decode in this machine's worker processes, embed here, commit as it goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.embed import Batches
from pipeline.ingest.progress import Progress
from pipeline.ingest.scan import ScannedFile
from pipeline.ingest.sync import Sync, finish_writes
from pipeline.ingest.video import decode_media

if TYPE_CHECKING:
    from storage import Collection


class LocalEngine:
    """Decoded files (images, and videos' moments) are embedded a batch at a time and committed
    every commit_rows rows (or COMMIT_SECONDS), so an interrupted run keeps what it finished."""

    def embed(self, files: list[ScannedFile], sync: Sync) -> None:
        """Decode in sync's pool, embed in batches, commit through sync; stop early when asked."""
        by_path = {f.path: f for f in files}
        batches = Batches(sync.encoder)
        options = sync.options
        results = sync.pool.map(decode_media, list(by_path), sync.encoder.transform, options.max_pixels, options.video)
        for done, result in enumerate(results, 1):
            f = by_path[result.path]
            if isinstance(result, DecodeFailed):
                sync.settle(f, result.reason, "")
            elif sync.settle(f, None, result.hash):
                sync.waiting += batches.add(result, sync.target(f))
            last = done == len(by_path)
            if last:
                sync.waiting += batches.flush()
            if sync.due() or (sync.waiting_rows() and (last or sync.stop.is_set())):
                sync.commit()
                if sync.stop.is_set():
                    break
            sync.progress(Progress("embed", done, len(by_path)))

    def finish(self, collection: Collection, index_threshold: int, changed: bool) -> str:
        """The index and compaction, built here."""
        return finish_writes(collection, index_threshold, changed)
