"""Batch tools: `imgsearch embed` and `imgsearch neighbours`, and exact k-NN itself."""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest
from support.demo import DEMO, demo_image

from imgsearch import bulk
from imgsearch.bulk import EmbeddedTree
from imgsearch.cli import main
from imgsearch.config import Settings
from imgsearch.index.exact import METRICS, exact_neighbours, pairwise_distances
from imgsearch.index.tiers import merge_plan
from imgsearch.service import ImageSearch


@pytest.mark.parametrize("metric", METRICS)
def test_exact_neighbours_agree_with_a_naive_loop(metric) -> None:
    points = np.random.default_rng(1).normal(size=(300, 12)).astype(np.float32)
    indices, distances = exact_neighbours(points, 7, metric=metric, jobs=3)
    for row in (0, 150, 299):
        naive = []
        for other in range(len(points)):
            if other != row:
                a, b = points[row], points[other]
                if metric == "cosine":
                    d = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                elif metric == "euclidean":
                    d = np.linalg.norm(a - b)
                else:
                    d = np.abs(a - b).sum()
                naive.append((d, other))
        naive.sort()
        assert indices[row].tolist() == [other for _, other in naive[:7]]
        np.testing.assert_allclose(distances[row], [d for d, _ in naive[:7]], rtol=1e-4, atol=1e-4)


def test_too_few_rows_give_no_neighbours() -> None:
    for n in (0, 1):
        indices, distances = exact_neighbours(np.ones((n, 4), np.float32), 5)
        assert indices.shape == distances.shape == (n, 0)


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="hamming"):
        pairwise_distances(np.ones((1, 2)), np.ones((1, 2)), "hamming")


