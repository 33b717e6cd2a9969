"""Helpers for the browser tests: the app served over HTTP from a thread, and Debian's Chromium
driven by Playwright (Playwright's own browser download does not work everywhere)."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Playwright

from imgsearch.api.server import server_config

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def live_server(app: FastAPI, port: int = 0) -> Iterator[str]:
    """Serve `app` on `port` (0: a free one) until the block ends, as `imgsearch serve` does
    (the same protocol and bounds); yields its base URL.

    The socket listens before the server thread starts, so requests made at once wait in the
    backlog instead of failing: nothing has to poll for the server to come up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    port = sock.getsockname()[1]
    settings = app.state.service.settings
    config = server_config(app, settings, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def chromium_path() -> str:
    """Debian's Chromium, or a failure saying how to install it (never a silent skip)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "the browser tests need Chromium and none was found on PATH: "
            "run scripts/install-chromium.sh (Debian's chromium package)",
            pytrace=False,
        )
    return found


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
