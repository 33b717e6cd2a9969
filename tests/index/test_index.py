"""The sharded index: shard life cycle, manifest, removal, recall and neighbourhoods."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import boto3
import numpy as np
import pytest

from imgsearch.catalog import (
    CARRIED_SECONDS,
    NEAR_COPIES,
    NEAR_COPIES_MARK,
    QUEUED_EMBEDDING,
    ImageRecord,
    KeyRecord,
    ListEnd,
)
from imgsearch.config import MAX_DUPLICATE_DISTANCE, Settings
from imgsearch.index.builder import GARBAGE_INTERVAL
from imgsearch.index.manifest import read_manifest
from imgsearch.index.shards import SHARDS_PREFIX, build_key
from imgsearch.service import ImageSearch
from imgsearch.vectors import unit_rows

DIM = 48
CLASSES = 20


def clustered_vectors(n: int, seed: int = 0, clusters: int = 25) -> np.ndarray:
    """Features shaped like real ones: tight clusters around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    members = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.45, size=(n, DIM))
    return members.astype(np.float32)


def synthetic_ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:016x}" for i in range(start, start + n)]


def queue(service: ImageSearch, ids: list[str], vectors: np.ndarray) -> None:
    """Ingest without a model: store embeddings and records, queue them for the index."""
    rng = np.random.default_rng(len(ids))
    for image_id, vector in zip(ids, vectors, strict=True):
        logits = rng.normal(size=CLASSES)
        probabilities = np.exp(logits) / np.exp(logits).sum()
        service.parts.catalog.put_embedding(image_id, vector, probabilities.astype(np.float32))
        service.parts.catalog.create_image(
            ImageRecord(image_id, (f"{image_id}.jpg",), 10, 10, "JPEG", 1, ())
        )
        service.parts.catalog.mark_pending(image_id, "add")


def forget(service: ImageSearch, ids: list[str]) -> None:
    for image_id in ids:
        service.parts.catalog.update_image(image_id, _removed)
        service.parts.catalog.mark_pending(image_id, "remove")


def _removed(record: ImageRecord) -> ImageRecord:
    return replace(record, keys=(), status="removed")


@pytest.fixture
def index_service(tmp_path) -> ImageSearch:
    settings = Settings(data_dir=tmp_path / "data", shard_size=50, ann_trees=10, neighbours=10)
    service = ImageSearch(settings)
    service.parts.builder.writer.grace_seconds = 0.0
    service.parts.builder.garbage_interval = 0.0  # every build_index collects
    # Old builds are deleted at once: no merge may read them in the background (those tests
    # that merge say so).
    service.parts.builder.writer.merger.background = False
    return service


def test_shards_fill_then_seal_and_sealed_builds_never_change(index_service) -> None:
    service = index_service
    vectors = clustered_vectors(130)
    ids = synthetic_ids(130)
    sealed_builds: dict[str, str] = {}
    generations = []
    for start in range(0, 130, 30):
        queue(service, ids[start : start + 30], vectors[start : start + 30])
        report = service.build_index()
        assert report.added == len(ids[start : start + 30])
        manifest, _ = read_manifest(service.parts.storage.objects)
        generations.append(manifest.generation)
        for shard in manifest.shards:
            if shard.sealed:
                assert sealed_builds.setdefault(shard.id, shard.build) == shard.build
                assert shard.count == 50
    assert generations == sorted(set(generations))
    assert [(s.count, s.sealed) for s in manifest.shards] == [(50, True), (50, True), (30, False)]
    assert len(service.parts.index) == 130
    # Superseded builds are gone (grace 0), the current ones all present.
    stored = {info.key.split(".")[0] for info in service.parts.storage.objects.list(SHARDS_PREFIX)}
    assert stored == {f"{SHARDS_PREFIX}{s.id}/{s.build}" for s in manifest.shards}


def test_removal_masks_sealed_shards_and_rebuilds_the_open_one(index_service) -> None:
    service = index_service
    ids = synthetic_ids(70)
    queue(service, ids, clustered_vectors(70))
    service.build_index()
    gone = [ids[3], ids[60]]  # one in the sealed shard, one in the open shard
    forget(service, gone)
    report = service.build_index()
    assert report.removed == 2
    manifest, _ = read_manifest(service.parts.storage.objects)
    assert manifest.shards[0].deleted == (ids[3],)
    assert manifest.shards[1].count == 19 and not manifest.shards[1].deleted
    assert len(service.parts.index) == 68
    everything = service.parts.index.nearest(clustered_vectors(1, seed=9)[0], 70, exact=True)
    assert not {i for i, _ in everything} & set(gone)
    assert service.parts.index.locate(ids[3]) is None


def test_sealed_shards_are_merged_in_the_background_into_one_of_the_next_tier(
    index_service,
) -> None:
    service = index_service
    writer = service.parts.builder.writer
    writer.grace_seconds = 60.0  # readers (the merge's) keep the builds they loaded
    writer.merger.background = True
    vectors = unit_rows(clustered_vectors(230))
    ids = synthetic_ids(230)
    for start in range(0, 230, 40):  # sealed one by one, as uploads come
        queue(service, ids[start : start + 40], vectors[start : start + 40])
        service.build_index()
    writer.merger.wait(timeout=120)
    manifest, _ = read_manifest(service.parts.storage.objects)
    # 4 sealed shards of 50 merge, two by two, into one of 200; the open shard stays small.
    assert [(s.count, s.sealed) for s in manifest.shards] == [(200, True), (30, False)]
    index = service.parts.index
    index.refresh(force=True)
    assert index.shard_count == 2 and len(index) == 230
    assert list(index.image_ids(newest_first=False)) == ids  # insertion order kept
    for row in range(0, 230, 23):
        assert index.nearest(vectors[row], 1)[0][0] == ids[row]
    writer.grace_seconds = 0.0
    service.parts.builder.collect_garbage()
    stored = {info.key.split(".")[0] for info in service.parts.storage.objects.list(SHARDS_PREFIX)}
    assert stored == {f"{SHARDS_PREFIX}{s.id}/{s.build}" for s in manifest.shards}


def test_merges_leave_one_sealed_shard_a_tier_up_to_the_largest() -> None:
    """A query pays per shard: sealing shard after shard, the merges leave as many shards as
    the ones in the count of open-shard sizes written in binary, none larger than a merge
    may make (1M images: 640k + 320k + 40k)."""
    from imgsearch.index.manifest import ShardEntry
    from imgsearch.index.tiers import MAX_SHARD_SIZE, merge_plan

    base = 10_000
    shards: list[ShardEntry] = []
    for sealed in range(1, 101):
        shards.append(ShardEntry("s", "b", base, sealed=True))
        while (plan := merge_plan(shards, base)) is not None:
            merged = sum(entry.count for entry in shards[plan[0] : plan[1]])
            shards[plan[0] : plan[1]] = [ShardEntry("s", "b", merged, sealed=True)]
        sizes = [entry.count for entry in shards]
        assert sum(sizes) == sealed * base and max(sizes) <= MAX_SHARD_SIZE
        if sealed * base <= 2 * MAX_SHARD_SIZE:
            assert len(sizes) == bin(sealed).count("1"), sizes
        if sealed == 10:
            assert sizes == [80_000, 20_000]
    assert sizes == [640_000, 320_000, 40_000]


