"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

SESSION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
IMAGE_ID_PATTERN = r"^[0-9a-f]{16}$"


class Health(BaseModel):
    status: Literal["ok"]
    images: int
    recovering: bool = Field(
        False, description="Work a crash left is being finished; some changes are not in yet"
    )


class ClassScore(BaseModel):
    label: str
    score: float


class Result(BaseModel):
    id: str
    key: str
    url: str = Field(description="The image's bytes")
    thumbnail: str = Field(description="A small JPEG of the image")
    score: float = Field(description="Higher is better; comparable within one response")
    learned: bool = Field(False, description="Placed by what users taught through votes")
    reason: Literal["keyword", "learned", "voted", "explore", "similar"] = Field(
        "keyword",
        description="keyword: matches the words; learned: placed by what votes taught; voted: "
        "this session voted it relevant; explore: shown for variety while the words are not "
        "understood; similar: looks like the query image",
    )
    width: int
    height: int
    label: str | None = Field(None, description="The image's most probable ImageNet class")


class Results(BaseModel):
    results: list[Result]


class Page(Results):
    total: int


class ImageSearchResponse(Results):
    query: str | None = Field(description="The word the photo exemplifies, normalised, if given")


class SearchResponse(Results):
    query: str
    interpretation: dict[str, Any] = Field(description="How the words were understood")


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
    vote: Literal[1, -1]
    session: str = Field(pattern=SESSION_PATTERN)

    @field_validator("vote", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # Python's True == 1, so the literal alone would take JSON true as a vote.
        if isinstance(value, bool):
            raise ValueError("a vote is the number 1 or -1, not true or false")
        return value


class VoteResponse(BaseModel):
    status: Literal["ok"]
    term: str = Field(description="The normalised query the vote counts for")
