"""The local feedback table in a file of its own (storage.FEEDBACK_FILE): a vote is no write to
the catalog's file, and a data directory made when both tables shared the catalog's file has
its votes moved at its first open, once, whatever kills the move half-way."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from imgsearch.config import Settings
from imgsearch.storage import CATALOG_FILE, FEEDBACK_FILE, Storage, open_storage
from imgsearch.storage.local import SqliteTable


def _settings(data_dir: Path) -> Settings:
    return Settings(backend="local", data_dir=data_dir)


def _old_layout(data_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """A data directory as versions before the move left it: both tables in CATALOG_FILE.
    Returns the feedback items it holds."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CATALOG_FILE
    catalog = SqliteTable(path, "catalog")
    feedback = SqliteTable(path, "feedback", expiring=True)
    catalog.put("image#a", "meta", {"keys": ["a.jpg"]})
    feedback.put("vote#dog", "s1#image-a", {"vote": 1})
    feedback.put("vote#dog", "s1#image-a", {"vote": -1}, expected_version=1)  # version 2
    for _ in range(3):
        feedback.increment("term#dog", "image#a", {"up": 1, "weight": 0.5})
    feedback.put("rate#client", "minute", {"n": 4, "expires_at": 4_000_000_000})
    feedback.put("config", "client-secret", {"secret": "c2VjcmV0"})  # (as the cloud keeps it)
    return {(item["pk"], item["sk"]): item for item in _items(feedback)}


def _items(table: SqliteTable) -> list[dict[str, Any]]:
    rows = table._connection().execute(f"SELECT pk, sk FROM {table._quoted_name}").fetchall()
    return [table.get(pk, sk) for pk, sk in rows]  # type: ignore[misc]


def _tables_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def _assert_moved(storage: Storage, data_dir: Path, expected: dict) -> None:
    feedback = storage.feedback
    assert isinstance(feedback, SqliteTable) and feedback.path == data_dir / FEEDBACK_FILE
    assert {(i["pk"], i["sk"]): i for i in _items(feedback)} == expected  # versions too
    assert "feedback" not in _tables_in(data_dir / CATALOG_FILE)
    assert storage.catalog.get("image#a", "meta")["keys"] == ["a.jpg"]  # type: ignore[index]


def test_votes_are_in_a_file_of_their_own(tmp_path: Path) -> None:
    storage = open_storage(_settings(tmp_path))
    storage.feedback.put("vote#dog", "s1#image-a", {"vote": 1})
    assert isinstance(storage.catalog, SqliteTable) and isinstance(storage.feedback, SqliteTable)
    assert storage.catalog.path == tmp_path / CATALOG_FILE
    assert storage.feedback.path == tmp_path / FEEDBACK_FILE
    assert _tables_in(tmp_path / CATALOG_FILE) == {"catalog"}


def test_a_vote_leaves_the_catalogs_change_token(tmp_path: Path) -> None:
    storage = open_storage(_settings(tmp_path))
    token = storage.catalog.change_token()
    storage.feedback.put("vote#dog", "s1#image-a", {"vote": 1})
    storage.feedback.increment("term#dog", "image#a", {"up": 1})
    assert storage.catalog.change_token() == token
    storage.catalog.put("image#a", "meta", {"keys": ["a.jpg"]})
    assert storage.catalog.change_token() != token


def test_an_old_data_directorys_votes_move_once(tmp_path: Path) -> None:
    """Every row with its version and attributes (a secret and rate counters
    included), the old table dropped; opening again moves nothing and counts nothing twice."""
    expected = _old_layout(tmp_path)
    first = open_storage(_settings(tmp_path))
    _assert_moved(first, tmp_path, expected)
    first.feedback.increment("term#dog", "image#a", {"up": 1})
    expected["term#dog", "image#a"] = first.feedback.get("term#dog", "image#a")
    again = open_storage(_settings(tmp_path))
    _assert_moved(again, tmp_path, expected)
    assert again.feedback.get("term#dog", "image#a")["up"] == 4  # type: ignore[index]


