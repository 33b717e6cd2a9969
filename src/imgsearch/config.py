"""All settings in one typed object, read from `IMGSEARCH_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How votes re-rank a search (see learning.py).
FeedbackMethod = Literal["rocchio", "knn", "neighbours"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imgsearch"


# The largest `duplicate_distance`: the catalog keeps each image's neighbours within it
# apart from its list (catalog.py, near-copy lists), so stacks are found without every list.
MAX_DUPLICATE_DISTANCE = 0.15


class Settings(BaseSettings):
    # populate_by_name: `Settings(data_dir=...)` beside its environment names (an alias is read
    # as a whole variable name, without the prefix).
    model_config = SettingsConfigDict(
        env_prefix="IMGSEARCH_", extra="ignore", populate_by_name=True
    )

    # Where data lives: a local directory, or S3 + DynamoDB.
    backend: Literal["local", "aws"] = "local"
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        validation_alias=AliasChoices("IMGSEARCH_DATA", "IMGSEARCH_DATA_DIR"),
    )
    bucket: str = "imgsearch"
    catalog_table: str = "imgsearch-catalog"
    feedback_table: str = "imgsearch-feedback"
    cache_dir: Path = Path("/tmp/imgsearch-cache")
    # Deliveries of an image event before the embed function records the key as failed: the
    # image queue's redrive maxReceiveCount. Deployed, infra/template.yaml sets both from its
    # MaxReceiveCount parameter (IMGSEARCH_MAX_RECEIVE_COUNT), so they cannot differ; this
    # default is that parameter's, for the embed function run without the template (tests;
    # tests/cloud/test_template.py checks the two agree).
    max_receive_count: int = 5

    # Model and vocabulary.
    assets_dir: Path = ASSETS_DIR
    model: str = "efficientnet_lite2.json"
    vocabulary: str = "vocabulary"
    inference_threads: int | None = None
    # Interpreters run at once, one per concurrent caller (None: one per CPU, each then
    # single-threaded unless `inference_threads` says otherwise).
    inference_interpreters: int | None = Field(None, ge=1)

    # What an image may be, and what decoding one may cost (docs/reliability.md, "Decoding
    # bombs"). The open reverse search (no key) takes smaller pictures than the owner's
    # uploads and the CLI. Memory is estimated from the header, before any pixel is decoded.
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_search_pixels: int = 25_000_000
    max_decode_memory: int = 320 * 1024 * 1024
    max_jpeg_scans: int = 100  # a progressive photo has about 10
    # Decodes run in worker processes, at most `decode_workers` at once (None: one per CPU;
    # 0: in the calling thread, as on Lambda, where a sandbox serves one request at a time);
    # one that takes longer than `decode_seconds` is killed and refused. Beyond
    # `decode_queue` callers waiting for a worker, the API answers 503.
    decode_workers: int | None = None
    decode_seconds: float = 10.0
    decode_queue: int = 8

    # Index.
    # Measured by bench/index_scale.py (docs/performance.md): the open shard, which every
    # upload rebuilds, holds at most `shard_size` images (~1.5 s to rebuild at 10,000); sealed
    # shards are merged in the background, two at a time, into ones 2, 4, ... 64 times as big
    # (index/tiers.py).
    shard_size: int = 10_000
    ann_trees: int = 20
    # Per query, the shards' Annoy forests propose `ann_candidates` images between them
    # (inspecting `ann_search_k` nodes, each shard in proportion to its size; -1 is Annoy's
    # default of candidates x trees, with no floor), the nearest by projected distance across
    # all shards (with the query's residual under each projection); exact distances then
    # rank them. Both grow past 100k images, and up to 100k the nodes are at least a floor,
    # fading out by 300k (index/reader.py, `budget_growth`, `query_nodes`,
    # `_closest_projected`).
    ann_candidates: int = Field(120, ge=1)
    ann_search_k: int = Field(1500, ge=-1)
    neighbours: int = 50
    # Expanded vectors (index/expansion.py): each image's vector plus those of its first
    # `expansion_neighbours` stored neighbours, weighted by similarity**`expansion_power`,
    # rank "more like this" and reverse search. Chosen by bench/expansion_sweep.py on four
    # sets (docs/evaluation.md, "Expansion"). They are stored with the neighbour lists
    # whatever `expansion` says (False: rank by the raw features, as exact cosine search);
    # after changing the next two, `imgsearch reindex` computes them again. The query is
    # expanded once more by the first `expansion_query_neighbours` results it ranks (nothing
    # stored: it takes effect at once). `expansion_learning`: learned rankings compare
    # expanded vectors too (measured, not adopted: docs/evaluation.md, "Expansion").
    expansion: bool = True
    expansion_neighbours: int = Field(10, ge=0, le=50)
    expansion_power: float = Field(1.0, ge=0)
    expansion_query_neighbours: int = Field(3, ge=0, le=50)
    expansion_learning: bool = False
    # Two images whose stored neighbour distance (1 - cosine of their features) is at most
    # this are near-copies of one photo (resized, re-encoded, cropped a little): stacked in
    # results and listed by /api/duplicates. Measured in docs/evaluation.md (bench/duplicates.py).
    duplicate_distance: float = Field(0.08, ge=0, le=MAX_DUPLICATE_DISTANCE)
    # Which engine holds the vectors (docs/deploy.md, "Vector engines"): "annoy", shard files
    # every search and embed process loads whole (the default, locally and for small clouds),
    # or "s3vectors", Amazon S3 Vectors: the vector bucket `vector_bucket`, with the feature
    # index `vector_index` and the class index `vector_index`-classes (index/s3vectors.py).
    vector_engine: Literal["annoy", "s3vectors"] = "annoy"
    vector_bucket: str = "imgsearch-vectors"
    vector_index: str = "images"
    # How long one index build may take, in seconds (None: until the queue is empty); what is
    # left stays queued for the next. The cloud's embed function also keeps within half of
    # what remains of its invocation (cloud/handlers.py). docs/reliability.md, "The index
    # writer".
    index_build_seconds: float | None = Field(None, gt=0)
    # How often `imgsearch serve` applies what is queued (deletions, uploads whose request
    # gave up waiting): the local counterpart of the cloud's schedule.
    index_drain_seconds: float = Field(5.0, gt=0)
    # How long an upload through the API waits for its image to be searchable before it
    # answers 201 with the status "pending" (the image stays queued and is indexed by the
    # next build). The cloud's change function sets it below API Gateway's 29 s limit.
    upload_wait_seconds: float = Field(60.0, ge=0)

    # Feedback: how votes re-rank (see learning.py), and how long others' votes are cached.
    feedback_method: FeedbackMethod = "rocchio"
    feedback_cache_seconds: float = 5.0
    # How fast votes age: a client's voice counts half after this many days (see feedback.py);
    # three agreeing voices fall below the quorum that teaches others after 0.58 half-lives.
    vote_half_life_days: float = Field(90.0, gt=0)

    # HTTP API.
    # Origins other than the API's own that browsers may call it from (CORS). None by default:
    # the API serves the page itself. In the cloud API Gateway answers CORS instead ("[]").
    allowed_origins: list[str] = []
    # Where clients reach the API (e.g. https://photos.example.com): result URLs start with it.
    # Unset, they start with the request's own address when its Host names one of
    # `trusted_hosts` (this machine, by default), else they are paths from the root
    # (/api/images/...): never built from a Host header any client may invent.
    public_url: str | None = None
    # Where the bucket's thumbnails/ are served as static content (CloudFront in front of the
    # bucket: docs/deploy.md), as a URL or a path from the root ("/thumbnails"): result
    # thumbnails then point there, <base>/<id>.jpg, and need no API request. Unset: through
    # the API (/api/images/<id>/thumbnail), locally and on a stack without CloudFront.
    thumbnail_base_url: str | None = None
    trusted_hosts: list[str] = ["localhost", "127.0.0.1", "::1"]
    # Origins besides its own that the page may show images from and upload to (the bucket,
    # in the cloud): added to the Content-Security-Policy's img-src and connect-src.
    page_origins: list[str] = []
    # HTTP connections of `imgsearch serve` (in the cloud API Gateway bounds them). Docs:
    # docs/reliability.md, "The HTTP API".
    # Processes of `imgsearch serve` (api/server.py `run_workers`): one serves at most a
    # core's worth of requests; each follows the others' uploads and votes within seconds,
    # as the cloud's instances do, where one process sees its own at once.
    http_workers: int = Field(1, ge=1)
    # Open at once; beyond, the connection idle longest is closed for the new one, or if none
    # is idle the new one gets 503 (api/server.py).
    http_max_connections: int = 200
    http_max_client_connections: int = 32  # open at once from one address
    http_backlog: int = 128  # accepted by the kernel, waiting for the server
    # Request bodies being received at once; beyond, 503. Each upload then holds one of the
    # API's 40 blocking threads (api/deps.BLOCKING_THREADS) while it waits to be searchable:
    # at most 32, so that searches always keep threads.
    http_max_bodies: int = Field(16, ge=1, le=32)
    # ... and from one client (its address, as votes count it): the page sends two uploads
    # at once; one address can then hold no more than a quarter of them.
    http_max_client_bodies: int = Field(4, ge=1)
    http_header_seconds: float = 10.0  # to send a request's headers, from their first byte
    http_body_seconds: float = 120.0  # to send a whole body: 25 MB at 210 KB/s (408)
    http_keep_alive_seconds: int = 5  # a connection sending nothing, new or between requests
    # for a client to take 64 KB of its answer, or the rest of it (6.4 KB/s); else dropped
    http_answer_seconds: float = 10.0
    # Answers waiting in a server process for clients that take none of them; beyond, those
    # that waited longest are dropped (an original is read whole: up to `max_image_bytes`).
    http_answer_bytes: int = Field(256 * 2**20, ge=0)
    # Kept per server process while nothing they show changes (api/kept.py; 0: none): whole
    # "more like this" pages up to these many bytes (their JSON, about 7 KB a page of 20
    # results, plus 512 bytes each for the key and the entry),
    # and each image's part of a result object (about 0.6 KB each: 12 MB; tracemalloc).
    http_kept_page_bytes: int = Field(16 * 2**20, ge=0)
    http_kept_results: int = Field(20_000, ge=0)
    # Who may change the collection: "api_key" checks the X-API-Key header against `api_key`
    # (locally generated on first start when unset); "gateway" trusts an authorizer in front
    # (API Gateway in the cloud) to have checked it already.
    auth: Literal["api_key", "gateway"] = "api_key"
    api_key: str | None = None
    votes_per_session_minute: int = 120
    votes_per_client_minute: int = 600
    # Votes are stored for good (1.4-2 KB each locally): the minute's limit alone lets one
    # address add 864,000 a day (1.2-1.7 GB). A day's 20,000 is far beyond a person's voting,
    # and bounds an address to 28-40 MB a day.
    votes_per_client_day: int = 20_000
    # Who a client is (clients.py): the socket peer's address, never X-Forwarded-For unless the
    # peer is one of these proxies (addresses or networks; in the environment a JSON list,
    # IMGSEARCH_TRUSTED_PROXIES='["10.0.0.0/8"]').
    trusted_proxies: list[str] = []
    # The key that turns client addresses into the ids votes store (raw addresses are never
    # stored). Unset: locally the data directory's client-secret file, made on first use; in
    # the cloud a secret kept in the feedback table, made on first use.
    client_secret: str | None = None

    @field_validator("ann_search_k")
    @classmethod
    def _search_k_is_annoys(cls, search_k: int) -> int:
        # The index reads any value below 1 as -1 (Annoy's default, without the floor of
        # nodes: reader.query_nodes), so a 0 meant as "the default" would quietly cost recall;
        # handed to Annoy, 0 would inspect nothing and below -1 everything.
        if search_k == 0:
            raise ValueError("ann_search_k is -1 (Annoy's default) or a number of nodes above 0")
        return search_k

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, proxies: list[str]) -> list[str]:
        cls._networks(proxies)  # refused at start, not at the first vote
        return proxies

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated as at start (`model_copy` validates nothing)."""
        # Unknown names are ignored in the environment (extra="ignore"): here a misspelt
        # change would be dropped without a word.
        if unknown := changes.keys() - type(self).model_fields.keys():
            raise TypeError(f"no such settings: {', '.join(sorted(unknown))}")
        return type(self).model_validate(self.model_dump() | changes)

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return self._networks(self.trusted_proxies)

    @staticmethod
    def _networks(proxies: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        networks = []
        for proxy in proxies:
            try:
                networks.append(ipaddress.ip_network(proxy.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an address or network"
                ) from None
        return networks

    @property
    def model_path(self) -> Path:
        return self.assets_dir / self.model

    @property
    def vocabulary_dir(self) -> Path:
        return self.assets_dir / self.vocabulary


@lru_cache
def get_settings() -> Settings:
    return Settings()
