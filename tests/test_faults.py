"""Faults at the worst moment: a worker killed mid-build, storage refusing writes. After
either, the index is consistent and complete again, and searches never stop being served."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.demo import REPO, demo_image
from support.openapi import API_KEY_HEADER
from support.services import API_KEY, make_service

from imgsearch.api.app import create_app
from imgsearch.catalog import tile_key
from imgsearch.config import Settings
from imgsearch.integrity import DamagedFile
from imgsearch.service import API_KEY_FILE, ImageSearch
from imgsearch.storage import (
    FEEDBACK_FILE,
    NotFound,
    Storage,
    StorageError,
    StorageFull,
    open_storage,
)
from imgsearch.storage.local import LocalObjectStore, SqliteTable

CATEGORIES = ("elephant", "pizza", "chair", "lotus", "watch", "camera")

# Where the worker dies: after writing a shard build but before switching the manifest, after
# switching it but before any bookkeeping, and while it updates neighbour lists.
KILL_POINTS = {
    "before_manifest": ("imgsearch.index.shard_writer", "write_manifest", "before"),
    "after_manifest": ("imgsearch.index.shard_writer", "write_manifest", "after"),
    "neighbourhoods": ("imgsearch.catalog.Catalog", "put_neighbour_lists", "before"),
}


@pytest.mark.model  # the worker process loads the model
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_a_worker_killed_mid_build_leaves_a_consistent_index(
    kill_point, tmp_path, three_photos, embedder, vocabulary
) -> None:
    data_dir = tmp_path / "data"
    three_photos(data_dir)  # an index exists before the crash
    additions = [
        f"add={category}/image_0002.jpg={REPO / 'demo' / category / 'image_0002.jpg'}"
        for category in CATEGORIES
    ]
    run_until_killed(data_dir, KILL_POINTS[kill_point], *additions)

    # Whatever the crash left, searches still run against a complete manifest.
    survivor = make_service(data_dir, embedder, vocabulary, shard_size=4)
    assert survivor.count() >= 3
    assert survivor.search_text("elephant", limit=3).hits

    survivor.build_index()  # the restart: takes over the dead worker's lease, finishes its work
    assert not survivor.parts.catalog.pending()
    expected = {survivor.find_key(f"{c}/image_0001.jpg").id for c in CATEGORIES[:3]}
    expected |= {survivor.find_key(f"{c}/image_0002.jpg").id for c in CATEGORIES[:1]}
    listed = [
        i for shard in survivor.parts.index.shards for i in shard.ids if i in survivor.parts.index
    ]
    assert len(listed) == len(set(listed)), "an image is indexed twice"
    assert expected <= set(listed)
    for image_id in listed:
        record = survivor.image(image_id)
        assert record.status == "indexed"
        stored, _ = survivor.parts.catalog.neighbours(image_id)
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


# Interrupted changes: a process killed mid-upload or mid-delete ------------------------------

WORKER = """
import os, signal, sys, importlib
from pathlib import Path
from imgsearch.config import Settings
from imgsearch.integrity import DamagedFile
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
for action in sys.argv[5:]:
    verb, key, *file = action.split("=")
    if verb == "add":
        service.add(key, Path(file[0]).read_bytes())
    else:  # a key's removal, then the index build that applies it
        service.parts.ingestor.remove(key)
        service.build_index()
