"""Local adapters: objects as files in a directory, tables in an SQLite file.

Both are safe to share between threads and between processes on one machine (a development
server, a batch job and the CLI working on the same data directory at once).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

from ..integrity import DamagedFile
from .base import ObjectStore, Table
from .ports import (
    ANY_VERSION,
    Delete,
    Increment,
    InvalidKey,
    Item,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Put,
    StorageError,
    StorageFull,
    StoredObject,
    Write,
    in_parallel,
)
from .validation import INTERNAL_NAME_PREFIX

log = logging.getLogger(__name__)

TEMP_FILE_PREFIX = f"{INTERNAL_NAME_PREFIX}tmp-"
LOCK_DIR_NAME = f"{INTERNAL_NAME_PREFIX}locks"
# Conditional writes lock one of a fixed set of files chosen by the key's hash: enough stripes
# that unrelated keys rarely wait for each other, without a lock file per key ever written.
LOCK_STRIPES = 64

# The errors opening a key's path gives when no object is stored there (the path is missing,
# is a directory holding longer keys, or runs through a file).
_NO_OBJECT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


# What a file system answers when it has no room left: no blocks or inodes, or over quota.
_DISK_FULL_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextmanager
def disk_full_is_storage_full(what: object) -> Iterator[None]:
    """Raise StorageFull for a write that failed for want of space (one home for the rule)."""
    try:
        yield
    except OSError as error:
        if error.errno in _DISK_FULL_ERRORS:
            raise StorageFull(f"no space left to write {what}: {error.strerror}") from error
        raise
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode == sqlite3.SQLITE_FULL:
            raise StorageFull(f"no space left to write {what}: {error}") from error
        raise


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Write `path` all-or-nothing: readers see the old file or the complete new one.

    The temporary file lives in the same directory so that the final rename stays on one file
    system, which is what makes it atomic. The parent directory must exist. A full disk
    raises StorageFull and leaves no temporary file behind. `durable=False` leaves the
    flush to stable storage to the caller (`make_durable`): a process that dies loses
    nothing either way (the kernel holds the data); only a power cut can.
    """
    with disk_full_is_storage_full(path.name), _atomic_file(path, durable) as file:
        yield file


