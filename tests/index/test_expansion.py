"""Expanded vectors (index/expansion.py): stored with the neighbour lists, exact after adds and
removes, and what "more like this" and reverse search rank by."""

from __future__ import annotations

import numpy as np
import pytest
from test_index import DIM, clustered_vectors, forget, queue, synthetic_ids

from imgsearch.config import Settings
from imgsearch.index.expansion import Expansion, expand_rows, ranked
from imgsearch.service import ImageSearch

K = 10  # stored neighbours
EXPANSION = 3  # neighbours averaged in


def make(tmp_path, name: str) -> ImageSearch:
    settings = Settings(
        data_dir=tmp_path / name,
        shard_size=50,  # with 100 Annoy candidates a shard, every search is exact
        ann_trees=10,
        neighbours=K,
        expansion_neighbours=EXPANSION,
        expansion_power=2.0,
    )
    service = ImageSearch(settings)
    service.parts.builder.writer.grace_seconds = (
        60.0  # the background merges' builds are not named yet
    )
    return service


def stored(service: ImageSearch) -> dict[str, tuple[list[tuple[str, float]], np.ndarray]]:
    """Every indexed image's stored list and expanded vector."""
    ids = list(service.parts.index.image_ids())
    expanded = service.parts.catalog.expanded_vectors(ids)
    assert set(expanded) == set(ids), "an indexed image without an expanded vector"
    return {i: (service.parts.catalog.neighbours(i)[0], expanded[i]) for i in ids}


def assert_as_built_from_scratch(
    tmp_path, service: ImageSearch, ids: list[str], vectors: np.ndarray
) -> None:
    """`service`'s stored lists and expanded vectors are those of a build from scratch of
    `ids` (with `vectors`, row for row): the same images, the same lists, the same vectors."""
    scratch = make(tmp_path, "scratch")
    queue(scratch, ids, vectors)
    scratch.build_index()
    after, expected = stored(service), stored(scratch)
    assert expected.keys() == after.keys()
    for image_id, (neighbours, expanded) in expected.items():
        assert after[image_id][0] == neighbours, image_id
        assert np.array_equal(after[image_id][1], expanded), image_id


def test_expanded_vectors_and_lists_are_exact_after_adds_and_removes(tmp_path) -> None:
    service = make(tmp_path, "incremental")
    rng = np.random.default_rng(5)
    vectors = clustered_vectors(300, seed=5)
    ids = synthetic_ids(300)
    present: list[str] = []
    cursor = 0
    for _ in range(6):
        batch = int(rng.integers(5, 60))
        queue(service, ids[cursor : cursor + batch], vectors[cursor : cursor + batch])
        present += ids[cursor : cursor + batch]
        cursor += batch
        if len(present) > 30:
            gone = [
                str(i) for i in rng.choice(present, size=int(rng.integers(1, 15)), replace=False)
            ]
            forget(service, gone)
            present = [i for i in present if i not in gone]
        service.build_index()
    incremental = stored(service)
    assert set(incremental) == set(present)

    # The same images built at once, from scratch.
    row = {image_id: n for n, image_id in enumerate(ids)}
    assert_as_built_from_scratch(tmp_path, service, present, vectors[[row[i] for i in present]])

    # And both agree with brute force in numpy over the vectors the index holds: exact lists,
    # expanded from their first 3.
    held = service.parts.index.vectors(present)
    units = np.stack([held[i] for i in present]).astype(np.float64)
    similarity = units @ units.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :EXPANSION]
    expected = expand_rows(units, nearest, np.take_along_axis(similarity, nearest, 1), 2.0)
    for n, image_id in enumerate(present):
        got = [i for i, _ in incremental[image_id][0][:EXPANSION]]
        want = [present[j] for j in nearest[n]]
        assert got == want, image_id
        np.testing.assert_allclose(incremental[image_id][1], expected[n], atol=2e-3)