@pytest.mark.model  # the CLI loads the model; what it sees groups the photos
def test_embed_then_neighbours_from_the_command_line(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    for category in ("elephant", "pizza"):
        shutil.copytree(DEMO / category, folder / category)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "embedded.npz"
    assert (
        main(["embed", str(folder), "--out", str(out), "--data-dir", str(tmp_path / "d"), "-q"])
        == 0
    )
    assert "refused notes.txt" in capsys.readouterr().out
    embedded = EmbeddedTree.load(out)
    assert len(embedded.keys) == 24 and embedded.features.shape == (24, 1280)
    assert embedded.refused.keys() == {"notes.txt"}

    assert main(["neighbours", str(out), "--metric", "manhattan", "--k", "5", "--jobs", "2"]) == 0
    with np.load(out.with_suffix(".manhattan.neighbours.npz")) as result:
        indices = result["indices"]
        keys = result["keys"].tolist()
    assert indices.shape == (24, 5)
    same_category = [
        keys[n].split("/")[0] == keys[row].split("/")[0] for row in range(24) for n in indices[row]
    ]
    assert np.mean(same_category) > 0.9


@pytest.mark.model  # the CLI loads the model
def test_ingest_says_when_keys_change_image_and_prefixes_keep_folders_apart(
    tmp_path, capsys
) -> None:
    """Two folders with the same file names: the second replaces the first under the same keys
    (as S3 would), and says so; with --prefix both stay."""
    data = ["--data-dir", str(tmp_path / "data"), "-q"]
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(DEMO / "elephant", first)
    shutil.copytree(DEMO / "pizza", second)
    assert main(["ingest", str(first), *data]) == 0
    capsys.readouterr()
    assert main(["ingest", str(second), *data]) == 0
    out = capsys.readouterr().out
    assert "12 added" in out and "12 images in the collection" in out
    assert "12 keys now hold another image than before" in out and "--prefix" in out

    assert main(["ingest", str(first), "--prefix", "first/", *data]) == 0
    out = capsys.readouterr().out
    assert "24 images in the collection" in out and "another image" not in out


@pytest.mark.model  # the CLI loads the model
def test_an_ingest_exits_with_its_shards_merged(tmp_path, monkeypatch, capsys) -> None:
    """The shards the ingest sealed are merged into tiers before the command ends (a merge
    runs in the background, and a process that exits mid-merge would leave them unmerged)."""
    monkeypatch.setenv("IMGSEARCH_SHARD_SIZE", "2")
    folder = tmp_path / "photos"
    for category in ("elephant", "pizza"):
        shutil.copytree(DEMO / category, folder / category)
    data_dir = tmp_path / "data"
    assert main(["ingest", str(folder), "--data-dir", str(data_dir), "-q"]) == 0
    assert "24 images in the collection" in capsys.readouterr().out
    service = ImageSearch(Settings(data_dir=data_dir, shard_size=2))
    manifest = service.parts.index.manifest
    assert sum(entry.live_count for entry in manifest.shards) == 24
    assert merge_plan(manifest.shards, 2) is None  # nothing left to merge
    assert len(manifest.shards) <= 4, [entry.count for entry in manifest.shards]  # not 12


@pytest.mark.model  # the CLI loads the model
def test_a_file_name_no_key_may_have_is_refused_and_the_rest_go_on(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a\\b.jpg").write_bytes((DEMO / "pizza" / "image_0001.jpg").read_bytes())
    (folder / "ok.jpg").write_bytes((DEMO / "pizza" / "image_0002.jpg").read_bytes())
    assert main(["ingest", str(folder), "--data-dir", str(tmp_path / "data"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out and "1 refused" in out and "refused a\\b.jpg: key contains" in out


def test_a_build_of_one_batch_leaves_what_was_queued_after_it(service) -> None:
    """A bulk ingest builds once per batch: its build takes what one batch holds and leaves
    the rest (what its workers add meanwhile) to the next, instead of chasing it."""
    service.parts.builder.batch_size = 2
    for category in ("elephant", "pizza", "watch", "chair", "lotus"):
        assert service.ingest(f"{category}.jpg", demo_image(category)).status == "added"
    report = service.build_index(one_batch=True)
    assert (report.batches, report.added) == (1, 2)
    assert len(service.parts.catalog.pending()) == 3
    assert service.count() == 2
    report = service.build_index()
    assert (report.batches, report.added) == (2, 3)
    assert service.count() == 5 and not service.parts.catalog.pending()


def test_a_folder_is_ingested_with_one_build_per_batch(service, tmp_path, monkeypatch) -> None:
    """Every image added, the index built every BUILD_EVERY of them and once at the end,
    each build publishing one batch."""
    folder = tmp_path / "photos"
    for category in ("elephant", "pizza"):
        shutil.copytree(DEMO / category, folder / category)
    monkeypatch.setattr(bulk, "BUILD_EVERY", 10)
    builds = []
    real_publish = service.parts.builder.writer.publish

    def counted(additions, removed, **kwargs):
        builds.append(len(additions))
        return real_publish(additions, removed, **kwargs)

    monkeypatch.setattr(service.parts.builder.writer, "publish", counted)
    summary = bulk.ingest_tree(service, folder, workers=3)
    assert summary.counts["added"] == 24 and service.count() == 24
    assert sum(builds) == 24 and len(builds) <= 3  # at 10 (or more) added, at 20, at the end
    assert not service.parts.catalog.pending()


def test_the_last_build_of_a_folder_is_left_a_small_batch(service, tmp_path, monkeypatch) -> None:
    """Builds run beside the workers but the last one alone: once what is left to ingest is no
    more than what waits for a build, the waiting batch is built while the rest is ingested,
    so that the last build finds at most MIN_EARLY_BUILD images queued, not a whole batch."""
    folder = tmp_path / "photos"
    for category in ("elephant", "pizza"):
        shutil.copytree(DEMO / category, folder / category)
    monkeypatch.setattr(bulk, "MIN_EARLY_BUILD", 4)
    queued = []  # (images queued when a build starts, whether it is an early one)
    real_build = service.build_index

    def counted(**kwargs):
        queued.append((len(service.parts.catalog.pending()), kwargs.get("one_batch", False)))
        return real_build(**kwargs)

    monkeypatch.setattr(service, "build_index", counted)
    summary = bulk.ingest_tree(service, folder, workers=3)
    assert summary.counts["added"] == 24 and service.count() == 24
    early = [count for count, one_batch in queued if one_batch]
    assert early and early[0] >= 12, queued  # half-way: 12 waiting, 12 left
    assert queued[-1][0] <= 4 and not queued[-1][1], queued  # not 24 built at the end
    assert not service.parts.catalog.pending()


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    threads = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not threads:
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    return threads


@pytest.mark.parametrize("frozen_before", [False, True])
def test_an_ingest_runs_blas_on_one_thread_and_leaves_the_process_as_it_found_it(
    service, tmp_path, monkeypatch, frozen_before
) -> None:
    """During a folder's ingest, OpenBLAS runs on one thread (its others spun beside the
    model's workers, and in the last build alone) and the objects made before it are out of
    the collector's passes; afterwards both are as they were, a caller's own freeze
    included."""
    folder = tmp_path / "photos"
    shutil.copytree(DEMO / "elephant", folder)
    before = _blas_threads()
    during = []
    builds = []
    real_ingest, real_build = service.ingest, service.build_index

    def watched(key, data):
        during.append((_blas_threads(), gc.get_freeze_count() > 0))
        return real_ingest(key, data)

    def watched_build(*args, **kwargs):
        builds.append((_blas_threads(), kwargs.get("one_batch", False)))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(service, "ingest", watched)
    monkeypatch.setattr(service, "build_index", watched_build)
    if frozen_before:
        gc.freeze()
    try:
        summary = bulk.ingest_tree(service, folder, workers=2)
        assert (gc.get_freeze_count() > 0) == frozen_before  # the caller's freeze kept
    finally:
        if frozen_before:
            gc.unfreeze()
    assert summary.counts["added"] == len(during) > 0
    assert all(threads == [1] * len(before) and frozen for threads, frozen in during), during
    assert builds[-1] == ([1] * len(before), False), builds
    assert _blas_threads() == before and gc.get_freeze_count() == 0


def test_overlapping_blas_limits_restore_the_threads_only_when_the_last_ends() -> None:
    """Two blocks limiting BLAS (an ingest's, a merge's fit in another thread) that end in
    either order: the threads stay limited until both have ended, then are as before."""
    from imgsearch.blas import one_blas_thread

    before = _blas_threads()
    for last_ends_first in (False, True):
        first, second = one_blas_thread(), one_blas_thread()
        first.__enter__()
        second.__enter__()
        ends = [second, first] if last_ends_first else [first, second]
        ends[0].__exit__(None, None, None)
        assert _blas_threads() == [1] * len(before)
        ends[1].__exit__(None, None, None)
        assert _blas_threads() == before