def test_a_shard_too_large_to_merge_leaves_the_next_of_its_tier_to_merge() -> None:
    """A merged shard above its tier's nominal size cannot merge with the next of its tier
    under MAX_SHARD_SIZE; those after it still merge with each other."""
    from imgsearch.index.manifest import ShardEntry
    from imgsearch.index.tiers import MAX_SHARD_SIZE, MERGE_FACTOR, merge_plan, tier

    base = 10_000
    nominal = MAX_SHARD_SIZE // MERGE_FACTOR
    larger = ShardEntry("s0", "b", nominal + base // 2, sealed=True)
    same = [ShardEntry(f"s{i}", "b", nominal, sealed=True) for i in range(1, MERGE_FACTOR + 1)]
    assert len({tier(entry.count, base) for entry in [larger, *same]}) == 1
    assert merge_plan([larger, *same[:-1]], base) is None  # too large together
    assert merge_plan([larger, *same], base) == (1, MERGE_FACTOR + 1)


def test_merges_leave_no_neighbours_of_one_tier_that_fit_in_one_shard() -> None:
    """Removals give merged shards other sizes than their tiers': 3,500 images removed from the
    first shard before the second is sealed make one of 16.5k (tier 0), which takes the next
    10k, and so on up to 326.5k, too large to merge with a 320k. Sealing on to 2M, whenever the
    merges stop, no MERGE_FACTOR neighbours of one tier fit in one shard."""
    from imgsearch.index.manifest import ShardEntry
    from imgsearch.index.tiers import MAX_SHARD_SIZE, MERGE_FACTOR, merge_plan, tier

    base = 10_000
    removed = tuple(f"{i:016x}" for i in range(3_500))
    shards = [ShardEntry("s", "b", base, sealed=True, deleted=removed)]
    for _ in range(199):
        shards.append(ShardEntry("s", "b", base, sealed=True))
        while (plan := merge_plan(shards, base)) is not None:
            merged = sum(entry.live_count for entry in shards[plan[0] : plan[1]])
            shards[plan[0] : plan[1]] = [ShardEntry("s", "b", merged, sealed=True)]
        sizes = [entry.live_count for entry in shards]
        for start in range(len(shards) - MERGE_FACTOR + 1):
            group = shards[start : start + MERGE_FACTOR]
            one_tier = len({tier(entry.count, base) for entry in group}) == 1
            assert not one_tier or sum(e.live_count for e in group) > MAX_SHARD_SIZE, sizes
    assert sum(sizes) == 200 * base - len(removed)


def test_a_merge_keeps_the_projection_its_shards_share_and_a_query_projects_once(
    index_service, monkeypatch
) -> None:
    from imgsearch.index import shards

    # A projection fitted on 40 rows serves a merge of any size (`Projection.fits`), and 8
    # components of 5 clusters keep as much of the merged images' variance as a new fit.
    monkeypatch.setattr(shards, "PROJECTION_SAMPLE", 40)
    monkeypatch.setattr(shards, "PROJECTED_DIMS", 8)
    service = index_service
    vectors = unit_rows(clustered_vectors(230, clusters=5))
    ids = synthetic_ids(230)
    for start in range(0, 230, 40):
        queue(service, ids[start : start + 40], vectors[start : start + 40])
        service.build_index()
    index = service.parts.index
    shared = {shard.projection.digest for shard in index.shards}
    assert len(shared) == 1 and index.shard_count == 5  # each reused the sealed one before it
    service.parts.builder.writer.merger.merge_all()
    index.refresh(force=True)
    assert [len(shard.ids) for shard in index.shards] == [200, 30]
    assert {shard.projection.digest for shard in index.shards} == shared
    assert len(index._snapshot.components) == index.shards[0].projection.dims
    for row in range(0, 230, 23):
        assert index.nearest(vectors[row], 1)[0][0] == ids[row]


def test_a_merge_keeps_a_shared_projection_only_while_it_serves_the_merged_images(
    monkeypatch,
) -> None:
    from types import SimpleNamespace

    from imgsearch.index import shards as shard_builds
    from imgsearch.index import tiers
    from imgsearch.index.shards import Projection, ShardData, held_out_sample

    monkeypatch.setattr(shard_builds, "PROJECTION_SAMPLE", 40)  # rows a fit leaves out: 60
    monkeypatch.setattr(shard_builds, "PROJECTED_DIMS", 8)
    features = unit_rows(clustered_vectors(100, clusters=5))
    data = ShardData(synthetic_ids(100), features, np.zeros((100, CLASSES), np.float32))
    serving = Projection.fit(features[::2], 8)
    other_content = unit_rows(clustered_vectors(100, seed=3, clusters=5))
    drifted = Projection.fit(other_content, 8)
    too_few_rows = Projection.fit(features[:30], 8)  # a merge wants one fitted on 40 rows

    def shards(*projections: Projection) -> list:
        return [SimpleNamespace(projection=projection) for projection in projections]

    assert tiers._merged_projection(shards(serving, serving), data) is serving
    # Equal projections loaded from two builds are two objects.
    twin = Projection.fit(features[::2], 8)
    assert tiers._merged_projection(shards(serving, twin), data) is serving
    assert tiers._merged_projection(shards(serving, drifted), data) is None
    assert tiers._merged_projection(shards(too_few_rows, too_few_rows), data) is None
    # Fitted on other content: a fit on the merged images keeps far more of their variance.
    refitted = tiers._merged_projection(shards(drifted, drifted), data)
    assert refitted is not None and refitted.digest not in {drifted.digest, serving.digest}
    sample = held_out_sample(features)
    assert refitted.kept_variance(sample) > drifted.kept_variance(sample) / 0.97


def test_garbage_is_collected_at_most_once_a_minute_in_a_process(index_service) -> None:
    """Each collection lists every stored build (a LIST request per 1,000 on S3): the
    server's rounds (every 5 s) and the embed function's batches do not list each time."""
    service = index_service
    builder = service.parts.builder
    builder.garbage_interval = GARBAGE_INTERVAL
    listed = []
    store = service.parts.storage.objects
    listing = store.list
    store.list = lambda prefix: listed.append(prefix) or listing(prefix)
    ids = synthetic_ids(40)
    for start in (0, 20):
        queue(service, ids[start : start + 20], clustered_vectors(40)[start : start + 20])
        service.build_index()
    assert listed.count(SHARDS_PREFIX) == 1
    builder._garbage_collected_at -= GARBAGE_INTERVAL  # a minute later
    service.build_index()
    assert listed.count(SHARDS_PREFIX) == 2


def test_a_merge_whose_first_parts_were_collected_is_not_published(index_service, monkeypatch):
    """Garbage collection deletes a build's parts one by one, and may start on a merged
    build's first parts while its forest (written last) is still being written: a manifest
    naming it would name missing files, so the merge gives up and the index stays whole."""
    import imgsearch.index.tiers as tiers

    service = index_service
    merger = service.parts.builder.writer.merger
    ids = synthetic_ids(200)
    queue(service, ids, clustered_vectors(200))
    service.build_index()
    before = read_manifest(service.parts.storage.objects)[0]
    write_build = tiers.write_build

    def collected_meanwhile(store, shard_id, *args, **kwargs):
        built = write_build(store, shard_id, *args, **kwargs)
        store.delete(build_key(shard_id, built.id, "ids.json"))  # as a collection would
        return built

    monkeypatch.setattr(tiers, "write_build", collected_meanwhile)
    assert not merger.merge_once()
    assert read_manifest(service.parts.storage.objects)[0].shards == before.shards
    service.parts.index.refresh(force=True)
    assert len(service.parts.index) == 200


def test_a_removal_published_while_a_merge_runs_stays_removed(index_service, monkeypatch):
    import imgsearch.index.tiers as tiers

    service = index_service
    merger = service.parts.builder.writer.merger
    service.parts.builder.writer.grace_seconds = 60.0  # the merged build is not named yet
    sealed = 50 * tiers.MERGE_FACTOR  # shards of 50 that one merge takes
    ids = synthetic_ids(sealed)
    queue(service, ids, clustered_vectors(sealed))
    service.build_index()
    write_build = tiers.write_build
    gone = [ids[5], ids[-10]]  # in the first shard and the last

    def removal_meanwhile(*args, **kwargs):
        built = write_build(*args, **kwargs)
        forget(service, gone)
        assert service.build_index().removed == 2  # the builder publishes over the merge
        return built

    monkeypatch.setattr(tiers, "write_build", removal_meanwhile)
    assert merger.merge_once()
    manifest, _ = read_manifest(service.parts.storage.objects)
    assert [(s.count, s.sealed) for s in manifest.shards] == [(sealed, True)]
    assert manifest.shards[0].deleted == tuple(gone)
    assert len(service.parts.index) == sealed - 2
    assert gone[0] not in service.parts.index and gone[1] not in service.parts.index
    assert service.parts.catalog.published().generation == manifest.generation


def test_a_merge_whose_shards_were_replaced_meanwhile_is_given_up(index_service, monkeypatch):
    import imgsearch.index.tiers as tiers

    service = index_service
    merger = service.parts.builder.writer.merger
    service.parts.builder.writer.grace_seconds = 60.0
    queue(service, synthetic_ids(200), clustered_vectors(200))
    service.build_index()
    write_build = tiers.write_build
    # The reindex makes a new builder, writer and merger, which the fixture did not keep in
    # the foreground: their merger would merge the rebuilt shards in a background thread,
    # call this very `write_build` there, reindex again and swap an unloaded index in under
    # the asserts below (0 images: seen on a loaded machine). No background merges here.
    monkeypatch.setattr(tiers.Merger, "start", lambda self: None)

    def rebuilt_meanwhile(*args, **kwargs):
        built = write_build(*args, **kwargs)
        service.reindex()  # the same images, in new builds
        return built

    monkeypatch.setattr(tiers, "write_build", rebuilt_meanwhile)
    assert not merger.merge_once()
    manifest, _ = read_manifest(service.parts.storage.objects)
    assert [s.count for s in manifest.shards] == [50, 50, 50, 50]
    assert len(service.parts.index) == 200


def test_a_merge_published_while_the_builder_reads_the_manifest_is_kept(index_service, monkeypatch):
    """A merge (a background thread) refreshes the builder's index just as the builder reads
    the manifest it will replace: the builder's compare-and-swap must fail and be retried on
    the merged manifest, not pair the old manifest with the merged one's ETag."""
    import imgsearch.index.tiers as tiers
    from imgsearch.index.reader import Index

    service = index_service
    writer = service.parts.builder.writer
    writer.grace_seconds = 60.0
    sealed = 50 * tiers.MERGE_FACTOR  # shards of 50 that one merge takes
    first = synthetic_ids(sealed)
    queue(service, first, clustered_vectors(sealed))
    service.build_index()
    index = service.parts.index
    merge_now = []

    class MergedMeanwhile(Index):
        @property
        def _snapshot(self):
            snapshot = self.__dict__["_snapshot"]
            if merge_now:
                merge_now.clear()
                assert writer.merger.merge_once()  # refreshes this index: a new snapshot
            return snapshot

        @_snapshot.setter
        def _snapshot(self, value):
            self.__dict__["_snapshot"] = value

    monkeypatch.setattr(index, "__class__", MergedMeanwhile)
    publish = writer.publish
    publications = []

    def publishing(*args, **kwargs):
        publications.append(True)
        if len(publications) == 1:  # the merge comes once
            merge_now.append(True)
        return publish(*args, **kwargs)

    monkeypatch.setattr(writer, "publish", publishing)
    more = synthetic_ids(10, start=sealed)
    queue(service, more, clustered_vectors(sealed + 10)[sealed:])
    assert service.build_index().added == 10
    assert len(publications) == 2  # the first one's compare-and-swap failed
    manifest, _ = read_manifest(service.parts.storage.objects)
    assert [(s.count, s.sealed) for s in manifest.shards] == [(sealed, True), (10, False)]
    assert len(service.parts.index) == sealed + 10


def test_an_open_shard_reuses_its_projection_until_it_doubles(index_service) -> None:
    service = index_service
    vectors = clustered_vectors(44)
    ids = synthetic_ids(44)
    fitted = []
    for start, stop in [(0, 10), (10, 15), (15, 20), (20, 22), (22, 44)]:
        queue(service, ids[start:stop], vectors[start:stop])
        service.build_index()
        fitted.append(service.parts.index.shards[-1].projection.fitted_rows)
    assert fitted == [10, 10, 10, 22, 22]  # refitted once more than twice the rows


def test_approximate_search_recalls_the_exact_neighbours(index_service) -> None:
    service = index_service
    vectors = clustered_vectors(600)
    queue(service, synthetic_ids(600), vectors)
    service.build_index()
    queries = unit_rows(clustered_vectors(50, seed=7))
    overlap = 0
    for query in queries:
        exact = {i for i, _ in service.parts.index.nearest(query, 20, exact=True)}
        approximate = {i for i, _ in service.parts.index.nearest(query, 20)}
        overlap += len(exact & approximate)
    assert overlap / (20 * len(queries)) >= 0.99


def brute_force_agreement(service: ImageSearch) -> float:
    """Share of stored neighbour entries that brute force agrees with."""
    agree = total = 0
    for image_id in service.parts.index.image_ids():
        exact = service.parts.index.nearest(
            service.parts.index.vector(image_id), 10, exclude={image_id}, exact=True
        )
        stored, _ = service.parts.catalog.neighbours(image_id)
        agree += len({i for i, _ in stored} & {i for i, _ in exact})
        total += len(exact)
    return agree / total


def test_neighbour_lists_match_brute_force_after_adds_and_removes(index_service) -> None:
    service = index_service
    rng = np.random.default_rng(3)
    vectors = clustered_vectors(400, seed=3)
    ids = synthetic_ids(400)
    present: list[str] = []
    cursor = 0
    for _ in range(8):
        batch = int(rng.integers(10, 60))
        queue(service, ids[cursor : cursor + batch], vectors[cursor : cursor + batch])
        present += ids[cursor : cursor + batch]
        cursor += batch
        if len(present) > 40:
            gone = list(rng.choice(present, size=int(rng.integers(1, 12)), replace=False))
            forget(service, gone)
            present = [i for i in present if i not in gone]
        service.build_index()
    assert len(service.parts.index) == len(present)
    assert brute_force_agreement(service) >= 0.99


@pytest.mark.model  # `imgsearch reindex` builds with the configured model
def test_an_index_of_an_older_format_is_refused_then_rebuilt(tmp_path, embedder, vocabulary):
    from support.demo import demo_image
    from support.services import make_service

    from imgsearch.cli import main
    from imgsearch.index.manifest import MANIFEST_KEY, IndexFormatError

    old = make_service(tmp_path / "data", embedder, vocabulary)
    ids = {old.add(f"{c}.jpg", demo_image(c)).image_id for c in ("pizza", "lotus", "chair")}
    stored = old.parts.storage.objects.get(MANIFEST_KEY)
    manifest = json.loads(stored.data)
    manifest["format"] = 1
    old.parts.storage.objects.put(MANIFEST_KEY, json.dumps(manifest).encode(), if_match=stored.etag)

    with pytest.raises(IndexFormatError, match="imgsearch reindex"):
        make_service(tmp_path / "data", embedder, vocabulary).count()
    assert main(["reindex", "--data-dir", str(tmp_path / "data")]) == 0
    rebuilt = make_service(tmp_path / "data", embedder, vocabulary)
    assert set(rebuilt.parts.index.image_ids()) == ids
    assert rebuilt.search_text("pizza", limit=1).hits[0].image_id in ids


def test_a_builder_with_a_goal_stops_when_it_is_met(index_service) -> None:
    """An upload request builds until its own image is in, not for everyone after it."""
    service = index_service
    ids = synthetic_ids(3)
    queue(service, ids, clustered_vectors(3))
    service.parts.builder.batch_size = 1
    first_in = service.parts.builder.run(
        until=lambda: service.parts.catalog.image(ids[0]).status != "pending"
    )
    assert first_in.added == 1 and len(service.parts.catalog.pending()) == 2
    drained = service.parts.builder.run()
    assert drained.added == 2 and not service.parts.catalog.pending()


def slowed(service: ImageSearch, seconds: float, monkeypatch, then=None) -> None:
    """Each batch's neighbour-list update takes `seconds` more (and calls `then` midway)."""
    update = service.parts.neighbourhoods.update

    def slow(*args, **kwargs) -> None:
        time.sleep(seconds / 2)
        if then is not None:
            then()
        time.sleep(seconds / 2)
        update(*args, **kwargs)

    monkeypatch.setattr(service.parts.neighbourhoods, "update", slow)


def test_a_build_with_a_budget_stops_in_time_and_leaves_the_rest_queued(
    index_service, monkeypatch
) -> None:
    service = index_service
    ids = synthetic_ids(40)
    queue(service, ids, clustered_vectors(40))
    service.parts.builder.batch_size = 4
    slowed(service, 0.4, monkeypatch)  # a batch takes at least 0.4 s: 4 fit in 1.6 s at most

    started = time.monotonic()
    report = service.build_index(budget=1.6)
    took = time.monotonic() - started
    # Batches shrink as time runs out: each gets at most half of what is left.
    assert report.out_of_time and 1 <= report.batches <= 4
    assert report.batches <= report.added <= 4 * report.batches
    assert len(service.parts.catalog.pending()) == 40 - report.added
    assert took < 1.6 + 1.0, took  # the last batch started only if it fitted
    assert service.parts.catalog.table.get("lease", "indexer") is None  # released

    monkeypatch.undo()
    drained = service.build_index()  # no budget: until the queue is empty
    assert not drained.out_of_time and drained.added == 40 - report.added
    assert set(service.parts.index.image_ids()) == set(ids)


def test_the_lease_is_renewed_while_a_batch_outlasts_it(index_service, monkeypatch) -> None:
    from imgsearch.index.builder import Lease

    service = index_service
    queue(service, synthetic_ids(3), clustered_vectors(3))
    service.parts.builder.lease_seconds = 0.6
    table = service.parts.catalog.table
    taken_over = []
    # Midway through a 1.5 s batch the lease, 0.6 s long, has been renewed by the heartbeat:
    # another builder cannot take it.
    slowed(
        service, 1.5, monkeypatch, lambda: taken_over.append(Lease(table, "indexer", 1).acquire())
    )
    report = service.build_index()
    assert taken_over == [False]
    assert report.added == 3 and not service.parts.catalog.pending()


def test_a_builder_whose_lease_was_taken_over_publishes_nothing(index_service, monkeypatch):
    import imgsearch.index.shard_writer as builder_module  # where the shard builds are written

    service = index_service
    ids = synthetic_ids(3)
    queue(service, ids, clustered_vectors(3))
    service.parts.builder.lease_seconds = 0.6
    table = service.parts.catalog.table
    write_build = builder_module.write_build

    def taken_over_meanwhile(*args, **kwargs):
        built = write_build(*args, **kwargs)
        # Another builder took the lease over (this one seemed dead: a frozen sandbox).
        table.put("lease", "indexer", {"owner": "elsewhere/boot:1.1:x", "expires_at": 1e12})
        time.sleep(0.5)  # the heartbeat's next beat finds it gone
        return built

    monkeypatch.setattr(builder_module, "write_build", taken_over_meanwhile)
    generation = read_manifest(service.parts.storage.objects)[0].generation
    report = service.build_index()
    assert report.added == 0 and report.batches == 0
    assert read_manifest(service.parts.storage.objects)[0].generation == generation
    assert {item.image_id for item in service.parts.catalog.pending()} == set(ids)
    assert table.get("lease", "indexer")["owner"] == "elsewhere/boot:1.1:x"  # not released


def test_both_merges_of_posting_lists_rank_alike(index_service, monkeypatch) -> None:
    """Keyword scores merge the classes' posting lists per row listed (few postings for the
    shard's size) or over every row (many): the same ranking and scores either way, removed
    images left out, equal to the weighted sums over each image's posted probabilities."""
    from imgsearch.index import reader, shards
    from imgsearch.index.shards import posted_probabilities

    monkeypatch.setattr(reader, "RANKED_ENTRIES", 0)  # each ranking merged again
    ids, vectors = synthetic_ids(120), clustered_vectors(120, seed=4)
    queue(index_service, ids, vectors)
    index_service.build_index()
    forget(index_service, ids[:10])
    index_service.build_index()
    index = index_service.parts.index
    probabilities = np.stack([index_service.parts.catalog.embedding(i)[1] for i in ids])
    posted = posted_probabilities(probabilities.astype(np.float16))
    for weights in ({3: 1.0}, {3: 1.0, 7: 0.5, 11: 0.25}, {c: 1.0 for c in range(CLASSES)}):
        rankings = []
        for ratio in (0, 10**9):  # every merge over all rows; every merge per row listed
            monkeypatch.setattr(shards, "SPARSE_MERGE_RATIO", ratio)
            rankings.append(index.ranked_by_classes(weights, 200))
        assert rankings[0] == rankings[1]
        scores = sum(w * posted[:, c] for c, w in weights.items())
        live = [r for r in np.argsort(-scores, kind="stable") if r >= 10 and scores[r] > 0]
        assert [i for i, _ in rankings[0]] == [ids[r] for r in live]
        assert np.allclose([s for _, s in rankings[0]], scores[live], atol=1e-5)


def _keyword_ranking(service: ImageSearch, ids: list[str], weights: dict[int, float]) -> list:
    """Brute force: live images by their weighted posted probabilities, best first (equal
    scores in id order, which is row order here)."""
    from imgsearch.index.shards import posted_probabilities

    index = service.parts.index
    live = [i for i in ids if i in index]
    probabilities = np.stack([service.parts.catalog.embedding(i)[1] for i in live])
    posted = posted_probabilities(probabilities.astype(np.float16))
    scores = sum(w * posted[:, c] for c, w in weights.items())
    return [live[r] for r in np.argsort(-scores, kind="stable") if scores[r] > 0]


def test_kept_keyword_rankings_answer_as_fresh_ones_and_follow_the_index(
    index_service, monkeypatch
) -> None:
    """A weighting asked again on the same index is answered from its kept ranking, without
    merging posting lists again, for any page size and exclusions; a publication (new images,
    a removal) is answered from the new index at once; a ranking asked deeper than was kept is
    merged again."""
    from imgsearch.index import reader
    from imgsearch.index.shards import Shard

    service = index_service
    ids, vectors = synthetic_ids(120), clustered_vectors(120, seed=5)
    queue(service, ids, vectors)
    service.build_index()
    index = service.parts.index
    merges = []
    merge = Shard.class_scores
    monkeypatch.setattr(Shard, "class_scores", lambda s, w: merges.append(1) or merge(s, w))
    weights = {3: 1.0, 7: 0.5}
    expected = _keyword_ranking(service, ids, weights)
    # Kept: the whole ranking of these 120 images (up to 4 pages of 120 are).
    assert [i for i, _ in index.ranked_by_classes(weights, 120)] == expected
    merged = len(merges)
    assert merged == len(index.shards)
    hidden = set(expected[:3])
    for k, exclude in ((5, set()), (10, hidden), (200, hidden), (1, {expected[0]})):
        found = index.ranked_by_classes(dict(reversed(weights.items())), k, exclude=exclude)
        assert [i for i, _ in found] == [i for i in expected if i not in exclude][:k]
    assert len(merges) == merged  # all from the kept ranking

    forget(service, expected[:2])  # the two best leave
    newcomers = synthetic_ids(5, start=1000)
    queue(service, newcomers, clustered_vectors(5, seed=6))
    service.build_index()
    expected = _keyword_ranking(service, ids + newcomers, weights)
    assert [i for i, _ in index.ranked_by_classes(weights, 200)] == expected
    assert len(merges) > merged  # the new index merged again

    monkeypatch.setattr(reader, "RANKED_DEPTH", 4)
    other = {5: 1.0}
    expected = _keyword_ranking(service, ids + newcomers, other)
    assert [i for i, _ in index.ranked_by_classes(other, 2)] == expected[:2]
    deeper = index.ranked_by_classes(other, 3, exclude=set(expected[:3]))  # 6 > the 4 kept
    assert [i for i, _ in deeper] == expected[3:6]


def test_photo_counts_from_posting_lists_are_those_of_rankings(index_service) -> None:
    """Counting a class's photos off the shards' posting lists gives what ranking the class
    and counting its scores over the threshold gives (the engines without posting lists),
    capped, removed images left out, for any threshold."""
    from imgsearch.index.base import SearchIndex

    service = index_service
    ids = synthetic_ids(120)
    queue(service, ids, clustered_vectors(120, seed=7))
    service.build_index()
    forget(service, ids[:15])
    service.build_index()
    index = service.parts.index
    classes = list(range(CLASSES))
    for threshold, cap in ((0.05, 200), (0.2, 200), (0.05, 7), (0.3, 200)):
        counted = index.class_photo_counts(classes, threshold, cap)
        assert counted == SearchIndex.class_photo_counts(index, classes, threshold, cap)
        assert any(n > 0 for n in counted.values())


def test_the_candidate_budget_grows_with_the_collection(index_service, monkeypatch) -> None:
    """Past BUDGET_REFERENCE live images the shards propose more candidates between them
    (recall at a fixed budget falls as the collection grows: 0.83 at 1M with 200)."""
    import imgsearch.index.reader as reader
    from imgsearch.index.shards import Shard

    service = index_service
    ids, vectors = synthetic_ids(240), clustered_vectors(240)
    queue(service, ids, vectors)
    service.build_index()
    index = service.parts.index
    index.refresh(force=True)
    asked: list[int] = []
    propose = Shard.candidates_of_projected

    def counting(self, projected, count, search_k):
        asked.append(count)
        return propose(self, projected, count, search_k)

    monkeypatch.setattr(Shard, "candidates_of_projected", counting)
    assert len(set(index._snapshot.projection_of_shard)) == 1  # the shards share one projection
    index.nearest(unit_rows(vectors[:1])[0], 5, candidates=30)
    at_reference = max(asked)
    monkeypatch.setattr(reader, "BUDGET_REFERENCE", 60)  # 240 images: 4x the reference
    asked.clear()
    index.nearest(unit_rows(vectors[:1])[0], 5, candidates=30)
    assert reader.budget_growth(240) == 4**reader.BUDGET_GROWTH
    # Each shard may propose the whole budget, the shards' shares (each rounded up) added
    # up: at least the grown budget.
    assert min(asked) >= math.ceil(30 * 4**reader.BUDGET_GROWTH)
    assert min(asked) > at_reference


def recall_against_exact(index, queries: np.ndarray, k: int = 10) -> float:
    found = 0
    for query in queries:
        exact = {i for i, _ in index.nearest(query, k, exact=True)}
        found += len(exact & {i for i, _ in index.nearest(query, k)})
    return found / (k * len(queries))


@pytest.fixture
def coarse_projection(monkeypatch) -> None:
    """Forests over 24 of the 48 dimensions: Annoy's candidates are then approximate, as a
    1280-d collection's 128 components make them."""
    from imgsearch.index import shards

    monkeypatch.setattr(shards, "PROJECTED_DIMS", 24)


def test_the_grown_budget_keeps_recall_as_the_collection_grows(
    index_service, coarse_projection, monkeypatch
) -> None:
    """A budget that recalls the exact neighbours in a collection of BUDGET_REFERENCE images
    recalls fewer in one 8 times bigger, unless it grows with it (reader.budget_growth)."""
    import imgsearch.index.reader as reader

    vectors = clustered_vectors(800, seed=11)
    queue(index_service, synthetic_ids(800), vectors)
    index_service.build_index()
    index_service.parts.builder.writer.merger.merge_all()  # one shard of 800, as tiers do
    index = index_service.parts.index
    index.refresh(force=True)
    index.candidates = 30
    queries = unit_rows(clustered_vectors(40, seed=12))
    monkeypatch.setattr(reader, "BUDGET_REFERENCE", 800)  # as if 800 were the reference
    fixed = recall_against_exact(index, queries)
    monkeypatch.setattr(reader, "BUDGET_REFERENCE", 100)  # 8x the reference: x4.3 candidates
    grown = recall_against_exact(index, queries)
    assert fixed < 0.9
    assert grown >= 0.99


def test_a_shard_holding_a_querys_subject_proposes_more_than_its_share(
    index_service, coarse_projection, monkeypatch
) -> None:
    """Uploads come in bursts of one subject, so one shard may hold all of a query's nearest
    images while its share of the collection is small. The candidates are taken across the
    shards by projected distance, so that shard proposes most of the budget (each shard's
    share alone recalled less of the exact answer)."""
    import imgsearch.index.reader as reader

    rng = np.random.default_rng(21)
    background = clustered_vectors(150, seed=20)
    queue(index_service, synthetic_ids(150), background)
    index_service.build_index()  # three sealed shards of 50
    centre = rng.normal(size=DIM)
    burst = centre + rng.normal(scale=0.45, size=(50, DIM))
    queue(index_service, synthetic_ids(50, start=150), burst.astype(np.float32))
    index_service.build_index()  # the burst: a shard of its own
    index = index_service.parts.index
    index.refresh(force=True)
    assert [len(shard.ids) for shard in index.shards] == [50, 50, 50, 50]
    burst_shard = next(n for n, shard in enumerate(index.shards) if "0" * 14 + "96" in shard.ids)
    index.candidates = 40  # a share of 10 each, the 10 a query asks for
    queries = unit_rows((centre + rng.normal(scale=0.45, size=(30, DIM))).astype(np.float32))
    proposed: list[int] = []
    cosines = reader._cosines

    def counting(found, vector):
        proposed.append(len(found.of_shards()[burst_shard][1]))
        return cosines(found, vector)

    monkeypatch.setattr(reader, "_cosines", counting)
    assert recall_against_exact(index, queries) >= 0.99
    # Far more than the burst shard's share of the budget: nearly all of it.
    assert min(proposed) > 30


def test_a_shard_of_another_projection_does_not_crowd_out_the_others_candidates(
    index_service, coarse_projection, monkeypatch
) -> None:
    """A shard refitted on other content (as a merge refits for drifted content) keeps of a
    query's offset only what its own components span, so by projected distance alone its
    images look nearer than the other shards' and would crowd their neighbours out of the
    candidates taken across shards. The query's residual under each projection, added to
    its distances, keeps them on one scale."""
    from imgsearch.index.shards import Projection

    rng = np.random.default_rng(21)
    background = clustered_vectors(150, seed=20)
    queue(index_service, synthetic_ids(150), background)
    index_service.build_index()  # three sealed shards of 50, one projection
    monkeypatch.setattr(Projection, "fits", lambda self, features: False)
    burst = rng.normal(size=DIM) + rng.normal(scale=0.45, size=(50, DIM))
    queue(index_service, synthetic_ids(50, start=150), burst.astype(np.float32))
    index_service.build_index()  # the burst: a shard of its own, with its own projection
    index = index_service.parts.index
    index.refresh(force=True)
    assert len(set(index._snapshot.projection_of_shard)) == 2
    index.candidates = 40  # a share of 10 each, the 10 a query asks for
    noise = np.random.default_rng(3).normal(scale=0.3, size=(40, DIM))
    queries = unit_rows((clustered_vectors(40, seed=20) + noise).astype(np.float32))
    # Taken across all four shards by projected distance alone: 0.70.
    assert recall_against_exact(index, queries) >= 0.95


def test_neighbour_lists_are_stored_packed_and_read_back_equal(index_service) -> None:
    """A list is stored as two strings (decoding 50 values one by one cost the builder about
    a millisecond a list on DynamoDB) and reads back equal, distances included (so that an
    unchanged list is seen as unchanged); lists stored as lists of values still read."""
    catalog = index_service.parts.catalog
    rng = np.random.default_rng(3)
    ids = synthetic_ids(51)
    neighbours = [
        (i, round(float(d), 6)) for i, d in zip(ids[1:], np.sort(rng.random(50)), strict=True)
    ]
    neighbours[0] = (ids[1], 1e-06)  # (written in exponent notation)
    catalog.put_neighbour_lists({ids[0]: (neighbours, 0), ids[1]: ([], 0)})
    item = catalog.table.get(f"image#{ids[0]}", "neighbours")
    assert isinstance(item["ids"], str) and isinstance(item["distances"], str)
    read = {i: (s.neighbours, s.version) for i, s in catalog.stored_lists(ids[:2]).items()}
    assert read == {ids[0]: (neighbours, 1), ids[1]: ([], 1)}
    catalog.table.put(
        f"image#{ids[2]}",
        "neighbours",
        {"ids": [i for i, _ in neighbours], "distances": [d for _, d in neighbours]},
    )
    assert catalog.neighbours(ids[2])[0] == neighbours
    # As the builder reads them: each list's length and last distance from its distances
    # alone, and the ids without decoding the rest.
    stored = catalog.stored_lists(ids[:3])
    ends = catalog.list_ends([*ids[:3], "f" * 16])  # (one without a list)
    for image_id in (ids[0], ids[2]):  # packed, and as lists of values
        assert stored[image_id].ids == [i for i, _ in neighbours]
        assert ends[image_id] == ListEnd(50, neighbours[-1][1])
        assert stored[image_id].neighbours == neighbours
    assert stored[ids[1]].ids == [] and ends[ids[1]] == ListEnd(0, None)
    assert set(ends) == set(ids[:3])
    # numpy's floats (whose repr is "np.float64(...)") are written as plain numbers too
    as_numpy = [(i, np.float64(d)) for i, d in neighbours[:3]]
    catalog.put_neighbour_lists({ids[3]: (as_numpy, 0)})
    assert catalog.neighbours(ids[3])[0] == neighbours[:3]


def test_near_copy_lists_are_written_again_only_where_they_change(index_service) -> None:
    """A list written again over the list it replaces writes its near-copy list only if its
    near copies changed (most lists a new image enters gain none); otherwise as before."""
    catalog = index_service.parts.catalog
    catalog.mark_near_copy_lists_complete()  # (a collection whose near-copy lists all are)
    ids = synthetic_ids(6)
    first = [(ids[1], 0.05), (ids[2], 0.4)]
    catalog.put_neighbour_lists({ids[0]: (first, 0)})
    assert catalog.near_copy_lists() == {ids[0]: [(ids[1], 0.05)]}
    written: list[str] = []
    put_many = catalog.table.put_many

    def recording(puts):  # type: ignore[no-untyped-def]
        written.extend(put.pk for put in puts)
        put_many(puts)

    catalog.table.put_many = recording
    farther = [(ids[1], 0.05), (ids[3], 0.3), (ids[2], 0.4)]  # a far neighbour more
    catalog.put_neighbour_lists({ids[0]: (farther, 1)}, replacing={ids[0]: first})
    assert written == [f"image#{ids[0]}"]
    assert catalog.neighbours(ids[0]) == (farther, 2)
    nearer = [(ids[4], 0.01), *farther]  # a near copy more
    catalog.put_neighbour_lists({ids[0]: (nearer, 2)}, replacing={ids[0]: farther})
    assert catalog.near_copy_lists() == {ids[0]: [(ids[4], 0.01), (ids[1], 0.05)]}
    written.clear()
    catalog.put_neighbour_lists({ids[0]: (nearer, 3)})  # nothing to compare with: written
    assert sorted(written) == sorted([NEAR_COPIES, f"image#{ids[0]}"])
    # A collection whose near-copy lists are not all written yet, or were for another
    # threshold: each written with its list.
    mark = catalog.table.get(NEAR_COPIES_MARK, "complete")
    assert mark is not None
    catalog.table.put(NEAR_COPIES_MARK, "complete", {"at": mark["at"], "max_distance": 0.01})
    written.clear()
    catalog.put_neighbour_lists({ids[0]: (nearer, 4)}, replacing={ids[0]: nearer})
    assert sorted(written) == sorted([NEAR_COPIES, f"image#{ids[0]}"])
    catalog.table.delete(NEAR_COPIES_MARK, "complete")
    written.clear()
    catalog.put_neighbour_lists({ids[0]: (nearer, 5)}, replacing={ids[0]: nearer})
    assert sorted(written) == sorted([NEAR_COPIES, f"image#{ids[0]}"])


def test_a_new_collection_has_its_near_copy_lists_complete_from_its_first_build(
    index_service,
) -> None:
    """With nothing indexed no list lacks its near-copy list: the first build marks them
    complete, even one that completes nothing (an upload's), so that no later build reads
    every list written until then to complete them."""
    catalog = index_service.parts.catalog
    queue(index_service, synthetic_ids(3), clustered_vectors(3))
    assert not catalog.near_copy_lists_complete()
    report = index_service.parts.builder.run(until=lambda: True)
    assert report.added == 3
    assert catalog.near_copy_lists_complete()
    assert not index_service.parts.builder.has_work()


def near_copies_in_lists(service: ImageSearch) -> dict[str, list[tuple[str, float]]]:
    """Each image's near copies as its stored neighbour list holds them (images with any)."""
    service.parts.index.refresh(force=True)
    lists = service.parts.catalog.stored_lists(service.parts.index.image_ids())
    return {
        image_id: near
        for image_id, stored in lists.items()
        if (near := [(i, d) for i, d in stored.neighbours if d <= MAX_DUPLICATE_DISTANCE])
    }


def older_collection(storage, tmp_path) -> tuple[Settings, dict[str, list[tuple[str, float]]]]:
    """45 images indexed, 5 of them near copies of others, then their near-copy lists and
    their mark forgotten: a collection indexed before near-copy lists were kept. Its settings
    (a service made from them is another process), and the near copies its lists hold."""
    settings = Settings(data_dir=tmp_path / "data", shard_size=64, ann_trees=10, neighbours=10)
    service = ImageSearch(settings, storage)
    vectors = clustered_vectors(40)
    copies = vectors[:5] + np.random.default_rng(1).normal(scale=0.01, size=(5, DIM))
    queue(service, synthetic_ids(45), np.vstack([vectors, copies]).astype(np.float32))
    service.build_index()
    catalog = service.parts.catalog
    expected = near_copies_in_lists(service)
    assert catalog.near_copy_lists() == expected and len(expected) >= 10
    assert catalog.near_copy_lists_complete()  # (the first build's: a new collection's)
    for image_id in expected:
        catalog.table.delete(NEAR_COPIES, image_id)
    catalog.table.delete(NEAR_COPIES_MARK, "complete")
    return settings, expected


def test_near_copy_completion_stops_within_its_budget_and_the_next_run_goes_on(
    storage, tmp_path, monkeypatch
) -> None:
    """The builder completes an older collection's near-copy lists after its batches, within
    the run's budget, a batch of lists at a time; the next run (another process) goes on from
    where it stopped, and only the run that finishes writes the mark."""
    settings, expected = older_collection(storage, tmp_path)
    service = ImageSearch(settings, storage)
    builder, catalog = service.parts.builder, service.parts.catalog
    builder.near_copy_batch = 4  # 12 batches for the 45 lists
    builder.near_copy_slice = 10.0  # (the budget stops it, not the slice)
    reads: list[list[str]] = []
    lists = catalog.stored_lists  # (nothing is queued: only the completion reads lists)

    def slow(image_ids):  # type: ignore[no-untyped-def]
        reads.append(list(image_ids))
        time.sleep(0.1)
        return lists(reads[-1])

    monkeypatch.setattr(catalog, "stored_lists", slow)
    assert builder.has_work()  # (nothing queued: the near-copy lists)
    started = time.monotonic()
    report = service.build_index(budget=1.0)
    took = time.monotonic() - started
    assert report.out_of_time and not report.drained and report.batches == 0
    assert 1 <= len(reads) < 12
    assert took < 1.0 + 0.5, took  # the last batch started only if it fitted
    order = sorted(expected.keys() | set(synthetic_ids(45)))
    done = [i for batch in reads for i in batch]
    assert done == order[: len(done)]  # in id order
    assert catalog.table.get(NEAR_COPIES_MARK, "progress")["after"] == done[-1]
    assert catalog.near_copy_lists() == {i: n for i, n in expected.items() if i <= done[-1]}
    assert catalog.table.get(NEAR_COPIES_MARK, "complete") is None
    assert not catalog.near_copy_lists_complete()
    assert catalog.table.get("lease", "indexer") is None  # released

    monkeypatch.undo()
    resumed = ImageSearch(settings, storage)
    reads.clear()
    monkeypatch.setattr(resumed.parts.catalog, "stored_lists", slow)
    report = resumed.build_index()  # no budget: until they are complete
    assert report.drained and not report.out_of_time
    assert [i for batch in reads for i in batch] == order[len(done) :]  # none read again
    assert catalog.near_copy_lists() == expected
    assert catalog.near_copy_lists_complete()
    assert catalog.table.get(NEAR_COPIES_MARK, "progress") is None
    assert not resumed.parts.builder.has_work()


def test_a_server_s_background_builds_complete_near_copy_lists_an_upload_s_do_not(
    storage, tmp_path
) -> None:
    """A run that only stops when asked (a server's background builds: `stop`) completes an
    older collection's near-copy lists; one with a goal of its own (an upload's `until`)
    never does, even when its goal never holds (its image was skipped), and it ends."""
    settings, expected = older_collection(storage, tmp_path)
    service = ImageSearch(settings, storage)
    builder, catalog = service.parts.builder, service.parts.catalog
    report = builder.run(until=lambda: False, budget=5.0)
    assert report.drained and not report.out_of_time
    assert not catalog.near_copy_lists() and not catalog.near_copy_lists_complete()
    closing = threading.Event()
    report = builder.run(stop=closing.is_set)
    assert report.drained and catalog.near_copy_lists_complete()
    assert catalog.near_copy_lists() == expected
    assert not builder.has_work()


def test_a_budgeted_run_lists_ids_over_round_trips_only_where_the_pages_fit(
    storage, tmp_path, monkeypatch
) -> None:
    """Where listing the index's ids takes round trips (S3 Vectors' ListVectors pages), a run
    with a budget starts the completion only if the listing fits in half of what is left;
    else it leaves the lists to a run without a budget, and ends (drained, nothing queued)."""
    settings, expected = older_collection(storage, tmp_path)
    service = ImageSearch(settings, storage)
    builder, catalog = service.parts.builder, service.parts.catalog
    monkeypatch.setattr(builder.index, "listing_seconds", lambda: 45.0)
    report = builder.run(budget=20.0)
    assert report.drained and not report.out_of_time
    assert not catalog.near_copy_lists_complete() and builder._near_copy_order is None
    monkeypatch.setattr(builder.index, "listing_seconds", lambda: 0.05)
    report = builder.run(budget=20.0)
    assert report.drained and catalog.near_copy_lists_complete()
    assert catalog.near_copy_lists() == expected


def test_no_build_writes_lists_while_the_near_copy_completion_copies_them(
    storage, tmp_path, monkeypatch
) -> None:
    """Near copies that arrive while an older collection's near-copy lists are completed: a
    build that wrote an image's lists between the completion's read of them and its write
    would lose its new near copy to the older list, for good once the mark is written (the
    lists whose near copies do not change are not written again then). The completion holds
    the builder's lease: that build waits (busy) and comes after the write, between two
    slices of the completion, for images the completion has passed and one it has not yet
    read, or after its last."""
    settings, expected = older_collection(storage, tmp_path)
    service = ImageSearch(settings, storage)
    other = ImageSearch(settings, storage)  # another process's builder
    builder, catalog = service.parts.builder, service.parts.catalog
    builder.near_copy_batch = 4
    builder.near_copy_slice = 0.3  # a few slices: the run builds what was queued between them
    ids = synthetic_ids(45)
    first, ahead, last = ids[0], ids[40], ids[44]  # all with near copies; ahead: slices later
    assert {first, ahead, last} <= expected.keys()
    # Images copied when the completion reads the list of the first (or the last).
    copied_at = {first: [first, ahead], last: [last]}
    copies = dict(zip([first, ahead, last], synthetic_ids(3, start=1000), strict=True))
    rng = np.random.default_rng(2)
    busy = []
    lists, complete = catalog.stored_lists, catalog.complete_near_copy_lists

    def copied_meanwhile(image_ids):  # type: ignore[no-untyped-def]
        image_ids = list(image_ids)
        read = lists(image_ids)
        for trigger in set(image_ids) & copied_at.keys():
            for image_id in copied_at[trigger]:
                vector = service.parts.index.vector(image_id) + rng.normal(scale=1e-3, size=DIM)
                queue(service, [copies[image_id]], vector[None, :].astype(np.float32))
            busy.append(other.parts.builder.run().busy)  # a build now would write them
        time.sleep(0.05)
        return read

    def completing(*args, **kwargs):  # type: ignore[no-untyped-def]
        # (its reads only: the builds between its slices read lists too)
        with monkeypatch.context() as reading:
            reading.setattr(catalog, "stored_lists", copied_meanwhile)
            return complete(*args, **kwargs)

    monkeypatch.setattr(catalog, "complete_near_copy_lists", completing)
    report = service.build_index()
    assert busy == [True, True]  # no build while the completion held the lease
    assert report.added == 3 and report.batches == 2 and report.drained
    assert catalog.near_copy_lists_complete()
    monkeypatch.undo()
    near = near_copies_in_lists(service)
    for image_id, copy in copies.items():
        assert copy in dict(near[image_id])
    assert catalog.near_copy_lists() == near


def test_a_build_written_here_is_loaded_without_downloading_it(storage) -> None:
    """On S3 the writer keeps a local copy of each part it stores (`shards._put`): loading
    the build it publishes next reads no part back from the bucket. Loaded, it answers as
    one read from the bucket alone (a fresh cache) does."""
    from support.shards import small_build

    from imgsearch.index.shards import Shard
    from imgsearch.storage import LocalCopies

    entry, build, features = small_build(storage.objects)
    objects = storage.objects
    if not isinstance(objects, LocalCopies):
        return  # the local store's files are the build itself
    gets: list[str] = []
    objects._client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: gets.append(params["Key"])
    )
    kept = Shard(entry, objects)
    assert gets == []
    fresh = type(objects)(objects._client, objects.bucket, objects.cache_dir.with_name("fresh"))
    downloaded = Shard(entry, fresh)
    assert gets and all(key.startswith(f"{SHARDS_PREFIX}s000000/{build.id}.") for key in gets)
    assert kept.ids == downloaded.ids
    query = kept.projection.apply(features[3])
    assert kept.candidates_of_projected(query, 5, -1) == downloaded.candidates_of_projected(
        query, 5, -1
    )