"""


def run_until_killed(data_dir, kill_point: tuple[str, str, str], *actions: str) -> None:
    """Run `actions` (add=KEY=FILE, remove=KEY) in a worker process that SIGKILLs itself at
    `kill_point` (module or class, attribute, before/after)."""
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(WORKER),
            str(data_dir),
            *kill_point,
            *actions,
        ],
        capture_output=True,
        timeout=300,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Callable[[str, Callable[[Path], ImageSearch]], Original]:
    """`made(name, make)`: the data directory `make` fills, and the ids indexed in it, made once
    per module for each name and closed, for tests to copy (images through the model cost more
    than copying their files)."""
    root = tmp_path_factory.mktemp("originals")
    made_ones: dict[str, Original] = {}

    def made(name: str, make: Callable[[Path], ImageSearch]) -> Original:
        if name not in made_ones:
            data_dir = root / name / "data"
            service = make(data_dir)
            ids = frozenset(service.parts.index.image_ids())
            service.close()
            del service
            # SQLite's connections close when collected: the last one checkpoints and deletes
            # the write-ahead log, which must not happen while a copy is made.
            gc.collect()
            assert not list(data_dir.rglob("*-wal")), "a SQLite connection outlived the service"
            made_ones[name] = Original(data_dir, ids)
        return made_ones[name]

    return made


@dataclass(frozen=True)
class Original:
    data_dir: Path
    ids: frozenset[str]


@pytest.fixture
def three_photos(originals, embedder, vocabulary) -> Callable[[Path], ImageSearch]:
    """`three_photos(data_dir)`: a service on three photos indexed in shards of 4, in
    `data_dir` (a copy of the module's)."""

    def make(data_dir: Path) -> ImageSearch:
        service = make_service(data_dir, embedder, vocabulary, shard_size=4)
        for category in CATEGORIES[:3]:
            service.add(f"{category}/image_0001.jpg", demo_image(category))
        return service

    def copy(data_dir: Path) -> ImageSearch:
        shutil.copytree(originals(f"three-{type(embedder).__name__}", make).data_dir, data_dir)
        return make_service(data_dir, embedder, vocabulary, shard_size=4)

    return copy


def assert_consistent(service: ImageSearch) -> None:
    """No change left open, nothing queued, every indexed image held by its keys and backed by
    its derived files, and no derived file without an image."""
    assert not service.parts.catalog.changes()
    assert not service.parts.catalog.pending()
    listed = set(service.parts.index.image_ids())
    for image_id in listed:
        record = service.image(image_id)
        assert record is not None and record.status == "indexed"
        assert record.keys
        for key in record.keys:
            assert service.parts.catalog.key(key).image_id == image_id
        service.parts.catalog.embedding(image_id)
        service.parts.catalog.thumbnail(image_id)
    stored = {
        info.key.removeprefix("embeddings/").removesuffix(".npz")
        for info in service.parts.storage.objects.list("embeddings/")
    }
    assert stored == listed, "derived files without an image, or an image without them"


UPLOAD_KILL_POINTS = {
    "after_original": ("imgsearch.catalog.Catalog", "put_original", "after"),
    "after_embedding": ("imgsearch.catalog.Catalog", "put_embedding", "after"),
    # The derived files (embedding, thumbnails: written at once), the last write before the
    # key's, which creates the image record with it.
    "after_derived": ("imgsearch.catalog.Catalog", "put_derived", "after"),
    "after_key": ("imgsearch.catalog.Catalog", "put_key", "after"),
}


@pytest.mark.model  # the worker process loads the model
@pytest.mark.parametrize("kill_point", list(UPLOAD_KILL_POINTS))
def test_an_upload_killed_midway_is_finished_at_the_next_start(
    kill_point, tmp_path, three_photos, embedder, vocabulary
) -> None:
    data_dir = tmp_path / "data"
    three_photos(data_dir)
    photo = REPO / "demo" / "pizza" / "image_0002.jpg"
    run_until_killed(data_dir, UPLOAD_KILL_POINTS[kill_point], f"add=pizza/new.jpg={photo}")

    restarted = make_service(data_dir, embedder, vocabulary, shard_size=4)
    assert restarted.count() == 3  # not searchable before the restart's recovery
    restarted.recover()
    record = restarted.find_key("pizza/new.jpg")
    assert record is not None and record.status == "indexed"
    assert restarted.parts.catalog.original("pizza/new.jpg") == photo.read_bytes()
    assert record.id in [h.image_id for h in restarted.search_text("pizza", limit=4).hits]
    assert restarted.count() == 4
    assert_consistent(restarted)


@pytest.mark.model  # the worker process loads the model
def test_an_upload_killed_midway_is_finished_by_a_server_already_running(
    tmp_path, three_photos, embedder, vocabulary
) -> None:
    """`serve --workers N`: a worker dies mid-upload while the first worker keeps serving;
    the first worker's background rounds finish it, with no restart."""
    data_dir = tmp_path / "data"
    three_photos(data_dir)
    serving = make_service(data_dir, embedder, vocabulary, shard_size=4, index_drain_seconds=0.2)
    serving.recover_in_background()
    try:
        photo = REPO / "demo" / "pizza" / "image_0002.jpg"
        # Killed before the key's write: only a recovery makes the key.
        kill_point = UPLOAD_KILL_POINTS["after_derived"]
        run_until_killed(data_dir, kill_point, f"add=pizza/new.jpg={photo}")
        deadline = time.monotonic() + 60

        def finished() -> bool:  # indexed, and the round that indexed it done (its queue item)
            record = serving.find_key("pizza/new.jpg")
            indexed = record is not None and record.status == "indexed"
            return indexed and not serving.parts.catalog.pending()

        while time.monotonic() < deadline and not finished():
            time.sleep(0.2)
        assert finished()
        serving.parts.index.refresh(force=True)
        assert_consistent(serving)
    finally:
        serving.close()


DELETE_KILL_POINTS = {
    # The removal is recorded and acknowledged; the process dies before the index build.
    "before_build": ("imgsearch.index.builder.IndexBuilder", "run", "before"),
    # Mid-removal: the key is gone, the image not yet queued for removal from the index.
    "before_queueing": ("imgsearch.catalog.Catalog", "mark_pending", "before"),
    # The image is queued for removal, its derived files are not deleted yet.
    "before_derived": ("imgsearch.catalog.Catalog", "delete_derived", "before"),
}


@pytest.mark.model  # the worker process loads the model
@pytest.mark.parametrize("kill_point", list(DELETE_KILL_POINTS))
def test_a_deletion_killed_midway_is_applied_at_the_next_start(
    kill_point, tmp_path, three_photos, embedder, vocabulary
) -> None:
    data_dir = tmp_path / "data"
    gone = three_photos(data_dir).find_key("pizza/image_0001.jpg").id
    run_until_killed(data_dir, DELETE_KILL_POINTS[kill_point], "remove=pizza/image_0001.jpg")

    restarted = make_service(data_dir, embedder, vocabulary, shard_size=4)
    assert gone in restarted.parts.index  # still searchable until the restart recovers
    restarted.recover()
    assert gone not in restarted.parts.index and restarted.count() == 2
    assert restarted.image(gone) is None and restarted.find_key("pizza/image_0001.jpg") is None
    with pytest.raises(NotFound):
        restarted.parts.catalog.original("pizza/image_0001.jpg")
    for image_id in restarted.parts.index.image_ids():
        assert gone not in dict(restarted.parts.catalog.neighbours(image_id)[0])
    assert_consistent(restarted)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.mark.model  # `imgsearch serve` loads the model
def test_imgsearch_serve_finishes_what_a_crash_left_while_it_serves(
    tmp_path, three_photos, embedder, vocabulary
) -> None:
    """The real server: a deletion acknowledged but not applied and an upload killed midway
    are both in at the next `imgsearch serve`, without any further write."""
    data_dir = tmp_path / "data"
    gone = three_photos(data_dir).find_key("pizza/image_0001.jpg").id
    run_until_killed(data_dir, DELETE_KILL_POINTS["before_build"], "remove=pizza/image_0001.jpg")
    photo = REPO / "demo" / "lotus" / "image_0002.jpg"
    run_until_killed(data_dir, UPLOAD_KILL_POINTS["after_derived"], f"add=lotus/new.jpg={photo}")

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "IMGSEARCH_API_KEY": API_KEY, "IMGSEARCH_SHARD_SIZE": "4"},
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            try:
                health = get_json(f"{base}/health")
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.2)
                continue
            if not health["recovering"]:
                break
            time.sleep(0.2)
        assert health == {
            "status": "ok",
            "images": 3,
            "recovering": False,
            "class_counts_known": True,
        }
        assert get_json(f"{base}/images?key=pizza/image_0001.jpg")["total"] == 0
        added = get_json(f"{base}/images?key=lotus/new.jpg")["results"]
        assert len(added) == 1
        listed = [r["id"] for r in get_json(f"{base}/images")["results"]]
        assert gone not in listed and added[0]["id"] in listed
    finally:
        server.kill()
        server.wait(timeout=30)