def test_only_lists_that_change_are_written(tmp_path, monkeypatch) -> None:
    """A new image rewrites its own list and those it joins, with their expanded vectors:
    no other image is touched. Of the lists it is offered to, only those it may enter are
    read whole: the others are told apart by their ends (length and last distance)."""
    service = make(tmp_path, "data")
    vectors = clustered_vectors(201, seed=9)
    ids = synthetic_ids(201)
    queue(service, ids[:200], vectors[:200])
    service.build_index()
    # The shards' background merges done: none publishes under the build measured below.
    service.parts.builder.writer.settle(finish=True)
    before = stored(service)
    written: list[str] = []
    put = service.parts.catalog.put_neighbour_lists

    def recording(lists, expanded=None, **kwargs) -> None:
        assert expanded is not None and set(expanded) == set(lists)
        written.extend(lists)
        put(lists, expanded, **kwargs)

    catalog = service.parts.catalog
    ends, whole = catalog.list_ends, catalog.stored_lists
    ended: list[str] = []
    read_whole: list[str] = []

    def reading_ends(image_ids):  # type: ignore[no-untyped-def]
        ended.extend(image_ids)
        return ends(image_ids)

    def reading_whole(image_ids):  # type: ignore[no-untyped-def]
        read_whole.extend(image_ids)
        return whole(image_ids)

    monkeypatch.setattr(catalog, "put_neighbour_lists", recording)
    monkeypatch.setattr(catalog, "list_ends", reading_ends)
    monkeypatch.setattr(catalog, "stored_lists", reading_whole)
    queue(service, ids[200:], vectors[200:])
    service.build_index()
    after = stored(service)
    changed = {i for i in before if after[i][0] != before[i][0]}
    assert set(written) == changed | {ids[200]}
    assert 0 < len(changed) < 30  # of 200
    assert changed <= set(read_whole) - {ids[200]} <= set(ended)
    assert len(set(read_whole)) < len(set(ended)) / 2, (len(read_whole), len(ended))
    for image_id in set(before) - changed:
        assert np.array_equal(after[image_id][1], before[image_id][1])


def test_a_list_may_take_an_offer_unless_full_and_every_offer_is_farther() -> None:
    """What the builder reads whole (`_may_take`): a list shorter or longer than k always; a
    full one if an offer is no farther than its last neighbour (a tie may enter: the merge
    orders ties by id), as distances are stored, to 6 decimals."""
    from imgsearch.catalog import ListEnd
    from imgsearch.index.neighbourhoods import _may_take

    assert _may_take(ListEnd(3, 0.5), [("a", 0.9)], k=4)
    assert _may_take(ListEnd(5, 0.5), [("a", 0.9)], k=4)  # (k lowered since)
    assert _may_take(ListEnd(0, None), [("a", 0.9)], k=4)
    assert not _may_take(ListEnd(4, 0.5), [("a", 0.9), ("b", 0.5000006)], k=4)
    assert _may_take(ListEnd(4, 0.5), [("a", 0.9), ("b", 0.5)], k=4)  # a tie
    assert _may_take(ListEnd(4, 0.5), [("b", 0.5000004)], k=4)  # stored as 0.5


def test_more_like_this_ranks_the_stored_list_by_expanded_vectors(tmp_path) -> None:
    service = make(tmp_path, "data")
    vectors = clustered_vectors(120, seed=2)
    queue(service, synthetic_ids(120), vectors)
    service.build_index()
    image_id = synthetic_ids(1)[0]
    neighbours, own = stored(service)[image_id]
    expanded = service.parts.catalog.expanded_vectors([i for i, _ in neighbours])
    hits = service.similar(image_id, limit=K)
    expansion = service.parts.neighbourhoods.expansion
    assert expansion.query_neighbours == 3
    assert [(h.image_id, h.score) for h in hits] == expansion.rank(
        own, [i for i, _ in neighbours], expanded
    )
    assert {h.image_id for h in hits} == {i for i, _ in neighbours}
    raw_settings = service.settings.model_copy(update={"expansion": False})
    raw = ImageSearch(raw_settings).similar(image_id, limit=K)
    assert [h.image_id for h in raw] == [i for i, _ in neighbours]
    assert [h.image_id for h in hits] != [h.image_id for h in raw]  # else nothing is shown


def test_ranked_keeps_candidates_without_an_expanded_vector_last() -> None:
    expanded = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.6, 0.8], np.float32)}
    query = np.array([0.0, 1.0], np.float32)
    assert ranked(query, ["c", "a", "b"], expanded) == [
        ("b", pytest.approx(0.8)),
        ("a", 0.0),
        ("c", 0.0),
    ]


