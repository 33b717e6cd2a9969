"""`imgsearch eval`: metrics on hand-made cases, and the measurements on a tiny labelled set
(4 demo categories x 4 photos) through the real service and feedback path."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.demo import DEMO
from support.services import make_service

from imgsearch.cli import main
from imgsearch.evaluation import EvaluationError
from imgsearch.evaluation.collection import LabelledCollection, ingest_labelled, read_labels
from imgsearch.evaluation.keyword import keyword_table, maps_onto_imagenet
from imgsearch.evaluation.methods import Sandbox, Variant, methods, parse_strategies
from imgsearch.evaluation.metrics import (
    mean_reached,
    precision_at_k,
    precision_curve,
    recall_at_k,
    rounds_to_target,
    share_never,
)
from imgsearch.evaluation.report import Report, render, render_keyword, to_json
from imgsearch.evaluation.run import evaluate
from imgsearch.evaluation.similar import brute_force
from imgsearch.evaluation.simulated_user import made_up_word, simulate
from imgsearch.service import ImageSearch
from imgsearch.vocabulary import Interpretation, Reading

CATEGORIES = ("brain", "butterfly", "elephant", "pizza")
PER_CATEGORY = 4

# Metrics ---------------------------------------------------------------------------------------


def test_precision_counts_relevant_results_among_the_first_k() -> None:
    three_of_five = [True, False, True, False, True]
    assert precision_at_k(three_of_five, 5) == pytest.approx(0.6)
    assert precision_at_k(three_of_five, 2) == pytest.approx(0.5)
    assert precision_at_k(three_of_five + [True] * 10, 5) == pytest.approx(0.6)


def test_precision_counts_missing_places_as_misses_and_stops_at_what_exists() -> None:
    assert precision_at_k([True], 5) == pytest.approx(0.2)
    # Only 4 relevant images exist: all 4 on a page of 20 is as good as a page can be.
    assert precision_at_k([True] * 4 + [False] * 16, 20, available=4) == 1.0
    assert precision_at_k([True, True], 20, available=4) == 0.5
    assert precision_at_k([], 20, available=0) == 0.0
    assert precision_curve([True, False, True], 3) == pytest.approx([1.0, 0.5, 2 / 3])


def test_recall_against_a_reference_ranking() -> None:
    assert recall_at_k(["a", "b", "x", "c"], ["a", "b", "c"], 3) == pytest.approx(2 / 3)
    assert recall_at_k(["c", "b", "a"], ["a", "b", "c"], 3) == 1.0  # order within k is free


def test_rounds_are_counted_from_the_first_query_and_from_the_first_relevant_page() -> None:
    # Pages 0..3: nothing relevant, then 2, 10 and 16 of 20.
    rounds = rounds_to_target([0.0, 0.1, 0.5, 0.8], [0, 2, 10, 16], target=0.75)
    assert (rounds.reached, rounds.first_relevant) == (3, 1)
    assert rounds.from_first_query == 3
    assert rounds.from_first_relevant == 2

    first_page_good = rounds_to_target([0.9], [18], target=0.75)
    assert (first_page_good.from_first_query, first_page_good.from_first_relevant) == (0, 0)


def test_runs_that_never_reach_the_target_are_counted_apart() -> None:
    never = rounds_to_target([0.0, 0.2, 0.3], [0, 4, 6], target=0.75)
    assert never.reached is None and never.first_relevant == 1
    assert never.from_first_query is None and never.from_first_relevant is None
    assert rounds_to_target([0.0, 0.0], [0, 0], 0.75).first_relevant is None

    assert mean_reached([2, None, 0, None]) == 1.0  # over the runs that reached it
    assert share_never([2, None, 0, None]) == 0.5
    assert mean_reached([None, None]) is None


# Parts -----------------------------------------------------------------------------------------


def test_brute_force_ranks_by_the_asked_distance_without_the_query() -> None:
    # From the origin: a = (2, 2) is nearer in Euclidean (2.83 < 3), b = (3, 0) in Manhattan.
    points = np.array([[0, 0], [2, 2], [3, 0]], dtype=np.float32)
    ids = ["origin", "a", "b"]
    assert brute_force(points, ids, ["origin"], "euclidean") == {"origin": ["a", "b"]}
    assert brute_force(points, ids, ["origin"], "manhattan") == {"origin": ["b", "a"]}
    directions = np.array([[1, 0], [1, 1], [5, 0.1]], dtype=np.float32)
    assert brute_force(directions, ids, ["origin"], "cosine") == {"origin": ["b", "a"]}


def test_a_label_maps_onto_imagenet_when_no_phrase_is_guessed() -> None:
    def reading_from(*sources: str) -> Interpretation:
        readings = tuple(Reading(s, s, 1.0, (), "") for s in sources)
        return Interpretation("q", readings, np.zeros(1000, np.float32), 1.0)

    assert maps_onto_imagenet(reading_from("imagenet"))
    assert maps_onto_imagenet(reading_from("wordnet", "imagenet"))
    assert not maps_onto_imagenet(reading_from("wordnet", "related"))
    assert not maps_onto_imagenet(reading_from("unknown"))
    assert not maps_onto_imagenet(reading_from())


def test_made_up_words_are_unknown_and_the_same_every_run(service, vocabulary) -> None:
    word = made_up_word("elephant", service)
    assert vocabulary.interpret(word).confidence == 0
    assert made_up_word("elephant", service) == word != made_up_word("pizza", service)


def test_labels_files_as_they_come(tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na/1.jpg,a\n./b/2.jpg,b\n")
    assert read_labels(labels) == {"a/1.jpg": "a", "b/2.jpg": "b"}
    # A spreadsheet's export: byte-order mark, Windows line ends and paths, a blank line.
    labels.write_bytes(b"\xef\xbb\xbfPath,Label\r\na\\1.jpg, two words \r\n\r\nb/2.jpg,b\r\n")
    assert read_labels(labels) == {"a/1.jpg": "two words", "b/2.jpg": "b"}
    labels.write_text("a/1.jpg,a\nb/2.jpg,b\n")  # no header
    assert read_labels(labels) == {"a/1.jpg": "a", "b/2.jpg": "b"}
    for bad in ("path,label\na/1.jpg,a,extra\n", "path,label\na/1.jpg,\n", "path,label\n"):
        labels.write_text(bad)
        with pytest.raises(EvaluationError, match="path,label"):
            read_labels(labels)
    with pytest.raises(EvaluationError, match="unknown strategies"):
        parse_strategies("vectors,telepathy")


# A tiny labelled set, through the service ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> tuple[Path, Path]:
    """4 categories x 4 photos, one unlabelled photo, and a label for a file that is missing."""
    root = tmp_path_factory.mktemp("tiny") / "photos"
    rows = [("missing/none.jpg", "pizza")]
    for category in CATEGORIES:
        (root / category).mkdir(parents=True)
        for number in range(1, PER_CATEGORY + 1):
            name = f"{category}/image_{number:04d}.jpg"
            shutil.copy(DEMO / name, root / name)
            rows.append((name, category))
    (root / "extra").mkdir()
    shutil.copy(DEMO / "watch/image_0001.jpg", root / "extra/unlabelled.jpg")
    labels = root.parent / "labels.csv"
    with labels.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root, labels


@pytest.fixture(scope="module")
def tiny(tiny_folder, model_embedder, vocabulary) -> tuple[ImageSearch, LabelledCollection]:
    root, labels = tiny_folder
    service = make_service(root.parent / "data", model_embedder, vocabulary)
    return service, ingest_labelled(service, root, read_labels(labels))


def spy_on_votes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every call of ImageSearch.vote and what the feedback table then holds."""
    calls: list[dict] = []
    real_vote = ImageSearch.vote

    def vote(self: ImageSearch, query: str, image_id: str, value: int, session: str) -> str:
        term = real_vote(self, query, image_id, value, session)
        stored = self.parts.feedback.session_votes(term, session).get(image_id)
        calls.append({"image": image_id, "value": value, "session": session, "stored": stored})
        return term

    monkeypatch.setattr(ImageSearch, "vote", vote)
    return calls


