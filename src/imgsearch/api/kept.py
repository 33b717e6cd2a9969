"""What a server process keeps of its answers between requests: the JSON of whole "more like
this" pages, and of each image's part of a result object, kept while the engine's
`answers_version` stays the same.

That version changes with every write to the catalog, by any process (a record, a key, a
removal, a neighbour list; not a vote: votes are in a file of their own, and nothing kept
depends on them: "more like this" pages and an image's part of a result come from the index,
the neighbour lists and the records; keyword pages, which votes re-rank, are never kept
whole), with every index generation this process serves and
whenever the neighbour lists it keeps are dropped. It is read before anything kept under it
is read, so what was read before a write is never kept under that write's version: a removed
image leaves every kept answer at the first request after its removal, in every process, as
it leaves the answers made afresh. Where the catalog cannot tell cheaply (DynamoDB: the
cloud's Lambda functions), the version is None and nothing is kept.

Bounded, least recently used out first (config.py: `http_kept_page_bytes`,
`http_kept_results`).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from imgsearch.remembered import Remembered

# An image's part of a result object: its JSON before the score and from its width to the
# tier (presenters.result_objects); () for an image without a record.
Parts = tuple[str, str] | tuple[()]


# What a kept page costs besides its JSON: its key (a tuple of the route, the URL base, the
# image id, limit and offset) and its entry in the memory (about 330 bytes measured), so that
# empty pages past the end of the collection (`{"results":[]}`) count for what they hold.
PAGE_OVERHEAD = 512


def _page_weight(body: bytes) -> int:
    return len(body) + PAGE_OVERHEAD


class Kept:
    """What was kept under one answers version."""

    def __init__(self, version: Hashable, page_bytes: int, results: int) -> None:
        self.version = version
        self.pages: Remembered[Hashable, bytes] = Remembered(page_bytes, _page_weight)
        self.results: Remembered[Hashable, Parts] = Remembered(results)


class KeptAnswers:
    """Pages and result parts kept under the engine's answers version (module docstring).

    `page_bytes`: whole answers, by their bytes (a page of 20 results is about 7 KB of
    JSON); `results`: an image's part of a result object, by URL base and image id (about
    0.6 KB), or () for an image that has no record (removed)."""

    def __init__(self, page_bytes: int, results: int) -> None:
        self.sizes = (page_bytes, results)
        self._kept = Kept(None, 0, 0)
        self._lock = threading.Lock()

    def under(self, version: Hashable | None) -> Kept | None:
        """What is kept under `version` (dropping what was kept under another); None if
        nothing may be kept (`version` None)."""
        if version is None:
            return None
        kept = self._kept
        if kept.version == version:
            return kept
        with self._lock:
            if self._kept.version != version:
                self._kept = Kept(version, *self.sizes)
            return self._kept