@contextmanager
def _atomic_file(path: Path, durable: bool) -> Iterator[BinaryIO]:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_FILE_PREFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; objects are ordinary files
        os.replace(temp_name, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    if durable:  # make the rename itself durable, not only the file's contents
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_files_durable(paths: Sequence[Path]) -> None:
    """fsync each file written without it, then each of their directories once (their
    renames). A file replaced or deleted since needs nothing: whatever replaced it was
    flushed by its own writer, or is in the same batch. Several at once: a journalling file
    system commits concurrent fsyncs together (400 files of 30 KB: 0.1-0.5 s in 8 threads,
    1.3-12 s one after the other on this shared disk)."""
    in_parallel(_fsync_file, paths)
    in_parallel(_fsync_file, list(dict.fromkeys(path.parent for path in paths)))


def _fsync_file(path: Path) -> None:
    """fsync a file or directory, if it is still there."""
    with suppress(*_NO_OBJECT_ERRORS):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


ETAG_CACHE_SIZE = 100_000
MAKE_DIRECTORY_ATTEMPTS = 10  # see LocalObjectStore._write
# Deferred writes are flushed ahead, in a thread of their own, once this much waits: the flush
# that makes a batch durable (before its build publishes it) then finds most of it on disk
# already, instead of writing a batch of 12-megapixel originals (2.4 MB each) while the
# workers wait for the build.
FLUSH_AHEAD_BYTES = 32 * 1024 * 1024
FLUSH_AHEAD_FILES = 256


class LocalObjectStore(ObjectStore):
    """Objects as files under `root`: the key is the file's path relative to `root`.

    ETags are the MD5 hex digest of the content, as S3 computes them for single-part uploads.
    A key cannot name both an object and a "directory" of longer keys ("a" and "a/b"): a file
    system cannot hold that, so such a put raises InvalidKey. `content_type` is not stored.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock_dir = self.root / LOCK_DIR_NAME
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        self._etags: dict[tuple[int, int, int, int], str] = {}
        # How deep this context's puts are in `deferred_durability` blocks: a context, not a
        # thread, so that the writes `in_parallel` makes for a deferring caller defer too.
        self._deferring: ContextVar[int] = ContextVar(f"deferring-{id(self)}", default=0)
        self._deferred: list[Path] = []  # written without fsync, in order (deferred_durability)
        self._deferred_bytes = 0
        # A flush that failed, for good: Linux reports a writeback error to one fsync only and
        # then calls the pages clean, so an fsync again would succeed without the data on
        # disk. Every later flush (every durable put) raises it, as databases do after a
        # failed fsync; a new process starts afresh, and `check --repair` finds what is lost.
        self._flush_failure: Exception | None = None
        self._flushing_ahead = False
        self._deferred_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time; a second waits for it

    @property
    def reads_are_requests(self) -> bool:
        """A file read is a fraction of a millisecond. (And after a power cut, the table's
        rows can outlive a bulk ingest's deferred files: an embedding carried by a row
        would index an image whose files were lost.)"""
        return False

    @property
    def overlapping_puts_help(self) -> bool:
        """A durable put waits for the disk (two fsyncs), and concurrent ones overlap (a
        journalling file system commits them together); a deferred one is a few system calls
        and a write into the page cache, which threads to overlap cost more CPU than they
        save (3 puts an image at a bulk ingest: 0.3 ms of thread start-up)."""
        return self._deferring.get() == 0

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        token = self._deferring.set(self._deferring.get() + 1)
        try:
            yield
        finally:
            self._deferring.reset(token)

    def make_durable(self) -> None:
        """fsync what was written deferred. Holding the flush lock until done, so that a
        durable put racing another's flush still finds its batch on disk when it writes."""
        with self._flush_lock:
            with self._deferred_lock:
                if self._flush_failure is not None:
                    raise StorageError(
                        f"deferred writes could not be made durable: {self._flush_failure}"
                    ) from self._flush_failure
                paths, self._deferred = self._deferred, []
                waiting, self._deferred_bytes = self._deferred_bytes, 0
            if not paths:
                return
            try:
                with disk_full_is_storage_full("deferred writes"):
                    make_files_durable(paths)
            except Exception as error:
                with self._deferred_lock:
                    self._flush_failure = error
                raise
            except BaseException:  # interrupted, not failed: the next flush tries them again
                with self._deferred_lock:
                    self._deferred[:0] = paths
                    self._deferred_bytes += waiting
                raise

    def _defer(self, path: Path, size: int) -> None:
        """Remember a file written without fsync; start flushing ahead if enough waits."""
        with self._deferred_lock:
            self._deferred.append(path)
            self._deferred_bytes += size
            start = not self._flushing_ahead and (
                self._deferred_bytes >= FLUSH_AHEAD_BYTES
                or len(self._deferred) >= FLUSH_AHEAD_FILES
            )
            self._flushing_ahead |= start
        if start:
            threading.Thread(target=self._flush_ahead, name="imgsearch-flush", daemon=True).start()

    def _flush_ahead(self) -> None:
        """Flush what waits, beside the writers (fsync leaves the GIL); a failure is kept
        and raised by the flush that makes the batch durable (`make_durable`)."""
        try:
            self.make_durable()
        except Exception as error:
            log.error("flushing deferred writes ahead failed: %s", error)
        finally:
            with self._deferred_lock:
                self._flushing_ahead = False

    def _get(self, key: str) -> StoredObject:
        try:
            data = self._path(key).read_bytes()
        except _NO_OBJECT_ERRORS as error:
            raise NotFound(key) from error
        return StoredObject(data=data, etag=lambda: hashlib.md5(data).hexdigest())

    def _head(self, key: str) -> ObjectInfo:
        try:
            with self._path(key).open("rb") as file:
                stat = os.fstat(file.fileno())
                etag = self._file_etag(file, stat)
        except _NO_OBJECT_ERRORS as error:
            raise NotFound(key) from error
        return ObjectInfo(key=key, size=stat.st_size, etag=etag, last_modified=stat.st_mtime)

    def _put(
        self,
        key: str,
        data: bytes,
        if_none_match: bool,
        if_match: str | None,
        content_type: str,
        etag_wanted: bool,
    ) -> str:
        path = self._path(key)
        durable = self._deferring.get() == 0
        if durable:  # what it names may be among the deferred writes: they go first
            self.make_durable()
        # Unconditional writes take the lock too: otherwise one could land between a
        # conditional write's check and its rename and be silently overwritten.
        with self._locked(key):
            if if_none_match and path.is_file():
                raise PreconditionFailed(f"{key!r} already exists")
            # Read whole, not from the cache: a replaced file can reuse the inode, and a
            # coarse clock the mtime, so the cache could vouch for an older version.
            if if_match is not None and self._current_etag(path) != if_match:
                raise PreconditionFailed(f"{key!r} is not at ETag {if_match}")
            try:
                self._write(key, path, data, durable)
                if not durable:
                    self._defer(path, len(data))
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as error:
                raise InvalidKey(f"{key!r} collides with a stored object's path") from error
        return hashlib.md5(data).hexdigest() if etag_wanted else ""

    def _write(self, key: str, path: Path, data: bytes, durable: bool) -> None:
        """`data` as the file `path`, its directories made. A delete of another key removes
        the directories it leaves empty (`_remove_empty_directories`), under that key's lock,
        not this one's: one may go between making a directory and making what goes in it
        (FileNotFoundError), or while `mkdir` checks that one it found is a directory
        (FileExistsError), so the write starts again. A key that collides with a stored
        object's path raises the same errors every time."""
        for attempt in range(MAKE_DIRECTORY_ATTEMPTS):
            try:
                with disk_full_is_storage_full(key):
                    path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path, durable=durable) as file:
                    file.write(data)
                return
            except (FileNotFoundError, FileExistsError):
                if attempt == MAKE_DIRECTORY_ATTEMPTS - 1:
                    raise

    def _delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(key), suppress(*_NO_OBJECT_ERRORS):
            path.unlink()
        self._remove_empty_directories(path.parent)

    def _remove_empty_directories(self, directory: Path) -> None:
        """`directory` and those above it, up to the root, while they are empty: deleting the
        images of deep keys would otherwise leave their folders behind for good. rmdir removes
        only an empty directory, so a file put there meanwhile stops it (`_write`)."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty, or gone already
                return
            directory = directory.parent

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Only walk the directory every matching key must lie under (a valid key's, or the
        # root: the base class lists nothing for a prefix like "../").
        directory, _, _ = prefix.rpartition("/")
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root.joinpath(*directory.split("/"))):
            dirnames[:] = [name for name in dirnames if not name.startswith(INTERNAL_NAME_PREFIX)]
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(INTERNAL_NAME_PREFIX):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        # Sorting whole keys, not walking directories in order: "a-b" sorts before "a/b".
        for key in sorted(keys):
            # Skip files deleted since the walk, and files put there by hand under names no
            # key can have (head refuses them).
            with suppress(NotFound, InvalidKey):
                yield self.head(key)

    def _local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(key)
        return path

    def _url(self, key: str, expires: int) -> str | None:
        return None

    def _path(self, key: str) -> Path:
        """The file of a valid key: it cannot lead outside `root` (see validate_key)."""
        return self.root.joinpath(*key.split("/"))

    def _current_etag(self, path: Path) -> str | None:
        try:
            with path.open("rb") as file:
                return hashlib.file_digest(file, "md5").hexdigest()
        except _NO_OBJECT_ERRORS:
            return None

    def _file_etag(self, file: io.BufferedReader, stat: os.stat_result) -> str:
        """The file's MD5, remembered per inode and version: every write makes a new inode
        (atomic rename), so listing index files does not re-read hundreds of megabytes."""
        identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        etag = self._etags.get(identity)
        if etag is None:
            etag = hashlib.file_digest(file, "md5").hexdigest()
            if len(self._etags) >= ETAG_CACHE_SIZE:
                self._etags.clear()
            self._etags[identity] = etag
        return etag

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Hold the key's lock stripe; flock excludes other threads and processes alike,
        because every holder opens the lock file itself."""
        digest = hashlib.md5(key.encode("utf-8")).digest()
        stripe = int.from_bytes(digest[:4], "big") % LOCK_STRIPES
        with disk_full_is_storage_full("a lock file"):  # created on first use: needs an inode
            fd = os.open(self._lock_dir / f"{stripe}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BUSY_TIMEOUT_SECONDS = 30.0
QUERY_PAGE_SIZE = 500  # rows per SELECT, so a long query holds no read snapshot open
GET_MANY_KEYS = 100  # keys per SELECT of `get_many` (as many as a BatchGetItem takes)
PURGE_INTERVAL_SECONDS = 60.0  # how often a writer deletes expired items (see _purge)
# Reads go through memory-mapped pages (address space, not memory: the kernel's page cache
# holds them once for every connection) instead of a read() per page into each connection's
# own small cache: a page of 20 results reads 20 scattered pages, and the server's threads
# each have a connection. Halved the CPU of such a read (bench/http_throughput.py).
MMAP_BYTES = 1 << 30
_EXPIRES = "json_extract(attrs, '$.expires_at')"


class _ThreadConnection(threading.local):
    """One thread's SQLite connection, and the process that opened it."""

    connection: sqlite3.Connection | None = None
    pid: int | None = None


class _Watcher:
    """The connection that reads a file's data_version (`SqliteTable.change_token`): it never
    writes, so every commit, by any other connection of this process or another, changes
    what it reads. One per file and process (a forked child opens its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None
        self.pid: int | None = None
        self.opened = 0  # connections opened: a new one's data_version starts afresh


class SqliteTable(Table):
    """A table in an SQLite file; one file can hold several tables (`name` tells them apart).

    Every write runs in a `BEGIN IMMEDIATE` transaction, which takes the database's write lock
    before reading, so a version check and the write it guards cannot interleave with another
    writer, in this process or another. WAL mode lets readers proceed meanwhile.

    With `expiring=True` (the feedback table, which has a time to live in the template), items
    with an `expires_at` (seconds since the epoch) in the past are deleted, as DynamoDB's time
    to live deletes them: a writer purges them at most once a minute, through a partial index
    that holds only items with `expires_at`, so a purge costs what it deletes.
    """

    def __init__(self, path: Path, name: str, *, expiring: bool = False) -> None:
        if not _TABLE_NAME.fullmatch(name):
            raise ValueError(f"not a usable table name: {name!r}")
        self.path = Path(path)
        self.name = name
        self._quoted_name = f'"{name}"'
        self._local = _ThreadConnection()
        self._watcher = _Watcher()
        self.expiring = expiring
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._write_transaction() as connection:
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._quoted_name} ("
                    " pk TEXT NOT NULL, sk TEXT NOT NULL, version INTEGER NOT NULL,"
                    " attrs TEXT NOT NULL, PRIMARY KEY (pk, sk)) WITHOUT ROWID"
                )
                if expiring:
                    connection.execute(
                        f'CREATE INDEX IF NOT EXISTS "{name}_expires" ON {self._quoted_name}'
                        f" ({_EXPIRES}) WHERE {_EXPIRES} IS NOT NULL"
                    )
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise
            raise DamagedFile(str(self.path), str(error)) from None

    def move_rows_from(self, source: Path) -> int:
        """Move the rows of the same-named table of another SQLite file (where an older
        version kept this table) into this one, and drop that table there; returns how many
        rows moved (0 if there was nothing to move, as at every open after the first).

        Two steps, each atomic in its own file (SQLite's transactions in WAL mode are not
        atomic across files): the copy commits with a note of it in this file (`moved_in`),
        then the source's table is dropped. The copy is an upsert on (pk, sk) that keeps the
        higher `version`, so copying a row again never counts it twice: a kill before the
        first commit leaves everything as it was (the next open copies again); a kill between
        the two leaves the note and the table, which the next open renames aside (its rows
        were copied). A table that reappears after its move (a downgrade, a restored backup
        of the source, an older version's process still writing to it) is renamed aside too,
        with a warning, not merged: its rows count a history apart from the moved table's
        (versions, summaries kept in step with their votes), and merging would break both.
        A source whose pages SQLite cannot read is left as it is (nothing is copied or
        dropped): the checks find it damaged (`repair.check_at_start` refuses to
        serve it; `imgsearch check --repair` rebuilds the catalog, moving the file aside with
        its votes). Processes opening the file at once take turns (the copy holds this
        file's write lock); the caller runs it before this table serves anything."""
        if not source.exists() or source.resolve() == self.path.resolve():
            return 0
        with disk_full_is_storage_full(self.path.name):
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
            )
            try:
                try:
                    connection.execute("ATTACH DATABASE ? AS source", (str(source),))
                    held = connection.execute(
                        "SELECT 1 FROM source.sqlite_master WHERE type = 'table' AND name = ?",
                        (self.name,),
                    ).fetchone()
                except sqlite3.DatabaseError as error:
                    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                        raise
                    raise DamagedFile(str(source), str(error)) from None
                if held is None:
                    return 0
                try:
                    moved, again = self._copy_rows(connection, source)
                    if again:  # kept aside, neither merged nor dropped (see the warning below)
                        aside = f'"{self.name}_reappeared_{time.time_ns()}"'
                        connection.execute(
                            f"ALTER TABLE source.{self._quoted_name} RENAME TO {aside}"
                        )
                    else:
                        connection.execute(f"DROP TABLE IF EXISTS source.{self._quoted_name}")
                except sqlite3.DatabaseError as error:
                    if isinstance(error, sqlite3.OperationalError):
                        raise  # locked, disk full, I/O: not a damaged page
                    # (info: the checks report the damage, in serve's one line of refusal)
                    log.info(
                        "could not move table %s from %s to %s (%s): left for the checks",
                        self.name,
                        source,
                        self.path,
                        error,
                    )
                    return 0
            finally:
                connection.close()
        if again:
            # Its rows count a history apart from the moved table's (versions, summaries kept
            # in step with their votes): merging them would break both. Kept for the owner.
            log.warning(
                "table %s reappeared in %s after its move to %s (a downgrade, a restored"
                " backup, or an older version still running?): renamed aside in %s, not merged",
                self.name,
                source,
                self.path,
                source,
            )
        elif moved:
            log.warning(
                "moved %d rows of table %s from %s to %s", moved, self.name, source, self.path
            )
        return moved

    def _copy_rows(self, connection: sqlite3.Connection, source: Path) -> tuple[int, bool]:
        """`move_rows_from`'s copy, in one transaction: how many rows it inserted or updated,
        and whether a note said the table had been moved already (then nothing is copied)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS main.moved_in (name TEXT PRIMARY KEY,"
                " source TEXT NOT NULL, rows INTEGER NOT NULL, at REAL NOT NULL)"
            )
            again = (
                connection.execute(
                    "SELECT 1 FROM main.moved_in WHERE name = ?", (self.name,)
                ).fetchone()
                is not None
            )
            if again:
                connection.execute("COMMIT")
                return 0, True
            # A copy again after a kill between the commit and the drop changes nothing: the
            # same rows, the same versions. WHERE true: SQLite's rule for an upsert on
            # INSERT ... SELECT.
            moved: int = connection.execute(
                f"INSERT INTO main.{self._quoted_name} (pk, sk, version, attrs)"
                f" SELECT pk, sk, version, attrs FROM source.{self._quoted_name} WHERE true"
                " ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version,"
                " attrs = excluded.attrs WHERE excluded.version > version"
            ).rowcount
            if not again:
                connection.execute(
                    "INSERT INTO main.moved_in VALUES (?, ?, ?, ?)",
                    (self.name, source.name, moved, time.time()),
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return moved, again

    def close(self) -> None:
        """Close this thread's connection and the change watcher's (the next use opens new
        ones): before the file is renamed, so that closing them later cannot touch the
        journal of a new file under the same name. Other threads' connections stay open."""
        connection, self._local.connection = self._local.connection, None
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        with self._watcher.lock:
            watcher, self._watcher.connection = self._watcher.connection, None
            if watcher is not None and self._watcher.pid == os.getpid():
                watcher.close()

    def integrity_problem(self, *, thorough: bool = False) -> str | None:
        """What SQLite's own check finds wrong with the file (None: nothing). The quick
        check reads every page but skips the indexes' agreement with their tables."""
        pragma = "integrity_check" if thorough else "quick_check"
        try:
            rows = self._connection().execute(f"PRAGMA {pragma}(5)").fetchall()
        except sqlite3.DatabaseError as error:
            return str(error)
        found = [row[0] for row in rows]
        return None if found == ["ok"] else "; ".join(found)

    def change_token(self) -> Hashable | None:
        """SQLite's data_version of the file (which changes with every commit of another
        connection: this process's writers included, since the watcher never writes), read
        by a connection of its own: a few microseconds. It counts every table of the file,
        and only this file's (votes are in a file of their own: storage.FEEDBACK_FILE)."""
        watcher = self._watcher
        with watcher.lock:
            if watcher.connection is None or watcher.pid != os.getpid():
                watcher.connection = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_SECONDS,
                    isolation_level=None,
                    check_same_thread=False,
                )
                watcher.pid = os.getpid()
                watcher.opened += 1
            row = watcher.connection.execute("PRAGMA data_version").fetchone()
            return (watcher.opened, int(row[0]))

    def _purge(self, connection: sqlite3.Connection, now: float) -> None:
        """Delete the items whose `expires_at` has passed (a writer calls it when it is due)."""
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        connection.execute(
            f"DELETE FROM {self._quoted_name} WHERE {_EXPIRES} IS NOT NULL AND {_EXPIRES} < ?",
            (now,),
        )

    def _get(self, pk: str, sk: str) -> Item | None:
        current = self._read(self._connection(), pk, sk)
        return None if current is None else _item(pk, sk, *current)

    def _put(self, pk: str, sk: str, attrs: Mapping[str, Any], expected_version: int) -> int:
        with self._write_transaction() as connection:
            return self._apply_put(connection, pk, sk, attrs, expected_version)

    def _get_many(
        self, keys: list[tuple[str, str]], attributes: frozenset[str] | None
    ) -> dict[tuple[str, str], Item]:
        # One statement per sort key and GET_MANY_KEYS partition keys (a page of results is
        # one), each key a lookup by primary key, not one statement per key.
        connection = self._connection()
        by_sort_key: dict[str, list[str]] = {}
        for pk, sk in keys:
            by_sort_key.setdefault(sk, []).append(pk)
        found = {}
        for sk, pks in by_sort_key.items():
            for start in range(0, len(pks), GET_MANY_KEYS):
                chunk = pks[start : start + GET_MANY_KEYS]
                rows = connection.execute(
                    f"SELECT pk, version, attrs FROM {self._quoted_name}"
                    f" WHERE sk = ? AND pk IN ({', '.join('?' * len(chunk))})",
                    (sk, *chunk),
                ).fetchall()
                for pk, version, attrs in rows:
                    values = json.loads(attrs)
                    if attributes is not None:
                        values = {n: v for n, v in values.items() if n in attributes}
                    found[pk, sk] = _item(pk, sk, version, values)
        return found

    def _put_many(self, puts: Sequence[Put]) -> None:
        with self._write_transaction() as connection:
            for put in puts:
                self._store(connection, put.pk, put.sk, put.expected_version + 1, put.attrs)

    def _delete(self, pk: str, sk: str, expected_version: int) -> None:
        with self._write_transaction() as connection:
            self._apply_delete(connection, pk, sk, expected_version)

    def _increment(
        self, pk: str, sk: str, deltas: Mapping[str, int | float], set_attrs: Mapping[str, Any]
    ) -> Item:
        with self._write_transaction() as connection:
            return self._apply_increment(connection, pk, sk, deltas, set_attrs)

    def _query(self, pk: str, prefix: str, limit: int | None) -> Iterator[Item]:
        conditions = ["pk = ?"]
        bounds: list[str] = [pk]
        if prefix:
            conditions.append("sk >= ?")
            bounds.append(prefix)
            end = _prefix_end(prefix)
            if end is not None:
                conditions.append("sk < ?")
                bounds.append(end)
        select = (
            f"SELECT sk, version, attrs FROM {self._quoted_name} WHERE {' AND '.join(conditions)}"
        )
        after: str | None = None  # the last sort key of the page before
        remaining = limit
        while remaining is None or remaining > 0:
            page_size = QUERY_PAGE_SIZE if remaining is None else min(QUERY_PAGE_SIZE, remaining)
            if after:
                sql, params = f"{select} AND sk > ? ORDER BY sk LIMIT ?", [*bounds, after]
            else:
                sql, params = f"{select} ORDER BY sk LIMIT ?", list(bounds)
            rows = self._connection().execute(sql, [*params, page_size]).fetchall()
            for sk, version, attrs in rows:
                yield _item(pk, sk, version, json.loads(attrs))
            if len(rows) < page_size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

    def _transact(self, writes: Sequence[Write]) -> None:
        with self._write_transaction() as connection:
            for write in writes:
                match write:
                    case Put(pk=pk, sk=sk, attrs=attrs, expected_version=expected):
                        self._apply_put(connection, pk, sk, attrs, expected)
                    case Delete(pk=pk, sk=sk, expected_version=expected):
                        self._apply_delete(connection, pk, sk, expected)
                    case Increment(pk=pk, sk=sk, deltas=deltas, set_attrs=set_attrs):
                        self._apply_increment(connection, pk, sk, deltas, set_attrs)

    # The helpers below run inside a write transaction; raising rolls all of it back.

    def _apply_put(
        self,
        connection: sqlite3.Connection,
        pk: str,
        sk: str,
        attrs: Mapping[str, Any],
        expected_version: int,
    ) -> int:
        version = self._checked_version(connection, pk, sk, expected_version) + 1
        self._store(connection, pk, sk, version, attrs)
        return version

    def _apply_delete(
        self, connection: sqlite3.Connection, pk: str, sk: str, expected_version: int
    ) -> None:
        self._checked_version(connection, pk, sk, expected_version)
        connection.execute(f"DELETE FROM {self._quoted_name} WHERE pk = ? AND sk = ?", (pk, sk))

    def _apply_increment(
        self,
        connection: sqlite3.Connection,
        pk: str,
        sk: str,
        deltas: Mapping[str, int | float],
        set_attrs: Mapping[str, Any],
    ) -> Item:
        current = self._read(connection, pk, sk)
        version, attrs = current if current is not None else (0, {})
        for name, delta in deltas.items():
            value = attrs.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"cannot add to {name!r}: it holds {value!r}")
            attrs[name] = value + delta
        attrs.update(set_attrs)
        self._store(connection, pk, sk, version + 1, attrs)
        return _item(pk, sk, version + 1, attrs)

    def _checked_version(
        self, connection: sqlite3.Connection, pk: str, sk: str, expected_version: int
    ) -> int:
        """The item's current version (0 if missing), if it is the expected one."""
        current = self._read(connection, pk, sk)
        version = 0 if current is None else current[0]
        if expected_version != ANY_VERSION and version != expected_version:
            raise PreconditionFailed(
                f"({pk!r}, {sk!r}) is at version {version}, not {expected_version}"
            )
        return version

    def _read(
        self, connection: sqlite3.Connection, pk: str, sk: str
    ) -> tuple[int, dict[str, Any]] | None:
        row = connection.execute(
            f"SELECT version, attrs FROM {self._quoted_name} WHERE pk = ? AND sk = ?", (pk, sk)
        ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def _store(
        self,
        connection: sqlite3.Connection,
        pk: str,
        sk: str,
        version: int,
        attrs: Mapping[str, Any],
    ) -> None:
        connection.execute(
            f"INSERT OR REPLACE INTO {self._quoted_name} (pk, sk, version, attrs)"
            " VALUES (?, ?, ?, ?)",
            (pk, sk, version, _encode_attrs(attrs)),
        )

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with disk_full_is_storage_full(self.path.name):
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                if self.expiring and time.monotonic() >= self._next_purge:
                    self._purge(connection, time.time())
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection. A forked child opens its own: sharing an SQLite
        connection with the parent process corrupts it."""
        if self._local.connection is None or self._local.pid != os.getpid():
            # isolation_level=None: no implicit transactions; ours are explicit.
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts the database and keeps every commit through a
            # process crash; only a power cut can lose the last commits. FULL would fsync
            # every commit, which made a bulk ingest spend most of its time waiting on disk.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            self._local.connection = connection
            self._local.pid = os.getpid()
            return connection
        return self._local.connection


def _item(pk: str, sk: str, version: int, attrs: dict[str, Any]) -> Item:
    return {**attrs, "pk": pk, "sk": sk, "version": version}


def _encode_attrs(attrs: Mapping[str, Any]) -> str:
    # JSON writes floats with repr(), which reads back to the identical float. Callers' values
    # are finite (validate_attrs); a sum an increment computed can still overflow to infinity,
    # which is refused (allow_nan=False) as DynamoDB refuses it.
    try:
        return json.dumps(dict(attrs), allow_nan=False, ensure_ascii=False)
    except ValueError as error:
        raise ValueError(f"attributes hold a value a table cannot store: {error}") from error


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix`, if any.

    SQLite compares text as UTF-8 bytes, which orders like code points; surrogates cannot be
    stored, so the successor of U+D7FF is U+E000.
    """
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return stripped[:-1] + chr(following)