@pytest.fixture(scope="module")
def tiny_report(tiny) -> tuple[Report, list[dict]]:
    service, collection = tiny
    with pytest.MonkeyPatch.context() as monkeypatch:
        votes = spy_on_votes(monkeypatch)
        report = evaluate(service, collection, directory=Path("tiny"), methods=[Variant()])
    return report, votes


def test_ingest_finds_labelled_images_and_reports_the_rest(tiny) -> None:
    service, collection = tiny
    assert collection.sizes == dict.fromkeys(CATEGORIES, PER_CATEGORY)
    assert [f.path for f in collection.failed] == ["missing/none.jpg"]
    assert collection.unlabelled == 1
    assert service.count() == len(CATEGORIES) * PER_CATEGORY + 1


def test_report_has_all_four_measurements(tiny_report) -> None:
    report, _ = tiny_report
    text = render(report)
    for heading in (
        "## 1. Similar images",
        "## 2. Similar images",
        "## 2b. Similar images: raw against expanded",
        "## 3. Keyword",
        "## 4.",
    ):
        assert heading in text
    assert "missing/none.jpg" in text
    assert [r.name for r in report.production] == [
        "exact",
        "index",
        "neighbourhoods, raw",
        "reverse search",
        "neighbourhoods",
    ]
    by_name = {r.name: r for r in report.production}
    # Reverse search with an image's own features is its "more like this" (the image itself
    # left out).
    assert by_name["reverse search"].precision == by_name["neighbourhoods"].precision
    assert report.production[0].recall == 1.0
    assert len(report.layer_distance) == 6
    assert {r.label for r in report.keyword["default"]} == set(CATEGORIES)
    runs = report.feedback["default"]
    assert {(r.label, r.mode) for r in runs} == {
        (label, mode) for label in CATEGORIES for mode in ("label", "scratch")
    }
    numbers = json.loads(json.dumps(to_json(report)))
    assert numbers["production"][0]["precision"]["20"] == report.production[0].precision[20]
    assert set(numbers["feedback"]["default"]["summary"]) == {"label", "scratch"}


