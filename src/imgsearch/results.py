"""What the engine's facade (`service.ImageSearch`) returns and raises. Entry points (the HTTP
API, the CLI, the Lambda handlers, the bulk tools, the evaluation) use these types, the facade
and the settings, nothing else of the core (lint-imports checks it: pyproject.toml's contracts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imgsearch.catalog import IMAGES_PREFIX, ImageRecord, KeyStatus
from imgsearch.decode_pool import DecoderBusy
from imgsearch.embedding import Embedding
from imgsearch.feedback import LOCAL_CLIENT, Agreement, TermSummary
from imgsearch.images import ImageRefused
from imgsearch.index.base import MATCH_PROBABILITY
from imgsearch.index.builder import BuildReport
from imgsearch.index.manifest import IndexFormatError
from imgsearch.ingest import IngestResult, ObjectEvent
from imgsearch.integrity import DamagedFile, UnusableFile
from imgsearch.overview import Stack, Topic
from imgsearch.parts import ModelMismatch, Preloadable
from imgsearch.rate_limits import TooMany
from imgsearch.repair import Finding
from imgsearch.search import CANDIDATES, Hit, Learned, Reason, TextResults, Tier
from imgsearch.storage import InvalidKey, NotFound, StorageError, StorageFull
from imgsearch.vocabulary import STRATEGIES, Interpretation, Level, Source

__all__ = [
    "CANDIDATES",
    "IMAGES_PREFIX",
    "LOCAL_CLIENT",
    "MATCH_PROBABILITY",
    "STRATEGIES",
    "Agreement",
    "BackfillProgress",
    "BuildReport",
    "DamagedFile",
    "DecoderBusy",
    "DirectUploadsUnavailable",
    "Embedding",
    "Finding",
    "Hit",
    "ImageRecord",
    "ImageRefused",
    "IndexFormatError",
    "IndexInfo",
    "IngestResult",
    "Interpretation",
    "InvalidKey",
    "Learned",
    "LearnedImage",
    "Level",
    "ModelInfo",
    "ModelMismatch",
    "NotFound",
    "NotIndexed",
    "NotUnderstood",
    "ObjectEvent",
    "Original",
    "PhotoResults",
    "Preloadable",
    "Reason",
    "Source",
    "Stack",
    "StorageError",
    "StorageFull",
    "TermReport",
    "TextResults",
    "Tier",
    "TooMany",
    "Topic",
    "UnusableFile",
    "UploadForm",
    "UploadOutcome",
    "UploadStatus",
]


class NotIndexed(LookupError):
    """The image id is not in the collection."""


class NotUnderstood(ValueError):
    """Input the engine cannot use: a query without words, a client named by neither an id
    nor an address."""


class DirectUploadsUnavailable(LookupError):
    """The storage takes no uploads straight from browsers (the local backend)."""


@dataclass(frozen=True)
class Original:
    """An image's bytes (or thumbnail's): where to fetch them (a signed link to the bucket),
    or the bytes themselves."""

    media_type: str
    url: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class IndexInfo:
    shards: int
    candidates: int  # Annoy candidates per query, shared by the shards
    search_k: int  # Annoy's search_k
    model: str  # the model the vectors are of


@dataclass(frozen=True)
class ModelInfo:
    name: str
    feature_dim: int  # the length of an image's feature vector
    num_classes: int  # of its class probabilities
    runs_at_once: int = 1  # images it embeds at the same time (its interpreters)


@dataclass(frozen=True)
class UploadOutcome:
    id: str
    key: str
    status: Literal["added", "duplicate", "unchanged", "pending"]  # pending: not yet searchable


@dataclass(frozen=True)
class UploadForm:
    """A signed form to upload one image straight into the bucket, as `key`."""

    url: str
    fields: dict[str, str]
    key: str
    expires_in: int


@dataclass(frozen=True)
class UploadStatus:
    key: str
    status: KeyStatus | Literal["pending"]  # pending: nothing recorded for the key yet
    image_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill is, after a batch: what it listed and what became of it. `last_key`
    (a key of the store, under images/) is where to resume: every key up to it is done."""

    listed: int
    counts: dict[str, int]  # by ingest status (added, unchanged, refused ...), or "reembedded"
    last_key: str | None
    indexed: int  # images the index took in (or, re-embedding, the rebuilt index holds)
    done: bool


@dataclass(frozen=True)
class PhotoResults:
    term: str | None  # the word the photo exemplifies, as votes name it, if one was given
    hits: list[Hit]


@dataclass(frozen=True)
class LearnedImage:
    agreement: Agreement
    key: str | None  # one of its keys; None if it was removed
    weight: float  # what it teaches other visitors (learning.trust)


@dataclass(frozen=True)
class TermReport:
    """What votes taught about a term, for its owner: images by weight, and the voters."""

    summary: TermSummary
    images: list[LearnedImage]  # most weight first
    voters: list[tuple[str, int, int]]  # (client, images up, images down), most voices first