class _Dying:
    """An SQLite connection whose process dies (as a kill does: no rollback, no clean-up)
    when it is asked to run a statement starting with `at`."""

    def __init__(self, connection: sqlite3.Connection, at: str) -> None:
        self._connection = connection
        self._at = at

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if " ".join(sql.split()).upper().startswith(self._at):
            os._exit(9)
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _open_and_die_at(data_dir: str, at: str) -> None:
    """In a process of its own: open the data directory, dying at statement `at` of the
    move (and only of the move: the tables' own connections are opened before)."""
    real_connect, real_move = sqlite3.connect, SqliteTable.move_rows_from

    def dying_move(self: SqliteTable, source: Path) -> int:
        sqlite3.connect = lambda *a, **k: _Dying(real_connect(*a, **k), at)  # type: ignore[assignment]
        return real_move(self, source)

    SqliteTable.move_rows_from = dying_move  # type: ignore[method-assign]
    open_storage(_settings(Path(data_dir)))
    os._exit(0)


@pytest.mark.parametrize(
    "at",
    [
        "ATTACH",  # before anything
        "BEGIN IMMEDIATE",
        "INSERT INTO MAIN.MOVED_IN",  # rows copied, not committed
        "COMMIT",
        "DROP TABLE",  # copied and committed, the old table still there
    ],
)
def test_a_move_killed_at_any_point_loses_no_vote_and_counts_none_twice(
    tmp_path: Path, at: str
) -> None:
    expected = _old_layout(tmp_path)
    process = multiprocessing.get_context("spawn").Process(
        target=_open_and_die_at, args=(str(tmp_path), at)
    )
    process.start()
    process.join(60)
    assert process.exitcode == 9  # killed where asked
    _assert_moved(open_storage(_settings(tmp_path)), tmp_path, expected)
    _assert_moved(open_storage(_settings(tmp_path)), tmp_path, expected)


def test_a_feedback_table_that_reappears_after_the_move_is_kept_aside(tmp_path: Path) -> None:
    """A downgrade (or a restored backup, or an older version still running) writes votes
    into the old file's table again. Its rows count a history apart from the moved table's
    (versions, and summaries kept in step with their votes), so merging them would break
    both: the next open renames it aside, keeping its rows, and leaves the votes file as it
    was."""
    expected = _old_layout(tmp_path)
    first = open_storage(_settings(tmp_path))
    _assert_moved(first, tmp_path, expected)
    first.feedback.increment("term#dog", "image#a", {"up": 1})  # version 4, up 4
    # The older version recreates its table: a new vote, and another history of a row.
    old = SqliteTable(tmp_path / CATALOG_FILE, "feedback", expiring=True)
    old.put("vote#cat", "s1#image-a", {"vote": 1})
    old.put("term#dog", "image#a", {"up": 9, "weight": 0.5})
    with sqlite3.connect(tmp_path / CATALOG_FILE) as connection:
        connection.execute("UPDATE feedback SET version = 9 WHERE pk = 'term#dog'")
    again = open_storage(_settings(tmp_path))
    assert again.feedback.get("vote#cat", "s1#image-a") is None  # not merged
    counted = again.feedback.get("term#dog", "image#a")
    assert counted is not None and (counted["up"], counted["version"]) == (4, 4)
    tables = _tables_in(tmp_path / CATALOG_FILE)
    assert "feedback" not in tables
    (aside,) = [name for name in tables if name.startswith("feedback_reappeared_")]
    with sqlite3.connect(tmp_path / CATALOG_FILE) as connection:
        rows = connection.execute(f'SELECT pk, version FROM "{aside}" ORDER BY pk').fetchall()
    assert rows == [("term#dog", 9), ("vote#cat", 1)]  # kept for the owner, as written


def test_an_old_file_with_damaged_votes_opens_and_is_left_to_the_checks(tmp_path: Path) -> None:
    """Pages of the old file's feedback table that SQLite cannot read: the move copies and
    drops nothing, and the file's own check finds it damaged (so `serve` refuses it and
    `imgsearch check --repair` rebuilds the catalog: tests/test_faults.py)."""
    _old_layout(tmp_path)
    path = tmp_path / CATALOG_FILE
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'feedback'"
        ).fetchone()
        (page,) = connection.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page : root * page] = b"\xa5" * page
    path.write_bytes(bytes(data))
    storage = open_storage(_settings(tmp_path))
    assert isinstance(storage.catalog, SqliteTable) and isinstance(storage.feedback, SqliteTable)
    assert storage.catalog.integrity_problem() is not None
    assert storage.feedback.integrity_problem() is None
    assert "feedback" in _tables_in(path)  # not dropped: its votes go aside with the file
