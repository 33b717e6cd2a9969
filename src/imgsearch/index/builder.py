"""The index builder: turns queued additions and removals into new shard builds.

Ingest does not build: it queues an image in the transaction that records its key
(`Catalog.put_key(queue=...)`; removals, repair and reindex through `Catalog.mark_pending`).
Builds come from `ImageSearch`: an upload builds until its own image is in (`run(until=...)`,
`_wait_indexed`), trying again while another builder holds the lease; bulk ingest
(`imgsearch ingest`), reindex, the server's background rounds and the Lambdas take the queue
(`build_index`, `reindex`, `recover_in_background`, `recover`). One builder at a time holds a
lease and takes the queue in batches; a run without a goal of its own checks the queue again
after letting go of the lease, so work queued meanwhile (which found the lease taken) is not
left behind.

What a batch becomes in the engine (new shard builds and a manifest, or vectors put into
and deleted from S3 Vectors) is the index writer's (base.py `IndexWriter`: shard_writer.py,
s3vectors.py); the queue, the lease, the catalog's statuses and the neighbourhoods are here.

Bounded work: a run stops within its time budget (`run(budget=...)`; batches are sized from
the time the last one took) and leaves the rest queued for the next run. The lease is short
(`LEASE_SECONDS`) and renewed by a heartbeat thread while the builder works, so a builder
killed mid-batch (a Lambda at its timeout) blocks the index for seconds, not minutes; what it
did not finish is still queued, and a batch applied twice converges (docs/reliability.md).

The near-copy lists of a collection indexed before they were kept are completed here too, once
(`Catalog.complete_near_copy_lists`): under the lease, as they are written with the neighbour
lists, so that a build and the completion never write one image's lists from two readings of
them; after a run's batches, in slices of at most `NEAR_COPY_SLICE_SECONDS` (the lease let go
between two: work queued meanwhile waits no longer) within the run's budget, resumed from where
the last one stopped, by whichever process runs next. A new collection's are marked complete at
its first build (nothing to complete).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgsearch.catalog import EMBEDDINGS_PREFIX, Catalog, PendingItem, image_id_of_embedding
from imgsearch.index.base import IndexWriter, ListingStopped, SearchIndex
from imgsearch.index.neighbourhoods import Neighbourhoods
from imgsearch.index.shards import ShardData
from imgsearch.integrity import DamagedFile
from imgsearch.owners import new_owner, owner_is_alive
from imgsearch.storage import NotFound, PreconditionFailed, StorageError, Table, in_parallel
from imgsearch.vectors import unit_rows

log = logging.getLogger(__name__)


class Lease:
    """A time-limited lock in the table: exclusive while unexpired, taken over once expired,
    or at once when its holder is a process of this machine that no longer runs (a crashed
    local worker need not block the index for the whole lease). Its row: storage/layout.md."""

    def __init__(self, table: Table, name: str, duration: float) -> None:
        self.table = table
        self.name = name
        self.duration = duration
        self.owner = new_owner()
        self._version = 0
        self._expires_at = 0.0  # by this process's clock (monotonic)
        self._write_lock = threading.Lock()  # the heartbeat and the holder both renew
        self.lost = False  # a renewal found it taken over: stop writing

    @property
    def held(self) -> bool:
        """Whether it is still ours: not lost, and renewed within its duration."""
        return not self.lost and time.monotonic() < self._expires_at

    def acquire(self) -> bool:
        current = self.table.get("lease", self.name)
        if current is not None and current["expires_at"] > time.time():
            if current["owner"] in _unreleased:
                log.warning("taking over a lease this process failed to release")
            elif owner_is_alive(current["owner"]):
                return False
            else:
                log.warning("taking over the lease of %s, which no longer runs", current["owner"])
        expected = 0 if current is None else int(current["version"])
        return self._write(expected)

    def renew(self) -> bool:
        """Extend it by its duration; False (and `lost`) if another holder took it over."""
        if self.lost:
            return False
        if not self._write(self._version) and not self._adopt_own_write():
            self.lost = True
        return not self.lost

    def _adopt_own_write(self) -> bool:
        """After a renewal whose answer never came (a timeout), the row may hold that very
        write at a newer version: the lease is still ours then, and renewed from there."""
        current = self.table.get("lease", self.name)
        if current is None or current["owner"] != self.owner:
            return False
        return self._write(int(current["version"]))

    def heartbeat(self) -> Heartbeat:
        """A thread renewing the lease every third of its duration while the `with` block
        runs (a builder's batch can take longer than the lease)."""
        return Heartbeat(self)

    def release(self) -> None:
        """Let go, retrying a storage failure: a lease left held blocks every other builder
        until it expires. If it still fails, this process takes it over on its next build."""
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                self.table.delete("lease", self.name, expected_version=self._version)
                return
            except PreconditionFailed:
                return  # it expired and was taken over: nothing of ours to release
            except StorageError as error:
                log.warning("releasing the index lease failed (%s); retrying", error)
                time.sleep(RELEASE_BACKOFF_SECONDS * 2**attempt)
        _unreleased.add(self.owner)
        log.error("could not release the index lease; it expires in %.0f s", self.duration)

    def _write(self, expected_version: int) -> bool:
        with self._write_lock:
            started = time.monotonic()
            try:
                self._version = self.table.put(
                    "lease",
                    self.name,
                    {"owner": self.owner, "expires_at": time.time() + self.duration},
                    expected_version=expected_version,
                )
            except PreconditionFailed:
                return False
            self._expires_at = started + self.duration
            return True


class Heartbeat:
    """Renews a lease in a thread until the `with` block ends or the lease is lost. A storage
    error is logged and tried again at the next beat; the lease expires if they go on."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="imgsearch-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self.lease

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease.duration / 3):
            try:
                if not self.lease.renew():
                    log.warning("the index lease was taken over; this builder stops")
                    return
            except StorageError as error:
                log.warning("renewing the index lease failed (%s); trying again", error)


class LeaseLost(RuntimeError):
    """The builder's lease expired or was taken over mid-batch: another builder continues."""


RELEASE_ATTEMPTS = 4
RELEASE_BACKOFF_SECONDS = 0.05
# Leases this process holds only because releasing them failed: its own next build may take
# them over (other processes wait for them to expire, as they cannot tell them apart).
_unreleased: set[str] = set()


@dataclass
class BuildReport:
    added: int = 0
    removed: int = 0
    batches: int = 0
    shard_builds: int = 0
    busy: bool = False  # another builder held the lease; it will do our work
    # The budget ran out with work still queued, or near-copy lists to complete: left for the next.
    out_of_time: bool = False
    drained: bool = False  # the queue was found empty after the last build (metrics need not ask)


BATCH_SIZE = 1000  # work items one pass of the builder takes from the queue, at most
FIRST_BATCH = 100  # ... and in the first pass of a run with a budget, before it is timed
# A dead builder's lease blocks others this long; the heartbeat renews it every third of it.
LEASE_SECONDS = 15.0
# Seconds between two garbage collections in a process (the server's rounds come every 5 s,
# an embed function's batches as often as images arrive; the grace period is 900 s).
GARBAGE_INTERVAL = 60.0
NEAR_COPY_BATCH = 100  # stored lists the near-copy completion reads at a time (DynamoDB's batch)
# A lease hold's near-copy completion at most: an upload waiting for its image's build waits no
# longer for it (the run lets go of the lease, builds what was queued meanwhile, goes on).
NEAR_COPY_SLICE_SECONDS = 1.0


class IndexBuilder:
    def __init__(
        self,
        catalog: Catalog,
        index: SearchIndex,
        neighbourhoods: Neighbourhoods,
        writer: IndexWriter,
    ) -> None:
        """`writer`: the engine's, publishing to what `index` reads (parts.py pairs them)."""
        self.catalog = catalog
        self.store = catalog.objects
        self.index = index
        self.neighbourhoods = neighbourhoods
        self.writer = writer
        self.batch_size = BATCH_SIZE
        self.lease_seconds = LEASE_SECONDS
        self.garbage_interval = GARBAGE_INTERVAL
        self._garbage_collected_at = float("-inf")
        self.near_copy_batch = NEAR_COPY_BATCH
        self.near_copy_slice = NEAR_COPY_SLICE_SECONDS
        self._near_copies_complete = False  # seen complete: never read again in this process
        # The index's ids in order when this process started completing them (see
        # `_complete_near_copies`).
        self._near_copy_order: list[str] | None = None

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        stop: Callable[[], bool] | None = None,
        budget: float | None = None,
    ) -> BuildReport:
        """Take the work queue in batches, unless another builder is already doing so.

        With `until`, a goal of the run's own, stop as soon as it holds (after a batch) and
        leave the rest of the queue to the next builder: an upload request builds until its
        own image is in, not for as long as others keep uploading. Those others wait for their
        images and build them the same way, so nothing is left behind while anyone is waiting.
        `stop` stops the run as soon as it holds too, but is no goal (a server closing).

        With `budget` (seconds), stop before a batch that would not fit in what is left of
        it (`out_of_time`): each batch is sized from the time the last one took, at most half
        of the time left, so a run ends within its budget unless one item takes longer than
        all the others did.

        Then, in a run without `until` (never an upload's), while near-copy lists are not
        complete and the budget is not spent, complete them a slice at a time (see the
        module's docstring), until they are complete in one without a budget. A process lists
        the index's ids for that once, after its first round of batches (`_ids_in_order`:
        where listing takes round trips, only if it fits in the budget).
        """
        deadline = None if budget is None else time.monotonic() + budget

        def halted() -> bool:
            return (until is not None and until()) or (stop is not None and stop())

        def spent() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        report = BuildReport()
        while True:
            lease = Lease(self.catalog.table, "indexer", self.lease_seconds)
            if not lease.acquire():
                report.busy = True
                return report
            try:
                with lease.heartbeat():
                    # The mark read once a hold, under the lease (only a holder writes it).
                    complete = self._near_copy_lists_complete() or self._mark_a_new_collection()
                    self._batches(lease, report, halted, deadline)
                    # Only a run with no goal of its own completes: an upload's waits for its
                    # image.
                    if until is None and not complete and not report.out_of_time and not halted():
                        self._complete_near_copies(lease, report, deadline)
            except LeaseLost:
                log.warning("index lease lost; another builder continues")
                return report
            finally:
                lease.release()
            # Work queued while we held the lease found it taken and left it to us.
            if report.out_of_time or halted():
                break
            completing = until is None and not self._near_copies_complete
            if spent():
                report.out_of_time = self.catalog.has_pending() or completing
                break
            listable = self._listable(deadline)
            if completing and self._near_copy_order is None and listable:
                # Outside the lease; stopped between pages when closing or out of time.
                self._near_copy_order = self._ids_in_order(lambda: halted() or spent())
                if halted():
                    break
                if spent():  # (lists left to complete unless another process finished them)
                    report.out_of_time = (
                        self.catalog.has_pending() or not self._near_copies_complete
                    )
                    break
                completing = self._near_copy_order is not None  # (else: done, or next run)
            if not self.catalog.has_pending() and not (
                completing and (self._near_copy_order is not None or listable)
            ):
                report.drained = True
                break
        return report

    def _listable(self, deadline: float | None) -> bool:
        """Whether this run may list the index's ids for the completion (`_ids_in_order`):
        without a budget, or where the listing (`SearchIndex.listing_seconds`: on S3 Vectors
        16 segments' pages of 1,000 ids at once) fits in half of what is left."""
        if deadline is None:
            return True
        return self.index.listing_seconds() <= (deadline - time.monotonic()) / 2

    def has_work(self) -> bool:
        """Whether a run would do anything: work is queued, or near-copy lists are not
        complete (one read of their mark, until this process sees them complete)."""
        return self.catalog.has_pending() or not self._near_copy_lists_complete()

    def _near_copy_lists_complete(self) -> bool:
        if not self._near_copies_complete:
            self._near_copies_complete = self.catalog.near_copy_lists_complete()
            if self._near_copies_complete:
                self._near_copy_order = None  # (completed by another process)
        return self._near_copies_complete

    def _ids_in_order(self, stop: Callable[[], bool]) -> list[str] | None:
        """The index's ids in the completion's order, once a process (those indexed since get
        their near-copy lists with their lists). Outside the lease: on Annoy it takes about a
        second at 1M images, but on S3 Vectors (an engine whose every read is a round trip) it
        pages through ListVectors, 16 segments' pages of 1,000 at once (about 63 rounds, 3 s,
        at 1M at 50 ms a round), which no upload should wait for, and which a budgeted run (a
        function's) starts only where its rounds fit in half of what is left (`_listable`: up
        to about 4M images in a 25 s budget); a larger upgraded collection completes in a run
        without a budget (a server's background builds: `imgsearch serve --backend aws`).
        None if the lists were completed meanwhile, the listing failed, or `stop` held
        (looked at before each page the engine lists: a server closing, or a run's budget
        spent, waits for a page, not for the whole listing); the next run lists again."""
        if self._near_copy_lists_complete():  # (another process finished meanwhile)
            return None
        self.index.refresh(force=True)
        ids: list[str] = []
        try:
            for page in self.index.id_pages(stop):
                ids.extend(page)
        except ListingStopped:  # (before a next page's request: a completed one is kept)
            return None
        except StorageError:  # the batches applied stand; the next run lists again
            log.exception("listing the index's ids for the near-copy completion failed")
            return None
        return sorted(ids)

    def _mark_a_new_collection(self) -> bool:
        """Mark a new collection's near-copy lists complete at its first build, even one that
        completes nothing (an upload's, a bulk ingest's batches): with nothing indexed, no
        list lacks its near-copy list, and every list written from now on has one. Else the
        first build that completes them would read every list written until then. Whether it
        did (call it while they are not complete)."""
        if len(self.index):
            return False
        self.index.refresh(force=True)  # (another process's publication: not new)
        if len(self.index):
            return False
        self.catalog.mark_near_copy_lists_complete()
        self._near_copies_complete = True
        return True

    def _complete_near_copies(
        self, lease: Lease, report: BuildReport, deadline: float | None
    ) -> None:
        """A slice of the near-copy completion, under the lease: at most `near_copy_slice`
        seconds, and within the run's `deadline` (`out_of_time` if that stopped it). Its first
        batch if any time is left, each next one only if it fits in half of what is (at the
        rate the last one went), as the run's batches. Call it while they are not complete;
        nothing before this process has listed the ids to complete (`_ids_in_order`)."""
        if self._near_copy_order is None:
            return
        slice_ends = time.monotonic() + self.near_copy_slice
        budget_ends_first = deadline is not None and deadline <= slice_ends
        ends = deadline if deadline is not None and budget_ends_first else slice_ends
        last: float | None = None

        def proceed() -> bool:
            nonlocal last
            now = time.monotonic()
            fits = now < ends if last is None else ends - now > 2 * (now - last)
            last = now
            return fits

        self._near_copies_complete = self.catalog.complete_near_copy_lists(
            self._near_copy_order,
            batch=self.near_copy_batch,
            proceed=proceed,
            before_write=lambda: _still_held(lease),
        )
        if self._near_copies_complete:
            self._near_copy_order = None
        elif budget_ends_first:
            report.out_of_time = True

    def _batches(
        self,
        lease: Lease,
        report: BuildReport,
        until: Callable[[], bool] | None,
        deadline: float | None,
    ) -> None:
        limit = self.batch_size if deadline is None else min(self.batch_size, FIRST_BATCH)
        while batch := self.catalog.pending(limit=limit):
            started = time.monotonic()
            self._apply(batch, report, lease)
            if until is not None and until():
                return
            if len(batch) < limit:
                # The queue held no more when it was read: what came since, `run` sees after
                # letting go of the lease (one read of the queue fewer a build).
                return
            if deadline is not None:
                took, left = time.monotonic() - started, deadline - time.monotonic()
                # Time per item as measured; the next batch gets at most half of what is left.
                fits = int(len(batch) * left / (2 * took)) if took > 0 else self.batch_size
                if fits < 1:
                    report.out_of_time = self.catalog.has_pending()
                    return
                limit = min(self.batch_size, fits)

    def _apply(self, batch: list[PendingItem], report: BuildReport, lease: Lease) -> None:
        forgotten: set[str] = set()  # removals whose lists are recomputed (kept over retries)
        for _ in range(5):
            try:
                added, removed, present = self._publish(batch, report, lease, forgotten)
                break
            except PreconditionFailed:
                log.warning("manifest changed under the builder; retrying the batch")
        else:
            raise RuntimeError("could not publish the manifest: it keeps changing")
        # Also the images a crashed run indexed without finishing their bookkeeping (those
        # the engine held before the publication).
        in_index = [
            item.image_id
            for item in batch
            if item.op == "add" and (item.image_id in present or item.image_id in added)
        ]
        self.catalog.mark_indexed(in_index)
        self.neighbourhoods.update(in_index, before_write=lambda: _still_held(lease))
        _still_held(lease)
        self.catalog.clear_pending(batch)
        report.batches += 1
        report.added += len(added)
        report.removed += len(removed)

    def _publish(
        self, batch: list[PendingItem], report: BuildReport, lease: Lease, forgotten: set[str]
    ) -> tuple[set[str], dict[str, np.ndarray], set[str]]:
        """Publish the batch through the engine's writer; what it added and removed, and
        which of the batch's additions the engine held already (one question to the engine
        for the batch: over the network, one request). The removals' lists are recomputed
        first, those not in `forgotten` (a try before this one's), which gains them."""
        self.index.refresh(force=True)
        wanted = {item.image_id: item.op for item in batch}
        present = self.index.present(i for i, op in wanted.items() if op == "add")
        additions = self._load_additions(
            [i for i, op in wanted.items() if op == "add" and i not in present]
        )
        removed = {  # those in the index: the others have no vector
            i: vector
            for i, op in wanted.items()
            if op == "remove" and (vector := self.index.vector(i)) is not None
        }
        if not len(additions) and not removed and not self.writer.unfinished:
            return set(), {}, present
        # Neighbour lists are written without conditions (in batches): only by a holder, so
        # the lease is checked before each group's write (a long one may outlive it). The
        # removed images' lists first, while the index still serves them (see `forget`).
        self.neighbourhoods.forget(
            {i: v for i, v in removed.items() if i not in forgotten},
            before_write=lambda: _still_held(lease),
        )
        forgotten.update(removed)
        # The manifest's compare-and-swap keeps two builders from publishing over each other;
        # the lease check keeps one whose lease lapsed (a frozen sandbox, a long pause) from
        # trying.
        report.shard_builds += self.writer.publish(
            additions, list(removed), still_held=lambda: _still_held(lease)
        )
        self.index.refresh(force=True)
        return set(additions.ids), removed, present

    def _load_additions(self, image_ids: list[str]) -> ShardData:
        """The embeddings of `image_ids`: those their work items carry (one batched read),
        and the stored files of the others, read at once (over the network, a request
        each; those that cannot be read are skipped and logged)."""
        found = self.catalog.queued_embeddings(image_ids)
        unqueued = [i for i in image_ids if i not in found]
        found |= {
            image_id: embedding
            for image_id, embedding in zip(
                unqueued, in_parallel(self._embedding, unqueued), strict=True
            )
            if embedding is not None
        }
        ids = [i for i in image_ids if i in found]
        features = [found[i][0] for i in ids]
        probabilities = [found[i][1] for i in ids]
        if not ids:
            return ShardData.empty(self.index.dim, 0)
        return ShardData(
            ids, unit_rows(np.stack(features)), np.stack(probabilities).astype(np.float16)
        )

    def _embedding(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return self.catalog.embedding(image_id)
        except NotFound:
            log.error("image %s queued for the index has no embedding; skipped", image_id)
        except DamagedFile as error:
            log.error("image %s skipped: %s", image_id, error)
        return None

    def reindex(self) -> BuildReport:
        """Rebuild the whole index from the stored embeddings: after a change of index format,
        or to compact sealed shards. The index is empty until the rebuild completes."""
        lease = Lease(self.catalog.table, "indexer", self.lease_seconds)
        if not lease.acquire():
            raise RuntimeError("another index build is running; try again when it is done")
        try:
            with lease.heartbeat():  # listing every embedding takes a while
                self._queue_everything(lease)
        finally:
            lease.release()
        return self.run()

    def _queue_everything(self, lease: Lease) -> None:
        """Queue every stored embedding's image and clear the engine's publication."""
        for info in self.store.list(EMBEDDINGS_PREFIX):
            image_id = image_id_of_embedding(info.key)
            record = self.catalog.image(image_id)
            if record is not None and record.status != "removed":
                self.catalog.mark_pending(image_id, "add")
        _still_held(lease)
        self.writer.clear()

    def collect_garbage(self) -> int:
        """Delete what no publication names any more (old shard builds), at most once every
        GARBAGE_INTERVAL seconds in a process: each time lists every stored build (on S3, a
        LIST request per 1,000 files), and what it may delete ages by the grace period, not by
        seconds. Never inside an upload's request: after a tier merge there may be a large
        shard's files to delete (40 s of one upload at 100k on a loaded machine).
        `ImageSearch.build_index` and the server's background rounds call it."""
        now = time.monotonic()
        if now - self._garbage_collected_at < self.garbage_interval:
            return 0
        self._garbage_collected_at = now
        return self.writer.collect_garbage()


def _still_held(lease: Lease) -> None:
    if not lease.held:
        raise LeaseLost(f"the {lease.name} lease expired or was taken over")
