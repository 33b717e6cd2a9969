"""Session 19's probe: hostile multipart forms against the open reverse search of a running
`imgsearch serve` (its pid given, for its CPU time and memory).

    PYTHONPATH=src .venv/bin/python bench/hostile_forms.py --port 8719 --pid PID
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import time
from pathlib import Path

from PIL import Image


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(port: int, body: bytes, boundary: str, source: str = "127.0.0.7") -> tuple[int, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
    head = (
        f"POST /api/search/image HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    s.sendall(head + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def part(name: str, value: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"Content-Disposition: {disposition}\r\n{extra}"
    if filename:
        head += "Content-Type: image/jpeg\r\n"
    return b"--B\r\n" + head.encode() + b"\r\n" + value + b"\r\n"


def cases() -> dict[str, bytes]:
    image = jpeg()
    file_part = part("file", image, "x.jpg")
    end = b"--B--\r\n"
    return {
        "plain": file_part + end,
        "10,000 fields": b"".join(part(f"f{i}", b"x") for i in range(10_000)) + file_part + end,
        "1,000 files": b"".join(part("file", image, f"{i}.jpg") for i in range(1_000)) + end,
        "file without filename": part("file", image) + end,
        "20 MB field": part("query", b"a" * 20_000_000) + file_part + end,
        "1 MB part header": part("file", image, "x.jpg", "X-Pad: " + "a" * 1_000_000 + "\r\n")
        + end,
        "100,000 part headers": part(
            "file", image, "x.jpg", "".join(f"X-{i}: a\r\n" for i in range(100_000))
        )
        + end,
        "20 MB filename": part("file", image, "a" * 20_000_000) + end,
        "boundary only, 20 MB": b"--B\r\n" * 4_000_000,
        "20 MB preamble": b"x" * 20_000_000 + b"\r\n" + file_part + end,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8719)
    parser.add_argument("--pid", type=int, required=True)
    args = parser.parse_args()
    for name, body in cases().items():
        cpu, rss, start = cpu_seconds(args.pid), rss_mb(args.pid), time.monotonic()
        status, answer = post(args.port, body, "B")
        seconds = time.monotonic() - start
        used = cpu_seconds(args.pid) - cpu
        print(
            f"{name:24} {len(body):>11,} B  {status}  {seconds:6.2f} s  cpu {used:5.2f} s  "
            f"rss {rss:.0f}->{rss_mb(args.pid):.0f} MB  {answer[:110]!r}"
        )


if __name__ == "__main__":
    main()
