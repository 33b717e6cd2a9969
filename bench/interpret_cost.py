"""What reading words costs when no reading of them is kept: `Vocabulary.interpret` of queries
of 1 and of 32 random vocabulary words (the most a query keeps), each asked once after 50
queries that bring the tables in, so that nearly every word is read afresh (a query of new
words is what a client who wants to cost the server sends).

`--baseline CHECKOUT` times another checkout's vocabulary in the same run, rounds alternating,
and says whether both read every query the same (a hash of the readings and class weights):

    PYTHONPATH=src nice -n 5 .venv/bin/python bench/interpret_cost.py --baseline ../bl17

Prints, per checkout and query length, the median ms a query over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import hashlib, json, random, sys, tempfile, time
from pathlib import Path
from imgsearch.config import Settings
from imgsearch.service import ImageSearch

seed, queries = int(sys.argv[1]), int(sys.argv[2])
scratch = tempfile.TemporaryDirectory()  # an empty collection: only its vocabulary is used
vocabulary = ImageSearch(Settings(data_dir=Path(scratch.name))).parts.vocabulary
words = [w for w in vocabulary._words[:60000] if w.isalpha()]
rng = random.Random(seed)
for _ in range(50):  # the tables' pages come in from disk on first use: not what is timed
    vocabulary.interpret(" ".join(rng.sample(words, 8)))
found, digest = {}, hashlib.sha256()
for length in (1, 32):
    texts = [" ".join(rng.sample(words, length)) for _ in range(queries)]
    started = time.perf_counter()
    readings = [vocabulary.interpret(text) for text in texts]
    found[length] = (time.perf_counter() - started) / queries * 1000
    for reading in readings:
        digest.update(repr((reading.readings, reading.senses)).encode())
        digest.update(reading.class_weights.tobytes())
print(json.dumps({"ms": found, "digest": digest.hexdigest()}))
"""


def measure(src: Path, seed: int, queries: int) -> dict[str, object]:
    """One round in a fresh process of `src`'s code (nothing kept from another round)."""
    environment = os.environ | {"PYTHONPATH": str(src)}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(seed), str(queries)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(run.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, timed alternately")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100, help="queries of each length")
    args = parser.parse_args()
    checkouts = {"this": REPO / "src"}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve() / "src"
    times: dict[str, dict[str, list[float]]] = {name: {} for name in checkouts}
    digests: dict[str, set[object]] = {name: set() for name in checkouts}
    for round_number in range(args.rounds):
        names = list(checkouts) if round_number % 2 == 0 else list(reversed(checkouts))
        for name in names:
            result = measure(checkouts[name], round_number, args.queries)
            for length, ms in result["ms"].items():  # type: ignore[attr-defined]
                times[name].setdefault(length, []).append(ms)
            digests[name].add((round_number, result["digest"]))
    for name, by_length in times.items():
        cells = ", ".join(
            f"{length} word(s) {statistics.median(values):.2f} ms"
            for length, values in by_length.items()
        )
        print(f"{name}: median over {args.rounds} rounds of {args.queries} queries: {cells}")
    if args.baseline:
        same = digests["this"] == digests["baseline"]
        print(f"the same readings as the baseline: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