def test_simulated_users_vote_through_the_feedback_path_and_leave_the_collection_alone(
    tiny, tiny_report
) -> None:
    service, collection = tiny
    report, votes = tiny_report
    runs = report.feedback["default"]
    assert len(votes) == sum(run.votes for run in runs)
    for vote in votes:
        label = vote["session"].split("-", 2)[2]
        assert vote["value"] == (1 if collection.labels.get(vote["image"]) == label else -1)
        assert vote["stored"] == vote["value"]
    assert len({(v["session"], v["image"]) for v in votes}) == len(votes)  # once per image
    for run in runs:  # a page short of the target, with a relevant image on it, gets votes
        if run.precisions[0] < 0.75 and run.relevant_shown[0]:
            assert run.votes > 0
    assert list(service.parts.storage.feedback.query("terms")) == []  # a table for each run


def test_a_user_who_sees_wrong_images_votes_on_each_once_in_a_table_of_its_own(
    tiny, monkeypatch
) -> None:
    # On a set this small every first page holds a whole label, so the evaluation's users
    # rarely need to vote; this one wants brains but types "pizza", and must.
    service, collection = tiny
    votes = spy_on_votes(monkeypatch)
    wanted = collection.relevant("brain")  # wants brains, but types "pizza"
    with Sandbox(service) as sandbox:
        user_service = sandbox.service(Variant())
        precisions, _, cast = simulate(user_service, "pizza", wanted, "s", Variant())
        term = user_service.parts.vocabulary.normalise("pizza")
        assert cast == len(votes) > 0
        for vote in votes:
            assert vote["value"] == (1 if vote["image"] in wanted else -1)
        assert user_service.parts.feedback.session_votes(term, "s") == {
            v["image"]: v["value"] for v in votes
        }
        assert sandbox.service(Variant()).parts.feedback.summary(term).images == []  # no leak
    assert len(precisions) >= 2


def test_cli_reuses_a_data_directory_and_writes_json(tiny, tiny_folder, tmp_path, capsys) -> None:
    root, labels = tiny_folder
    service, _ = tiny
    out = tmp_path / "out.json"
    plots = ["--plots", str(tmp_path / "plots")] if importlib.util.find_spec("matplotlib") else []
    argv = ["eval", str(root), "--labels", str(labels), "--json", str(out), "-q", *plots]
    assert main([*argv, "--data-dir", str(service.settings.data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "## 4. Relevance feedback" in printed
    assert json.loads(out.read_text())["collection"]["unlabelled"] == 1
    if plots:
        assert len(list((tmp_path / "plots").glob("*.png"))) == 3


def test_methods_are_measured_side_by_side_each_on_its_own_vocabulary(tiny) -> None:
    service, collection = tiny
    with Sandbox(service) as sandbox:
        results = {
            method.name: keyword_table(sandbox, collection, method)
            for method in methods([None, frozenset()])
        }
    assert list(results) == ["default", "strategies=none"]
    text = render_keyword(results)
    assert "### Method: strategies=none" in text and "| Method | Labels |" in text


def test_an_unknown_feedback_method_is_refused_before_the_run(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["eval", str(tmp_path), "--labels", "x.csv", "--feedback-method", "telepathy"])
    assert refused.value.code == 2
    assert "invalid choice: 'telepathy'" in capsys.readouterr().err
