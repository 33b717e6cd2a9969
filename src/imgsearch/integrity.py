"""Errors for stored files that cannot be trusted, and the checksums that detect them.

Every file the service reads can be lost or damaged by a full disk, a crash mid-copy or a bad
sector. What is derived (index shard builds, the manifest) is verified before use and rebuilt
from what it was derived from; what is not (the catalog) is checked at start. A file that
fails is reported in one line naming it and the command that repairs it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

REPAIR_COMMAND = "imgsearch check --repair"


class UnusableFile(RuntimeError):
    """A file the service needs is missing, damaged or unusable; the message names the file
    and what fixes it (the CLI prints it as one line and exits)."""


class DamagedFile(UnusableFile):
    """A stored object or database is missing, truncated or corrupt."""

    def __init__(self, name: str, problem: str) -> None:
        problem = " ".join(problem.split())  # one line, whatever SQLite or numpy said
        super().__init__(f"{name} is damaged ({problem}): run `{REPAIR_COMMAND}`")
        self.name = name
        self.problem = problem


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def secret_file(path: Path, make: Callable[[], str], *, what: str, fix: str) -> tuple[str, bool]:
    """The secret kept in `path` (`what` it is, for messages) and whether it was just made:
    read it, or write `make()` there once (readable by its owner only; a process that loses the
    race to create it reads the winner's). Raises UnusableFile, naming the file and `fix`, for
    a file that is empty or cannot be read: a secret silently replaced would lock out whoever
    holds the old one, or make every old client a new one."""
    try:
        return _read_secret(path, what, fix), False
    except FileNotFoundError:
        pass
    secret = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _read_secret(path, what, fix), False
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret, True


def _read_secret(path: Path, what: str, fix: str) -> str:
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise UnusableFile(f"{what} {path} cannot be read ({error}): {fix}") from None
    if not secret:
        raise UnusableFile(f"{what} {path} is empty: {fix}")
    return secret
