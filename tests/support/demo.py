"""Where the repository and its demo photos are."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"


def demo_image(category: str, number: int = 1) -> bytes:
    return (DEMO / category / f"image_{number:04d}.jpg").read_bytes()


def near_copy(data: bytes) -> bytes:
    """The photo resized to 80%, cropped by 3% and re-encoded at JPEG quality 70."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    image = image.crop((w * 3 // 100, h * 3 // 100, w, h)).resize((w * 4 // 5, h * 4 // 5))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    return out.getvalue()
