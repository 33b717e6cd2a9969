"""What a keyword query means in terms of the classifier's 1000 ImageNet classes.

A query is normalised (Unicode, case, punctuation, WordNet lemmas: "Mice!" -> "mouse"), cut into
phrases (WordNet collocations first: "ice cream", "golden retriever"; glued compounds split:
"icecream"), and each phrase is read as a weight per class: an estimate of the probability that
an image of that class is what the user asked for. Images are then ranked by
`sum_c class_weights[c] * p_c(image)`, which under that reading is the probability that the image
is relevant, so a broad word ranks first the images most surely of its kind ("dog" weighs all
118 breeds fully: an image scores the summed probability of being some dog).

How a phrase becomes class weights:
- Every WordNet noun sense counts, weighed by its SemCor tag count (WordNet's own frequency
  order breaks ties), less if it cannot be pictured (an attribute, a time, a named person),
  more if the classifier can see it (it has ImageNet classes).
- A sense with ImageNet classes at or below it in the hypernym tree gives them its weight
  ("vehicle" covers cars, boats and planes); so do class names and synonyms ("beach" names the
  seashore class).
- A sense with none is guessed from related classes, with the strategies in `STRATEGIES`:
  WordNet relations (part of / has part, the nearest hypernym's other kinds: a beach is part of a
  shore, like a lakeshore), glosses (classes whose description mentions the word: a stove is "a
  kitchen appliance"; the sense's own gloss steers its vector), and GloVe word vectors against
  each class's description. Guesses weigh less than classes and lower the confidence.

Built by `scripts/build_vocabulary.py`; loading needs numpy only and takes well under a second.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from imgsearch.integrity import read_npz
from imgsearch.remembered import Remembered
from imgsearch.vectors import unit_rows

# Ways to guess classes for a sense that names none (see the module docstring).
STRATEGIES = frozenset({"relations", "glosses", "vectors"})

POS_COLUMNS = {"n": 0, "v": 1, "a": 2, "r": 3}

# WordNet's detachment rules (morphy), tried after its exception lists.
SUFFIX_RULES = {
    "n": (
        ("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
        ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
    ),
    "v": (
        ("s", ""), ("ies", "y"), ("es", "e"), ("es", ""),
        ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
    ),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
}  # fmt: skip
# Plurals WordNet's rules leave out ("clownfishes": "es" after any letter).
PLURAL_RULES = (("ies", "y"), ("es", ""), ("s", ""))

# Words that join or frame a query without naming anything to look for.
QUERY_STOPWORDS = frozenset(
    """a an the and or & + of with without in on at by for from to near some any my our your
    their his her its this that these those is are photo picture image pic shot""".split()  # noqa: SIM905
)

# Lexicographer files whose senses are things a photo can show; others (attributes, times,
# feelings, ...) weigh less: someone searching images for "watch" means the timepiece.
PICTURABLE_LEXNAMES = frozenset(
    """noun.Tops noun.act noun.animal noun.artifact noun.body noun.event noun.food noun.group
    noun.location noun.object noun.person noun.phenomenon noun.plant noun.shape
    noun.substance""".split()  # noqa: SIM905
)
UNPICTURABLE_FACTOR = 0.25
# A group (a congregation, a fleet) shows only through its members: "church" means the building.
GROUP_FACTOR = 0.5
INSTANCE_FACTOR = 0.1  # a named person or place: rarely what an image search means
# A sense the classifier can see (ImageNet classes at or below it) is the likelier meaning in
# an image search: "dalmatian" the dog rather than a native of Dalmatia, "tick" the mite.
SEEN_SENSE_FACTOR = 3.0

# How much a guessed class counts next to a class the word names (which counts 1).
GUESS_WEIGHT = 0.6
# Guesses for a sense that already has classes: its relatives, at this fraction.
MAPPED_GUESS_FACTOR = 0.2
GUESS_CLASSES = 25  # a guess keeps its best classes only
HYPERNYM_LEVELS = 3  # how far up to look for a kind with classes ("beach" -> shore)
MAX_KIND_CLASSES = 40  # a kind broader than this says too little about a word under it
# Evidence strengths, each "how likely a class so related shows what the word names":
PART_EVIDENCE = 0.6  # a whole it belongs to, or a part it has
ARTIFACT_WHOLE_FACTOR = 0.4
SIBLING_EVIDENCE = 0.35  # another kind of its nearest hypernym with classes; less per level up
SIBLING_DECAY = 0.7
MENTION_EVIDENCE = 0.8  # its name in a class's description (x the description's weight)
MENTION_CLASSES = 10  # a word mentioned by more classes than this is down-weighted
HYPONYM_LEVELS = 1  # kinds of the word whose names are looked for in class descriptions
HYPONYM_MENTION_FACTOR = 0.5
VECTOR_FLOOR = 0.45  # GloVe cosine below which a class name is unrelated
SAME_WORD_COSINE = 0.995  # a class name this close to a word is that word (float16 vectors)
MODIFIER_BOOST = 0.5  # how far a describing word ("black dog") reorders the named classes
HIGH_CONFIDENCE = 0.5  # from here on the words are understood, not guessed at
Level = Literal["high", "low", "none"]
# Where a reading comes from: a class the words name; WordNet's hyponyms of their meaning;
# guesses from related words; nothing; or (made by search.py) only what votes taught.
Source = Literal["imagenet", "wordnet", "related", "unknown", "learned"]
MAX_PHRASE_WORDS = 5  # the longest collocation or class name read as one phrase
DESCRIBED_WORDS = 4  # a class name longer than this describes the class rather than names it
# Misspellings: a word the vocabulary does not know is compared with the nouns it knows, at
# most this many edits away (one for short words, where two edits make another word).
SUGGEST_EDITS = 2
SUGGEST_SHORT = 5  # words shorter than this get one edit at most
SUGGEST_MAX_WORDS = 3  # unknown words in a query beyond which no spelling is suggested
# Words of a query beyond these are dropped: the normalised query keys its votes in the table,
# and a query of many emoji (each a few words) must still make a key of bounded size.
MAX_QUERY_WORDS = 32
# Symbols from here on (Miscellaneous Technical, U+2300: the watch) are pictographs; those
# below (copyright, degree and trade mark signs) are not read as words.
FIRST_PICTOGRAPH = 0x2300
# Interpretations kept for their words (least recently used out): reading a word costs
# milliseconds of numpy, and a few words make most queries. Bounded, since any text can be a
# query: each entry is a few kB (its class weights and readings).
CACHED_INTERPRETATIONS = 2048


@dataclass(frozen=True)
class Reading:
    """How one word or phrase of the query was understood."""

    phrase: str  # normalised words it covers, e.g. "tall building"
    source: Source
    confidence: float  # 0..1
    classes: tuple[tuple[int, float], ...]  # (class index, weight), best first
    note: str  # short human explanation


@dataclass(frozen=True)
class Sense:
    """One meaning of a naming phrase that ImageNet classes picture: the classes at or below
    it, and how likely the phrase means it next to the phrase's other such meanings (the
    likeliest is 1). Search asks the collection which of them it holds."""

    phrase: int  # index of the reading it belongs to
    classes: tuple[int, ...]
    weight: float  # 0..1


@dataclass(frozen=True)
class Interpretation:
    query: str  # the normalised query: the key feedback votes are stored under
    readings: tuple[Reading, ...]
    class_weights: np.ndarray = field(repr=False)  # float32 [classes]; all zero: nothing maps
    confidence: float  # overall 0..1; low means "guessing", 0 means "no idea"
    senses: tuple[Sense, ...] = field(default=(), repr=False)  # of the naming phrases

    @property
    def level(self) -> Level:
        """Whether the words are understood ("high"), guessed at ("low"), or not at all."""
        if self.confidence <= 0.0:
            return "none"
        return "high" if self.confidence >= HIGH_CONFIDENCE else "low"

    def combined_classes(self) -> list[tuple[int, float]]:
        """The classes searched for, (class id, weight), best first (ties by class id)."""
        weights = self.class_weights
        classes = np.flatnonzero(weights)
        order = classes[np.argsort(-weights[classes], kind="stable")]
        return list(zip(order.tolist(), weights[order].tolist(), strict=True))


class Vocabulary:
    """Query understanding over the built tables; immutable and thread-safe after `load`
    (but for its cache of interpretations, which only remembers what `interpret` computed)."""

    def __init__(
        self,
        words: list[str],
        tables: dict[str, np.ndarray],
        exceptions: dict[str, dict[str, list[str]]],
        classes: list[dict[str, str]],
        lexnames: list[str],
        strategies: Iterable[str] = STRATEGIES,
    ) -> None:
        self.strategies = frozenset(strategies)
        if unknown := self.strategies - STRATEGIES:
            raise ValueError(f"unknown strategies {sorted(unknown)}; known: {sorted(STRATEGIES)}")
        self.class_names = [plain_name(row["name"], row["synonyms"]) for row in classes]
        self._words = words
        self._word_id = {word: i for i, word in enumerate(words)}
        self._t = tables
        self._exceptions = exceptions
        self._vectors = tables["vectors"]
        self._n_vectors = len(self._vectors)
        self._pos_senses = tables["pos_senses"]
        self._is_lemma = np.asarray(self._pos_senses.any(axis=1))  # (typed bool | array)
        n_classes = len(classes)
        self._n_classes = n_classes

        picturable = np.array([name in PICTURABLE_LEXNAMES for name in lexnames])
        self._is_artifact = tables["synset_lexname"] == lexnames.index("noun.artifact")
        self._synset_factor = np.where(
            picturable[tables["synset_lexname"]], 1.0, UNPICTURABLE_FACTOR
        )
        self._synset_factor[tables["synset_lexname"] == lexnames.index("noun.group")] = GROUP_FACTOR
        self._synset_factor[np.diff(tables["below_ptr"]) > 0] *= SEEN_SENSE_FACTOR
        n_synsets = len(tables["synset_offset"])
        self._is_instance = np.zeros(n_synsets, dtype=bool)
        self._is_instance[tables["instance"]] = True
        # Synset -> its lemmas (word ids), the inverse of the word -> noun senses table.
        sense_words = np.repeat(np.arange(len(words)), np.diff(tables["noun_sense_ptr"]))
        order = np.argsort(tables["noun_sense"], kind="stable")
        self._lemma_by_synset_keys = tables["noun_sense"][order]
        self._lemma_by_synset = sense_words[order]
        # Synset -> its hyponyms, the inverse of the hypernym table, for "kinds of" lookups.
        hyponym_of = np.repeat(np.arange(n_synsets), np.diff(tables["hypernym_ptr"]))
        order = np.argsort(tables["hypernym"], kind="stable")
        self._t["hyponym"] = hyponym_of[order].astype(np.int32)
        self._t["hyponym_ptr"] = np.searchsorted(
            tables["hypernym"][order], np.arange(n_synsets + 1)
        ).astype(np.int32)
        self._class_synset = tables["class_synset"]
        self._is_class_synset = np.zeros(len(tables["synset_offset"]), dtype=bool)
        self._is_class_synset[self._class_synset] = True

        # Class aliases: names the class table gives a class beyond its WordNet lemmas
        # ("beach" for the seashore class), split at " / ", parentheses dropped.
        self._aliases: dict[str, list[int]] = {}
        for index, row in enumerate(classes):
            for alias in _aliases(row["name"], row["synonyms"]):
                self._aliases.setdefault(self.normalise(alias), []).append(index)

        # Class descriptions: weighted words (names, gloss, hypernym names) for mentions.
        ptr, ids = tables["class_word_ptr"], tables["class_word"]
        weights = tables["class_word_weight"]
        rows = np.repeat(np.arange(n_classes), np.diff(ptr))
        self._mention_weight = weights
        self._mention_rows = rows
        self._mention_ids = ids
        self._name_vectors = tables["name_vectors"].astype(np.float32)
        self._name_class = tables["name_class"]
        self._interpretations: Remembered[tuple[str, frozenset[str]], Interpretation] = Remembered(
            CACHED_INTERPRETATIONS
        )
        # A misspelt word's nearest noun ("" for none), by the word.
        self._spellings: Remembered[str, str] = Remembered(CACHED_INTERPRETATIONS)

    @classmethod
    def load(cls, directory: str | Path, strategies: Iterable[str] = STRATEGIES) -> Vocabulary:
        directory = Path(directory)
        words = (directory / "words.txt").read_text().split("\n")[:-1]
        tables = read_npz(directory / "tables.npz")
        exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in POS_COLUMNS}
        with (directory / "morphology.tsv").open() as handle:
            next(handle)
            for line in handle:
                pos, inflected, base = line.rstrip("\n").split("\t")
                exceptions[pos].setdefault(inflected, []).append(base)
        with (directory / "classes.tsv").open(newline="") as handle:
            classes = list(csv.DictReader(handle, delimiter="\t"))
        lexnames = json.loads((directory / "manifest.json").read_text())["lexnames"]
        return cls(words, tables, exceptions, classes, lexnames, strategies)

    # --- words -------------------------------------------------------------------------------

    def normalise(self, text: str) -> str:
        """Canonical form of a query: emoji as their names, NFKC, lower case, no accents,
        punctuation or numbers, single spaces, each word a WordNet lemma where it is an
        inflection of one ("mice" -> "mouse"), glued compounds split ("icecream" -> "ice
        cream"). normalise(normalise(x)) == x'."""
        text = "".join(_emoji_words(ch) for ch in text)
        text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
        text = "".join(
            ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
        )
        tokens = re.sub(r"[^a-z0-9'\-]+", " ", text).split()
        words: list[str] = []
        i = 0
        while i < len(tokens):
            name = self._plural_name(tokens, i)
            if name:
                words.extend(name.split())
                i += len(name.split())
            else:
                words.extend(self._normalise_token(tokens[i]))
                i += 1
        return " ".join(words[:MAX_QUERY_WORDS])

    def _plural_name(self, tokens: list[str], start: int) -> str | None:
        """A name of several words in the plural from `start` on ("rhodesian ridgebacks",
        "running shoes"), as the singular collocation or class name, which word by word
        lemmatising misses (a last word WordNet knows only inside the name, or whose plural
        is a word of its own)."""
        for n in range(min(MAX_PHRASE_WORDS, len(tokens) - start), 1, -1):
            *head, last = tokens[start : start + n]
            for suffix, ending in PLURAL_RULES:
                if last.endswith(suffix) and len(last) > len(suffix):
                    name = " ".join([*head, last[: -len(suffix)] + ending])
                    if name in self._aliases or self._is_pos_lemma(name, "n"):
                        return name
        return None

    def _normalise_token(self, token: str) -> list[str]:
        token = token.strip("'-")
        if not token:
            return []
        lemma = self._lemmatise(token)
        if lemma.isdigit():  # "3 cats", "001.backpack", "16s": a number shows nothing
            return []
        if "-" in token and not self._is_lemma_word(lemma):
            # "ice-cream" -> "ice cream": WordNet spells collocations with spaces ("t-shirt" and
            # a few others keep theirs, and stay whole).
            return [word for part in token.split("-") for word in self._normalise_token(part)]
        if lemma != token or self._known(token):
            return [lemma]
        return self._split_compound(token)

    def _known(self, word: str) -> bool:
        word_id = self._word_id.get(word)
        return word_id is not None and (word_id < self._n_vectors or bool(self._is_lemma[word_id]))

    def _is_pos_lemma(self, word: str, pos: str) -> bool:
        word_id = self._word_id.get(word)
        return word_id is not None and self._pos_senses[word_id, POS_COLUMNS[pos]] > 0

    def _lemmatise(self, token: str) -> str:
        word_id = self._word_id.get(token)
        if word_id is not None and self._is_lemma[word_id]:
            # A plural that is also a lemma of its own means its singular in a search when the
            # lemma is rare ("crabs": pediculosis, never tagged in SemCor) or the singular
            # names a class ("irons", "wings").
            if not token.endswith("s") and token not in self._exceptions["n"]:
                return token
            singular = self._noun_base(token)
            if singular is None or (
                self._t["pos_counts"][word_id].sum() > 0 and singular not in self._aliases
            ):
                return token
            return singular
        bases = [
            base
            for pos in ("n", "v", "a")
            for base in self._bases(token, pos)
            if self._is_pos_lemma(base, pos)
        ]
        # The plural of a class name WordNet lacks ("dobermanns", "clownfishes").
        bases += [base for base in self._bases(token, "n") if base in self._aliases]
        named = [base for base in bases if base in self._aliases]
        if named:  # a class name first, the regular plural's ("syringes": syringe, not syrinx)
            return max(named, key=lambda base: _common_prefix(base, token))
        if bases:
            return bases[0]
        if token.endswith("'s") and len(token) > 2:
            return self._lemmatise(token[:-2])
        return token

    def _bases(self, token: str, pos: str) -> list[str]:
        """What `token` may be an inflection of, by WordNet's exceptions, then its rules."""
        found = list(self._exceptions[pos].get(token, ()))
        for suffix, ending in (*SUFFIX_RULES[pos], *(PLURAL_RULES if pos == "n" else ())):
            if token.endswith(suffix) and len(token) > len(suffix) + 1:
                found.append(token[: -len(suffix)] + ending)
        return [base for base in found if base != token]

    def _noun_base(self, token: str) -> str | None:
        """The noun lemma `token` is an inflection of, a class name first."""
        bases = [b for b in self._bases(token, "n") if self._is_pos_lemma(b, "n")]
        return next((b for b in bases if b in self._aliases), bases[0] if bases else None)

    def _split_compound(self, token: str) -> list[str]:
        """'icecream' -> ['ice', 'cream'] when the halves make a WordNet collocation, else two
        known words; the most frequent pair wins. Unsplittable tokens come back whole."""
        best: tuple[tuple[int, int], list[str]] | None = None
        for cut in range(2, len(token) - 1):
            left, right = token[:cut], self._lemmatise(token[cut:])
            if not (self._is_lemma_word(left) and self._is_lemma_word(right)):
                continue
            collocation = f"{left} {right}" in self._word_id
            rank = max(self._word_id[left], self._word_id[right])
            key = (0 if collocation else 1, rank)
            if best is None or key < best[0]:
                best = (key, [left, right])
        return best[1] if best else [token]

    def _is_lemma_word(self, word: str) -> bool:
        word_id = self._word_id.get(word)
        return word_id is not None and bool(self._is_lemma[word_id]) and len(word) > 1

    # --- misspellings ------------------------------------------------------------------------

    def suggest(self, text: str) -> str | None:
        """The query with each word WordNet does not know replaced by the nearest noun it knows
        ("elefant" -> "elephant"), when that reads as something; None if every word is known
        or none has a near noun."""
        tokens = self.normalise(" ".join(re.split(r"[\s\-]+", text))).split()
        raw = re.sub(r"[^a-z]+", " ", unicodedata.normalize("NFKC", text).casefold()).split()
        if len(raw) > MAX_QUERY_WORDS:
            return None
        lemmas = [self._lemmatise(token) for token in raw]
        unknown = [
            token
            for token, lemma in zip(raw, lemmas, strict=True)
            if not (self._is_lemma_word(lemma) or self._known(token))
        ]
        if len(unknown) > SUGGEST_MAX_WORDS:  # not a slip of the fingers: not worth the search
            return None
        words, changed = [], False
        for token, lemma in zip(raw, lemmas, strict=True):
            nearest = self._nearest_spelling(token) if token in unknown else None
            changed |= nearest is not None
            words.append(nearest or lemma)
        if not changed:
            return None
        query = self.normalise(" ".join(words))
        if query == " ".join(tokens) or self.interpret(query).confidence <= 0:
            return None
        return query

    def _nearest_spelling(self, token: str) -> str | None:
        """The nearest noun to a token, or to it without a plural ending ("elefants");
        remembered, since the search over every noun costs milliseconds."""
        if token in QUERY_STOPWORDS or len(token) < 3:
            return None
        remembered = self._spellings.get(token)
        if remembered is None:
            forms = [token] + [token[: -len(end)] for end in ("s", "es") if token.endswith(end)]
            found = [key for form in forms if (key := self._nearest_noun(form)) is not None]
            remembered = self._spellings.put(token, min(found)[3] if found else "")
        return remembered or None

    def _nearest_noun(self, word: str) -> tuple[int, bool, int, str] | None:
        """The known noun fewest edits from `word` (letters inserted, dropped, changed or
        swapped); among equals one the classifier can picture, then the most common. Returns
        (edits, not pictured, rank, noun): the key it was chosen by."""
        nouns = self._nouns
        limit = 1 if len(word) < SUGGEST_SHORT else SUGGEST_EDITS
        # Each edit changes the letter counts by at most 2: a cheap filter before the exact one.
        counts = _letter_counts(word)
        near = (np.abs(nouns.lengths - len(word)) <= limit) & (
            np.abs(nouns.counts - counts).sum(axis=1) <= 2 * limit
        )
        best: tuple[int, bool, int, str] | None = None
        for row in np.flatnonzero(near).tolist():
            candidate = nouns.words[row]
            edits = _edit_distance(word, candidate, limit)
            if edits <= limit:
                key = (edits, not nouns.pictured[row], int(nouns.rank[row]), candidate)
                best = key if best is None or key < best else best
        return best

    @cached_property
    def _nouns(self) -> _Nouns:
        """One-word nouns, for misspellings (built on first use: most queries are spelt)."""
        ptr = self._t["noun_sense_ptr"]
        has_senses = np.diff(ptr) > 0
        pictured_synset = np.diff(self._t["below_ptr"]) > 0
        owner = np.repeat(np.arange(len(self._words)), np.diff(ptr))
        pictured = np.zeros(len(self._words), dtype=bool)
        np.logical_or.at(pictured, owner, pictured_synset[self._t["noun_sense"]])
        ids = [
            i
            for i in np.flatnonzero(has_senses).tolist()
            if len(self._words[i]) > 2 and self._words[i].isascii() and self._words[i].isalpha()
        ]
        words = [self._words[i] for i in ids]
        lengths = np.array([len(w) for w in words])
        letters = np.frombuffer("".join(words).lower().encode(), dtype=np.uint8) - ord("a")
        counts = np.zeros((len(words), 26), dtype=np.int16)
        np.add.at(counts, (np.repeat(np.arange(len(words)), lengths), letters), 1)
        return _Nouns(words, lengths, counts, pictured[ids], np.array(ids))

    def later_sense_words(self) -> dict[str, tuple[int, ...]]:
        """Nouns whose first WordNet sense no ImageNet class pictures but a later one does
        ("notebook": a book of blank pages, then the notebook computer), with the classes of
        those later senses: the words a search must read by the sense the collection holds."""
        ptr = self._t["noun_sense_ptr"]
        pictured = np.diff(self._t["below_ptr"]) > 0
        words = np.flatnonzero(np.diff(ptr) > 1)
        first = self._t["noun_sense"][ptr[words]]
        found: dict[str, tuple[int, ...]] = {}
        for word in words[~pictured[first]].tolist():
            later = self._row("noun_sense", word)[1:]
            classes = sorted({int(c) for s in later.tolist() for c in self._row("below", s)})
            if classes:
                found[self._words[word]] = tuple(classes)
        return found

    # --- interpretation ----------------------------------------------------------------------

    def interpret(self, text: str, strategies: Iterable[str] | None = None) -> Interpretation:
        """How `text` reads as class weights, with the guessing `strategies` (None: the
        vocabulary's). Remembered by normalised words and strategies, the last
        CACHED_INTERPRETATIONS of them: a reading depends on nothing else, since the tables
        never change after `load`. What votes taught is not the vocabulary's: search.py adds
        it to each answer, so a vote changes the very next one. The result is shared:
        read-only (its class weights cannot be written)."""
        active = self.strategies if strategies is None else frozenset(strategies)
        key = (self.normalise(text), active)
        found = self._interpretations.get(key)
        if found is not None:
            return found
        # Read outside the lock: two threads may read the same words at once (same result).
        return self._interpretations.put(key, self._interpret(*key))

    def _interpret(self, query: str, active: frozenset[str]) -> Interpretation:
        """`interpret` of normalised words."""
        phrases = self._phrases(query.split())
        understood = [self._read(phrase, active) for phrase in phrases]
        # Naming words ("car") decide which classes; describing words ("red") only reorder
        # them, since the classifier sees objects, not colours or sizes. A query of describing
        # words alone is read like naming words.
        heads = [u for u in understood if not u.describing]
        modifiers = [u for u in understood if u.describing] if heads else []
        heads = heads or understood
        # Several naming words are a union ("dog and cat", "dog cat"): scores are linear in
        # class probabilities and an image mostly shows one ImageNet class, so "both at once"
        # cannot be scored; the page shows each. Noisy-or keeps each word's weights and never
        # counts a class twice.
        missing = np.ones(self._n_classes)
        for u in heads:
            missing *= 1.0 - u.weights
        weights = 1.0 - missing
        for u in modifiers:
            if u.weights.any():
                weights *= 1.0 + MODIFIER_BOOST * u.weights / u.weights.max()
        weights /= max(1.0, float(weights.max()))
        # Honest overall confidence: the mean over naming words, so one unknown word of two
        # halves it. Describing words don't count: they cannot be seen by the classifier.
        confidence = float(np.mean([u.reading.confidence for u in heads])) if heads else 0.0
        if not weights.any():
            confidence = 0.0
        senses = tuple(
            Sense(index, classes, weight)
            for index, u in enumerate(understood)
            if any(u is head for head in heads)
            for classes, weight in u.senses
        )
        class_weights = weights.astype(np.float32)
        class_weights.setflags(write=False)  # shared by every query of these words
        return Interpretation(
            query=query,
            readings=tuple(u.reading for u in understood),
            class_weights=class_weights,
            confidence=round(confidence, 4),
            senses=senses,
        )

    def _phrases(self, tokens: list[str]) -> list[str]:
        """Longest WordNet collocations or class names first, then single content words."""
        phrases, i = [], 0
        while i < len(tokens):
            for n in range(min(MAX_PHRASE_WORDS, len(tokens) - i), 1, -1):
                candidate = " ".join(tokens[i : i + n])
                if candidate in self._aliases or self._is_lemma_word(candidate):
                    phrases.append(candidate)
                    i += n
                    break
            else:
                if tokens[i] not in QUERY_STOPWORDS:
                    phrases.append(tokens[i])
                i += 1
        return phrases

    def _row(self, name: str, index: int) -> np.ndarray:
        ptr = self._t[f"{name}_ptr"]
        return self._t[name][ptr[index] : ptr[index + 1]]

    def _senses(self, word_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The word's noun senses and their probabilities for someone searching images."""
        synsets = self._row("noun_sense", word_id)
        if len(synsets) == 0:
            # A describing word stands for the nouns it derives from: "floral" -> flower.
            synsets = self._row("derived_noun", word_id)
            counts = np.zeros(len(synsets))
        else:
            ptr = self._t["noun_sense_ptr"]
            counts = self._t["noun_sense_count"][ptr[word_id] : ptr[word_id + 1]].astype(float)
        # Tag counts with WordNet's frequency order as the prior for the many untagged senses.
        prior = counts + 1.0 / (1.0 + np.arange(len(synsets)))
        prior *= self._synset_factor[synsets]
        prior[self._is_instance[synsets]] *= INSTANCE_FACTOR
        return synsets, prior / prior.sum() if len(prior) else prior

    def _read(self, phrase: str, strategies: frozenset[str]) -> _Understood:
        word_id = self._word_id.get(phrase)
        weights = np.zeros(self._n_classes)
        mapped_mass = guessed_mass = 0.0
        exact = False
        notes: list[str] = []
        guessed: list[int] = []  # senses with no class, most probable first
        synsets, probabilities = (
            self._senses(word_id) if word_id is not None else (np.zeros(0, int), np.zeros(0))
        )
        # A class the table names by the phrase when WordNet's senses of it don't reach it.
        # ("binocular": WordNet knows only "binoculars", which morphology does not reach.)
        aliased = self._aliases.get(phrase) or self._aliases.get(phrase + "s", [])
        named = {c for c in aliased if self._class_synset[c] not in synsets}
        # Classes the phrase is a name of (a lemma of the class's own synset, or the table's
        # name or synonym): it reads as each of them fully, whatever its other senses.
        names = set(aliased) | {
            int(c) for c in np.flatnonzero(np.isin(self._class_synset, synsets))
        }
        senses: list[tuple[tuple[int, ...], float]] = [((c,), 1.0) for c in sorted(names)]
        # Classes some sense of the phrase reaches are weighed by that sense alone: the rodent
        # sense of "mouse" must not guess the computer mouse because the class is named "mouse".
        covered = np.zeros(self._n_classes, dtype=bool)
        for synset in synsets.tolist():
            covered[self._row("below", synset)] = True
        for synset, probability in zip(synsets.tolist(), probabilities.tolist(), strict=True):
            below = self._row("below", synset)
            if len(below):
                weights[below] += probability
                mapped_mass += probability
                senses.append((tuple(int(c) for c in below), probability))
                if self._is_class_synset[synset] and len(below) == 1:
                    exact = True
                notes.append(f"{self._synset_name(synset)}: {_count(len(below), 'class')}")
                guess, _ = self._guess(synset, phrase, strategies - {"vectors"}, covered)
                weights += probability * MAPPED_GUESS_FACTOR * GUESS_WEIGHT * guess
            else:
                guessed.append(synset)
                guess, quality = self._guess(synset, phrase, strategies, covered)
                weights += probability * GUESS_WEIGHT * guess
                guessed_mass += probability * quality
        if named:
            notes.insert(0, f"names {', '.join(self.class_names[c] for c in sorted(named))}")
        if names:
            weights[sorted(names)] = 1.0
            mapped_mass = 1.0
        if len(synsets) == 0 and "vectors" in strategies:
            vector = self._phrase_vector(phrase)
            if vector is not None:
                guess = _best(self._vector_evidence(vector))
                weights += GUESS_WEIGHT * guess
                guessed_mass = 0.5 * float(guess.max())
                notes.append("not in WordNet; guessed from word vectors")
        weights = np.minimum(weights, 1.0).astype(np.float32)
        # The source is whatever gives the phrase its best classes: a class it names, WordNet's
        # hyponyms, or guesses ("mouse" names the computer mouse, but means the rodent).
        mapped_best = float(weights[covered].max()) if covered.any() else 0.0
        source: Source
        if named or (mapped_best > 0 and mapped_best >= np.max(weights[~covered], initial=0.0)):
            source = "imagenet" if named or exact else "wordnet"
        elif weights.any():
            source = "related"
            if guessed:
                sense_names = ", ".join(self._synset_name(s) for s in guessed[:2])
                notes.append(
                    f"{sense_names}: no class; guessed from {', '.join(sorted(strategies))}"
                )
        else:
            source = "unknown"
            notes.append("unknown word" if not self._known(phrase) else "nothing to picture")
        confidence = min(1.0, mapped_mass + (1.0 - mapped_mass) * guessed_mass)
        if not weights.any():
            confidence = 0.0
        order = np.argsort(-weights, kind="stable")
        weighted = order[weights[order] > 0]  # a few of the 1,000: only they go through Python
        kept = zip(weighted.tolist(), weights[weighted].tolist(), strict=True)
        classes = tuple((c, round(w, 4)) for c, w in kept)
        reading = Reading(phrase, source, round(confidence, 4), classes, "; ".join(notes[:3]))
        return _Understood(
            reading,
            weights,
            self._describes(word_id, bool(names) or exact),
            _relative(senses),
        )

    def _describes(self, word_id: int | None, names_a_class: bool) -> bool:
        """A word used mostly as an adjective, verb or adverb ("red", "tall", "running")."""
        if word_id is None or names_a_class:
            return False
        counts = self._t["pos_counts"][word_id]
        senses = self._pos_senses[word_id]
        if senses[0] == 0:
            return bool(senses[1:].any())
        return bool(counts[1:].sum() > counts[0])

    def _guess(
        self, synset: int, phrase: str, strategies: frozenset[str], exclude: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Classes related to a sense, each in [0, 1], and how sure the best guess is (0..0.5).

        Each strategy scores classes on an absolute scale (1: certainly related); they combine
        as a noisy-or, so agreeing evidence adds up and any strong evidence counts alone."""
        missing = np.ones(self._n_classes)
        if "relations" in strategies:
            missing *= 1.0 - self._relation_evidence(synset)
        if "glosses" in strategies:
            missing *= 1.0 - self._mention_evidence(synset, phrase)
        if "vectors" in strategies:
            vector = self._phrase_vector(phrase)
            if vector is not None:
                homonyms = self._names_among(self._synset_lemmas(synset), but=phrase)
                missing *= 1.0 - self._vector_evidence(vector, ignore=homonyms)
        evidence = _best(np.where(exclude, 0.0, 1.0 - missing))
        return evidence, 0.5 * float(evidence.max())

    def _relation_evidence(self, synset: int) -> np.ndarray:
        evidence = np.zeros(self._n_classes)
        # Wholes it is part of and parts it has: a beach is part of a shore. A made thing's part
        # is often inside it (a kitchen in a house), so its wholes count less.
        whole = PART_EVIDENCE * (ARTIFACT_WHOLE_FACTOR if self._is_artifact[synset] else 1.0)
        for related, strength in (
            *((h, whole) for h in self._row("holonym", synset).tolist()),
            *((m, PART_EVIDENCE) for m in self._row("meronym", synset).tolist()),
        ):
            below = self._row("below", related)
            if 0 < len(below) <= MAX_KIND_CLASSES:
                evidence[below] = np.maximum(evidence[below], strength)
        # The nearest kind with classes: its other members are the word's neighbours.
        frontier = [synset]
        for level in range(HYPERNYM_LEVELS):
            frontier = [int(h) for s in frontier for h in self._row("hypernym", s)]
            kinds = [self._row("below", k) for k in frontier]
            kinds = [below for below in kinds if len(below)]
            if kinds:
                for below in kinds:
                    if len(below) <= MAX_KIND_CLASSES:
                        strength = SIBLING_EVIDENCE * SIBLING_DECAY**level
                        evidence[below] = np.maximum(evidence[below], strength)
                break
        return evidence

    def _mention_evidence(self, synset: int, phrase: str) -> np.ndarray:
        """Classes whose description names the word: "toaster: a kitchen appliance ..."."""
        evidence = np.zeros(self._n_classes)
        words = {self._word_id[w]: 1.0 for w in phrase.split() if w in self._word_id}
        # Its other names, and its kinds' names ("sport" -> basketball, golf, skiing -> their
        # balls and skis), each as likely as the name means that sense: the helicopter's
        # "chopper" is mostly the cleaver's, the driveway's "drive" mostly the disk's.
        for word in self._synset_lemmas(synset).tolist():
            words.setdefault(word, self._sense_share(word, synset))
        for kind in self._hyponyms(synset, HYPONYM_LEVELS):
            for word in self._synset_lemmas(kind).tolist():
                words.setdefault(word, HYPONYM_MENTION_FACTOR * self._sense_share(word, kind))
        for word, factor in words.items():
            if word >= self._n_vectors:
                continue
            hits = self._mention_ids == word
            if not hits.any():
                continue
            rows = self._mention_rows[hits]
            # A word many classes mention ("dog", "device") tells little about any one of them.
            rarity = min(1.0, np.sqrt(MENTION_CLASSES / len(rows)))
            strength = MENTION_EVIDENCE * factor * rarity * self._mention_weight[hits]
            np.maximum.at(evidence, rows, strength)
        return evidence

    def _sense_share(self, word: int, synset: int) -> float:
        """The probability that `word` means `synset`."""
        senses, probabilities = self._senses(word)
        return float(probabilities[senses == synset].sum())

    def _hyponyms(self, synset: int, levels: int) -> list[int]:
        found, frontier = [], [synset]
        for _ in range(levels):
            kinds = [int(k) for s in frontier for k in self._row("hyponym", s)]
            frontier = [k for k in kinds if not self._is_instance[k]]  # no cities named Lhasa
            found.extend(frontier)
        return found

    def _phrase_vector(self, phrase: str) -> np.ndarray | None:
        found = [self._word_id.get(w) for w in phrase.split()]
        ids = [i for i in found if i is not None and i < self._n_vectors]
        if not ids:
            return None
        return unit_rows(self._vectors[ids].astype(np.float32).mean(axis=0))

    def _names_among(self, words: np.ndarray, *, but: str) -> np.ndarray:
        """Which class names are one of `words` (other than the typed ones): a class so named
        shares a name with the sense, not its meaning ("chopper": helicopter and cleaver)."""
        typed = {self._word_id.get(w) for w in but.split()}
        ids = [w for w in words.tolist() if w < self._n_vectors and w not in typed]
        if not ids:
            return np.zeros(len(self._name_vectors), dtype=bool)
        lemmas = unit_rows(self._vectors[ids].astype(np.float32))
        closest: np.ndarray = (self._name_vectors @ lemmas.T).max(axis=1)
        return closest > SAME_WORD_COSINE

    def _vector_evidence(self, vector: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
        """Cosine with each class's closest name (but the `ignore`d ones), mapped so that a
        near-synonym counts about as much as a WordNet relation and the unrelated background
        (cosine < ~0.45) not at all."""
        cosine = self._name_vectors @ vector
        if ignore is not None:
            cosine = np.where(ignore, -1.0, cosine)
        best = np.full(self._n_classes, -1.0, dtype=np.float32)
        np.maximum.at(best, self._name_class, cosine)
        evidence: np.ndarray = np.clip((best - VECTOR_FLOOR) / (1.0 - VECTOR_FLOOR), 0.0, 1.0) ** 2
        return evidence

    def _synset_lemmas(self, synset: int) -> np.ndarray:
        keys = self._lemma_by_synset_keys
        # Asked in the keys' own dtype: a list of Python ints is int64, and numpy then widens
        # all 146,000 int32 keys for each search (28 us a call, against 0.8).
        start, end = np.searchsorted(keys, np.array((synset, synset + 1), keys.dtype))
        return self._lemma_by_synset[start:end]

    def _synset_name(self, synset: int) -> str:
        """nltk-style name, e.g. "dog.n.01": the synset's first lemma and its sense number."""
        lemma = int(self._t["synset_lemma"][synset])
        senses = self._row("noun_sense", lemma).tolist()
        number = senses.index(synset) + 1 if synset in senses else 1
        return f"{self._words[lemma].replace(' ', '_')}.n.{number:02d}"


@dataclass(frozen=True, eq=False)
class _Nouns:
    """The vocabulary's one-word nouns: letters counted, whether classes picture them, and
    their rank (word ids run from the most common word)."""

    words: list[str]
    lengths: np.ndarray
    counts: np.ndarray  # [words, 26]
    pictured: np.ndarray
    rank: np.ndarray


def _letter_counts(word: str) -> np.ndarray:
    letters = np.frombuffer(word.lower().encode("ascii", "ignore"), dtype=np.uint8) - ord("a")
    return np.bincount(letters[letters < 26], minlength=26).astype(np.int16)


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (a swap of neighbours is one edit); more than `limit`
    comes back as limit + 1 as soon as it is sure."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], previous2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        previous2, previous = previous, row
    return min(previous[-1], limit + 1)


@dataclass(frozen=True, eq=False)
class _Understood:
    reading: Reading
    weights: np.ndarray
    describing: bool
    senses: tuple[tuple[tuple[int, ...], float], ...]  # (classes, weight): see Sense


def _relative(
    senses: list[tuple[tuple[int, ...], float]],
) -> tuple[tuple[tuple[int, ...], float], ...]:
    """Senses with their weights relative to the likeliest (1), each set of classes once (the
    first: a class the phrase names comes before WordNet's sense of it)."""
    kept: dict[tuple[int, ...], float] = {}
    for classes, weight in senses:
        kept.setdefault(classes, weight)
    top = max(kept.values(), default=1.0) or 1.0
    return tuple((classes, min(1.0, w / top)) for classes, w in kept.items())


def _emoji_words(ch: str) -> str:
    """An emoji (or other pictograph) as the words of its Unicode name: a query of one is
    meant as its name ("\U0001f418" -> "elephant"; "dog face" means the dog). Signs below
    the pictographs (trade mark, copyright, degree) are no words: NFKC would spell some out."""
    category = unicodedata.category(ch)
    if category not in ("So", "Sk"):
        return ch
    if category == "Sk" or ord(ch) < FIRST_PICTOGRAPH:
        return " "
    words = unicodedata.name(ch, "").lower().split()
    return " " + " ".join(w for w in words if w != "face") + " "


def plain_name(name: str, synonyms: str) -> str:
    """A class's name as a person says it: the table's name unless it reads as a description
    ("a cat having a striped coat", "fruiting spike of a cereal plant"), then its first
    synonym ("tiger cat", "ear")."""
    first = synonyms.split("|")[0].strip()
    words = name.split()
    described = (
        words[0].lower() in ("a", "an", "the") or "," in name or len(words) > DESCRIBED_WORDS
    )
    return first if described and first else name


def _common_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _aliases(name: str, synonyms: str) -> list[str]:
    """The names a class goes by: its name and synonyms, each alternative of "X / Y" and
    "X or Y" too, parenthesised remarks dropped; no longer than a phrase is read."""
    found = []
    for text in [name, *synonyms.split("|")]:
        text = " ".join(re.sub(r"\([^)]*\)", " ", text).split())
        for part in [text, *re.split(r" / | or ", text)]:
            part = part.strip()
            if part and "," not in part and len(part.split()) <= MAX_PHRASE_WORDS:
                found.append(part)
    return found


def _best(evidence: np.ndarray) -> np.ndarray:
    """The evidence of the GUESS_CLASSES best classes; a long tail adds noise, not recall."""
    cut = np.partition(evidence, -GUESS_CLASSES)[-GUESS_CLASSES]
    return np.where(evidence >= max(cut, 1e-6), evidence, 0.0)
