"""Two measurements of issue 17's keyword policy on labelled sets already ingested:

1. **The cutoff**: for every label whose words a sense of which the collection holds
   (search.held_classes), the images scoring at least a cut on the held classes against the
   label's images: precision and recall, per set and pooled, for absolute cuts, "the held
   classes outweigh any other class" (argmax) and cuts relative to the collection's best image.
2. **Words whose class sits in a later noun sense** (Vocabulary.later_sense_words): for each
   class the collection clearly holds (at least MIN_IMAGES images give it >= 0.3, most of them
   of one label), every such word reaching it is typed as a query; p@20 against that label,
   the served first page beside a plain reading that takes every noun sense reaching classes.

    nice -n 5 .venv/bin/python bench/relevance.py \\
        demo=/tmp/r17b/data-demo:demo/labels.csv \\
        corel1k=/tmp/r17b/data-corel1k:/work/shared/data/corel1k/labels.csv ...

Each argument is NAME=DATA_DIR:LABELS (a data directory `imgsearch eval --data-dir` or
`imgsearch ingest` filled from the folder the labels describe). Prints tables; --json FILE
writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from imgsearch.config import Settings
from imgsearch.search import held_classes
from imgsearch.service import ImageSearch

CUTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
RELATIVE = (0.2, 0.3, 0.5)
MIN_IMAGES = 5  # a class the collection clearly holds: this many images at >= 0.3
PAGE = 20


def read_labels(path: Path) -> dict[str, str]:
    rows = [line.split(",", 1) for line in path.read_text().splitlines() if "," in line]
    return {p.strip(): label.strip() for p, label in rows if p.strip() != "path"}


def load(spec: str) -> tuple[str, ImageSearch, list[str], np.ndarray, list[str]]:
    """A set's service, its labelled image ids, their class probabilities and labels."""
    name, rest = spec.split("=", 1)
    data_dir, labels_path = rest.split(":", 1)
    service = ImageSearch(Settings(data_dir=Path(data_dir)))
    by_key = read_labels(Path(labels_path))
    ids, labels = [], []
    for image_id in service.indexed_ids():
        label = by_key.get(service.image(image_id).key)
        if label is not None:
            ids.append(image_id)
            labels.append(label)
    probabilities = np.stack([np.asarray(service.embedding(i)[1], np.float32) for i in ids])
    return name, service, ids, probabilities, labels


def cutoff_rows(
    service: ImageSearch, probabilities: np.ndarray, labels: list[str]
) -> list[dict[str, object]]:
    """Per label the collection holds a sense of: (images cut, relevant among them) by rule."""
    index, vocabulary = service.parts.index, service.parts.vocabulary
    found = []
    for label in sorted(set(labels)):
        held = held_classes(index, vocabulary.interpret(label.replace("_", " ")).senses)
        if not held:
            continue
        relevant = np.array([other == label for other in labels])
        weights = np.zeros(probabilities.shape[1], np.float32)
        weights[list(held)] = list(held.values())
        score = probabilities @ weights
        other = np.where(weights > 0, 0.0, probabilities).max(axis=1)
        rules = {f"{cut}": score >= cut for cut in CUTS}
        rules["argmax"] = score >= other
        rules.update({f"{a} x best": score >= a * score.max() for a in RELATIVE})
        found.append(
            {
                "label": label,
                "relevant": int(relevant.sum()),
                "rules": {k: [int(m.sum()), int((m & relevant).sum())] for k, m in rules.items()},
            }
        )
    return found


def later_sense_rows(
    service: ImageSearch, ids: list[str], probabilities: np.ndarray, labels: list[str]
) -> list[dict[str, object]]:
    """Each later-sense word reaching a class the collection clearly holds, typed as a query."""
    vocabulary, index = service.parts.vocabulary, service.parts.index
    owner: dict[int, str] = {}
    for c in np.flatnonzero((probabilities >= 0.3).sum(axis=0) >= MIN_IMAGES).tolist():
        holders = Counter(
            label for label, p in zip(labels, probabilities[:, c], strict=True) if p >= 0.3
        )
        label, count = holders.most_common(1)[0]
        if count * 2 > sum(holders.values()):
            owner[c] = label
    rows = []
    for word, classes in sorted(vocabulary.later_sense_words().items()):
        reached = {owner[c] for c in classes if c in owner}
        if len(reached) != 1 or vocabulary.normalise(word) != word:
            continue
        (label,) = reached
        relevant = {i for i, other in zip(ids, labels, strict=True) if other == label}
        found = service.search_text(word, limit=PAGE)
        plain = {c: 1.0 for sense in found.interpretation.senses for c in sense.classes}
        baseline = [i for i, _ in index.ranked_by_classes(plain, PAGE)]
        best = min(PAGE, len(relevant))
        rows.append(
            {
                "word": word,
                "label": label,
                "level": found.interpretation.level,
                "matches": found.matches,
                "explore": sum(hit.tier == "explore" for hit in found.hits),
                "p20": sum(h.image_id in relevant for h in found.hits) / best,
                "plain_p20": sum(i in relevant for i in baseline) / best,
            }
        )
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="NAME=DATA_DIR:LABELS")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for spec in args.sets:
        name, service, ids, probabilities, labels = load(spec)
        results[name] = {
            "cutoff": cutoff_rows(service, probabilities, labels),
            "later_senses": later_sense_rows(service, ids, probabilities, labels),
        }
        service.close()
    print_cutoffs(results)
    print_later_senses(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_cutoffs(results: dict[str, dict[str, list[dict[str, object]]]]) -> None:
    names = list(results)
    rules = list(next(iter(results.values()))["cutoff"][0]["rules"]) if results else []
    print("| cut | " + " | ".join(names) + " | pooled |")
    print("|---" * (len(names) + 2) + "|")
    for rule in rules:
        cells, pooled = [], np.zeros(3)
        for name in names:
            rows = results[name]["cutoff"]
            cut = sum(r["rules"][rule][0] for r in rows)  # type: ignore[index]
            right = sum(r["rules"][rule][1] for r in rows)  # type: ignore[index]
            relevant = sum(r["relevant"] for r in rows)  # type: ignore[misc]
            pooled += (cut, right, relevant)
            cells.append(f"{right / max(cut, 1):.1%} / {right / max(relevant, 1):.1%} ({cut})")
        cut, right, relevant = pooled
        cells.append(f"{right / max(cut, 1):.1%} / {right / max(relevant, 1):.1%} ({cut:.0f})")
        print(f"| {rule} | " + " | ".join(cells) + " |")
    print("\nprecision / recall (images cut), labels a sense of which the collection holds\n")


def print_later_senses(results: dict[str, dict[str, list[dict[str, object]]]]) -> None:
    print("| set | word | label | level | matches | explore picks | p@20 | plain p@20 |")
    print("|---|---|---|---|---|---|---|---|")
    every = []
    for name, result in results.items():
        for r in result["later_senses"]:
            every.append(r)
            print(
                f"| {name} | {r['word']} | {r['label']} | {r['level']} | {r['matches']} | "
                f"{r['explore']} | {r['p20']:.0%} | {r['plain_p20']:.0%} |"
            )
    if every:
        mean = float(np.mean([r["p20"] for r in every]))
        plain = float(np.mean([r["plain_p20"] for r in every]))
        print(f"\n{len(every)} words: mean p@20 {mean:.1%}, plain reading {plain:.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