def test_ranked_orders_by_score_then_id() -> None:
    """Best first; equal scores by id, whatever order the candidates came in."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    expanded = {i: vectors[n % 3] for n, i in enumerate("fbdaec")}  # three pairs of equals
    query = rng.normal(size=4).astype(np.float32)
    for candidates in (list("fbdaec"), list("abcdef"), list("cedabf")):
        order = ranked(query, candidates, expanded)
        assert order == sorted(order, key=lambda pair: (-pair[1], pair[0]))
        assert sorted(i for i, _ in order) == list("abcdef")


def test_the_query_is_expanded_again_by_its_first_results() -> None:
    """`rank`: by the expanded query first, then by the query averaged with its first
    `query_neighbours` results' expanded vectors (weights cosine**power)."""
    expanded = {
        "a": np.array([1.0, 0.0, 0.0]),
        "b": np.array([0.0, 1.0, 0.0]),
        "c": np.array([0.0, 0.6, 0.8]),
        "d": np.array([0.0, 0.0, 1.0]),
    }
    query = np.array([0.8, 0.6, 0.0])
    assert [i for i, _ in ranked(query, list(expanded), expanded)][:2] == ["a", "b"]
    again = Expansion(neighbours=2, power=2.0, query_neighbours=2).rank(
        query, list(expanded), expanded
    )
    moved = query + 0.64 * expanded["a"] + 0.36 * expanded["b"]
    moved /= np.linalg.norm(moved)
    assert again == ranked(moved.astype(np.float32), list(expanded), expanded)
    assert again[0][0] == "a" and again[0][1] == pytest.approx(float(moved[0]), rel=1e-5)
    single = Expansion(neighbours=2, power=2.0, query_neighbours=0)
    assert single.rank(query, list(expanded), expanded) == ranked(query, list(expanded), expanded)


def test_a_vector_is_expanded_by_its_first_neighbours_weighted_by_similarity() -> None:
    vectors = {"a": np.array([0.0, 1.0]), "b": np.array([1.0, 0.0]), "c": np.array([-1.0, 0.0])}
    own = np.array([1.0, 0.0])
    expanded = Expansion(neighbours=2, power=2.0, query_neighbours=0).of(
        own, [("b", 0.5), ("a", 0.75), ("c", 0.0)], vectors
    )
    summed = own + 0.25 * vectors["b"] + 0.0625 * vectors["a"]  # "c" is beyond the first 2
    np.testing.assert_allclose(expanded, summed / np.linalg.norm(summed), rtol=1e-6)


def test_learning_compares_expanded_vectors_unless_expansion_is_off(tmp_path) -> None:
    """Rocchio learns from the voted images' expanded vectors and scores candidates by theirs
    (`expansion` and `expansion_learning` on), or by the raw features (either off)."""
    service = make(tmp_path, "data")
    vectors = clustered_vectors(120, seed=4)
    ids = synthetic_ids(120)
    queue(service, ids, vectors)
    service.build_index()
    votes = {ids[0]: 1, ids[1]: 1, ids[2]: -1}
    for image_id, value in votes.items():
        service.parts.feedback.vote("zqxterm", image_id, "session", value, "client")
    candidates = ids[3:40]
    expanded = service.parts.catalog.expanded_vectors(ids)
    raw = service.parts.index.vectors(ids)
    for expansion, learning, source in (
        (True, True, expanded),
        (False, True, raw),
        (True, False, raw),
    ):
        update = {"expansion": expansion, "expansion_learning": learning}
        settings = service.settings.model_copy(update=update)
        learner = ImageSearch(settings).parts.learner
        taught = learner.taught("zqxterm", "session")
        assert taught is not None
        relevant = (source[ids[0]] + source[ids[1]]) / 2
        rocchio = relevant - 0.5 * source[ids[2]]
        rocchio /= np.linalg.norm(rocchio)
        want = np.stack([source[i] for i in candidates]) @ rocchio
        np.testing.assert_allclose(learner.scores(taught, candidates), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expanded[ids[3]], raw[ids[3]], atol=1e-2)  # else nothing is shown


