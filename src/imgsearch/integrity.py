"""Errors for stored files that cannot be trusted, and the checksums that detect them.

Every file the service reads can be lost or damaged by a full disk, a crash mid-copy or a bad
sector. What is derived (index shard builds, the manifest) is verified before use and rebuilt
from what it was derived from; what is not (the catalog) is checked at start. A file that
fails is reported in one line naming it and the command that repairs it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

REPAIR_COMMAND = "imgsearch check --repair"


class UnusableFile(RuntimeError):
    """A file the service needs is missing, damaged or unusable; the message names the file
    and what fixes it (the CLI prints it as one line and exits)."""


class DamagedFile(UnusableFile):
    """A stored object or database is missing, truncated or corrupt."""

    def __init__(self, name: str, problem: str, repair: str = REPAIR_COMMAND) -> None:
        problem = " ".join(problem.split())  # one line, whatever SQLite or numpy said
        super().__init__(f"{name} is damaged ({problem}): run `{repair}`")
        self.name = name
        self.problem = problem


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
