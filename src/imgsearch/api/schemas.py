"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from imgsearch.results import CANDIDATES, MATCH_PROBABILITY, Level, Reason, Source, Tier

SESSION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
IMAGE_ID = "[0-9a-f]{16}"  # (a regular expression)
IMAGE_ID_PATTERN = f"^{IMAGE_ID}$"
# How deep a ranked list (search, "more like this") may be paged: each page ranks offset +
# limit results, and a nearest-neighbour search for 100,200 took 230 ms of CPU at 100k images
# (a first page about 1 ms). Browsing the collection newest first reads a listing: deeper.
MAX_RANKED_OFFSET = 10_000


class Problem(BaseModel):
    """Every refusal's body: what was wrong, for people; for invalid input, a list of what
    failed validation (FastAPI's, each echoed input cut short)."""

    detail: str | list[dict[str, Any]]


# When each status is answered (guard.py, app.py and the routes): the OpenAPI document lists
# them per route, from `problems`.
PROBLEMS = {
    400: "A malformed request: a header that must be single sent twice, a bad Content-Length, "
    "an HTTP version other than 1.0 and 1.1",
    401: "The API key is missing (X-API-Key)",
    403: "The API key is wrong",
    404: "No such image (or resource)",
    413: "The body or file is larger than the limit",
    415: "The file is not an image",
    422: "Invalid input, or an image that cannot be used (the reason says why)",
    429: "Too many votes from this session or client in a minute, or from this client in a "
    "day (UTC); see Retry-After",
    431: "Request headers larger than the limit",
    503: "Busy (every decoder, or too many connections or bodies); see Retry-After",
    507: "The server's storage is full",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for refusals with these statuses."""
    return {status: {"model": Problem, "description": PROBLEMS[status]} for status in statuses}


class Health(BaseModel):
    status: Literal["ok"]
    images: int
    recovering: bool = Field(
        False, description="Work a crash left is being finished; some changes are not in yet"
    )
    class_counts_known: bool = Field(
        True,
        description="False while S3 Vectors' per-class counts are unknown after a publication"
        " died; keyword chips then query the class index until `imgsearch reindex`",
    )


class ClassScore(BaseModel):
    label: str
    score: float


class Result(BaseModel):
    id: str
    key: str
    url: str = Field(
        description="The image's bytes: an absolute URL under the server's public URL, or "
        "under the address it was reached at when that is a trusted host (this machine by "
        "default); else a path from the API's root"
    )
    thumbnail: str = Field(description="A small JPEG of the image (a URL like `url`)")
    tile: str | None = Field(
        None,
        description="A smaller WebP of the image, at most 256 px, for grid tiles and covers "
        "(a URL like `url`; immutable)",
    )
    score: float = Field(description="Higher is better; comparable within one response")
    learned: bool = Field(False, description="Placed by what users taught through votes")
    reason: Reason = Field(
        "keyword",
        description="keyword: matches the words; learned: placed by what votes taught; voted: "
        "this session voted it relevant; explore: shown for variety while the words are not "
        "understood; similar: looks like the query image; listed: browsing or a lookup by "
        "key, not ranked",
    )
    width: int
    height: int
    label: str | None = Field(None, description="The image's most probable ImageNet class")
    tier: Tier | None = Field(
        None,
        description="Text searches only. match: the collection's evidence says the image shows "
        f"what the words name (a class of theirs with probability >= {MATCH_PROBABILITY}, or "
        "voted relevant in this session); guess: ranked by the words, less surely; explore: "
        "shown to cover the collection's kinds of pictures. Matches come first",
    )


class Results(BaseModel):
    results: list[Result]


class Page(Results):
    total: int


class ImageSearchResponse(Results):
    query: str | None = Field(description="The word the photo exemplifies, normalised, if given")


class ClassWeight(BaseModel):
    id: int = Field(description="An ImageNet class id (0..999): `exclude` takes it")
    label: str
    weight: float
    photos: int | None = Field(
        None,
        description="How many photos of the collection the class describes with probability "
        f">= {MATCH_PROBABILITY} (counted up to {CANDIDATES}); in the combined `classes` of a "
        "text search's first page (offset 0) only",
    )


class Reading(BaseModel):
    phrase: str = Field(description="The normalised words this reading covers")
    source: Source = Field(
        description="imagenet: names a class; wordnet: a word whose meaning covers classes; "
        "related: a guess from related words; unknown: not understood; learned: a word only "
        "votes taught"
    )
    confidence: float
    note: str = Field(description="Why, for people")
    classes: list[ClassWeight]


class LearnedSummary(BaseModel):
    votes: int
    sessions: int
    clients: int
    strength: float = Field(description="0..1: how far the learned ranking outweighs the words")
    method: str = Field(description="The learning method")


class Interpretation(BaseModel):
    query: str = Field(description="The normalised query: the term votes are recorded under")
    confidence: float = Field(description="0..1")
    level: Level = Field(description="high: understood; low: guessed at; none: not understood")
    terms: list[Reading]
    classes: list[ClassWeight] = Field(description="The classes searched for, best first")
    learned: LearnedSummary | None = Field(description="What votes taught about the query")


class SearchResponse(Results):
    query: str
    interpretation: Interpretation = Field(description="How the words were understood")
    matches: int = Field(
        0,
        description="How many confident matches (tier `match`) the collection holds for the "
        "words, counted up to 200 (or the page's end, if further); they come first",
    )
    did_you_mean: str | None = Field(
        None,
        description="For words the vocabulary does not know, the nearest spelling it knows "
        '("elefant" -> "elephant"), normalised; null when the words are understood',
    )


class ImageDetail(BaseModel):
    id: str
    key: str
    keys: list[str]
    url: str
    thumbnail: str
    width: int
    height: int
    classes: list[ClassScore]


class Uploaded(BaseModel):
    id: str
    key: str
    status: Literal["added", "duplicate", "unchanged", "pending"]


class VoteRequest(BaseModel):
    query: str = Field(min_length=1, max_length=200)
    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    vote: Literal[1, -1, 0] = Field(
        description="1 relevant, -1 not relevant, 0 takes the session's vote back (undo)"
    )
    session: str = Field(pattern=SESSION_PATTERN)

    @field_validator("vote", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # Python's True == 1, so the literal alone would take JSON true as a vote.
        if isinstance(value, bool):
            raise ValueError("a vote is the number 1, -1 or 0, not true or false")
        return value


class VoteResponse(BaseModel):
    status: Literal["ok"]
    term: str = Field(description="The normalised query the vote counts for")
    withdrawn: bool | None = Field(
        None,
        description="For a vote of 0 only: whether the session had a vote on the image to "
        "take back (false: nothing changed)",
    )


class LearnedImage(BaseModel):
    id: str
    key: str | None = Field(None, description="One of the image's keys (None if removed)")
    up_clients: int = Field(description="Clients whose last vote says relevant")
    down_clients: int = Field(description="Clients whose last vote says not relevant")
    up: float = Field(description="up_clients, each decayed by the age of its vote")
    down: float = Field(description="down_clients, each decayed by the age of its vote")
    weight: float = Field(
        description="What the image teaches other visitors: positive relevant, negative not; "
        "0 until at least three clients agree"
    )


class Voter(BaseModel):
    client: str = Field(description="The client's id (a keyed hash of its address)")
    up: int = Field(description="Images its voice calls relevant")
    down: int = Field(description="Images its voice calls not relevant")


class LearnedTerm(BaseModel):
    term: str = Field(description="The normalised query votes are stored under")
    votes: int
    sessions: int
    clients: int
    images: list[LearnedImage] = Field(description="Images voted on, most weight first")
    voters: list[Voter] = Field(description="Clients that voted, most voices first (at most 100)")


class TermReset(BaseModel):
    term: str
    votes_removed: int


class ClientDropped(BaseModel):
    client: str = Field(description="The client's id (a keyed hash of its address)")
    votes_removed: int


class UploadRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=255, description="The file's name")
    content_type: str = Field(
        pattern=r"^image/[A-Za-z0-9][A-Za-z0-9.+-]{0,99}$",
        description="The file's MIME type: image/...",
    )


class UploadForm(BaseModel):
    url: str = Field(description="Where to POST the form")
    fields: dict[str, str] = Field(description="Form fields to send before the `file` field")
    key: str = Field(description="The key the image will have: ask /api/uploads/status")
    expires_in: int = Field(description="Seconds the form stays valid")


class UploadStatus(BaseModel):
    key: str
    status: Literal["pending", "present", "refused", "removed", "failed"]
    image_id: str | None = None
    reason: str | None = None


class Topic(BaseModel):
    kind: Literal["class", "word"] = Field(
        description="class: an ImageNet class many photos show; word: a word votes taught"
    )
    label: str
    query: str = Field(description="The words that search for it (GET /api/search?q=...)")
    count: int = Field(description="How many photos show it")
    cover: Result = Field(description="One photo that shows it well")


class Explore(BaseModel):
    topics: list[Topic] = Field(description="Taught words first, then classes; most photos first")


class Stack(BaseModel):
    count: int = Field(description="How many near-copies of one photo the collection holds")
    results: list[Result] = Field(description="The copies, newest first")


class Duplicates(BaseModel):
    stacks: list[Stack] = Field(description="Newest stack first")
    total: int = Field(description="Stacks in the collection")