def test_more_like_this_follows_a_build_of_another_process_at_its_next_refresh(
    tmp_path, monkeypatch
) -> None:
    """A reader keeps lists and expanded vectors until a build rewrites lists (not for a fixed
    time): after another process's build, its next refresh answers as a fresh reader does,
    even when the build wrote between the reader's reads and its keeping what it read."""
    writer = make(tmp_path, "data")
    vectors = clustered_vectors(160, seed=4)
    ids = synthetic_ids(160)
    queue(writer, ids[:120], vectors[:120])
    writer.build_index()
    reader = ImageSearch(writer.settings)
    reader.parts.index.refresh_interval = 3600.0  # only a forced refresh looks
    image_id = ids[0]
    first = reader.similar(image_id, limit=K)
    assert reader.similar(image_id, limit=K) == first

    # Kept, not read again, while no list changes.
    catalog = reader.parts.catalog
    reads: list[str] = []
    read_vectors, read_list = catalog.expanded_vectors, catalog.neighbours
    monkeypatch.setattr(catalog, "neighbours", lambda i: reads.append(i) or read_list(i))
    monkeypatch.setattr(
        catalog, "expanded_vectors", lambda ids: reads.extend(ids) or read_vectors(ids)
    )
    reader.parts.index.refresh(force=True)
    reader.parts.index.refresh_interval = 0.0
    assert reader.similar(image_id, limit=K) == first and reads == []

    # Images next to the first one arrive while the reader reads: its read returns what was
    # stored before the other process's build wrote the lists.
    near = vectors[0] + np.random.default_rng(1).normal(scale=0.05, size=(4, vectors.shape[1]))
    new = synthetic_ids(4, start=1000)

    def read_then_build(wanted):
        old = read_vectors(wanted)
        queue(writer, new, near.astype(np.float32))
        writer.build_index()
        return old

    monkeypatch.setattr(catalog, "expanded_vectors", read_then_build)
    reader.parts.neighbourhoods._drop_kept()
    reader.similar(image_id, limit=K)
    monkeypatch.setattr(catalog, "expanded_vectors", read_vectors)
    reader.parts.index.refresh(force=True)
    fresh = ImageSearch(writer.settings).similar(image_id, limit=K)
    assert {h.image_id for h in fresh} & set(new)
    assert reader.similar(image_id, limit=K) == fresh

    # A build that removes images: gone from the list and re-ranked at the next refresh.
    gone = [h.image_id for h in fresh[:2]]
    forget(writer, gone)
    writer.build_index()
    reader.parts.index.refresh(force=True)
    again = reader.similar(image_id, limit=K)
    assert not {h.image_id for h in again} & set(gone)
    assert again == ImageSearch(writer.settings).similar(image_id, limit=K)


def test_kept_lists_and_vectors_are_bounded(tmp_path, monkeypatch) -> None:
    from imgsearch.index import neighbourhoods

    monkeypatch.setattr(neighbourhoods, "CACHE_LISTS", 5)
    monkeypatch.setattr(neighbourhoods, "CACHE_VECTORS", 12)
    service = make(tmp_path, "data")
    ids = synthetic_ids(80)
    queue(service, ids, clustered_vectors(80, seed=6))
    service.build_index()
    hoods = service.parts.neighbourhoods
    answers = {i: service.similar(i, limit=K) for i in ids[:20]}
    kept = hoods._current()
    assert len(kept.lists) == 5 and len(kept.vectors) == 12
    # What was dropped is read again: the answers are those of a fresh reader.
    fresh = ImageSearch(service.settings)
    assert all(fresh.similar(i, limit=K) == hit for i, hit in answers.items())
    assert all(service.similar(i, limit=K) == hit for i, hit in answers.items())


