"""Query understanding on the built vocabulary (scripts/build_vocabulary.py; CI builds it).

Classes are looked up by WordNet id, not display name, so renaming a class breaks nothing here.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from imgsearch.vocabulary import STRATEGIES, Interpretation, Vocabulary

VOCABULARY = Path(__file__).resolve().parents[1] / "src/imgsearch/assets/vocabulary"

pytestmark = pytest.mark.skipif(
    not (VOCABULARY / "tables.npz").exists(),
    reason=f"vocabulary not built: python scripts/build_vocabulary.py --out {VOCABULARY}",
)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load(VOCABULARY)


@pytest.fixture(scope="module")
def wnid() -> dict[str, int]:
    with (VOCABULARY / "classes.tsv").open(newline="") as handle:
        return {row["wnid"]: int(row["index"]) for row in csv.DictReader(handle, delimiter="\t")}


def top_classes(interpretation: Interpretation, n: int) -> list[int]:
    weights = interpretation.class_weights
    return [int(c) for c in np.argsort(-weights, kind="stable")[:n] if weights[c] > 0]


AFRICAN_ELEPHANT, INDIAN_ELEPHANT = "n02504458", "n02504013"
SPORTS_CAR, CONVERTIBLE, CAB, LIMOUSINE = "n04285008", "n03100240", "n02930766", "n03670208"
KAYAK, MOTORBOAT = "n02951358", "n04273569"
SEASHORE, SANDBAR, LAKESIDE = "n09428293", "n09421951", "n09332890"
GOLDEN_RETRIEVER, ICE_CREAM, FIRE_ENGINE = "n02099601", "n07614500", "n03345487"
TABBY, SIAMESE = "n02123045", "n02123597"
MICROWAVE, TOASTER, STOVE, REFRIGERATOR = "n03761084", "n04442312", "n04330267", "n04070727"
DISHWASHER, WAFFLE_IRON, DUTCH_OVEN, FRYING_PAN = "n03207941", "n04542943", "n03259280", "n03400231"
MOSQUE, COMPUTER_MOUSE, HAMSTER = "n03788195", "n03793489", "n02342885"
CRANE_BIRD, CRANE_MACHINE = "n02012849", "n03126707"
BINOCULARS, CLEAVER, AIRLINER, WARPLANE = "n02841315", "n03041632", "n02690373", "n04552348"
HARD_DISK, DALMATIAN = "n03492542", "n02110341"


def test_plural_is_read_as_its_singular(vocab, wnid):
    plural, singular = vocab.interpret("Elephants"), vocab.interpret("elephant")
    assert plural.query == "elephant"
    assert {wnid[AFRICAN_ELEPHANT], wnid[INDIAN_ELEPHANT]} <= set(top_classes(plural, 3))
    np.testing.assert_array_equal(plural.class_weights, singular.class_weights)


def test_irregular_plural_uses_wordnet_exceptions(vocab):
    assert vocab.normalise("mice") == "mouse"
    assert vocab.normalise("Geese!") == "goose"
    assert vocab.interpret("mice").query == vocab.interpret("mouse").query == "mouse"


def test_every_sense_is_weighed(vocab, wnid):
    # "mouse" names the computer mouse class (a rarer sense), which it reads as fully: the
    # collection decides at search time whether it holds any. The rodent, which no class
    # shows, is still guessed from rodent-like classes.
    mouse = vocab.interpret("mouse")
    assert mouse.class_weights[wnid[COMPUTER_MOUSE]] == 1.0
    assert 0 < mouse.class_weights[wnid[HAMSTER]] < 0.5
    assert mouse.readings[0].source == "imagenet"
    assert [s.classes for s in mouse.senses] == [(wnid[COMPUTER_MOUSE],)]
    # "crane" is both a machine and a bird, and both are classes.
    crane = vocab.interpret("crane")
    assert {wnid[CRANE_BIRD], wnid[CRANE_MACHINE]} == set(top_classes(crane, 2))


def test_synonym_finds_the_same_classes(vocab, wnid):
    automobile = vocab.interpret("automobile")
    cars = [wnid[w] for w in (SPORTS_CAR, CONVERTIBLE, CAB, LIMOUSINE)]
    assert all(automobile.class_weights[c] >= 0.9 for c in cars)
    assert automobile.readings[0].source == "wordnet"
    assert automobile.level == "high"


def test_hypernym_covers_its_imagenet_hyponyms(vocab, wnid):
    dog = vocab.interpret("dog")
    assert np.count_nonzero(dog.class_weights >= 0.9) >= 100
    assert "118 classes" in dog.readings[0].note
    vehicle = vocab.interpret("vehicle").class_weights
    for vehicle_class in (SPORTS_CAR, CONVERTIBLE, KAYAK, MOTORBOAT):
        assert vehicle[wnid[vehicle_class]] >= 0.5, vehicle_class


def test_multi_word_class_is_one_phrase(vocab, wnid):
    retriever = vocab.interpret("golden retrievers")
    assert [r.phrase for r in retriever.readings] == ["golden retriever"]
    assert top_classes(retriever, 1) == [wnid[GOLDEN_RETRIEVER]]
    assert retriever.readings[0].source == "imagenet"
    assert top_classes(vocab.interpret("ice cream"), 1) == [wnid[ICE_CREAM]]


def test_compound_typed_without_space_or_with_hyphen(vocab, wnid):
    assert vocab.normalise("tallbuilding") == "tall building"
    assert vocab.normalise("ice-cream") == "ice cream"
    assert vocab.normalise("t-shirt") == "t-shirt"  # WordNet spells this one with its hyphen
    firetruck = vocab.interpret("firetruck")
    assert firetruck.query == "fire truck"
    assert top_classes(firetruck, 1) == [wnid[FIRE_ENGINE]]
    tall = vocab.interpret("tallbuilding")
    assert [r.phrase for r in tall.readings] == ["tall", "building"]
    assert np.array_equal(tall.class_weights > 0, vocab.interpret("building").class_weights > 0)


def test_several_words_are_a_union(vocab, wnid):
    both = vocab.interpret("dog and cat")
    assert [r.phrase for r in both.readings] == ["dog", "cat"]
    assert both.class_weights[wnid[GOLDEN_RETRIEVER]] >= 0.9
    assert both.class_weights[wnid[TABBY]] >= 0.9 and both.class_weights[wnid[SIAMESE]] >= 0.9


def test_describing_word_reorders_but_does_not_add(vocab, wnid):
    red_car, car = vocab.interpret("red car"), vocab.interpret("car")
    assert np.array_equal(red_car.class_weights > 0, car.class_weights > 0)
    assert red_car.readings[0].phrase == "red"
    assert red_car.level == "high"


def test_word_naming_a_class_beyond_wordnet(vocab, wnid):
    # WordNet's beach is part of a shore, not the seashore class, but the class is called
    # "beach", and its sister formations are guessed after it.
    beach = vocab.interpret("beaches")
    top = top_classes(beach, 10)
    assert top[0] == wnid[SEASHORE]
    assert {wnid[SANDBAR], wnid[LAKESIDE]} <= set(top)


def test_unknown_to_imagenet_is_guessed_with_low_confidence(vocab, wnid):
    kitchen = vocab.interpret("kitchen")
    assert kitchen.level == "low" and 0 < kitchen.confidence < 0.5
    assert kitchen.readings[0].source == "related"
    appliances = {wnid[w] for w in (MICROWAVE, TOASTER, STOVE, REFRIGERATOR, DISHWASHER)}
    appliances |= {wnid[w] for w in (WAFFLE_IRON, DUTCH_OVEN, FRYING_PAN)}
    assert len(appliances & set(top_classes(kitchen, 10))) >= 2
    minaret = vocab.interpret("minaret")
    assert wnid[MOSQUE] in top_classes(minaret, 3)
    assert minaret.level == "low"


def test_the_sense_the_classifier_can_see_is_the_likelier(vocab, wnid):
    # WordNet lists the native of Dalmatia first; an image search means the dog.
    dalmatian = vocab.interpret("dalmatian")
    assert dalmatian.level == "high" and top_classes(dalmatian, 1) == [wnid[DALMATIAN]]


def test_a_class_named_only_in_the_plural(vocab, wnid):
    binocular = vocab.interpret("binocular")  # WordNet knows only "binoculars"
    assert top_classes(binocular, 1) == [wnid[BINOCULARS]] and binocular.level == "high"


def test_guesses_do_not_follow_another_sense_of_a_synonym(vocab, wnid):
    # A helicopter is also a "chopper", which names the cleaver; a road's kinds include the
    # "drive", which names the hard disk drive.
    helicopter = top_classes(vocab.interpret("helicopter"), 10)
    assert wnid[CLEAVER] not in helicopter
    assert {wnid[AIRLINER], wnid[WARPLANE]} <= set(helicopter)
    assert wnid[HARD_DISK] not in top_classes(vocab.interpret("road"), 10)


def test_nonsense_says_so(vocab):
    nonsense = vocab.interpret("xqzvbl")
    assert nonsense.confidence == 0 and nonsense.level == "none"
    assert not nonsense.class_weights.any()
    assert nonsense.readings[0].source == "unknown"
    assert nonsense.readings[0].note == "unknown word"
    for known in ("dandelion", "Golden Retrievers"):
        assert "unknown word" not in vocab.interpret(known).readings[0].note
    half = vocab.interpret("dog xqzvbl")
    assert 0 < half.confidence < vocab.interpret("dog").confidence


def test_an_emoji_is_read_as_its_name(vocab, wnid):
    assert vocab.normalise("\U0001f418") == "elephant"
    assert vocab.normalise("\U0001f436 and \U0001f431") == "dog and cat"  # not "dog face"
    assert vocab.normalise("\u00a9 cat\u00b0\u2122") == "cat"  # signs below the pictographs
    elephant = vocab.interpret("\U0001f418")
    assert elephant.level == "high"
    assert {wnid[AFRICAN_ELEPHANT], wnid[INDIAN_ELEPHANT]} <= set(top_classes(elephant, 2))


def test_numbers_show_nothing_and_cost_no_confidence(vocab):
    assert vocab.normalise("3 cats") == "cat"
    numbered = vocab.interpret("001.backpack")  # a dataset's folder name
    assert numbered.query == "backpack"
    assert numbered.confidence == vocab.interpret("backpack").confidence


def test_strategies_can_be_switched_off(vocab):
    assert not vocab.interpret("kitchen", strategies=()).class_weights.any()
    assert vocab.interpret("dog", strategies=()).level == "high"
    for strategy in STRATEGIES:
        assert vocab.interpret("kitchen", strategies={strategy}).class_weights.any(), strategy
    with pytest.raises(ValueError, match="unknown strategies"):
        Vocabulary.load(VOCABULARY, strategies={"telepathy"})


@pytest.mark.parametrize(
    "text",
    [
        "Golden Retrievers!!",
        "  MICE   and   geese ",
        "Café crème brûlée",
        "tallbuilding",
        "ice-cream sandwiches",
        "dog's bowl",
        "xqzvbl-qqq's",
        "\u2019t-shirts\u2019",
        "the running dogs, 3 cats & 2 lions",
        "\U0001f436\U0001f418\u2602\ufe0f \u00a9",
        "f-16s and b-52s",
        "\u2122 \u00b0 ^ `",
        "",
    ],
)
def test_normalise_is_stable(vocab, text):
    once = vocab.normalise(text)
    assert vocab.normalise(once) == once
    assert once == once.strip() and "  " not in once and once == once.lower()


def _plural(word: str) -> str:
    """A regular English plural of a name's last word ("tabby cat" -> "tabby cats")."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _names(vocab: Vocabulary, row: dict[str, str]) -> set[str]:
    """The names a person may type: the class's plain name and its synonyms (a parenthesised
    remark is no part of one)."""
    names = {vocab.class_names[int(row["index"])], *row["synonyms"].split("|")}
    return {" ".join(re.sub(r"\([^)]*\)", " ", name).split()) for name in names} - {""}