# A full disk ------------------------------------------------------------------------------


class FullTable:
    """A catalog table whose writes to items under a partition prefix fail as on a full disk."""

    def __init__(self, table) -> None:
        self._table = table
        self.failing_pk: str | None = None

    def __getattr__(self, name: str):
        return getattr(self._table, name)

    def _check(self, pk: str) -> None:
        if self.failing_pk and pk.startswith(self.failing_pk):
            raise StorageFull(f"injected: no space left to write {pk}")

    def put(self, pk: str, sk: str, attrs, **kwargs) -> int:
        self._check(pk)
        return self._table.put(pk, sk, attrs, **kwargs)

    def increment(self, pk: str, sk: str, *args, **kwargs):
        self._check(pk)
        return self._table.increment(pk, sk, *args, **kwargs)

    def transact(self, writes) -> None:  # all or nothing: one failing item fails them all
        for write in writes:
            self._check(write.pk)
        self._table.transact(writes)


class FullStore(LocalObjectStore):
    failing_prefix: str | None = None

    def put(self, key: str, data: bytes, **kwargs):  # type: ignore[override]
        if self.failing_prefix and key.startswith(self.failing_prefix):
            raise StorageFull(f"injected: no space left to write {key}")
        return super().put(key, data, **kwargs)


# Each write of an upload, in the order ingest makes them.
UPLOAD_WRITES = [
    ("objects", "images/"),
    ("objects", "embeddings/"),
    ("objects", "thumbnails/"),
    ("catalog", "image#"),
    ("catalog", "pending"),
    ("catalog", "key#"),
]


@pytest.mark.parametrize("where", UPLOAD_WRITES, ids=[w[1] for w in UPLOAD_WRITES])
def test_a_full_disk_at_any_write_of_an_upload_gives_507_and_leaves_nothing_half_done(
    where, tmp_path, embedder, vocabulary
) -> None:
    """Injected in the adapters (the real full disk is the next test): whichever write fails,
    the answer is 507 with a reason, and the upload is rolled back or, once space is back,
    finished; the collection is as it was."""
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY)
    local = open_storage(settings)
    store, catalog = FullStore(settings.data_dir / "objects"), FullTable(local.catalog)
    service = ImageSearch(
        settings, Storage(store, catalog, local.feedback), embedder=embedder, vocabulary=vocabulary
    )
    kept = {service.add(f"{c}.jpg", demo_image(c)).image_id for c in CATEGORIES[:2]}
    client = TestClient(create_app(service), headers={API_KEY_HEADER: API_KEY})

    kind, prefix = where
    if kind == "objects":
        store.failing_prefix = prefix
    else:
        catalog.failing_pk = prefix
    answer = client.post(
        "/api/images", files={"file": ("new.jpg", demo_image("lotus"), "image/jpeg")}
    )
    assert answer.status_code == 507
    assert "storage is full" in answer.json()["detail"]
    assert service.find_key("uploads/new.jpg") is None  # nothing half-visible
    assert set(service.parts.index.image_ids()) == kept
    with pytest.raises(NotFound):
        service.parts.catalog.original("uploads/new.jpg")

    store.failing_prefix = catalog.failing_pk = None
    service.parts.ingestor.recover_changes(timeout=0)  # what the next start does
    service.build_index()
    assert_consistent(service)
    assert set(service.parts.index.image_ids()) == kept
    again = client.post(
        "/api/images", files={"file": ("new.jpg", demo_image("lotus"), "image/jpeg")}
    )
    assert again.status_code == 201 and again.json()["status"] == "added"


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB file system of its own (tmpfs: needs root, as in the CI container)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_until(disk, free_bytes: int) -> None:
    """Grow the filler file until `free_bytes` are left on the disk (or it is full)."""
    filler = disk / "filler"
    room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - free_bytes
    if room > 0:
        with suppress(OSError), filler.open("ab") as file:
            file.write(b"\0" * room)  # a full disk may refuse the last blocks: that is fine


