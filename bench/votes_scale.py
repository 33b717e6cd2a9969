"""What a search costs when one word has many votes (issue 13: 100,000 votes made each search
of the word take 0.9 s, because the learner read every vote).

Ingests the demo collection into a temporary data directory (or uses --data-dir), casts
--votes votes on one word through `Feedback.vote` (the path POST /api/feedback takes), from
--sessions sessions spread over --clients clients, each session voting on a run of the
collection's images, then times `search_text` of the word with the learner's cache off, so
that every search reads what the votes taught:

    PYTHONPATH=src .venv/bin/python bench/votes_scale.py --votes 100000

With --lone-client-images N, one more client then votes alone on N more images (votes
that teach nobody else) and the searches are timed again.

Prints the time to cast the votes and, per kind of visitor (a fresh one, and one of the voting
sessions), the median and p90 ms per search. Runs against older code too (votes without a
client), to measure before and after on the same machine.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

REPO = Path(__file__).resolve().parents[1]
WORD = "elephant"


def cast_votes(service: ImageSearch, votes: int, sessions: int, clients: int) -> float:
    """Seconds to cast `votes` votes; session s votes on images s, s+1, ... of the collection,
    relevant when the image is an elephant."""
    images = list(service.parts.index.image_ids(newest_first=False))
    elephants = {i for i in images if service.image(i).key.startswith("elephant/")}
    takes_client = "client" in inspect.signature(service.parts.feedback.vote).parameters
    per_session = -(-votes // sessions)
    started = time.perf_counter()
    cast = 0
    for session in range(sessions):
        for step in range(per_session):
            if cast == votes:
                break
            image_id = images[(session + step) % len(images)]
            value = 1 if image_id in elephants else -1
            extra = {"client": f"client{session % clients}"} if takes_client else {}
            service.parts.feedback.vote(WORD, image_id, f"session{session}", value, **extra)
            cast += 1
    return time.perf_counter() - started


def search_ms(service: ImageSearch, session: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        service.search_text(WORD, limit=20, session=session)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, help="a data directory to ingest the demo into")
    parser.add_argument(
        "--lone-client-images",
        type=int,
        default=0,
        help="then one more client votes alone on this many (made-up) images, and the "
        "searches are timed again: votes that teach nobody must not slow them",
    )
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="votes-scale-")) / "data"
    service = ImageSearch(Settings(data_dir=data_dir, feedback_cache_seconds=0.0))
    if service.count() == 0:
        ingest_tree(service, REPO / "demo")
    print(f"collection: {service.count()} images in {data_dir}")
    seconds = cast_votes(service, args.votes, args.sessions, args.clients)
    print(
        f"cast {args.votes:,} votes on {WORD!r} from {args.sessions:,} sessions "
        f"({args.clients} clients where the code knows clients) in {seconds:.1f} s "
        f"({seconds / args.votes * 1000:.2f} ms per vote)"
    )
    print_search_times(service, args.repeats)
    if args.lone_client_images:
        # Votes that teach nobody else: one more client, alone on each of these images.
        for number in range(args.lone_client_images):
            service.parts.feedback.vote(WORD, f"{number:016x}", "lone", 1, client="lone-client")
        print(f"then one more client voted on {args.lone_client_images:,} other images alone")
        print_search_times(service, args.repeats)


def print_search_times(service: ImageSearch, repeats: int) -> None:
    for name, session in (("fresh visitor", "visitor"), ("a voting session", "session7")):
        search_ms(service, session, 2)  # warm: the index, the vocabulary
        times = sorted(search_ms(service, session, repeats))
        p90 = times[int(0.9 * (len(times) - 1))]
        median = statistics.median(times)
        print(f"search of {WORD!r}, {name}: median {median:.1f} ms, p90 {p90:.1f} ms")


if __name__ == "__main__":
    main()
