"""The BLAS library's threads, which are process-wide: the one place that limits them.

Several parts limit OpenBLAS to one thread for a while (a bulk ingest's inference, a shard's
fit in the background merge thread). A save-then-restore block each would interleave across
threads (one saves another's limit and restores it for good, or gives the threads back while
the other still needs them), so they share one limit: the first block to enter saves the
count and limits it, the last to leave restores it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_holders = 0
_limiter: Any = None  # threadpoolctl's limiter while a block holds the limit


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # made once, on first use: it inspects the loaded libraries


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within the block, whatever thread it runs on, BLAS runs on one thread; after the last
    overlapping block ends, on as many as before the first began."""
    global _holders, _limiter
    with _lock:
        if not _holders:
            _limiter = _controller().limit(limits=1, user_api="blas")
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if not _holders:
                _limiter.restore_original_limits()
                _limiter = None
