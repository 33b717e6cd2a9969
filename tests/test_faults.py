"""Faults at the worst moment: a worker killed mid-build, storage refusing writes. After
either, the index is consistent and complete again, and searches never stop being served."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, demo_image, make_service

from imgsearch.config import Settings
from imgsearch.service import ImageSearch
from imgsearch.storage import Storage, StorageError, open_storage
from imgsearch.storage.local import LocalObjectStore

CATEGORIES = ("elephant", "pizza", "chair", "lotus", "watch", "camera")

# Where the worker dies: after writing a shard build but before switching the manifest, after
# switching it but before any bookkeeping, and while it updates neighbour lists.
KILL_POINTS = {
    "before_manifest": ("imgsearch.index.builder", "write_manifest", "before"),
    "after_manifest": ("imgsearch.index.builder", "write_manifest", "after"),
    "neighbourhoods": ("imgsearch.index.neighbourhoods.Neighbourhoods", "_merge", "before"),
}

WORKER = """
import os, signal, sys, importlib
from pathlib import Path
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

module_name, attribute, when = sys.argv[2:5]
path = module_name.split(".")
try:
    owner = importlib.import_module(module_name)
except ModuleNotFoundError:
    owner = getattr(importlib.import_module(".".join(path[:-1])), path[-1])
real = getattr(owner, attribute)

def dying(*args, **kwargs):
    if when == "after":
        real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, attribute, dying)
service = ImageSearch(Settings(data_dir=Path(sys.argv[1]), shard_size=4))
for path in sys.argv[5:]:
    service.add(Path(path).parent.name + "/" + Path(path).name, Path(path).read_bytes())
"""


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_a_worker_killed_mid_build_leaves_a_consistent_index(
    kill_point, tmp_path, embedder, vocabulary
) -> None:
    data_dir = tmp_path / "data"
    first = make_service(data_dir, embedder, vocabulary, shard_size=4)
    for category in CATEGORIES[:3]:  # an index exists before the crash
        first.add(f"{category}/image_0001.jpg", demo_image(category))
    files = [str(REPO / "demo" / category / "image_0002.jpg") for category in CATEGORIES]
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(WORKER),
            str(data_dir),
            *KILL_POINTS[kill_point],
            *files,
        ],
        capture_output=True,
        timeout=300,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]

    # Whatever the crash left, searches still run against a complete manifest.
    survivor = make_service(data_dir, embedder, vocabulary, shard_size=4)
    assert survivor.count() >= 3
    assert survivor.search_text("elephant", limit=3).hits

    survivor.build_index()  # the restart: takes over the dead worker's lease, finishes its work
    assert not survivor.catalog.pending()
    expected = {survivor.find_key(f"{c}/image_0001.jpg").id for c in CATEGORIES[:3]}
    expected |= {survivor.find_key(f"{c}/image_0002.jpg").id for c in CATEGORIES[:1]}
    listed = [i for shard in survivor.index.shards for i in shard.ids if i in survivor.index]
    assert len(listed) == len(set(listed)), "an image is indexed twice"
    assert expected <= set(listed)
    for image_id in listed:
        record = survivor.image(image_id)
        assert record.status == "indexed"
        stored, _ = survivor.catalog.neighbours(image_id)
        assert len(stored) == len(listed) - 1  # with so few images, everyone is a neighbour


class FailingStore(LocalObjectStore):
    """A local store whose writes under a prefix fail, as a full disk or an S3 outage would."""

    failing_prefix: str | None = None

    def put(self, key: str, data: bytes, **kwargs):  # type: ignore[override]
        if self.failing_prefix and key.startswith(self.failing_prefix):
            raise StorageError(f"injected failure writing {key}")
        return super().put(key, data, **kwargs)


@pytest.mark.parametrize("prefix", ["index/shards/", "index/manifest"])
def test_failed_index_writes_leave_the_previous_manifest_serving(
    prefix, tmp_path, embedder, vocabulary
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    local = open_storage(settings)
    store = FailingStore(settings.data_dir / "objects")
    storage = Storage(store, local.catalog, local.feedback)
    service = ImageSearch(settings, storage, embedder=embedder, vocabulary=vocabulary)
    first = service.add("elephant.jpg", demo_image("elephant")).image_id

    store.failing_prefix = prefix
    with pytest.raises(StorageError):
        service.add("pizza.jpg", demo_image("pizza"))
    assert [h.image_id for h in service.search_text("elephant", limit=5).hits] == [first]
    assert service.count() == 1

    store.failing_prefix = None
    service.build_index()  # the queued image is picked up by the next build
    assert service.count() == 2
    assert service.find_key("pizza.jpg").status == "indexed"