def test_a_really_full_disk_gives_507_and_loses_nothing(small_disk, embedder, vocabulary):
    """On a real full file system (tmpfs): uploads at ever less free space answer 201 or 507,
    never half-applied; earlier images stay searchable; freeing space heals everything."""
    service = make_service(small_disk / "data", embedder, vocabulary)
    # No heartbeat renews the lease during a build (one beats every third of it): under load,
    # renewals would write at moments of the machine's choosing on the nearly full disk.
    service.parts.builder.lease_seconds = 3600.0
    kept = {service.add(f"{c}.jpg", demo_image(c)).image_id for c in CATEGORIES[:3]}
    client = TestClient(create_app(service), headers={API_KEY_HEADER: API_KEY})

    statuses = {}
    for number, free in enumerate([160_000, 80_000, 48_000, 32_000, 16_000, 8_000, 0], 2):
        fill_until(small_disk, free)
        name = f"photo{number}.jpg"
        answer = client.post(
            "/api/images", files={"file": (name, demo_image("lotus", number), "image/jpeg")}
        )
        statuses[free] = answer.status_code
        assert answer.status_code in (201, 507), answer.text
        if answer.status_code == 507:
            assert "storage is full" in answer.json()["detail"]
            record = service.find_key(f"uploads/{name}")
            # Rolled back, or stored and queued (indexed once there is room): not shown yet.
            assert record is None or record.status == "pending"
            assert record is None or record.id not in service.parts.index
        assert kept <= set(service.parts.index.image_ids())
        assert service.search_text("elephant", limit=3).hits
    assert statuses[0] == 507 and statuses[160_000] == 201, statuses

    (small_disk / "filler").unlink()
    service.recover()  # what the next start does: finishes or rolls back, then indexes
    assert_consistent(service)
    for number in range(2, 9):
        again = client.post(
            "/api/images",
            files={"file": (f"photo{number}.jpg", demo_image("lotus", number), "image/jpeg")},
        )
        assert again.status_code == 201
    assert service.count() == 3 + 7
    assert_consistent(service)


# The index lease and the API key ------------------------------------------------------------


class FlakyDeletes:
    """A table whose next `failures` deletes fail, as a storage outage would."""

    def __init__(self, table, failures: int) -> None:
        self._table = table
        self.failures = failures

    def __getattr__(self, name: str):
        return getattr(self._table, name)

    def delete(self, pk: str, sk: str, **kwargs) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageError("injected: the table is unavailable")
        self._table.delete(pk, sk, **kwargs)


def test_a_failed_lease_release_is_retried_and_never_blocks_the_next_build(tmp_path) -> None:
    from imgsearch.index.builder import RELEASE_ATTEMPTS, Lease

    table = open_storage(Settings(data_dir=tmp_path / "data")).catalog
    flaky = FlakyDeletes(table, failures=RELEASE_ATTEMPTS - 1)
    lease = Lease(flaky, "indexer", 300)
    assert lease.acquire()
    lease.release()  # fails, then succeeds on its last attempt
    assert table.get("lease", "indexer") is None

    flaky.failures = RELEASE_ATTEMPTS  # every attempt fails: the lease stays in the table...
    stuck = Lease(flaky, "indexer", 300)
    assert stuck.acquire()
    stuck.release()
    assert table.get("lease", "indexer")["owner"] == stuck.owner
    # ...but this process's next build takes it over at once, not in 300 s,
    assert Lease(table, "indexer", 300).acquire()
    # and a live holder's lease is still exclusive.
    assert not Lease(table, "indexer", 300).acquire()


class LostAnswers:
    """A table whose next `lost` puts are applied but answer with an error, as a request
    whose response timed out does."""

    def __init__(self, table, lost: int) -> None:
        self._table = table
        self.lost = lost

    def __getattr__(self, name: str):
        return getattr(self._table, name)

    def put(self, pk: str, sk: str, attrs, **kwargs) -> int:
        version = self._table.put(pk, sk, attrs, **kwargs)
        if self.lost:
            self.lost -= 1
            raise StorageError("injected: the answer timed out")
        return version


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(tmp_path) -> None:
    """A renewal that went through but timed out (the heartbeat logs it and beats again) is
    not mistaken for a takeover at the next beat; another holder's takeover still is."""
    from imgsearch.index.builder import Lease

    table = open_storage(Settings(data_dir=tmp_path / "data")).catalog
    timing_out = LostAnswers(table, lost=0)
    lease = Lease(timing_out, "indexer", 300)
    assert lease.acquire()
    timing_out.lost = 1
    with pytest.raises(StorageError):
        lease.renew()
    assert lease.renew() and lease.held
    assert table.get("lease", "indexer")["owner"] == lease.owner

    table.put("lease", "indexer", {"owner": "another-machine:1:x", "expires_at": 0})
    assert not lease.renew() and lease.lost


