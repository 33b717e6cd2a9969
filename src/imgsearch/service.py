"""The search engine as one object: what the HTTP API, the CLI, the Lambda handlers and the
evaluation all call. Parts load lazily, so a function that only records votes never loads
the model or the index.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.catalog import Catalog, ImageRecord
from imgsearch.clients import (
    ClientIds,
    client_secret,
    is_address,
    is_client_id,
    source_address,
)
from imgsearch.config import Settings
from imgsearch.decode_pool import Decoder, open_decoder
from imgsearch.embedding import Embedder, ModelSpec
from imgsearch.feedback import LOCAL_CLIENT, Feedback, TermSummary
from imgsearch.images import DecodeLimits
from imgsearch.index.builder import BuildReport, IndexBuilder
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.reader import Index
from imgsearch.index.shards import normalise_rows
from imgsearch.ingest import Ingestor, IngestResult, content_id
from imgsearch.learning import Learner, Taught
from imgsearch.ranking import CANDIDATES, FIRST_PAGE, Hit, explore_page, learned_ranking
from imgsearch.storage import InvalidKey, Storage, StorageError, open_storage
from imgsearch.vocabulary import HIGH_CONFIDENCE

if TYPE_CHECKING:
    from imgsearch.vocabulary import Interpretation, Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextResults:
    interpretation: Interpretation
    hits: list[Hit]
    taught: Taught | None = None  # what votes taught about the term, if anything


def safe_file_name(filename: str) -> str:
    """The last part of a file name, reduced to characters safe in keys and URLs."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip(" .")
    return safe[:120] or "upload"


class NotIndexed(LookupError):
    """The image id is not in the collection."""