def _typed_forms(vocab: Vocabulary, name: str) -> list[str]:
    """The name, and its plural unless it is a Latin binomial ("Tinca tinca"), spelt with
    full stops ("R.V.") or plural already ("jeans")."""
    latin = (
        re.fullmatch(r"[A-Z][a-z]+ [a-z]+", name)
        and name.split()[1] not in vocab.normalise(name).split()[1:]
    )
    latin = latin or re.fullmatch(r"[A-Z][a-z]+ [A-Za-z]+(us|a|is|um|i|ae|es|ops|ensis|on)", name)
    plural_already = name.endswith("s") or "." in name
    return [name] if latin or plural_already else [name, _plural(name)]


def test_every_class_name_and_synonym_reads_as_its_class(vocab):
    """Each of the 1000 classes' names and synonyms, and their plurals, reads as that class:
    weighed fully, with full confidence (the collection then decides whether it holds any)."""
    with (VOCABULARY / "classes.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    failures, checked = [], 0
    for row in rows:
        index = int(row["index"])
        for name in sorted(_names(vocab, row)):
            for typed in _typed_forms(vocab, name):
                interpretation = vocab.interpret(typed)
                checked += 1
                if not (
                    interpretation.class_weights[index] == 1.0
                    and interpretation.confidence == 1.0
                    and interpretation.level == "high"
                ):
                    failures.append(
                        f"{typed!r} -> {index} weighs {interpretation.class_weights[index]:.2f},"
                        f" confidence {interpretation.confidence}"
                    )
    assert checked > 3000
    assert failures == [], f"{len(failures)} of {checked}: " + "; ".join(failures[:40])


def test_plain_class_names(vocab, wnid):
    """Names as people say them: a description in the class table gives way to a synonym."""
    tiger_cat = wnid["n02123159"]
    assert vocab.class_names[tiger_cat] == "tiger cat"
    assert vocab.class_names[wnid[TABBY]] == "tabby cat"
    assert all(not name.lower().startswith(("a ", "an ")) for name in vocab.class_names)
    assert all("," not in name for name in vocab.class_names)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("elefant", "elephant"),
        ("Elefants", "elephant"),
        ("zebar", "zebra"),
        ("girafe", "giraffe"),
        ("golden retreiver", "golden retriever"),
        ("kichen", "kitchen"),
    ],
)
def test_did_you_mean(vocab, typed, meant):
    assert vocab.suggest(typed) == meant


