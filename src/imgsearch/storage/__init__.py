"""Storage: the ports the core uses (base.py, ports.py), the layout of what it keeps in them
(layout.md), and `open_storage` to get the adapters settings ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import ports
from .base import DirectUploads, LocalCopies, ObjectStore, Table
from .local import LocalObjectStore, SqliteTable
from .ports import *  # noqa: F403  (the ports' vocabulary, listed in ports.__all__)

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "CATALOG_FILE",
    "FEEDBACK_FILE",
    "DirectUploads",
    "LocalCopies",
    "LocalObjectStore",
    "ObjectStore",
    "SqliteTable",
    "Storage",
    "Table",
    "open_storage",
]
__all__ += ports.__all__


CATALOG_FILE = "tables.sqlite3"  # the local catalog table, in the data directory
# The feedback table (votes, their summaries, rate limits), in a file of
# its own: a vote is no write to the catalog's file, whose change token (SQLite's
# data_version) says when a server's kept answers are stale (ImageSearch.answers_version).
# Collections made before 2026-12 kept it in CATALOG_FILE; it moves at the first open.
FEEDBACK_FILE = "feedback.sqlite3"


@dataclass(frozen=True)
class Storage:
    """Everything the application stores: images and index files, the catalog, feedback."""

    objects: ObjectStore
    catalog: Table
    feedback: Table


def open_storage(settings: Settings) -> Storage:
    """The local data directory or the AWS resources, as `settings.backend` says."""
    if settings.backend == "aws":
        from .aws import open_aws_storage  # local use does not pay for loading boto3

        return open_aws_storage(settings)
    catalog = SqliteTable(settings.data_dir / CATALOG_FILE, "catalog")
    # Expiring like the template's feedback table (its time to live): rate-limit counters.
    feedback = SqliteTable(settings.data_dir / FEEDBACK_FILE, "feedback", expiring=True)
    feedback.move_rows_from(catalog.path)  # once, from where older versions kept it
    return Storage(
        objects=LocalObjectStore(settings.data_dir / "objects"), catalog=catalog, feedback=feedback
    )