def ingest_without_model(service: ImageSearch, ids: list[str], vectors: np.ndarray) -> None:
    """What ingest writes for each image, as the embed function does: its embedding, then
    its key, record and work item in one transaction."""
    catalog = service.parts.catalog
    rng = np.random.default_rng(len(ids))
    for image_id, vector in zip(ids, vectors, strict=True):
        probabilities = rng.dirichlet(np.ones(CLASSES)).astype(np.float32)
        catalog.put_embedding(image_id, vector, probabilities)
        record = ImageRecord(image_id, (f"{image_id}.jpg",), 10, 10, "JPEG", 1, ())
        catalog.put_key(
            KeyRecord(f"{image_id}.jpg", "present", image_id),
            expected_version=0,
            queue=image_id,
            create=record,
        )


@pytest.mark.parametrize("backend", ["local", "aws"])
def test_a_builder_elsewhere_reads_a_batchs_embeddings_from_its_work_items(
    backend, request, tmp_path
) -> None:
    """On S3, the embed function's work item carries the image's embedding (in the same
    transaction: no request more), so the index builder in another function reads a batch's
    in one batched read, not a file each; it reads a file for an image whose item is
    damaged, missing or stale (re-embedded), and indexes the same vectors either way. The
    items are left to the table's time to live. Locally every file is at hand and nothing is
    carried."""
    settings = Settings(data_dir=tmp_path / "data", shard_size=50, ann_trees=10, neighbours=10)
    if backend == "aws":
        aws = request.getfixturevalue("aws_settings")
        settings = aws.model_copy(update={"shard_size": 50, "ann_trees": 10, "neighbours": 10})
    ids, vectors = synthetic_ids(30), clustered_vectors(30, seed=4)
    ingesting = ImageSearch(settings)
    table_requests: Counter[str] = Counter()
    if backend == "aws":  # the item goes in the key's transaction: no request more
        events = ingesting.parts.storage.catalog._client.meta.events  # type: ignore[attr-defined]
        events.register(
            "before-call.dynamodb", lambda event_name, **_: table_requests.update([event_name])
        )
    ingest_without_model(ingesting, ids, vectors)
    if backend == "aws":
        assert table_requests == {"before-call.dynamodb.TransactWriteItems": 30}

    builder = ImageSearch(settings)  # another function: it holds no fresh embedding
    table, objects = builder.parts.storage.catalog, builder.parts.storage.objects
    carried = [(f"image#{i}", QUEUED_EMBEDDING) for i in ids]
    assert len(table.get_many(carried)) == (30 if backend == "aws" else 0)
    if backend == "aws":  # exactly as the files hold them (probabilities as indexed)
        catalog = builder.parts.catalog
        for image_id, (features, probabilities) in catalog.queued_embeddings(ids).items():
            in_file = catalog.embedding(image_id)
            assert np.array_equal(features, in_file[0]) and features.dtype == np.float32
            assert np.array_equal(probabilities, in_file[1].astype(np.float16))
        damaged = {"features": "not base64!", "probabilities": ""}
        table.put(f"image#{ids[0]}", QUEUED_EMBEDDING, damaged)
        table.delete(f"image#{ids[1]}", QUEUED_EMBEDDING)
    # Re-embedded (a model change) before its build: the carried copy is stale.
    vectors[2] = clustered_vectors(1, seed=5)[0]
    ImageSearch(settings).parts.catalog.put_embedding(
        ids[2], vectors[2], np.full(CLASSES, 1 / CLASSES, np.float32), overwrite=True
    )
    files_read: list[str] = []
    get = objects.get

    def counted(key: str):  # type: ignore[no-untyped-def]
        if key.startswith("embeddings/"):
            files_read.append(key)
        return get(key)

    objects.get = counted  # type: ignore[method-assign]
    report = builder.build_index()

    assert report.added == 30
    expected = ids if backend == "local" else ids[:3]
    assert sorted(files_read) == sorted(f"embeddings/{i}.npz" for i in expected)
    if backend == "aws":  # left to the table's time to live, which the template turns on
        left = table.get_many(carried)  # but the two deleted above, the damaged one's too
        left.pop((f"image#{ids[0]}", QUEUED_EMBEDDING))
        assert len(left) == 27 and all(item["model"] == settings.model for item in left.values())
        now = time.time()
        assert all(now < item["delete_after"] <= now + CARRIED_SECONDS for item in left.values())
        ttl = boto3.client("dynamodb").describe_time_to_live(TableName=settings.catalog_table)
        assert ttl["TimeToLiveDescription"] == {
            "AttributeName": "delete_after",
            "TimeToLiveStatus": "ENABLED",
        }
    index = builder.parts.index
    for image_id, vector in zip(ids, unit_rows(vectors), strict=True):
        assert np.allclose(index.vector(image_id), vector, atol=1e-3)