def test_the_lease_of_a_dead_local_process_is_free_at_once(tmp_path) -> None:
    from imgsearch.index.builder import Lease

    data_dir = tmp_path / "data"
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from imgsearch.config import Settings;"
            "from imgsearch.storage import open_storage; from imgsearch.index.builder import Lease;"
            "t = open_storage(Settings(data_dir=Path(sys.argv[1]))).catalog;"
            "assert Lease(t, 'indexer', 300).acquire()",
            str(data_dir),
        ],
        capture_output=True,
        timeout=60,
    )
    assert holder.returncode == 0, holder.stderr.decode()
    table = open_storage(Settings(data_dir=data_dir)).catalog
    assert table.get("lease", "indexer")["expires_at"] > time.time() + 200
    assert Lease(table, "indexer", 300).acquire()


@pytest.mark.parametrize("problem", ["empty", "unreadable"])
def test_an_unusable_api_key_file_stops_the_server_with_one_line(problem, tmp_path) -> None:
    from imgsearch.integrity import UnusableFile

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key_file = data_dir / API_KEY_FILE
    if problem == "empty":
        key_file.write_text(" \n")
    else:
        key_file.mkdir()  # reading it fails whoever we are (root reads any mode)
    with pytest.raises(UnusableFile, match=f"{key_file}"):
        ImageSearch(Settings(data_dir=data_dir)).api_key()

    env = {k: v for k, v in os.environ.items() if k != "IMGSEARCH_API_KEY"}
    served = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
        ],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert served.returncode == 2
    lines = served.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"imgsearch: the API key file {key_file} ")
    assert "IMGSEARCH_API_KEY" in lines[0]


def test_an_api_key_file_emptied_while_serving_is_a_503_not_a_lock_out(service) -> None:
    service.settings.api_key = None
    key_file = service.settings.data_dir / API_KEY_FILE
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("")
    client = TestClient(create_app(service), headers={API_KEY_HEADER: "anything"})
    answer = client.delete("/api/images/0123456789abcdef")
    assert answer.status_code == 503 and "API key" in answer.json()["detail"]


# Damaged files: detected before use, repaired from what is stored, or a one-line refusal --------