@pytest.mark.parametrize("killed_at_write", [None, 1, 2, 4])
def test_removals_are_recomputed_in_bounded_groups_and_survive_a_kill_midway(
    tmp_path, monkeypatch, killed_at_write
) -> None:
    """A batch of removals reads the lists of one group of removals at a time, and leaves the
    lists as a build from scratch would, also when the writer dies at a group's write (as a
    Lambda at its timeout) and the batch runs again."""
    import imgsearch.index.neighbourhoods as neighbourhoods

    monkeypatch.setattr(neighbourhoods, "REMOVAL_GROUP", 1)
    service = make(tmp_path, "removals")
    vectors, ids = clustered_vectors(120, seed=3), synthetic_ids(120)
    queue(service, ids, vectors)
    service.build_index()
    catalog = service.parts.catalog
    reads: list[int] = []
    writes = 0
    read, write = catalog.stored_lists, catalog.put_neighbour_lists

    def counting_read(image_ids):
        image_ids = list(image_ids)
        reads.append(len(image_ids))
        return read(image_ids)

    def dying_write(*args, **kwargs):
        nonlocal writes
        writes += 1
        if writes == killed_at_write:
            raise SystemExit("killed")  # what the runtime does: no handler runs
        return write(*args, **kwargs)

    monkeypatch.setattr(catalog, "stored_lists", counting_read)
    monkeypatch.setattr(catalog, "put_neighbour_lists", dying_write)
    gone = ids[:6]
    forget(service, gone)
    if killed_at_write is not None:
        with pytest.raises(SystemExit):
            service.build_index()
        assert len(catalog.pending()) == len(gone)  # nothing cleared
        reads.clear()
    service.build_index()
    assert not catalog.pending()

    assert_as_built_from_scratch(tmp_path, service, ids[6:], vectors[6:])
    assert all(catalog.neighbours(i)[0] == [] for i in gone)  # their own lists deleted
    assert len(reads) == len(gone)  # a group each: none read six removals' lists at once


def test_a_removed_cluster_is_left_out_of_the_lists_beside_it(tmp_path, monkeypatch) -> None:
    """Removing all of a cluster but one image, a removal a group: the lists of the images
    left beside it asked deeper than their stored lists reach (they held few of the removed
    images, but more of them came next), and as a build from scratch makes them."""
    import imgsearch.index.neighbourhoods as neighbourhoods

    monkeypatch.setattr(neighbourhoods, "REMOVAL_GROUP", 1)
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(8, DIM))
    vectors = (centres[np.arange(120) % 8] + rng.normal(scale=0.45, size=(120, DIM))).astype(
        np.float32
    )
    ids = synthetic_ids(120)
    service = make(tmp_path, "removals")
    queue(service, ids, vectors)
    service.build_index()
    depths: list[int] = []
    nearest = service.parts.index.nearest

    def asked(vector, k, **kwargs):  # type: ignore[no-untyped-def]
        depths.append(k)
        return nearest(vector, k, **kwargs)

    monkeypatch.setattr(service.parts.index, "nearest", asked)
    gone = ids[8::8]  # cluster 0 but its first image: 14 removals
    forget(service, gone)
    service.build_index()
    assert any(d > 2 * (K + 1) for d in depths)  # asked twice as deep, at least once

    stay = [n for n, i in enumerate(ids) if i not in set(gone)]
    assert_as_built_from_scratch(tmp_path, service, [ids[n] for n in stay], vectors[stay])


def test_a_retried_publication_recomputes_the_removals_lists_once(tmp_path, monkeypatch) -> None:
    """A batch whose publication is retried (a merge published meanwhile) does not read and
    recompute its removals' lists again: they were written before the first try."""
    from imgsearch.storage import PreconditionFailed

    service = make(tmp_path, "retry")
    ids = synthetic_ids(120)
    queue(service, ids, clustered_vectors(120, seed=3))
    service.build_index()
    catalog, writer = service.parts.catalog, service.parts.builder.writer
    read, publish = catalog.stored_lists, writer.publish
    reads: list[int] = []
    tries: list[int] = []

    def counting_read(image_ids):  # type: ignore[no-untyped-def]
        image_ids = list(image_ids)
        reads.append(len(image_ids))
        return read(image_ids)

    def conflicting(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(1)
        if len(tries) == 1:
            raise PreconditionFailed("a merge published meanwhile")
        return publish(*args, **kwargs)

    monkeypatch.setattr(catalog, "stored_lists", counting_read)
    monkeypatch.setattr(writer, "publish", conflicting)
    forget(service, ids[:6])
    service.build_index()
    assert len(tries) == 2 and len(reads) == 1 and not catalog.pending()
