"""`imgsearch serve --workers 2`: processes sharing one socket serve one collection."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
API_KEY = "workers-test-key"
PHOTO = REPO / "demo" / "lotus" / "image_0002.jpg"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(stat[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.model  # the workers load the model for an upload
def test_workers_share_the_port_see_each_others_uploads_and_stop_together(tmp_path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data"), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMGSEARCH_API_KEY": API_KEY}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    served: list[int] = []
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        else:
            pytest.fail("the server did not start")
        workers = _children(server.pid)
        # Two server processes (spawned: multiprocessing's resource tracker is a third).
        served = [p for p in workers if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(served) == 2, workers

        uploaded = requests.post(
            f"{base}/images",
            files={"file": ("lotus.jpg", PHOTO.read_bytes(), "image/jpeg")},
            headers={"X-API-Key": API_KEY},
            timeout=120,
        )
        assert uploaded.status_code == 201, uploaded.text
        image_id = uploaded.json()["id"]
        # Each request on a new connection, which either worker may accept: within the
        # index's refresh interval (2 s) both have the upload, and its "more like this".
        time.sleep(2.5)
        for _ in range(12):
            with requests.Session() as fresh:
                assert fresh.get(f"{base}/images/{image_id}", timeout=10).status_code == 200
                similar = fresh.get(f"{base}/images/{image_id}/similar", timeout=10)
                assert similar.status_code == 200, similar.text
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, server.stderr.read().decode()[-2000:]
    assert not any(_alive(p) for p in served), "a worker outlived the server"