@pytest.mark.parametrize("typed", ["elephant", "mice", "zqxabcdef", "smartphone", "a the"])
def test_no_suggestion_for_known_words_or_nothing_near(vocab, typed):
    assert vocab.suggest(typed) is None


def test_spellings_are_looked_for_in_a_few_unknown_words_and_remembered(vocab, monkeypatch):
    """Each unknown word searches every noun: a query of many made-up words gets no
    suggestion (typing slips are few), and a word's nearest noun is searched for once."""
    assert vocab.suggest("qzelefant qzzebar qzgirafe qzkichen elefant") is None
    searched = []
    nearest = vocab._nearest_noun
    monkeypatch.setattr(vocab, "_nearest_noun", lambda w: searched.append(w) or nearest(w))
    assert vocab.suggest("zebar") == vocab.suggest("zebar") == "zebra"
    assert searched.count("zebar") <= 1


def test_interpretations_are_remembered_by_their_words(vocab, monkeypatch):
    """A query read once is not read again (the same words, however typed, share one reading);
    the memory is bounded, and what it hands out cannot be changed by whoever holds it."""
    monkeypatch.setattr(vocab, "_interpretations", type(vocab._interpretations)(3))
    first = vocab.interpret("Golden Retrievers!!")
    assert vocab.interpret("golden retriever") is first
    assert vocab.interpret("golden retriever", strategies=()) is not first
    with pytest.raises(ValueError, match="read-only"):
        first.class_weights[0] = 1.0
    for word in ("cat", "boat", "car", "tree"):
        vocab.interpret(word)
    assert len(vocab._interpretations) == 3
    assert vocab.interpret("tree") is vocab.interpret("tree")
    again = vocab.interpret("golden retriever")  # the least recently used went first
    assert again is not first and again.readings == first.readings
    assert np.array_equal(again.class_weights, first.class_weights)


def test_combined_classes_are_the_weights_best_first(vocab):
    for words in ("dog", "red car", "beach", "zqxmadeup"):
        interpretation = vocab.interpret(words)
        weights = interpretation.class_weights
        order = np.argsort(-weights, kind="stable")
        expected = [(int(c), float(weights[c])) for c in order if weights[c]]
        assert interpretation.combined_classes() == expected