class ImageSearch:
    def __init__(
        self,
        settings: Settings,
        storage: Storage | None = None,
        *,
        embedder: Embedder | None = None,
        vocabulary: Vocabulary | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        """Parts not given are made from `settings` when first needed (tests share theirs;
        the bulk commands decode in their own threads)."""
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.catalog = Catalog(self.storage)
        self.feedback = Feedback(self.storage.feedback, half_life_days=settings.vote_half_life_days)
        if embedder is not None:
            self.embedder = embedder
            self.model = embedder.spec
        if vocabulary is not None:
            self.vocabulary = vocabulary
        if decoder is not None:
            self.decoder = decoder
        # True while start-up recovery runs: searches answer from the index as it was.
        self.recovering = False

    # Parts, loaded on first use --------------------------------------------------------

    @cached_property
    def client_ids(self) -> ClientIds:
        local = self.settings.data_dir if self.settings.backend == "local" else None
        return ClientIds(client_secret(self.settings.client_secret, local, self.storage.feedback))

    @cached_property
    def _trusted_proxies(self) -> list:
        return self.settings.trusted_proxy_networks

    def client_id(self, peer: str | None, forwarded_for: list[str] | None = None) -> str:
        """The id of the client a request came from (see clients.py): what votes and rate
        limits are counted against."""
        address = source_address(peer, forwarded_for or [], self._trusted_proxies)
        return self.client_ids.of(address)

    @cached_property
    def model(self) -> ModelSpec:
        return ModelSpec.load(self.settings.model_path)

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder(self.model, num_threads=self.settings.inference_threads)

    @cached_property
    def vocabulary(self) -> Vocabulary:
        from imgsearch.vocabulary import Vocabulary

        return Vocabulary.load(self.settings.vocabulary_dir)

    @cached_property
    def index(self) -> Index:
        index = self._unloaded_index()
        index.refresh(force=True)
        built_by = index.manifest.model
        if built_by and built_by != self.model.name:
            raise RuntimeError(
                f"the index was built with the model {built_by!r}, but the configured model is "
                f"{self.model.name!r}: vectors of different models cannot be compared; use "
                "another data directory (or the model the index was built with)"
            )
        return index

    def _unloaded_index(self) -> Index:
        return Index(
            self.storage.objects,
            candidates=self.settings.ann_candidates,
            search_k=self.settings.ann_search_k,
        )

    @cached_property
    def neighbourhoods(self) -> Neighbourhoods:
        return Neighbourhoods(self.catalog, self.index, k=self.settings.neighbours)

    @cached_property
    def learner(self) -> Learner:
        return Learner(
            self.feedback,
            self.index,
            self.neighbourhoods,
            method=self.settings.feedback_method,
            cache_seconds=self.settings.feedback_cache_seconds,
        )

    @cached_property
    def decoder(self) -> Decoder:
        return open_decoder(self.settings)

    @cached_property
    def ingestor(self) -> Ingestor:
        return Ingestor(
            self.catalog,
            self.embedder,
            limits=DecodeLimits.from_settings(self.settings),
            decoder=self.decoder,
        )

    def close(self) -> None:
        """Stop what runs beside the service (the decode workers)."""
        if "decoder" in vars(self):
            self.decoder.close()

    @cached_property
    def builder(self) -> IndexBuilder:
        return IndexBuilder(
            self.catalog,
            self.index,
            self.neighbourhoods,
            shard_size=self.settings.shard_size,
            n_trees=self.settings.ann_trees,
            model_name=self.model.name,
        )

    # The collection --------------------------------------------------------------------

    def count(self) -> int:
        self.index.refresh()
        return len(self.index)

    def add(self, key: str, data: bytes, *, wait: float = 60.0) -> IngestResult:
        """Ingest one image and return once the index serves it (or `wait` seconds passed)."""
        result = self.ingestor.add(key, data)
        if result.status in ("added", "duplicate", "unchanged") and result.image_id:
            try:
                self._wait_indexed(result.image_id, wait)
            except StorageError:
                # The build failed after the image got in (say, releasing the lease on a
                # full disk): the upload is done. Otherwise it stays queued, and the error
                # tells the client its image is not searchable yet.
                record = self.catalog.image(result.image_id)
                if record is None or record.status != "indexed":
                    raise
                log.warning("the index build failed after indexing %s", key, exc_info=True)
        return result

    def unique_key(self, filename: str, data: bytes) -> str:
        """A key for an upload: its file name, made unique if other bytes hold that name."""
        safe = safe_file_name(filename)
        key = f"uploads/{safe}"
        held = self.catalog.key(key)
        if held is None or held.status != "present" or held.image_id == content_id(data):
            return key
        stem, dot, suffix = safe.rpartition(".")
        stem, suffix = (stem, f".{suffix}") if dot else (safe, "")
        return f"uploads/{stem}-{content_id(data)[:8]}{suffix}"

    def remove(self, key: str) -> IngestResult:
        result = self.ingestor.remove(key)
        self.build_index()
        return result

    def reindex(self) -> BuildReport:
        """Rebuild the index from the stored embeddings (see IndexBuilder.reindex). Call it
        before anything else touched the index: the old manifest may be unreadable."""
        self.index = self._unloaded_index()
        report = self.builder.reindex()
        self.index.refresh(force=True)
        return report

    def recover(self) -> BuildReport:
        """What a start does after a crash: finish or roll back the changes to keys whose
        process died, then index what is queued (deletions acknowledged but not yet applied,
        uploads not yet searchable)."""
        recovered = self.ingestor.recover_changes()
        report = self.build_index()
        if recovered or report.batches:
            log.warning(
                "recovered %d interrupted changes; indexed %d queued additions and %d removals",
                recovered,
                report.added,
                report.removed,
            )
        return report

    def recover_in_background(self) -> threading.Thread:
        """Run `recover` in a thread, so that a start with a long queue serves meanwhile
        (`recovering` tells health checks; removed images are never shown: results are
        checked against the catalog)."""

        def run() -> None:
            try:
                self.recover()
            except Exception:  # the next write drains the queue all the same
                log.exception("recovery at start failed")
            finally:
                self.recovering = False

        self.recovering = True
        thread = threading.Thread(target=run, name="imgsearch-recovery", daemon=True)
        thread.start()
        return thread

    def build_index(self) -> BuildReport:
        report = self.builder.run()
        self.index.refresh(force=True)
        return report

    def _wait_indexed(self, image_id: str, wait: float) -> None:
        """Build until the image is in the index; while another builder holds the lease,
        wait for it (it may index this image too) and try again."""

        def indexed() -> bool:
            record = self.catalog.image(image_id)
            return record is None or record.status != "pending"

        deadline = time.monotonic() + wait
        while True:
            self.builder.run(until=indexed)
            if indexed() or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self.index.refresh(force=True)

    def image(self, image_id: str) -> ImageRecord | None:
        record = self.catalog.image(image_id)
        return record if record and record.status != "removed" else None

    def browse(self, limit: int, offset: int) -> tuple[list[ImageRecord], int]:
        """The collection, newest first."""
        self.index.refresh()
        ids = itertools.islice(self.index.image_ids(), offset, offset + limit)
        records = [self.catalog.image(i) for i in ids]
        return [r for r in records if r is not None], len(self.index)

    def find_key(self, key: str) -> ImageRecord | None:
        try:
            held = self.catalog.key(key)
        except InvalidKey:
            return None  # ingest refuses such a key: nothing can be stored under it
        if held is None or held.status != "present" or not held.image_id:
            return None
        return self.image(held.image_id)

    # Search ------------------------------------------------------------------------------

    def search_text(
        self,
        query: str,
        *,
        limit: int = 20,
        offset: int = 0,
        session: str | None = None,
        exclude_classes: Collection[int] = (),
    ) -> TextResults:
        """Images for a few words, best first, re-ranked by what users taught for them.

        `exclude_classes` drops ImageNet classes the user struck from the interpretation.
        """
        self.index.refresh()
        interpretation = self.vocabulary.interpret(query)
        term = interpretation.query
        weights = {
            int(c): float(w)
            for c, w in enumerate(interpretation.class_weights)
            if w > 0 and c not in exclude_classes
        }
        wanted = offset + limit
        taught = self.learner.taught(term, session) if term else None
        hidden = taught.hidden if taught else set()
        if taught is not None and taught.examples.evidence > 0:
            keyword = self.index.ranked_by_classes(weights, max(wanted, CANDIDATES))
            hits = learned_ranking(self.learner, taught, keyword, wanted)
        elif interpretation.confidence >= HIGH_CONFIDENCE:
            ranked = self.index.ranked_by_classes(weights, wanted, exclude=hidden)
            hits = [Hit(i, s) for i, s in ranked]
        else:
            # Nothing relevant found yet: keep exploring, away from what was rejected.
            hits = explore_page(
                # The whole first page's guesses, whatever `limit`: pages must not overlap.
                self.index.ranked_by_classes(weights, max(wanted, FIRST_PAGE), exclude=hidden),
                self.index.spread(FIRST_PAGE, exclude=hidden),
                interpretation.confidence,
                high_confidence=HIGH_CONFIDENCE,
                rejected=len(hidden),
            )
        return TextResults(interpretation, hits[offset:wanted], taught)

    def similar(self, image_id: str, *, limit: int = 20, offset: int = 0) -> list[Hit]:
        """Images most like an indexed one: its stored neighbourhood, or a live search beyond."""
        self.index.refresh()
        if image_id not in self.index:
            raise NotIndexed(image_id)
        wanted = offset + limit
        neighbours = self.neighbourhoods.get(image_id)
        if len(neighbours) < min(wanted, len(self.index) - 1):
            vector = self.index.vector(image_id)
            if vector is None:  # removed since the check above
                raise NotIndexed(image_id)
            neighbours = self.index.nearest(vector, wanted, exclude={image_id})
        return [Hit(i, 1.0 - d, "similar") for i, d in neighbours[offset:wanted]]

    def search_image(
        self,
        data: bytes,
        *,
        limit: int = 20,
        offset: int = 0,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        """Images most like a photo anyone may send (it is not stored), decoded within the
        open endpoint's limits. Raises ImageRefused, or DecoderBusy."""
        self.index.refresh()
        limits = DecodeLimits.from_settings(self.settings, open_endpoint=True)
        decoded = self.ingestor.decode(data, limits)
        features = self.embedder.embed(decoded.image).features
        vector = normalise_rows(features[np.newaxis])[0]
        nearest = self.index.nearest(vector, offset + limit, exclude=exclude)
        return [Hit(i, 1.0 - d, "similar") for i, d in nearest[offset:]]

    # Feedback ----------------------------------------------------------------------------

    def vote(
        self, query: str, image_id: str, value: int, session: str, client: str = LOCAL_CLIENT
    ) -> str:
        """Record a vote of `session`, cast from `client` (a client id); returns the
        normalised term it was recorded under."""
        if self.image(image_id) is None:
            raise NotIndexed(image_id)
        term = self.vocabulary.normalise(query)
        if not term:
            raise ValueError("the query has no words")
        self.feedback.vote(term, image_id, session, value, client)
        # Only a learner this process has built can hold the term's old votes; building one
        # here would load the index into a process that only records votes (the feedback
        # function, which has no Annoy).
        if "learner" in vars(self):
            self.learner.forget(term)
        return term

    # The owner's controls over what votes taught -------------------------------------------

    def term(self, query: str) -> str:
        """The query as votes store it; ValueError if it has no words."""
        term = self.vocabulary.normalise(query)
        if not term:
            raise ValueError("the query has no words")
        return term

    def learned(self, query: str) -> TermSummary:
        """What votes taught about a query's term, as stored (see feedback.py)."""
        return self.feedback.summary(self.term(query))

    def reset_term(self, query: str) -> tuple[str, int]:
        """Forget what votes taught about a term; returns it and how many votes it had."""
        term = self.term(query)
        removed = self.feedback.reset(term)
        if "learner" in vars(self):
            self.learner.forget(term)
        return term, removed

    def named_client(self, name: str) -> str:
        """A client id from what the owner names it by: its id, or an address (hashed as a
        request from it would be). ValueError for anything else."""
        if is_client_id(name) or name == LOCAL_CLIENT:
            return name
        if not is_address(name):
            raise ValueError(f"{name[:60]!r} is neither a client id nor an IP address")
        return self.client_ids.of(name)

    def drop_client(self, name: str) -> tuple[str, int]:
        """Remove every vote of a client (by id or address); returns its id and the count."""
        client = self.named_client(name)
        removed = self.feedback.drop_client(client)
        if "learner" in vars(self):
            self.learner.forget_all()
        return client, removed
