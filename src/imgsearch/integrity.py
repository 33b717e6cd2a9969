"""Errors for stored files that cannot be trusted, and the checksums that detect them.

Every file the service reads can be lost or damaged by a full disk, a crash mid-copy or a bad
sector. What is derived (index shard builds, the manifest) is verified before use and rebuilt
from what it was derived from; what is not (the catalog) is checked at start. A file that
fails is reported in one line naming it and the command that repairs it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPAIR_COMMAND = "imgsearch check --repair"

# numpy reads an array's header with ast.literal_eval, and CPython 3.11's AST constructor keeps
# its recursion depth in state the threads share: two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905; the builder
# reads a batch's embeddings in threads, merges load shards in the background). Every stored
# array is read through the two functions below, one header at a time.
_ARRAY_HEADERS = threading.Lock()


def read_npz(source: bytes | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive (its bytes or its file), read at once."""
    with (
        _ARRAY_HEADERS,
        np.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False
        ) as archive,
    ):
        return {name: archive[name] for name in archive.files}


def read_npy(source: bytes | Path, *, mapped: bool = False) -> np.ndarray:
    """One .npy array (its bytes, or its file: memory-mapped read-only if `mapped`)."""
    with _ARRAY_HEADERS:
        array: np.ndarray = np.load(
            io.BytesIO(source) if isinstance(source, bytes) else source,
            mmap_mode="r" if mapped else None,
            allow_pickle=False,
        )
        return array


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
