"""Where the repository and its demo photos are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"


def demo_image(category: str, number: int = 1) -> bytes:
    return (DEMO / category / f"image_{number:04d}.jpg").read_bytes()
