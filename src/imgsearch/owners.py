"""Who holds a lease or started a change: a name for this process that another process can
check, so that work a crashed process left behind is taken over at once, not after a timeout.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from pathlib import Path


def _machine() -> str:
    """This process table's identity: host name and kernel boot (containers on one host differ
    by host name, Lambda sandboxes by boot), so that pids are only compared where they mean
    the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    return f"{socket.gethostname()}/{boot}"


def _started(pid: int) -> str:
    """When a process started, in clock ticks since boot: with the pid, it names one process
    (a restarted server in a container often gets the pid of the one that crashed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so count from its closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


MACHINE = _machine()


@functools.lru_cache(maxsize=4)
def _process(pid: int) -> str:
    """This process's pid.start, read once per pid (a forked child has its own): each
    ingest names an owner, and reading /proc each time cost a bulk ingest 3% of its time."""
    return f"{pid}.{_started(pid)}"


def new_owner() -> str:
    """A fresh owner name: machine, process (pid.start) and a random part for this holder."""
    return f"{MACHINE}:{_process(os.getpid())}:{uuid.uuid4().hex[:8]}"


def owner_is_alive(owner: str) -> bool:
    """False only for a process of this machine that is gone; anything else counts as alive."""
    machine, process, _ = owner.rsplit(":", 2)
    pid, _, started = process.partition(".")
    if machine != MACHINE or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The pid runs, but it may be another process that got it after the owner died.
    return not started or _started(int(pid)) in ("", started)


def is_this_process(owner: str) -> bool:
    """Whether `owner` was named by this very process (`new_owner`)."""
    machine, process, _ = owner.rsplit(":", 2)
    return machine == MACHINE and process == _process(os.getpid())