def imgsearch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (a damaged Annoy file would crash a process: not ours)."""
    return subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "IMGSEARCH_API_KEY": API_KEY},
    )


def refusal(data_dir) -> str:
    """The one line `imgsearch serve` exits with, asserting that it refused to start."""
    served = imgsearch("serve", "--data-dir", str(data_dir), "--port", "0", timeout=60)
    assert served.returncode == 2, (served.returncode, served.stderr.decode()[-2000:])
    lines = served.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith("run `imgsearch check --repair`"), lines[0]
    return lines[0]


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # one byte changed in the middle: same size, same structure
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:
        path.unlink()


@pytest.fixture
def stored(tmp_path, originals, embedder, vocabulary):
    """A collection of six images on disk (a copy of the module's), and the ids it holds."""

    def make(data_dir: Path) -> ImageSearch:
        service = make_service(data_dir, embedder, vocabulary)
        for category in CATEGORIES:
            service.add(f"{category}.jpg", demo_image(category))
        return service

    original = originals(f"six-{type(embedder).__name__}", make)
    assert len(original.ids) == len(CATEGORIES)
    data_dir = tmp_path / "data"
    shutil.copytree(original.data_dir, data_dir)
    return data_dir, set(original.ids)


def reopened(data_dir, embedder, vocabulary) -> ImageSearch:
    return make_service(data_dir, embedder, vocabulary)


def assert_repaired(data_dir, ids, embedder, vocabulary) -> None:
    repaired = imgsearch("check", "--repair", "--data-dir", str(data_dir))
    assert repaired.returncode == 0, repaired.stdout.decode() + repaired.stderr.decode()
    assert "repaired" in repaired.stdout.decode()
    checked = imgsearch("check", "--data-dir", str(data_dir))
    assert checked.returncode == 0
    assert checked.stdout.decode().startswith(f"ok: {len(ids)} images")
    service = reopened(data_dir, embedder, vocabulary)
    assert set(service.parts.index.image_ids()) == ids
    assert service.search_text("elephant", limit=1).hits[0].image_id == (
        service.find_key("elephant.jpg").id
    )
    assert_consistent(service)


@pytest.mark.model  # `imgsearch check --repair` loads the model
@pytest.mark.parametrize(
    ("part", "how"),
    [
        ("ann", "truncated"),  # handed to Annoy, this killed the process (SIGSEGV)
        ("ann", "flipped"),
        ("features.npy", "flipped"),
        ("ids.json", "missing"),
        ("postings.npz", "truncated"),
    ],
)
def test_a_damaged_shard_file_is_refused_at_start_and_rebuilt_by_check_repair(
    part, how, stored, embedder, vocabulary
) -> None:
    data_dir, ids = stored
    manifest = json.loads((data_dir / "objects" / "index" / "manifest.json").read_bytes())
    live = manifest["shards"][0]
    shard_file = data_dir / "objects" / "index" / "shards" / live["id"] / f"{live['build']}.{part}"
    damage(shard_file, how)

    line = refusal(data_dir)
    assert line.startswith(f"imgsearch: index/shards/{shard_file.parent.name}/{shard_file.name}")
    checked = imgsearch("check", "--data-dir", str(data_dir))
    assert checked.returncode == 1 and shard_file.name in checked.stdout.decode()
    assert_repaired(data_dir, ids, embedder, vocabulary)


@pytest.mark.model  # `imgsearch check --repair` loads the model
@pytest.mark.parametrize("how", ["truncated", "flipped", "missing"])
def test_a_damaged_or_lost_manifest_is_refused_and_rebuilt(how, stored, embedder, vocabulary):
    data_dir, ids = stored
    damage(data_dir / "objects" / "index" / "manifest.json", how)
    line = refusal(data_dir)
    assert line.startswith("imgsearch: index/manifest.json is damaged (")
    if how == "missing":  # never silently an empty collection
        assert "6 images was published: images would be missing" in line
    assert_repaired(data_dir, ids, embedder, vocabulary)


@pytest.mark.model  # `imgsearch check --repair` loads the model
def test_an_older_manifest_put_back_is_refused_not_served_short(stored, embedder, vocabulary):
    data_dir, ids = stored
    manifest = data_dir / "objects" / "index" / "manifest.json"
    old = manifest.read_bytes()
    service = reopened(data_dir, embedder, vocabulary)
    service.add("extra.jpg", demo_image("lotus", 2))
    manifest.write_bytes(old)  # say, restored from yesterday's backup

    assert "was published: images would be missing" in refusal(data_dir)
    assert_repaired(data_dir, ids | {service.find_key("extra.jpg").id}, embedder, vocabulary)


@pytest.mark.model  # `imgsearch check --repair` loads the model
def test_a_damaged_embedding_is_detected_and_computed_again(stored, embedder, vocabulary):
    data_dir, ids = stored
    service = reopened(data_dir, embedder, vocabulary)
    image_id = service.find_key("pizza.jpg").id
    path = data_dir / "objects" / "embeddings" / f"{image_id}.npz"
    features, _ = service.parts.catalog.embedding(image_id)
    damage(path, "flipped")
    with pytest.raises(DamagedFile, match=f"embeddings/{image_id}.npz"):
        service.parts.catalog.embedding(image_id)
    checked = imgsearch("check", "--data-dir", str(data_dir))
    assert checked.returncode == 1 and f"embeddings/{image_id}.npz" in checked.stdout.decode()

    assert_repaired(data_dir, ids, embedder, vocabulary)
    again, _ = reopened(data_dir, embedder, vocabulary).parts.catalog.embedding(image_id)
    assert np.allclose(again, features, atol=1e-5)


def test_an_image_stored_before_tiles_gets_its_tile_from_check_repair(
    stored, embedder, vocabulary
) -> None:
    """Tiles are made at ingest; an image stored before (or whose tile was lost) gets one
    made from its thumbnail by `check --repair` (on S3 nothing makes it on demand)."""
    data_dir, _ = stored
    service = reopened(data_dir, embedder, vocabulary)
    image_id = service.find_key("pizza.jpg").id
    tile = service.parts.catalog.tile(image_id)
    objects = service.parts.storage.objects
    objects.delete(tile_key(image_id))
    # A thumbnail no image holds (a removal's leftover) gets no tile.
    objects.put("thumbnails/0123456789abcdef.jpg", service.parts.catalog.thumbnail(image_id))
    (finding,) = service.check()
    assert (finding.name, finding.fix) == (f"image {image_id}", "tile")
    service.repair([finding])
    assert service.check() == []
    assert service.parts.catalog.tile(image_id)[:4] == tile[:4] == b"RIFF"


@pytest.mark.model  # `imgsearch check --repair` loads the model
@pytest.mark.parametrize("where", ["pages", "header"])
def test_a_damaged_catalog_is_refused_then_rebuilt_from_the_stored_images(
    where, stored, embedder, vocabulary
) -> None:
    data_dir, ids = stored
    database = data_dir / "tables.sqlite3"
    service = reopened(data_dir, embedder, vocabulary)
    service.count()
    # Checkpoint the write-ahead log into the file, then damage the file.
    service.parts.storage.catalog._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(database.read_bytes())
    if where == "header":  # SQLite cannot even open it
        data[:100] = bytes(100)
    else:  # it opens (page 1 is whole); every other page is garbage, which the quick check at
        # start finds (garbage in only part of a page may fall in its free space, unseen)
        data[4096:] = os.urandom(len(data) - 4096)
    database.write_bytes(bytes(data))

    line = refusal(data_dir)
    assert line.startswith(f"imgsearch: {database} is damaged (")
    assert_repaired(data_dir, ids, embedder, vocabulary)
    assert list(data_dir.glob("tables.sqlite3.damaged-*"))  # kept, for whoever digs in it


@pytest.mark.model  # `imgsearch check --repair` loads the model
def test_an_old_catalog_file_with_damaged_votes_is_refused_then_rebuilt(
    stored, embedder, vocabulary
) -> None:
    """A data directory from before votes had a file of their own (storage.FEEDBACK_FILE),
    whose votes' pages in the catalog's file are damaged: the move at open leaves the file
    alone, `serve` refuses it in one line and `check --repair` rebuilds the catalog."""
    data_dir, ids = stored
    database = data_dir / "tables.sqlite3"
    old = SqliteTable(database, "feedback", expiring=True)  # as versions before the move
    for i in range(300):
        old.put(f"vote#dog{i}", "s1#image-a", {"vote": 1, "pad": "x" * 200})
    old._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = (
        old._connection()
        .execute("SELECT rootpage FROM sqlite_master WHERE name = 'feedback'")
        .fetchone()
    )
    old.close()
    data = bytearray(database.read_bytes())
    data[(root - 1) * 4096 : root * 4096] = b"\xa5" * 4096
    database.write_bytes(bytes(data))

    line = refusal(data_dir)
    assert line.startswith(f"imgsearch: {database} is damaged (")
    assert_repaired(data_dir, ids, embedder, vocabulary)
    assert list(data_dir.glob("tables.sqlite3.damaged-*"))


@pytest.mark.parametrize("where", ["pages", "header"])
def test_a_damaged_votes_file_is_begun_afresh_and_the_catalog_kept(
    where, stored, embedder, vocabulary
) -> None:
    """The votes' file cannot be rebuilt from anything: it moves aside and an empty one
    begins; the catalog, in a file of its own, stays as it was (no ingest again)."""
    data_dir, ids = stored
    service = reopened(data_dir, embedder, vocabulary)
    image_id = sorted(ids)[0]
    service.vote("elephant", image_id, 1, "s1")
    path = data_dir / FEEDBACK_FILE
    service.parts.storage.feedback._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    if where == "header":
        data[:100] = bytes(100)
    else:
        data[4096:] = os.urandom(len(data) - 4096)
    path.write_bytes(bytes(data))
    settings = service.settings
    if where == "header":  # it cannot even be opened: `imgsearch check --repair` replaces it
        with pytest.raises(DamagedFile) as refused:
            reopened(data_dir, embedder, vocabulary).count()
        assert refused.value.name == str(path)
        repaired = ImageSearch.replace_damaged_file(
            settings, refused.value.name, embedder=embedder, vocabulary=vocabulary
        )
    else:
        (finding,) = reopened(data_dir, embedder, vocabulary).check()
        assert (finding.name, finding.fix) == (str(path), "reset_feedback")
        repaired = reopened(data_dir, embedder, vocabulary).repair([finding])
    assert repaired.check() == []
    assert set(repaired.parts.index.image_ids()) == ids
    assert repaired.parts.feedback.session_votes("elephant", "s1") == {}
    assert list(data_dir.glob(f"{FEEDBACK_FILE}.damaged-*"))
    assert not list(data_dir.glob("tables.sqlite3.damaged-*"))


@pytest.mark.model  # `imgsearch check --repair` loads the model
def test_check_repair_prints_what_a_damaged_votes_file_hid(stored, embedder, vocabulary) -> None:
    """A damaged SQLite file stops the other checks; once `check --repair` has begun the
    votes afresh, it prints what they find (a missing tile here) before repairing it."""
    data_dir, _ = stored
    service = reopened(data_dir, embedder, vocabulary)
    image_id = service.find_key("pizza.jpg").id
    service.parts.storage.objects.delete(tile_key(image_id))
    service.vote("elephant", image_id, 1, "s1")
    path = data_dir / FEEDBACK_FILE
    service.parts.storage.feedback._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)
    path.write_bytes(bytes(data))

    repaired = imgsearch("check", "--repair", "--data-dir", str(data_dir))
    out = repaired.stdout.decode()
    assert repaired.returncode == 0, out + repaired.stderr.decode()
    assert out.index(str(path)) < out.index(f"image {image_id}") < out.index("repaired")
    assert "still:" not in out
    assert reopened(data_dir, embedder, vocabulary).check() == []


