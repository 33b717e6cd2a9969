"""Amazon S3 Vectors as the index engine (the port: base.py), for collections a function can
no longer load as Annoy shards (docs/deploy.md, "Vector engines").

Two vector indexes in one vector bucket, both cosine:
- `<index>`: each image's unit feature vector, key = image id, metadata `part` (a hash of
  the id into PARTS partitions, filterable) and `added` (the generation that added it).
  Similar images, reverse search and the learned rankings query it.
- `<index>-classes`: for keyword search. The Annoy shards rank by s(w, p) = sum over classes
  of weight x probability, over each image's posted classes (shards.posted_probabilities):
  an inner product, which S3 Vectors (cosine or euclidean only) does not offer. Each image is
  stored as p' = (p, sqrt(1 - |p|^2)), a unit vector (probabilities sum to at most 1, so
  |p| <= 1), and queried with w' = (w, 0): cos(w', p') = w.p / |w|, so the nearest by
  cosine are exactly the highest w.p, and s = |w| (1 - distance) is the Annoy path's score.
  (The usual reduction of maximum inner product search to nearest neighbours.) I chose this
  over metadata holding each image's top classes: a filter can select images by class, but
  not rank them by a weighted sum over several classes, which a query of several words or a
  guessed word needs.
QueryVectors returns at most TOP_K_LIMIT (100) results; a deeper page (the learned re-ranking
considers 200 keyword hits) is asked of groups of partitions (a `part` filter) and merged, and
a group that came back full while its last hit could still rank is split and asked again, so
the merge is the same as one query for everything down to single partitions (PARTS x 100).

What the engine cannot say cheaply lives in a small state object in the bucket (STATE_KEY,
replaced by compare-and-swap like the Annoy manifest): the generation, the live count, the
model, the dimensions, the spread (representatives kept by the writer from the previous
spread and each batch's additions) and the NEWEST_KEPT newest images. `image_ids` (browsing,
newest first) starts with those and lists the whole feature index (ListVectors, all segments
at once, about 3 s of waits at 1M images) only when asked past them, once per generation:
the page's first screen costs no listing at any size.
`exact=True` is not offered by S3 Vectors (its queries are approximate): it is ignored.

The per-class counts are exact or unknown (`counted` = ()), never wrong. Before its first
write, a publication replaces the state with one that names the images it puts (`uncounted`):
a writer killed before its last write (the new state) leaves vectors no count includes, and
the next publication, whichever images its batch holds, counts in those of them the index
holds (and out again if it removes them) and names them in turn until its own state is
written. It puts the class vectors before the feature vectors, which say "indexed" to the
builder: a publication killed in between is done again. One killed between its DeleteVectors
and the state cannot be told from a finished one afterwards (the vectors are gone either way),
so a publication that removes makes the per-class counts unknown in that first write (keyword
search's chips then ask the class index, as for an index published before counts were kept)
and only its last write puts them back: killed in between, they stay unknown (a warning is
logged; health's `class_counts_known` says so) until `imgsearch reindex`, which counts from
scratch. The live count (health's `images`) may then be off by the removals; searches are
right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from imgsearch.catalog import Catalog, Published
from imgsearch.index.base import MATCH_PROBABILITY, IndexWriter, ListingStopped, SearchIndex
from imgsearch.index.shards import SPREAD_SIZE, ShardData, posted_probabilities, spread
from imgsearch.integrity import DamagedFile
from imgsearch.remembered import Remembered
from imgsearch.storage import NotFound, ObjectStore, StorageError, in_parallel
from imgsearch.storage.ports import AWS_POOL_CONNECTIONS
from imgsearch.storage.wire import HandOff, fill_body, read_answer_part

if TYPE_CHECKING:
    from mypy_boto3_s3vectors import S3VectorsClient
    from mypy_boto3_s3vectors.type_defs import (
        GetOutputVectorTypeDef,
        ListOutputVectorTypeDef,
        PutInputVectorTypeDef,
    )

    from imgsearch.config import Settings

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")
V = TypeVar("V")

STATE_KEY = "index/s3vectors.json"
PARTS = 16  # partitions of the `part` metadata, for results deeper than one query gives
TOP_K_LIMIT = 100  # QueryVectors' largest topK
GROUP_FILL = 0.7  # the share of TOP_K_LIMIT a group of partitions is asked for on average
WRITE_BATCH = 500  # vectors per PutVectors, keys per DeleteVectors (the service's limits)
GET_BATCH = 100  # keys per GetVectors
LIST_PAGE = 1000  # vectors per ListVectors page
# ListVectors' segments listed at once (its most): the ids of 1M images in about 63 rounds of
# pages, some 3 s at 50 ms a page, where one segment takes 1,000 pages one after another.
LIST_SEGMENTS = 16
LIST_ROUND_TRIP_SECONDS = 0.05  # a ListVectors page, as docs/deploy.md assumes
# Image ids the state keeps newest first: about 40 of the page's screens of 48 (40 KB of the
# state), so that browsing lists the index only past them.
NEWEST_KEPT = 2_000
# Images past the newest put in order (`in_order`) by their `added` metadata, a GetVectors per
# GET_BATCH sent PARALLEL_REQUESTS at once, up to this many; more are found in a listing, whose
# 63 rounds at 1M cost fewer waits than 5,000 / 100 / 32 rounds do past about 100,000 of them.
ORDERED_BY_METADATA_UP_TO = 5_000
CACHE_LIMIT = 20_000  # vectors and answers to "is it indexed?" a reader keeps
ANSWER_CACHE_LIMIT = 500  # query answers a reader keeps (each up to a few hundred hits)
REFRESH_INTERVAL_SECONDS = 2.0


def classes_index_name(index: str) -> str:
    return f"{index}-classes"


def partition(image_id: str) -> int:
    """The image's partition: a stable hash of its id (the same in every process)."""
    digest = hashlib.blake2b(image_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % PARTS


def newest_after(
    newest: Sequence[str], added: Iterable[str], removed: Collection[str]
) -> tuple[str, ...]:
    """The state's newest ids after a publication that adds `added` (all with its generation,
    so newer than any before: by id, descending) and removes `removed`."""
    fresh = sorted(set(added) - set(removed), reverse=True)
    gone = set(fresh) | set(removed)
    return (*fresh, *(i for i in newest if i not in gone))[:NEWEST_KEPT]


def unit_class_vectors(probabilities: np.ndarray) -> np.ndarray:
    """Posted probabilities with one more component that makes each row a unit vector."""
    posted = posted_probabilities(probabilities)
    rest = np.sqrt(np.clip(1.0 - (posted.astype(np.float64) ** 2).sum(axis=1), 0.0, None))
    return np.hstack([posted, rest[:, np.newaxis].astype(np.float32)])


@dataclass(frozen=True)
class VectorsState:
    """What the engine cannot answer cheaply: see the module's docstring."""

    generation: int = 0
    count: int = 0
    model: str = ""
    dim: int = 0
    classes: int = 0
    spread: tuple[str, ...] = ()
    updated_at: float = 0.0
    # Per class, the images that give it at least MATCH_PROBABILITY (a keyword search's
    # chips: a count each, not a query each); () for an index published before they were.
    counted: tuple[int, ...] = ()
    # The images the publication under way puts (and counts in of a dead one's), named
    # before its first write: what a publication that died before its end left uncounted.
    uncounted: tuple[str, ...] = ()
    # Up to NEWEST_KEPT image ids, newest first, in the listing's order (the generation that
    # added them, then the id, both descending); () for an index published before they were.
    newest: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        fields = asdict(self)
        if not fields["uncounted"]:  # a finished publication's state: readable by older readers
            del fields["uncounted"]
        return json.dumps(fields).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VectorsState:
        try:
            # Fields this version does not know are left out: a newer writer's state stays
            # readable during a deploy or after a rollback.
            known = {field.name for field in dataclasses.fields(cls)}
            fields = {k: v for k, v in json.loads(data).items() if k in known}
            return cls(
                **{
                    **fields,
                    "spread": tuple(fields["spread"]),
                    "counted": tuple(fields.get("counted", ())),
                    "uncounted": tuple(fields.get("uncounted", ())),
                    "newest": tuple(fields.get("newest", ())),
                }
            )
        except (ValueError, TypeError, KeyError) as error:
            raise DamagedFile(STATE_KEY, f"not a vector index state ({error})") from None


def read_state(store: ObjectStore) -> tuple[VectorsState, str | None]:
    """The published state and its ETag (an empty state and None before any build)."""
    try:
        stored = store.get(STATE_KEY)
    except NotFound:
        return VectorsState(), None
    return VectorsState.from_json(stored.data), stored.etag


# The float lists of the request being made in this thread (VectorCodec).
_outgoing_values = HandOff("vectors' values")
# A list in a request that stands for the values VectorCodec writes in its place.
PLACEHOLDER: list[float] = [0.0]


class VectorCodec:
    """The vectors of S3 Vectors' requests and answers, written and read by orjson
    (`storage.wire`).

    botocore validates, serialises and parses a request's or an answer's values one by one in
    Python (about 2 µs each: 5 ms a query vector of 1,280 floats, 2 ms each vector GetVectors
    returns, a second a PutVectors of 500), which made most of an index build's CPU on S3
    Vectors. So a request is built with `PLACEHOLDER` for each vector and the real values are
    put into its JSON body just before it is signed (`before-call`, which comes before the
    checksum and the signature); GetVectors', QueryVectors' and ListVectors' answers have
    their vectors read by orjson (and numpy) before botocore parses the rest (`before-parse`:
    a neighbour list's 3 queries are 300 hits, about 4 µs each through botocore's parser; a
    ListVectors page of 1,000 keys took 7-8 ms of CPU there, 0.7 ms by orjson). The requests
    sent say what botocore's would (the same JSON, the same float32 values), but each value
    is written in the shortest form that reads back the same float32, not the up to 17 digits
    of a float64; NaN and infinities, which botocore would send as strings and the service
    refuses, are refused here."""

    @classmethod
    def install(cls, client: Any) -> None:
        events = client.meta.events
        if getattr(client, "_imgsearch_vector_codec", False):
            return
        events.register("before-call.s3vectors.QueryVectors", cls._fill)
        events.register("before-call.s3vectors.PutVectors", cls._fill)
        events.register("before-parse.s3vectors.GetVectors", cls._read)
        events.register("before-parse.s3vectors.QueryVectors", cls._read)
        events.register("before-parse.s3vectors.ListVectors", cls._read)
        client._imgsearch_vector_codec = True

    @staticmethod
    @contextmanager
    def sending(rows: Sequence[np.ndarray]) -> Iterator[None]:
        """The values of the request made in the `with` block, its vectors' in order
        (`HandOff`). Raises ValueError for a value that is not finite."""
        values = []
        for row in rows:
            row = np.ascontiguousarray(row, dtype=np.float32)  # what orjson writes
            if row.ndim != 1:
                raise ValueError("a vector's values must be one row")
            if not np.isfinite(row).all():
                raise ValueError("a vector's values must be finite (no NaN or infinity)")
            values.append(row)
        with _outgoing_values.sending(values):
            yield

    @staticmethod
    def _fill(params: dict[str, Any], **_: Any) -> None:
        values = _outgoing_values.take()
        if values is None:
            return

        def filled(body: dict[str, Any]) -> None:
            if "queryVector" in body:
                body["queryVector"]["float32"] = values[0]
            else:
                vectors = body["vectors"]
                if len(vectors) != len(values):
                    raise StorageError("a request's vectors and their values differ in number")
                for vector, row in zip(vectors, values, strict=True):
                    vector["data"]["float32"] = row

        fill_body(params, filled)

    @staticmethod
    def _read(
        response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
    ) -> None:
        read_answer_part(response_dict, customized_response_dict, "vectors", _arrays, [])


def _arrays(vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An answer's vectors with their values as float32 arrays."""
    for vector in vectors:
        data = vector.get("data")
        if data is not None and "float32" in data:
            data["float32"] = np.asarray(data["float32"], dtype=np.float32)
    return vectors


@dataclass
class VectorBucket:
    """The S3 Vectors client and the names of the vector bucket and its two indexes."""

    client: S3VectorsClient
    bucket: str
    features: str
    classes: str = field(default="")

    def __post_init__(self) -> None:
        self.classes = self.classes or classes_index_name(self.features)
        VectorCodec.install(self.client)

    def query(
        self, index: str, vector: np.ndarray, top_k: int, parts: Sequence[int] | None
    ) -> list[tuple[str, float]]:
        request: dict[str, Any] = {
            "vectorBucketName": self.bucket,
            "indexName": index,
            "topK": top_k,
            "queryVector": {"float32": PLACEHOLDER},
            "returnDistance": True,
        }
        if parts is not None:
            request["filter"] = {"part": {"$in": list(parts)}}
        with VectorCodec.sending([vector]):
            found = self.client.query_vectors(**request)["vectors"]
        return [(hit["key"], float(hit.get("distance", 0.0))) for hit in found]

    def get(
        self, keys: Sequence[str], *, data: bool, index: str | None = None
    ) -> dict[str, np.ndarray | None]:
        """The vectors stored under `keys` in `index` (the features' by default; None: data
        not asked for), absent keys left out: one GetVectors per GET_BATCH keys, at once."""

        def values(vector: GetOutputVectorTypeDef) -> np.ndarray | None:
            found = vector.get("data", {}).get("float32") if data else None
            return np.asarray(found, dtype=np.float32) if found is not None else None

        return self._each(keys, values, index=index or self.features, data=data)

    def added(self, keys: Sequence[str]) -> dict[str, int]:
        """The generation that added each of `keys` to the feature index (its `added`
        metadata), absent keys left out: one GetVectors per GET_BATCH keys, at once."""
        return self._each(
            keys,
            lambda vector: int((vector.get("metadata") or {}).get("added", 0)),
            index=self.features,
            data=False,
            metadata=True,
        )

    def _each(
        self,
        keys: Sequence[str],
        read: Callable[[GetOutputVectorTypeDef], V],
        *,
        index: str,
        data: bool,
        metadata: bool = False,
    ) -> dict[str, V]:
        """`read` of each vector stored under `keys` in `index` (its values and metadata
        returned if asked), absent keys left out: one GetVectors per GET_BATCH keys, at once."""

        def chunk(start: int) -> dict[str, V]:
            response = self.client.get_vectors(
                vectorBucketName=self.bucket,
                indexName=index,
                keys=list(keys[start : start + GET_BATCH]),
                returnData=data,
                returnMetadata=metadata,
            )
            return {vector["key"]: read(vector) for vector in response["vectors"]}

        found: dict[str, V] = {}
        for part in in_parallel(chunk, range(0, len(keys), GET_BATCH)):
            found |= part
        return found

    def listing(self, index: str, *, segments: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (key, metadata) of an index, a round of `segments` pages as they are
        iterated."""
        for page in self.pages(index, metadata=True, segments=segments):
            for vector in page:
                yield vector["key"], dict(vector.get("metadata") or {})

    def pages(
        self,
        index: str,
        *,
        metadata: bool = False,
        segments: int = 1,
        stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[list[ListOutputVectorTypeDef]]:
        """The vectors of an index (keys, and metadata if asked), a round of ListVectors
        pages each: one page of each of `segments` segments at once (the next round is asked
        once this one is taken)."""
        tokens: dict[int, str | None] = dict.fromkeys(range(segments))  # segment -> next page

        def page(segment: int) -> tuple[int, list[ListOutputVectorTypeDef], str | None]:
            request: dict[str, Any] = {
                "vectorBucketName": self.bucket,
                "indexName": index,
                "maxResults": LIST_PAGE,
                "returnMetadata": metadata,
            }
            if segments > 1:
                request |= {"segmentCount": segments, "segmentIndex": segment}
            if tokens[segment]:
                request["nextToken"] = tokens[segment]
            try:
                response = self.client.list_vectors(**request)
            except (ClientError, BotoCoreError) as error:  # (throttled: the caller lists again)
                raise StorageError(f"listing {index} failed: {error}") from error
            return segment, response["vectors"], response.get("nextToken")

        while True:
            round_ = in_parallel(page, list(tokens))
            for segment, _, token in round_:
                if token:
                    tokens[segment] = token
                else:
                    del tokens[segment]
            yield [vector for _, vectors, _ in round_ for vector in vectors]
            if not tokens:
                return
            if stop():  # (a round remains: stopped before its requests)
                raise ListingStopped

    def put(self, index: str, vectors: Sequence[PutInputVectorTypeDef]) -> None:
        """Put `vectors` (their data as float32 rows or lists), WRITE_BATCH a request."""
        for start in range(0, len(vectors), WRITE_BATCH):
            chunk = vectors[start : start + WRITE_BATCH]
            with VectorCodec.sending([np.asarray(v["data"]["float32"]) for v in chunk]):
                self.client.put_vectors(
                    vectorBucketName=self.bucket,
                    indexName=index,
                    vectors=[{**v, "data": {"float32": PLACEHOLDER}} for v in chunk],
                )

    def delete(self, index: str, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), WRITE_BATCH):
            self.client.delete_vectors(
                vectorBucketName=self.bucket,
                indexName=index,
                keys=list(keys[start : start + WRITE_BATCH]),
            )


def open_vector_bucket(settings: Settings) -> VectorBucket:
    """The vector bucket and index `settings` name, through boto3 (its usual endpoint and
    credential sources)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3vectors", config=Config(max_pool_connections=AWS_POOL_CONNECTIONS))
    return VectorBucket(client, settings.vector_bucket, settings.vector_index)


@dataclass
class _Cached:
    """What a reader learned of one generation of the state, swapped as one reference (a
    lookup that captured it writes into its own generation's caches only)."""

    known: Remembered[str, np.ndarray | None] = field(  # None: not indexed
        default_factory=lambda: Remembered(CACHE_LIMIT)
    )
    present: Remembered[str, bool] = field(default_factory=lambda: Remembered(CACHE_LIMIT))
    ids: list[str] | None = None  # newest first
    # (index, cutoff, query vector's bytes) -> (hits asked for, hits), so that a shallower or
    # same question (a search asks a ranking's first page after its 400 best; a learned
    # ranking its 200 best) needs no request.
    answers: Remembered[tuple[str, float, bytes], tuple[int, list[tuple[str, float]]]] = field(
        default_factory=lambda: Remembered(ANSWER_CACHE_LIMIT)
    )
    # The same keys' questions on their way (how deep, and set once answered or failed): a
    # question as shallow or the same waits for that answer instead of asking again (a
    # search's ranking asked ahead, then in turn while the first is still out). Every one on
    # its way is listed, so that a shallow one sent beside a deeper one hides neither.
    asking: dict[tuple[str, float, bytes], list[tuple[int, threading.Event]]] = field(
        default_factory=dict
    )


class S3VectorsIndex(SearchIndex):
    """The read side: queries go to S3 Vectors; a reader loads nothing at its start but the
    state object, and caches the vectors and presence it asked for until the next
    generation."""

    round_trips = True

    def __init__(self, bucket: VectorBucket, store: ObjectStore) -> None:
        self.bucket = bucket
        self._store = store
        self.refresh_interval = REFRESH_INTERVAL_SECONDS
        self._state = VectorsState()
        self._etag: str | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._answers_lock = threading.Lock()
        self._cached = _Cached()

    @property
    def state(self) -> VectorsState:
        return self._state

    @property
    def etag(self) -> str | None:
        return self._etag

    def refresh(self, force: bool = False) -> bool:
        if not force and time.monotonic() - self._checked_at < self.refresh_interval:
            return False
        with self._lock:
            self._checked_at = time.monotonic()
            state, etag = read_state(self._store)
            if etag == self._etag:
                return False
            self._state, self._etag, self._cached = state, etag, _Cached()
            return True

    def adopt(
        self,
        state: VectorsState,
        etag: str,
        added: Mapping[str, np.ndarray],
        removed: Collection[str],
        late: Collection[str] = (),
    ) -> None:
        """Follow this process's own publication (its writer's, which replaced the state this
        reader had read: a compare-and-swap on its ETag) without reading it back or dropping
        what it keeps that the publication leaves true: an image's vector (its id names its
        content; another model's or dimension's state keeps nothing), and whether an image is
        indexed, with the publication's additions and removals applied, and its `late` images
        (put by a publication that died, counted in by this one) indexed, their vectors read
        when asked. What an earlier generation found missing is asked again, and its rankings
        and the collection's order afresh. A later `refresh` finds the same ETag: the
        builder's reads after its publication (the new images' vectors, their neighbours')
        then need no request for what it has just written."""
        with self._lock:
            previous, cached = self._state, _Cached()
            known, present = cached.known, cached.present
            if (state.model, state.dim) == (previous.model, previous.dim) and self._etag:
                # What was found, not what was missing (the late images, say).
                old = self._cached
                known.put_many({i: v for i, v in old.known.items() if v is not None})
                present.put_many({i: True for i, p in old.present.items() if p})
            gone = set(removed)
            for i in late:
                known.forget(i)
            known.put_many({**dict.fromkeys(gone), **added})
            present.put_many(
                {
                    **dict.fromkeys(late, True),
                    **dict.fromkeys(gone, False),
                    **dict.fromkeys(added, True),
                }
            )
            self._state, self._etag, self._checked_at = state, etag, time.monotonic()
            self._cached = cached

    @property
    def model(self) -> str:
        return self._state.model

    @property
    def dim(self) -> int:
        return self._state.dim

    @property
    def generation(self) -> int:
        return self._state.generation

    def __len__(self) -> int:
        return self._state.count

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self.present([str(image_id)])

    def present(self, image_ids: Iterable[str]) -> set[str]:
        known = self._cached.present  # captured: see `vectors`
        ids = list(dict.fromkeys(image_ids))
        answers = known.get_many(ids)
        unknown = [i for i in ids if i not in answers]
        if unknown and self._state.count:
            found = self.bucket.get(unknown, data=False)
            fetched = {i: i in found for i in unknown}
            known.put_many(fetched)
            answers |= fetched
        return {i for i in ids if answers.get(i)}

    def vector(self, image_id: str) -> np.ndarray | None:
        return self.vectors([image_id]).get(image_id)

    def vectors(self, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        # This generation's caches, captured as one reference: a refresh or adopt meanwhile
        # replaces them, and this lookup's answers then go into the old ones only (never read
        # back), never one of them into the new generation's.
        cached = self._cached
        known, present = cached.known, cached.present
        ids = list(dict.fromkeys(image_ids))
        answers = known.get_many(ids)
        unknown = [i for i in ids if i not in answers]
        if unknown and self._state.count:
            found = self.bucket.get(unknown, data=True)
            fetched = {i: found.get(i) for i in unknown}
            known.put_many(fetched)
            present.put_many({i: i in found for i in unknown})
            answers |= fetched
        return {i: v for i in ids if (v := answers.get(i)) is not None}

    def nearest(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Collection[str] = (),
        exact: bool = False,
        candidates: int | None = None,
    ) -> list[tuple[str, float]]:
        if not self._state.count or k <= 0:
            return []
        vector = np.asarray(vector, dtype=np.float32)
        found = self._query(self.bucket.features, vector, k + len(exclude))
        best = [(i, min(max(d, 0.0), 2.0)) for i, d in found if i not in exclude]
        return best[:k]

    def ranked_by_classes(
        self, weights: Mapping[int, float], k: int, *, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        weights = {int(c): float(w) for c, w in weights.items() if w > 0}
        classes = self._state.classes
        weights = {c: w for c, w in weights.items() if c < classes}
        if not weights or not self._state.count or k <= 0:
            return []
        query = np.zeros(classes + 1, np.float32)
        for c, w in weights.items():
            query[c] = w
        norm = float(np.linalg.norm(query))
        # Distance 1 or more: no class in common (a score of 0), never ranked.
        found = self._query(self.bucket.classes, query, k + len(exclude), within=1.0)
        scored = [(i, norm * (1.0 - d)) for i, d in found if i not in exclude]
        return [(i, s) for i, s in scored if s > 0][:k]

    def ranked_by_each(
        self, queries: Sequence[Mapping[int, float]], k: int, *, exclude: Collection[str] = ()
    ) -> list[list[tuple[str, float]]]:
        # One QueryVectors (or a few) each, over the network: sent at once, not in turn.
        return in_parallel(lambda w: self.ranked_by_classes(w, k, exclude=exclude), queries)

    @property
    def class_counts_known(self) -> bool:
        return not self._state.count or len(self._state.counted) == self._state.classes

    def counts_cheaply(self, min_probability: float) -> bool:
        return min_probability == MATCH_PROBABILITY and self.class_counts_known

    def class_photo_counts(
        self, classes: Sequence[int], min_probability: float, cap: int
    ) -> dict[int, int]:
        counted = self._state.counted
        if len(counted) != self._state.classes or not self.counts_cheaply(min_probability):
            return super().class_photo_counts(classes, min_probability, cap)
        return {c: min(counted[c], cap) if 0 <= c < len(counted) else 0 for c in classes}

    def together(self, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
        with ThreadPoolExecutor(1) as pool:
            later = pool.submit(second)
            return first(), later.result()

    def _query(
        self, index: str, vector: np.ndarray, wanted: int, *, within: float = float("inf")
    ) -> list[tuple[str, float]]:
        """The `wanted` nearest in `index` closer than `within`, nearest first: from this
        generation's answers if one asked as deep (or got every hit there is), else asked."""
        cached = self._cached  # this generation's: a refresh meanwhile replaces it
        answers, asking = cached.answers, cached.asking
        key = (index, within, vector.tobytes())
        answered = threading.Event()
        while True:
            with self._answers_lock:
                kept = answers.get(key)
                if kept is not None and (kept[0] >= wanted or len(kept[1]) < kept[0]):
                    return kept[1][:wanted]
                # Wait for one as deep, but not for a deeper one that takes more requests than
                # this one would (a ranking beyond the top-k limit is asked by partitions).
                out = min(
                    (q for q in asking.get(key, []) if wanted <= q[0] <= max(wanted, TOP_K_LIMIT)),
                    key=lambda q: q[0],
                    default=None,
                )
                if out is None:
                    asking.setdefault(key, []).append((wanted, answered))
                    break
            out[1].wait()  # then kept, or asked here if that question failed
        try:
            hits = self._ask_nearest(index, vector, wanted, within)
            # A deeper answer asked meanwhile by another thread (a search asks ahead:
            # search.held_matches) stays.
            with self._answers_lock:
                kept = answers.get(key)
                if kept is None or kept[0] < wanted:
                    answers.put(key, (wanted, hits))
            return hits
        finally:
            with self._answers_lock:
                out_there = [q for q in asking.get(key, []) if q[1] is not answered]
                if out_there:
                    asking[key] = out_there
                else:
                    asking.pop(key, None)
            answered.set()

    def _ask_nearest(
        self, index: str, vector: np.ndarray, wanted: int, within: float
    ) -> list[tuple[str, float]]:
        """The `wanted` nearest in `index` closer than `within`, nearest first, beyond
        QueryVectors' top-k limit by partitions (see the module's docstring)."""
        if wanted <= TOP_K_LIMIT:
            return [
                hit for hit in self.bucket.query(index, vector, wanted, None) if hit[1] < within
            ]
        # Groups of partitions that each hold well under TOP_K_LIMIT of the `wanted` on
        # average (GROUP_FILL of it), so that one seldom comes back full and is split: the
        # 200-deep keyword ranking in 3 requests.
        groups = min(PARTS, -(-wanted // int(TOP_K_LIMIT * GROUP_FILL)))
        answers = self._ask(index, vector, [tuple(range(g, PARTS, groups)) for g in range(groups)])
        while True:
            merged = sorted(
                (hit for hits in answers.values() for hit in hits if hit[1] < within),
                key=lambda h: (h[1], h[0]),
            )[:wanted]
            cutoff = merged[-1][1] if len(merged) == wanted else within
            unsure = [
                parts
                for parts, hits in answers.items()
                if len(hits) == TOP_K_LIMIT and hits[-1][1] < within and hits[-1][1] <= cutoff
                if len(parts) > 1
            ]
            if not unsure:
                return merged
            for parts in unsure:
                del answers[parts]
            halves = [half for parts in unsure for half in (parts[::2], parts[1::2])]
            answers |= self._ask(index, vector, halves)

    def _ask(
        self, index: str, vector: np.ndarray, groups: list[tuple[int, ...]]
    ) -> dict[tuple[int, ...], list[tuple[str, float]]]:
        """The top TOP_K_LIMIT of each group of partitions, asked at once."""
        hits = in_parallel(
            lambda parts: self.bucket.query(index, vector, TOP_K_LIMIT, parts), groups
        )
        return dict(zip(groups, hits, strict=True))

    def spread(self, k: int, *, exclude: Collection[str] = ()) -> list[str]:
        return [i for i in self._state.spread if i not in exclude][:k]

    def image_ids(self, *, newest_first: bool = True) -> Iterator[str]:
        with self._lock:  # one generation's state and caches
            state, cached = self._state, self._cached
        if not newest_first:
            return iter(self._listed(state, cached)[::-1])
        return itertools.chain(state.newest, self._listed_after(state, cached))

    def in_order(self, image_ids: Collection[str]) -> list[str]:
        # The newest from the state; the few others by the generation that added them (as
        # the listing orders them), without listing the index.
        with self._lock:
            state, cached = self._state, self._cached
        place = {image_id: n for n, image_id in enumerate(state.newest)}
        ids = set(image_ids)
        newest = sorted((i for i in ids if i in place), key=place.__getitem__)
        older = [i for i in ids if i not in place]
        if not older or not state.count:
            return newest
        if cached.ids is not None or len(older) > ORDERED_BY_METADATA_UP_TO:
            return newest + super().in_order(older)  # listed (once a generation)
        added = self.bucket.added(sorted(older))
        return newest + [i for _, i in sorted(((g, i) for i, g in added.items()), reverse=True)]

    def _listed_after(self, state: VectorsState, cached: _Cached) -> Iterator[str]:
        """The listing's ids past the state's newest: listed when first iterated this far."""
        kept = set(state.newest)
        yield from (i for i in self._listed(state, cached) if i not in kept)

    def _listed(self, state: VectorsState, cached: _Cached) -> list[str]:
        """Every id of the feature index, newest first (the generation that added it, then
        the id, both descending), listed once per generation."""
        if cached.ids is None:
            listed = (
                self.bucket.listing(self.bucket.features, segments=self.list_segments())
                if state.count
                else iter(())
            )
            by_age = sorted((int(meta.get("added", 0)), key) for key, meta in listed)
            cached.ids = [key for _, key in reversed(by_age)]
        return cached.ids

    def listing_seconds(self) -> float:
        rounds = -(-len(self) // (LIST_PAGE * self.list_segments()))
        return rounds * LIST_ROUND_TRIP_SECONDS

    def list_segments(self) -> int:
        """Segments to list at once: one a page's worth of ids, at most LIST_SEGMENTS."""
        return min(LIST_SEGMENTS, max(1, -(-len(self) // LIST_PAGE)))

    def id_pages(self, stop: Callable[[], bool] = lambda: False) -> Iterator[list[str]]:
        if self._cached.ids is not None:
            yield list(self._cached.ids)
        elif self._state.count:
            for page in self.bucket.pages(
                self.bucket.features, segments=self.list_segments(), stop=stop
            ):
                yield [vector["key"] for vector in page]


class S3VectorsWriter(IndexWriter):
    """The write side: vectors put into and deleted from both indexes, then the state."""

    def __init__(self, catalog: Catalog, index: S3VectorsIndex, *, model_name: str) -> None:
        self.catalog = catalog
        self.index = index
        self.bucket = index.bucket
        self.model_name = model_name

    @property
    def unfinished(self) -> bool:
        return bool(self.index.state.uncounted)

    def publish(
        self,
        additions: ShardData,
        removed: Collection[str],
        still_held: Callable[[], None] = lambda: None,
    ) -> int:
        # Vectors are searchable as soon as they are put: the lease is checked before each
        # write (a long publication may outlive it), not once before them all.
        state, etag = self.index.state, self.index.etag
        late, classes_only = self._uncounted(state, additions)
        if not len(additions) and not removed and not late and not classes_only:
            return 0
        if classes_only:
            # Class vectors a dead publication put without their feature vectors, of images
            # this one does not put (deleted since, or in a later batch, which puts both):
            # deleted before the state stops naming them, or keyword search's class index
            # could still find an image deleted since.
            still_held()
            self.bucket.delete(self.bucket.classes, classes_only)
        generation = state.generation + 1
        counted = self._counted(state, additions, removed, late)
        # Before the first write, the state names what this publication puts (and what it
        # counts in of a dead one's): killed before its last write, the next one counts them.
        # A removal's counts are unknown until the last write (see the module's docstring).
        announced = replace(
            state,
            uncounted=tuple(sorted({*additions.ids, *late})),
            counted=() if removed else state.counted,
            # Killed after its deletes, a retry finds nothing left to remove: the removed
            # must already be out of the newest (browsing hides them until then: queued).
            newest=newest_after(state.newest, (), removed),
        )
        if announced != state:
            if state.counted and not announced.counted:
                log.warning(
                    "S3 Vectors' per-class counts are unknown while this publication removes"
                    " images: killed before its end, they stay unknown (chips then ask the"
                    " class index) until `imgsearch reindex`"
                )
            still_held()
            etag = self._write_state(announced, etag, record=False)
        put: dict[str, np.ndarray] = {}  # the feature vectors put, by id
        if len(additions):
            ids = additions.ids
            parts = [partition(i) for i in ids]
            # The class vectors first: the feature vector says "indexed" (`present`), so an
            # image that has one has both (a publication dying in between is done again).
            classes = unit_class_vectors(additions.probabilities)
            still_held()
            self.bucket.put(
                self.bucket.classes,
                [
                    {"key": i, "data": {"float32": row.tolist()}, "metadata": {"part": p}}
                    for i, row, p in zip(ids, classes, parts, strict=True)
                ],
            )
            features = additions.features.astype(np.float32)
            # Each kept vector its own copy: a row of `features` would keep the publication's
            # whole array alive while any of its images stays among the kept vectors.
            put = {i: row.copy() for i, row in zip(ids, features, strict=True)}
            still_held()
            self.bucket.put(
                self.bucket.features,
                [
                    {
                        "key": i,
                        "data": {"float32": row.tolist()},
                        "metadata": {"part": p, "added": generation},
                    }
                    for i, row, p in zip(ids, features, parts, strict=True)
                ],
            )
        if removed:
            # The class vectors first: a removal retried after dying in between finds the
            # feature vector and not the class vector (`_counted` then counts nothing).
            for index in (self.bucket.classes, self.bucket.features):
                still_held()
                self.bucket.delete(index, list(removed))
        new = VectorsState(
            generation=generation,
            count=state.count + len(additions) + len(late) - len(removed),
            model=self.model_name,
            dim=int(additions.features.shape[1]) if len(additions) else state.dim,
            classes=int(additions.probabilities.shape[1]) if len(additions) else state.classes,
            spread=self._spread(state, additions, removed),
            updated_at=time.time(),
            counted=counted,
            newest=newest_after(state.newest, [*additions.ids, *late], removed),
        )
        if state.counted and not counted and not removed:
            log.warning(
                "S3 Vectors' per-class counts are now unknown (a class vector is missing):"
                " keyword chips ask the class index until `imgsearch reindex`"
            )
        still_held()
        written = self._write_state(new, etag)
        self.index.adopt(new, written, put, removed, late)
        return 0

    def _uncounted(self, state: VectorsState, additions: ShardData) -> tuple[list[str], list[str]]:
        """Of the images a publication that died before its last write named (the state's
        `uncounted`), other than this publication's own: those it put and nobody counted yet
        (the feature index holds them), and those it did not put a feature vector for."""
        ids = set(additions.ids)
        named = [i for i in state.uncounted if i not in ids]
        found = self.bucket.get(named, data=False) if named else {}
        return sorted(found), [i for i in named if i not in found]

    def _counted(
        self,
        state: VectorsState,
        additions: ShardData,
        removed: Collection[str],
        late: Sequence[str] = (),
    ) -> tuple[int, ...]:
        """The per-class counts (VectorsState.counted) after this publication: the additions'
        posted probabilities counted in, and those of `late` (put by a publication that died
        before its state), the removed images' (read from the class index before they go)
        counted out (an image both late and removed: in and out, nothing). An index published
        before counts were kept keeps none (a reindex counts from scratch), nor does one whose
        counts a removal left unknown, or a removal whose class vectors are gone already (a
        retry)."""
        classes = int(additions.probabilities.shape[1]) if len(additions) else state.classes
        if state.classes not in (0, classes):  # another model's classes: a reindex counts
            return ()
        if not state.count:
            counts = np.zeros(classes, np.int64)
        elif len(state.counted) == classes:
            counts = np.asarray(state.counted, np.int64)
        else:
            return ()
        if len(additions):
            counts += (posted_probabilities(additions.probabilities) >= MATCH_PROBABILITY).sum(
                axis=0
            )
        for sign, ids in ((1, late), (-1, removed)):
            if not ids:
                continue
            found = self.bucket.get(list(ids), data=True, index=self.bucket.classes)
            vectors = [v for v in found.values() if v is not None]
            if len(vectors) < len(ids):
                return ()
            for vector in vectors:
                counts += sign * (vector[:classes] >= MATCH_PROBABILITY)
        return tuple(int(n) for n in np.maximum(counts, 0))

    def _spread(
        self, state: VectorsState, additions: ShardData, removed: Collection[str]
    ) -> tuple[str, ...]:
        """Representatives of the collection from the previous ones and the new images."""
        kept = [i for i in state.spread if i not in set(removed)]
        # (through the reader: kept from an earlier publication or read, no request)
        stored = self.index.vectors(kept) if kept else {}
        ids = [i for i in kept if stored.get(i) is not None] + list(additions.ids)
        if not ids:
            return ()
        rows = [v for i in kept if (v := stored.get(i)) is not None]
        features = np.vstack([*(r[np.newaxis] for r in rows), additions.features]).astype(
            np.float32
        )
        by_id = np.argsort(np.asarray(ids, dtype=object)).astype(np.int64)
        chosen = by_id[spread(features[by_id], SPREAD_SIZE)]
        return tuple(ids[int(row)] for row in chosen)

    def _write_state(self, state: VectorsState, etag: str | None, *, record: bool = True) -> str:
        """Replace the state read with `etag` (None: create it) and, with `record`, note the
        publication in the catalog; returns the new ETag. Raises PreconditionFailed."""
        store = self.catalog.objects
        data = state.to_json()
        if etag is None:
            written = store.put(
                STATE_KEY, data, if_none_match=True, content_type="application/json"
            )
        else:
            written = store.put(STATE_KEY, data, if_match=etag, content_type="application/json")
        if record:
            self.catalog.record_published(Published(state.generation, state.count, 0))
        return written

    def clear(self) -> None:
        pages = self.bucket.pages(self.bucket.features, segments=self.index.list_segments())
        keys = [vector["key"] for page in pages for vector in page]
        for index in (self.bucket.features, self.bucket.classes):
            self.bucket.delete(index, keys)
        try:
            etag: str | None = self.catalog.objects.head(STATE_KEY).etag
        except NotFound:
            etag = None
        published = self.catalog.published()
        generation = max(published.generation, self.index.state.generation) + 1
        self._write_state(VectorsState(generation=generation, updated_at=time.time()), etag)