def test_an_embedding_carried_for_another_model_is_not_indexed(aws_settings) -> None:
    """A copy left from before a model change (of another dimension here) is passed over:
    the builder reads the file, and the build neither fails nor indexes the old vector."""
    settings = aws_settings.model_copy(update={"shard_size": 50, "ann_trees": 10, "neighbours": 10})
    ids, vectors = synthetic_ids(5), clustered_vectors(5, seed=4)
    ingest_without_model(ImageSearch(settings), ids, vectors)
    builder = ImageSearch(settings)
    stale = {
        "features": base64.b64encode(np.ones(32, "<f4").tobytes()).decode(),
        "probabilities": base64.b64encode(np.full(CLASSES, 0.05, "<f2").tobytes()).decode(),
        "model": "an-older-model.json",
    }
    builder.parts.storage.catalog.put(f"image#{ids[0]}", QUEUED_EMBEDDING, stale)
    assert builder.build_index().added == 5
    assert np.allclose(builder.parts.index.vector(ids[0]), unit_rows(vectors)[0], atol=1e-3)


def test_a_small_collection_inspects_enough_nodes_to_recall_its_neighbours(
    index_service, monkeypatch
) -> None:
    """Nodes enough for a large collection of near copies, whose nearest images share a few
    leaves, miss neighbours in a small one, where they are spread over the forest: a query
    up to BUDGET_REFERENCE images inspects at least `query_nodes`."""
    import imgsearch.index.reader as reader

    queue(index_service, synthetic_ids(800), clustered_vectors(800, seed=11))
    index_service.build_index()
    index_service.parts.builder.writer.merger.merge_all()  # one shard of 800, as tiers do
    index = index_service.parts.index
    index.refresh(force=True)
    index.candidates, index.search_k = 20, 20  # 160 nodes (8 a candidate); 4,000 with the floor
    queries = unit_rows(clustered_vectors(40, seed=12))
    floor = reader.MIN_QUERY_NODES
    monkeypatch.setattr(reader, "MIN_QUERY_NODES", 0)
    budget_alone = recall_against_exact(index, queries)
    monkeypatch.setattr(reader, "MIN_QUERY_NODES", floor)
    assert budget_alone < 0.9
    assert recall_against_exact(index, queries) >= 0.99


