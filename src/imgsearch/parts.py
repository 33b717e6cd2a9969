"""The engine's components, wired together from the settings. Each is made the first time it
is asked for, so a function that only records votes never loads the model or the index; a
component given to the constructor is used as it is (tests share one loaded model, the
evaluation shares one loaded index between its variants).

Only the facade (service.py) and tests use this container: entry points call the facade.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Unpack, cast

from imgsearch.catalog import Catalog
from imgsearch.clients import ClientIds, client_secret
from imgsearch.config import Settings
from imgsearch.decode_pool import Decoder, open_decoder
from imgsearch.embedding import Embedder, ImageEmbedder, ModelSpec
from imgsearch.feedback import Feedback
from imgsearch.images import DecodeLimits
from imgsearch.index.base import IndexWriter, SearchIndex
from imgsearch.index.builder import IndexBuilder
from imgsearch.index.expansion import Expansion
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.reader import Index
from imgsearch.index.shard_writer import ShardWriter
from imgsearch.ingest import Ingestor
from imgsearch.learning import Learner
from imgsearch.storage import Storage, open_storage

if TYPE_CHECKING:
    from imgsearch.vocabulary import Vocabulary

T = TypeVar("T")
# What a cold start may load ahead of its first request (see cloud/handlers.py).
Preloadable = Literal["index", "vocabulary", "embedder"]
PartName = Literal[
    "client_ids",
    "model",
    "embedder",
    "vocabulary",
    "index",
    "neighbourhoods",
    "learner",
    "decoder",
    "ingestor",
    "builder",
]
MADE_FROM_THE_INDEX: tuple[PartName, ...] = ("index", "neighbourhoods", "learner", "builder")


class ModelMismatch(RuntimeError):
    """The index was built with another model than the configured one."""


class Given(TypedDict, total=False):
    """Parts made elsewhere, to use as they are."""

    embedder: ImageEmbedder
    vocabulary: Vocabulary
    decoder: Decoder
    index: SearchIndex


class Parts:
    def __init__(
        self, settings: Settings, storage: Storage | None = None, **given: Unpack[Given]
    ) -> None:
        self.settings = settings
        self.storage = storage or open_storage(settings)
        # Cheap, and needed by nearly every call.
        self.catalog = Catalog(self.storage, model=settings.model)
        self.feedback = Feedback(self.storage.feedback, half_life_days=settings.vote_half_life_days)
        self._made: dict[PartName, Any] = {
            cast(PartName, name): part for name, part in given.items() if part is not None
        }
        self._given = frozenset(self._made)  # not ours to close
        # Reentrant: making the index asks for the model, in the same thread.
        self._lock = threading.RLock()

    def _part(self, name: PartName, make: Callable[[], T]) -> T:
        """The part called `name`, made once by `make` (one thread makes it; others wait).
        A part made already is returned without the lock: making one never holds up the
        requests that use others."""
        if name not in self._made:
            with self._lock:
                if name not in self._made:
                    self._made[name] = make()
        return cast(T, self._made[name])

    def loaded(self, name: PartName) -> bool:
        """Whether the part was made already (by a call, or given to the constructor)."""
        return name in self._made

    def preload(self, names: tuple[Preloadable, ...]) -> None:
        """Make these parts now (a Lambda's init phase: before a request waits for them)."""
        for name in names:
            getattr(self, name)

    def close(self, *, finish_merges: bool = False) -> None:
        """Stop what runs beside the engine: the index's background merges (finished first
        with `finish_merges`), the decode workers if this container started them (given ones
        belong to whoever gave them)."""
        if self.loaded("builder"):
            self.builder.writer.settle(finish=finish_merges)
        if self.loaded("decoder") and "decoder" not in self._given:
            self.decoder.close()

    @property
    def client_ids(self) -> ClientIds:
        def make() -> ClientIds:
            local = self.settings.data_dir if self.settings.backend == "local" else None
            return ClientIds(
                client_secret(self.settings.client_secret, local, self.storage.feedback)
            )

        return self._part("client_ids", make)

    @property
    def model(self) -> ModelSpec:
        if self.loaded("embedder"):
            return self.embedder.spec
        return self._part("model", lambda: ModelSpec.load(self.settings.model_path))

    @property
    def embedder(self) -> ImageEmbedder:
        return self._part(
            "embedder",
            lambda: Embedder(
                self.model,
                num_threads=self.settings.inference_threads,
                interpreters=self.settings.inference_interpreters,
            ),
        )

    @property
    def vocabulary(self) -> Vocabulary:
        def make() -> Vocabulary:
            from imgsearch.vocabulary import Vocabulary  # numpy tables: only where searched

            return Vocabulary.load(self.settings.vocabulary_dir)

        return self._part("vocabulary", make)

    @property
    def index(self) -> SearchIndex:
        """The index as published, verified, and checked to be of the configured model."""

        def make() -> SearchIndex:
            index = self.unloaded_index()
            index.refresh(force=True)
            built_by = index.model
            if built_by and built_by != self.model.name:
                raise ModelMismatch(
                    f"the index was built with the model {built_by!r}, but the configured "
                    f"model is {self.model.name!r}: vectors of different models cannot be "
                    "compared; use another data directory (or the model the index was built "
                    "with)"
                )
            return index

        return self._part("index", make)

    def unloaded_index(self) -> SearchIndex:
        """A reader of the published index that has read nothing yet, of the configured engine
        (`Settings.vector_engine`)."""
        if self.settings.vector_engine == "s3vectors":
            from imgsearch.index.s3vectors import S3VectorsIndex, open_vector_bucket

            return S3VectorsIndex(open_vector_bucket(self.settings), self.storage.objects)
        return Index(
            self.storage.objects,
            candidates=self.settings.ann_candidates,
            search_k=self.settings.ann_search_k,
        )

    def replace_index(self, index: SearchIndex) -> None:
        """Serve from `index` (a rebuild starts from one that has read nothing: the old
        manifest may be unreadable). Parts made from the old index are made again."""
        with self._lock:
            for name in MADE_FROM_THE_INDEX:
                self._made.pop(name, None)
            self._made["index"] = index

    @property
    def neighbourhoods(self) -> Neighbourhoods:
        return self._part(
            "neighbourhoods",
            lambda: Neighbourhoods(
                self.catalog,
                self.index,
                k=self.settings.neighbours,
                expansion=Expansion(
                    self.settings.expansion_neighbours,
                    self.settings.expansion_power,
                    self.settings.expansion_query_neighbours,
                ),
            ),
        )

    @property
    def learner(self) -> Learner:
        return self._part(
            "learner",
            lambda: Learner(
                self.feedback,
                self.index,
                self.neighbourhoods,
                method=self.settings.feedback_method,
                cache_seconds=self.settings.feedback_cache_seconds,
                expanded=self.settings.expansion and self.settings.expansion_learning,
            ),
        )

    @property
    def decoder(self) -> Decoder:
        return self._part("decoder", lambda: open_decoder(self.settings))

    @property
    def ingestor(self) -> Ingestor:
        return self._part(
            "ingestor",
            lambda: Ingestor(
                self.catalog,
                self.embedder,
                limits=DecodeLimits.from_settings(self.settings),
                decoder=self.decoder,
            ),
        )

    @property
    def builder(self) -> IndexBuilder:
        return self._part(
            "builder",
            lambda: IndexBuilder(
                self.catalog,
                self.index,
                self.neighbourhoods,
                self._index_writer(),
            ),
        )

    def _index_writer(self) -> IndexWriter:
        """The engine's writer, publishing to what `self.index` reads."""
        index = self.index
        if self.settings.vector_engine == "s3vectors":
            from imgsearch.index.s3vectors import S3VectorsIndex, S3VectorsWriter

            assert isinstance(index, S3VectorsIndex)
            return S3VectorsWriter(self.catalog, index, model_name=self.model.name)
        assert isinstance(index, Index)
        return ShardWriter(
            self.catalog,
            index,
            shard_size=self.settings.shard_size,
            n_trees=self.settings.ann_trees,
            model_name=self.model.name,
        )