def test_a_manifest_damaged_while_serving_gives_503_not_500(stored, embedder, vocabulary):
    data_dir, _ = stored
    service = reopened(data_dir, embedder, vocabulary)
    service.parts.index.refresh_interval = 0  # look for a new manifest on every request
    client = TestClient(create_app(service))
    assert client.get("/api/search", params={"q": "pizza"}).status_code == 200
    damage(data_dir / "objects" / "index" / "manifest.json", "flipped")
    answer = client.get("/api/search", params={"q": "pizza"})
    assert answer.status_code == 503 and "needs repair" in answer.json()["detail"]


def test_a_damaged_cached_shard_file_is_fetched_again_and_a_damaged_stored_one_refused(
    storage,
) -> None:
    """On S3 a shard file is memory-mapped from a copy in the cache directory: a damaged copy
    is dropped and fetched again. The local store's file is the only one: refused."""
    from support.shards import small_build

    from imgsearch.index.shards import Shard, build_key
    from imgsearch.integrity import sha256_of_file
    from imgsearch.storage import LocalCopies

    entry, build, features = small_build(storage.objects)
    key = build_key("s000000", build.id, "ann")
    damage(storage.objects.local_path(key), "truncated")

    if isinstance(storage.objects, LocalCopies):
        shard = Shard(entry, storage.objects)
        assert sha256_of_file(storage.objects.local_path(key)) == build.sha256["ann"]
        nearest, _ = shard.candidates_of_projected(shard.projection.apply(features[3]), 5, -1)
        assert len(nearest) == 5
    else:
        with pytest.raises(DamagedFile, match=key):
            Shard(entry, storage.objects)