def test_the_floor_of_nodes_holds_to_the_budget_reference_then_fades_out() -> None:
    """A query's nodes (`query_nodes`): at least the floor up to BUDGET_REFERENCE, a floor
    fading out by MIN_QUERY_NODES_GONE_BY (past which the grown budget alone decides); a
    setting above the floor as it is; Annoy's default (-1) as it is. The shards share them in
    proportion to their live images."""
    import imgsearch.index.reader as reader

    floor, reference = reader.MIN_QUERY_NODES, reader.BUDGET_REFERENCE
    gone_by = reader.MIN_QUERY_NODES_GONE_BY
    assert reader.query_nodes(0, 1500) == floor
    assert reader.query_nodes(reference, 1500) == floor  # held up to the reference
    assert reader.query_nodes(reference // 2, floor * 2) == floor * 2
    assert reader.query_nodes((reference + gone_by) // 2, 100) == floor // 2  # half faded
    assert reader.query_nodes(gone_by, 100) == math.ceil(100 * reader.budget_growth(gone_by))
    assert reader.query_nodes(reference * 8, 1500) == math.ceil(
        1500 * reader.budget_growth(reference * 8)
    )
    assert reader.query_nodes(1_000, -1) == -1
    shards = SimpleNamespace(shares=(0.75, 0.25), live_count=reference // 2)
    assert reader._plan(shards, 120, 1500, 20) == ((90, floor * 3 // 4), (30, floor // 4))


@pytest.mark.parametrize("search_k", [0, -2])
def test_settings_refuse_a_search_k_annoy_would_misread(search_k: int) -> None:
    """Only -1 (Annoy's default) and node counts above 0 are meant: the index would read 0 or
    -2 as -1, without the floor of nodes, and Annoy itself as "inspect nothing" or
    "inspect everything"."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ann_search_k"):
        Settings(ann_search_k=search_k)
    assert Settings(ann_search_k=-1).ann_search_k == -1
    # A copy with other settings (the evaluation's variants) is validated the same way.
    with pytest.raises(ValidationError, match="ann_search_k"):
        Settings().with_changes(ann_search_k=search_k)
    assert Settings().with_changes(ann_search_k=7).ann_search_k == 7
    with pytest.raises(TypeError, match="ann_serch_k"):
        Settings().with_changes(ann_serch_k=7)  # misspelt: not dropped unseen


def test_a_querys_residual_is_what_its_projection_drops_of_its_offset() -> None:
    """`project_with_residuals`: under each of several projections, the query's squared
    residual is ||q - m||^2 - ||P(q - m)||^2 (computed in float32 from the folded offsets,
    against float64 here), none under one projection. Where a shard's images lie in its
    projection's span (a shard of fewer images than components), squared projected distance
    plus the residual is the exact squared distance, whatever the other projections."""
    from imgsearch.index.reader import _Snapshot
    from imgsearch.index.shards import Projection

    rng = np.random.default_rng(8)
    # Non-negative unit features, as a CNN's are: a mean of norm ~0.8, so that ||q - m||^2
    # is a difference of terms near 1 (float32 cancellation).
    features = unit_rows(np.abs(rng.normal(size=(300, DIM))).astype(np.float32))
    other = unit_rows(np.abs(rng.normal(size=(300, DIM)) ** 3).astype(np.float32))
    small = features[:5]  # a shard of 5 images: projected onto its own span
    projections = [Projection.fit(features, 8), Projection.fit(other, 8), Projection.fit(small, 8)]
    shards = tuple(SimpleNamespace(projection=p, live_count=1) for p in projections)
    snapshot = _Snapshot.of(None, None, (*shards, shards[0]))
    alone = _Snapshot.of(None, None, (shards[0], shards[0]))
    for query in unit_rows(np.abs(rng.normal(size=(20, DIM))).astype(np.float32)):
        projected, residuals = snapshot.project_with_residuals(query)
        assert alone.project_with_residuals(query)[1] == [0.0, 0.0]
        assert residuals[3] == residuals[0]
        for projection, kept, residual in zip(projections, projected, residuals, strict=False):
            offset = query.astype(np.float64) - projection.mean
            along = projection.components.astype(np.float64) @ offset
            np.testing.assert_allclose(kept, along, atol=1e-5)
            assert residual == pytest.approx(offset @ offset - along @ along, abs=1e-5)
        for image in small:
            projected_distance = np.sum((np.array(projected[2]) - projections[2].apply(image)) ** 2)
            exact = np.sum((query.astype(np.float64) - image) ** 2)
            assert projected_distance + residuals[2] == pytest.approx(exact, abs=1e-5)
