"""Decodes in worker processes: bounded in number, in time, and in how many may wait.

The header checks of `images.py` refuse what would cost too much before decoding it; the pool
bounds what is left, and what no estimate foresaw:
- at most `workers` decodes at once (one per CPU), so that a burst of expensive files takes
  the memory and CPU of `workers` of them, however many arrive;
- a decode that takes longer than `deadline` seconds is refused (`too_costly`) and its worker
  killed and replaced: a thread cannot be stopped, a process can. A client that leaves does
  not stop its decode, but the deadline does;
- beyond `queue` callers waiting for a worker, `DecoderBusy` (the API answers 503 with
  Retry-After) instead of waiting without end: at most `workers + queue` of the server's
  threads wait for decodes, and the others keep answering.

Each worker is a process started with `spawn` (forking a server that runs threads is unsafe)
and talks to the pool over a `Pipe`, a socket pair: multiprocessing's pools and queues need
POSIX semaphores in /dev/shm, which AWS Lambda does not have. Each worker caps its own address
space (RLIMIT_AS) a margin above the memory limit, so that a decode the estimate got wrong
fails with a MemoryError in that worker instead of taking the machine's memory.

On Lambda, decodes run inline instead (`InlineDecoder`; `IMGSEARCH_DECODE_WORKERS=0` in
infra/template.yaml): a sandbox serves one request at a time, its timeout is the deadline,
and the header checks bound the memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol

from imgsearch.images import DecodedImage, DecodeLimits, DraftBox, ImageRefused, decode_image

if TYPE_CHECKING:
    from imgsearch.config import Settings

log = logging.getLogger(__name__)

READY = ("ready", None)  # what a new worker sends once it can decode
START_SECONDS = 30.0  # for a worker to start; a decode's deadline counts from then


class DecoderBusy(Exception):
    """Every worker is busy and enough callers already wait: try again in `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"the server is decoding as many images as it can; try again in {retry_after} s"
        )
        self.retry_after = retry_after


class Decoder(Protocol):
    def decode(
        self, data: bytes, limits: DecodeLimits, *, draft_size: int | DraftBox | None = None
    ) -> DecodedImage: ...

    def close(self) -> None: ...


class InlineDecoder:
    """Decodes in the calling thread, under the same header checks (AWS Lambda; tests)."""

    def decode(
        self, data: bytes, limits: DecodeLimits, *, draft_size: int | DraftBox | None = None
    ) -> DecodedImage:
        return decode_image(data, limits, draft_size=draft_size)

    def close(self) -> None:
        pass


def open_decoder(settings: Settings) -> Decoder:
    """The decoder the settings ask for: a pool of worker processes (one per CPU, as memory
    allows, unless `decode_workers` says otherwise), or inline when it is 0
    (infra/template.yaml sets that for Lambda) or the process may not have children."""
    workers = settings.decode_workers
    if workers is None:
        workers = _default_workers(settings.max_decode_memory)
    # A daemonic process (a multiprocessing pool's worker) may not start processes of its own.
    if workers <= 0 or multiprocessing.current_process().daemon:
        return InlineDecoder()
    return DecodePool(
        workers,
        deadline=settings.decode_seconds,
        queue=settings.decode_queue,
        memory_cap=2 * settings.max_decode_memory,
    )


def _default_workers(decode_memory: int) -> int:
    """One worker per CPU this process may run on (its affinity, which a container's CPU set
    narrows, unlike `os.cpu_count()`), and no more than the machine's memory holds with each
    worker at its cap (twice `decode_memory`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cpus or 1, memory // (2 * decode_memory)))


class DecodePool:
    """At most `workers` decodes at once in worker processes, each within `deadline` seconds;
    at most `queue` callers wait for a worker. Workers start when first needed."""

    def __init__(
        self, workers: int, *, deadline: float, queue: int, memory_cap: int | None = None
    ) -> None:
        self.workers = workers
        self.deadline = deadline
        self.queue = queue
        self.memory_cap = memory_cap
        # How long a caller may wait for a worker: the time the queue ahead takes to drain.
        self.max_wait = deadline * (1 + queue / workers)
        self._context = multiprocessing.get_context("spawn")
        self._free_slots = workers
        self._waiting = 0
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()  # every live worker, for close()
        self._closed = False
        self._changed = threading.Condition()
        weakref.finalize(self, _kill_all, self._running)

    def decode(
        self, data: bytes, limits: DecodeLimits, *, draft_size: int | DraftBox | None = None
    ) -> DecodedImage:
        """Decode in a worker. Raises ImageRefused (`too_costly` past the deadline), or
        DecoderBusy when the queue is full."""
        worker = self._acquire()
        try:
            outcome = worker.run((data, limits, draft_size), self.deadline)
        except BaseException:
            self._discard(worker)
            raise
        if outcome.worker_lost:
            self._discard(worker)
        else:
            self._release(worker)
        return outcome.result()

    def close(self) -> None:
        """Stop every worker; decodes running now are killed, later calls are refused."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        _kill_all(self._running)

    # Slots -----------------------------------------------------------------------------------

    def _acquire(self) -> _Worker:
        with self._changed:
            if self._closed:
                raise DecoderBusy(self._retry_after())
            if self._free_slots == 0 and self._waiting >= self.queue:
                raise DecoderBusy(self._retry_after())
            self._waiting += 1
            try:
                available = self._changed.wait_for(
                    lambda: self._free_slots > 0 or self._closed, timeout=self.max_wait
                )
            finally:
                self._waiting -= 1
            if not available or self._closed:
                raise DecoderBusy(self._retry_after())
            self._free_slots -= 1
            worker = self._idle.pop() if self._idle else None
        if worker is None:  # started outside the lock: a spawn takes a fraction of a second
            try:
                worker = _Worker(self._context, self.memory_cap)
            except BaseException:
                self._release(None)
                raise
            self._running.add(worker)
        return worker

    def _release(self, worker: _Worker | None) -> None:
        with self._changed:
            self._free_slots += 1
            if worker is not None and not self._closed:
                self._idle.append(worker)
            self._changed.notify()
        if worker is not None and self._closed:
            self._discard_process(worker)

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker that ran out of time or died, and free its slot for a new one."""
        self._discard_process(worker)
        self._release(None)

    def _discard_process(self, worker: _Worker) -> None:
        worker.kill()
        self._running.discard(worker)

    def _retry_after(self) -> int:
        return max(1, round(self.deadline))


def _kill_all(workers: set[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


@dataclass(frozen=True)
class _Outcome:
    """What came back from a worker: the image, or the error to raise (a refusal), and
    whether the worker must be replaced."""

    decoded: DecodedImage | None = None
    error: Exception | None = None
    worker_lost: bool = False

    def result(self) -> DecodedImage:
        if self.error is not None:
            raise self.error
        assert self.decoded is not None
        return self.decoded


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, context: multiprocessing.context.SpawnContext, memory_cap: int | None):
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, memory_cap), daemon=True, name="imgsearch-decoder"
        )
        self.process.start()
        child.close()
        self._ready = False

    def run(
        self, job: tuple[bytes, DecodeLimits, int | DraftBox | None], deadline: float
    ) -> _Outcome:
        if not self._started():
            return self._lost()
        try:
            self.connection.send(job)
        except OSError:  # the worker died while idle
            return self._lost()
        if not self.connection.poll(deadline):
            refusal = ImageRefused("too_costly", f"decoding took longer than {deadline:g} s")
            return _Outcome(error=refusal, worker_lost=True)
        try:
            kind, value = self.connection.recv()
        except (EOFError, OSError):
            return self._lost()
        if kind == "decoded":
            return _Outcome(decoded=value)
        if kind == "failed":  # a bug, not the file: an error as if decoded here
            return _Outcome(error=RuntimeError(f"decoding failed in a worker: {value}"))
        reason, message = value
        # A worker that ran out of memory is replaced: its heap may stay fragmented.
        return _Outcome(error=ImageRefused(reason, message), worker_lost=reason == "too_costly")

    def _started(self) -> bool:
        """Wait for a new worker to say it is ready: its start (an interpreter, Pillow, NumPy;
        seconds on a loaded machine) must not count against a decode's deadline."""
        if self._ready:
            return True
        try:
            self._ready = self.connection.poll(START_SECONDS) and self.connection.recv() == READY
        except (EOFError, OSError):
            return False
        return self._ready

    def _lost(self) -> _Outcome:
        """The worker died mid-decode: killed for its memory (by the kernel), or crashed."""
        self.process.join(timeout=1)
        if self.process.exitcode in (-9, 137):
            refusal = ImageRefused("too_costly", "decoding the image ran out of memory")
        else:
            refusal = ImageRefused("corrupt", "the decoder failed on this file")
        log.warning("a decode worker died (exit code %s)", self.process.exitcode)
        return _Outcome(error=refusal, worker_lost=True)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def _serve(connection: Connection, memory_cap: int | None) -> None:
    """A worker's loop: decode each job it receives, answer with the image or the refusal."""
    if memory_cap:
        _cap_address_space(memory_cap)
    connection.send(READY)
    while True:
        try:
            data, limits, draft_size = connection.recv()
        except (EOFError, OSError):  # the pool closed the pipe, or its process is gone
            return
        try:
            answer: tuple[str, object] = (
                "decoded",
                decode_image(data, limits, draft_size=draft_size),
            )
        except ImageRefused as refusal:
            answer = ("refused", (refusal.reason, str(refusal)))
        except Exception as error:  # a bug: reported, and the worker goes on
            answer = ("failed", f"{type(error).__name__}: {error}")
        del data
        try:
            connection.send(answer)
        except MemoryError:
            connection.send(("refused", ("too_costly", "the decoded image is too large")))


def _cap_address_space(margin: int) -> None:
    """Cap this process's address space at what it uses now (the interpreter, Pillow, NumPy)
    plus `margin`: beyond it, allocations fail with MemoryError instead of growing."""
    try:
        with open("/proc/self/status") as status:
            used_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    except (OSError, StopIteration, ValueError):
        return  # not Linux: no cap, the header checks still hold
    limit = used_kib * 1024 + margin
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