def test_an_empty_client_secret_file_stops_the_start_with_its_name(tmp_path, service) -> None:
    """Votes would all fail (or, with a new secret, every client would become a new one):
    the start refuses, naming the file and the fix."""
    from imgsearch.clients import CLIENT_SECRET_FILE
    from imgsearch.integrity import UnusableFile

    secret = service.settings.data_dir / CLIENT_SECRET_FILE
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("\n")
    with pytest.raises(UnusableFile, match=f"the client secret file {secret} is empty"):
        service.check_at_start()


# A bulk ingest killed mid-batch ------------------------------------------------------------

BULK_WORKER = """
import os, signal, sys, time
from pathlib import Path
import imgsearch.bulk as bulk
from imgsearch.catalog import Catalog
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

bulk.BUILD_EVERY = 3
real = Catalog.put_derived  # once per new image, before its record
created = 0

def dying(self, image_id, *derived, **options):
    global created
    created += 1
    if created == int(sys.argv[3]):  # once a first batch is published (built meanwhile)
        published = time.monotonic() + 120
        while service.count() < 3 and time.monotonic() < published:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, image_id, *derived, **options)

Catalog.put_derived = dying
service = ImageSearch(Settings(data_dir=Path(sys.argv[1]), shard_size=4, decode_workers=0))
bulk.ingest_tree(service, Path(sys.argv[2]), workers=2)
"""


@pytest.mark.model  # the worker process loads the model
def test_a_bulk_ingest_killed_mid_batch_loses_nothing_it_had_indexed(
    tmp_path, embedder, vocabulary
) -> None:
    """Files stored with deferred durability, batches published as they fill: whatever the
    dead ingest had indexed is still served whole after the restart, and ingesting the folder
    again finishes the rest into a consistent collection."""
    from imgsearch.bulk import ingest_tree

    folder = tmp_path / "photos"
    for category in CATEGORIES[:3]:
        for number in (1, 2, 3):
            name = f"image_{number:04d}.jpg"
            (folder / category).mkdir(parents=True, exist_ok=True)
            (folder / category / name).write_bytes(demo_image(category, number))
    data_dir = tmp_path / "data"
    worker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BULK_WORKER), str(data_dir), str(folder), "8"],
        capture_output=True,
        timeout=300,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]

    survivor = make_service(data_dir, embedder, vocabulary, shard_size=4)
    indexed = set(survivor.parts.index.image_ids())
    assert len(indexed) >= 3  # the first batch was published before the kill
    for image_id in indexed:  # and is whole
        survivor.parts.catalog.embedding(image_id)
        survivor.parts.catalog.thumbnail(image_id)
        assert survivor.original(image_id).data
    survivor.recover()
    ingest_tree(survivor, folder)
    assert survivor.count() == 9
    assert indexed <= set(survivor.parts.index.image_ids())
    assert_consistent(survivor)


@pytest.mark.model  # ingest embeds
@pytest.mark.parametrize("loss", ["missing", "empty"])
def test_files_a_power_cut_lost_before_the_durable_build_are_restored_by_ingesting_again(
    loss, tmp_path, embedder, vocabulary
) -> None:
    """A bulk ingest's files are flushed only before the build that publishes them, but its
    catalog rows are committed at once: a power cut may keep the rows and lose the files
    (gone, or empty after a rename that outlived the data). Ingesting the folder again after
    the restart writes them again and indexes the photo, for the key that held it and for a
    second key holding the same bytes."""
    from imgsearch.bulk import ingest_tree

    folder = tmp_path / "photos"
    folder.mkdir()
    data = demo_image("pizza")
    (folder / "pizza.jpg").write_bytes(data)
    data_dir = tmp_path / "data"
    service = make_service(data_dir, embedder, vocabulary)
    with service.deferred_durability():
        result = service.ingest("pizza.jpg", data)
    assert result.status == "added" and result.image_id
    image_id = result.image_id
    files = ["images/pizza.jpg", f"embeddings/{image_id}.npz", f"thumbnails/{image_id}.jpg"]
    store = service.parts.storage.objects
    assert isinstance(store, LocalObjectStore)
    for key in files:  # the page cache lost with the power: the catalog's rows survived
        path = store.root / key
        if loss == "missing":
            path.unlink()
        else:
            path.write_bytes(b"")

    survivor = make_service(data_dir, embedder, vocabulary)  # the restart
    survivor.recover()  # the queued image has no embedding: the build skips it
    assert survivor.count() == 0
    (folder / "copy.jpg").write_bytes(data)
    summary = ingest_tree(survivor, folder)
    assert sorted(r.status for r in summary.results) == ["duplicate", "unchanged"]
    assert survivor.count() == 1
    assert survivor.original(image_id).data == data
    assert survivor.parts.catalog.original("copy.jpg") == data
    survivor.parts.catalog.embedding(image_id)
    assert survivor.parts.catalog.thumbnail(image_id)
    assert_consistent(survivor)

    head = survivor.parts.storage.objects.head

    def unasked(key: str) -> object:
        # The index's own files may be looked at (build_index's garbage collection), the
        # image's never.
        if not key.startswith("index/"):
            raise AssertionError(f"{key} checked for an image already indexed")
        return head(key)

    survivor.parts.storage.objects.head = unasked  # type: ignore[method-assign]
    again = ingest_tree(survivor, folder)  # indexed: as cheap as before, nothing checked
    assert sorted(r.status for r in again.results) == ["unchanged", "unchanged"]
