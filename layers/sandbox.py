"""Run a built function the way Lambda does: a fresh python3.12 that sees only the function's
code (Lambda's /var/task) and its layers merged in order (Lambda's /opt), nothing installed.

    sandbox = assemble("search", out=Path("build/lambda"), root=tmp)
    result = run(sandbox, python, environment, event)   # {"import_seconds", "response", ...}

Used by tests/cloud/test_bundles.py (each handler on its own bundle) and bench/cold_start.py.
The function's code (under a megabyte) is copied; the layers are symbolic links, so that
assembling costs no copies of them. Python finds compiled modules beside the links, or none
when the sandbox is assembled `with_pyc=False`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Executed by the sandboxed python3.12 with -I -S: no site-packages, no environment paths.
# argv: task dir, opt dir; stdin: {"event": ..., "setup": code run after the import}.
RUNNER = r"""
import json, sys, time
task, opt = sys.argv[1], sys.argv[2]
sys.path[:0] = [task, opt + "/python"]  # Lambda's order: function code, then layers
request = json.load(sys.stdin)
started = time.perf_counter()
import app
imported = time.perf_counter()

class Context:
    function_name = "sandbox"
    memory_limit_in_mb = 1769
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sandbox"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    def get_remaining_time_in_millis(self):
        return 30000

measured = {}
if request.get("measure"):
    exec(request["measure"], {"app": app, "measured": measured})
response = app.handler(request["event"], Context()) if request.get("event") else None
print(json.dumps({
    "import_seconds": imported - started,
    "measured": measured,
    "response": response,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss through fork and exec.
    "peak_rss_mb": int(next(line.split()[1] for line in open("/proc/self/status")
                            if line.startswith("VmHWM:"))) / 1024,
}))
"""


@dataclass(frozen=True)
class Sandbox:
    task: Path  # the function's code
    opt: Path  # its layers, merged


def assemble(function: str, *, out: Path, layers: list[str], root: Path, with_pyc: bool = True):
    """Lay out a built function (`out`/functions/<function>) and its `layers`, in order,
    under `root`, as Lambda unpacks them."""
    sandbox = Sandbox(task=root / "task", opt=root / "opt")
    # Copied, not linked: the web page's static files are refused behind symbolic links.
    skipped = shutil.ignore_patterns() if with_pyc else shutil.ignore_patterns("__pycache__")
    shutil.copytree(out / "functions" / function, sandbox.task, ignore=skipped)
    for layer in layers:  # a later layer's file replaces an earlier one's, as in Lambda
        _link_tree(out / "layers" / layer, sandbox.opt, with_pyc)
    return sandbox


def _link_tree(source: Path, destination: Path, with_pyc: bool) -> None:
    for directory, names, files in os.walk(source):
        if not with_pyc:
            names[:] = [name for name in names if name != "__pycache__"]
        target = destination / Path(directory).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            link = target / name
            link.unlink(missing_ok=True)
            link.symlink_to(Path(directory, name).resolve())


def run(
    sandbox: Sandbox,
    python: str,
    environment: dict[str, str],
    event: dict[str, Any] | None = None,
    *,
    measure: str | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    """Import the handler module in a fresh interpreter and call it with `event`.

    `measure` is Python run after the import with `app` and a dict `measured` to fill.
    Returns the import time, `measured`, the handler's response, the top-level modules that
    were imported and the process's peak memory.
    """
    command = [python, "-I", "-S", "-B", "-c", RUNNER, str(sandbox.task), str(sandbox.opt)]
    request = json.dumps({"event": event, "measure": measure})
    completed = subprocess.run(
        command,
        input=request,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=sandbox.task,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the sandboxed handler failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
