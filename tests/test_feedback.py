"""Votes and what they teach: no vote lost or counted twice, a session's votes change its next
page, terms agreed on by independent clients kept for everyone (tests/test_trust.py attacks
the trust model itself)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from support.demo import DEMO
from support.services import make_service
from support.votes import Vote, term_votes

from imgsearch.feedback import QUORUM, Agreement, Feedback
from imgsearch.learning import trust
from imgsearch.remembered import Expiring
from imgsearch.search import class_weights, explore_page, guess_count


def _ids_by_category(service) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for image_id in service.parts.index.image_ids(newest_first=False):
        found.setdefault(service.image(image_id).key.split("/")[0], []).append(image_id)
    return found


@pytest.fixture(scope="module")
def taught_service(tmp_path_factory, model_embedder, vocabulary):
    """Four demo categories, 48 photos: small enough to build per module, for tests that vote."""
    service = make_service(tmp_path_factory.mktemp("taught") / "data", model_embedder, vocabulary)
    for category in ("elephant", "pizza", "lotus", "laptop"):
        for path in sorted((DEMO / category).iterdir()):
            service.parts.ingestor.add(f"{category}/{path.name}", path.read_bytes())
    service.build_index()
    return service


def _totals(feedback: Feedback, term: str) -> dict[str, tuple[int, int]]:
    """Per image: (up, down) distinct clients whose voice says so."""
    return {a.image_id: (a.up_clients, a.down_clients) for a in feedback.summary(term).images}


def _terms(storage) -> dict[str, int]:
    """The terms voted on, with how many votes each has (their `terms` rows)."""
    return {item["sk"]: int(item["votes"]) for item in storage.feedback.query("terms")}


@pytest.mark.slow  # seventy-two votes racing, through moto too
def test_concurrent_votes_lose_nothing(storage) -> None:
    feedback = Feedback(storage.feedback)
    images = [f"{i:016x}" for i in range(6)]

    def session(number: int) -> None:
        for image_id in images:
            feedback.vote("boat", image_id, f"s{number}", 1 if number % 3 else -1, f"c{number}")
        for image_id in images[:2]:  # change one's mind: the last vote counts
            feedback.vote("boat", image_id, f"s{number}", -1 if number % 3 else 1, f"c{number}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(session, range(12)))
    votes = term_votes(feedback.table, "boat")
    assert len(votes) == 12 * 6
    totals = _totals(feedback, "boat")
    for position, image_id in enumerate(images):
        up, down = totals[image_id]
        expected_up = 8 if position >= 2 else 4  # sessions 3, 6, 9, 0 vote the other way
        assert (up, down) == (expected_up, 12 - expected_up), image_id
        counted = sum(1 for v in votes if v.image_id == image_id and v.value > 0)
        assert up == counted  # the summary agrees with the individual votes
    assert _terms(storage) == {"boat": 72}
    summary = feedback.summary("boat")
    assert (summary.votes, summary.sessions, summary.clients) == (72, 12, 12)
    for agreement in summary.images:  # decayed by the seconds the test took: barely
        assert agreement.up == pytest.approx(agreement.up_clients, rel=1e-4)


def test_sessions_of_one_client_racing_leave_it_one_voice(storage) -> None:
    """Twelve sessions of three clients vote concurrently: each client keeps exactly one voice
    per image, and the summary agrees with the voices, its decayed counts with its counts."""
    feedback = Feedback(storage.feedback)
    images = [f"{i:016x}" for i in range(4)]

    def session(number: int) -> None:
        for image_id in images:
            feedback.vote("sail", image_id, f"s{number}", 1 if number % 2 else -1, f"c{number % 3}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(session, range(12)))
    voices = list(storage.feedback.query("term#sail", prefix="voice#"))
    assert len(voices) == 3 * len(images)
    for agreement in feedback.summary("sail").images:
        mine = [v for v in voices if v["image_id"] == agreement.image_id]
        assert agreement.up_clients == sum(int(v["voice"]) > 0 for v in mine)
        assert agreement.up_clients + agreement.down_clients == 3
        assert agreement.up == pytest.approx(agreement.up_clients, rel=1e-4)
        assert agreement.down == pytest.approx(agreement.down_clients, rel=1e-4)
    summary = feedback.summary("sail")
    assert (summary.votes, summary.sessions, summary.clients) == (48, 12, 3)


def test_a_replayed_vote_changes_nothing(storage) -> None:
    feedback = Feedback(storage.feedback)
    assert feedback.vote("kite", "00000000000000aa", "s1", 1) is True
    before = (_totals(feedback, "kite"), _terms(storage))
    for _ in range(3):
        assert feedback.vote("kite", "00000000000000aa", "s1", 1) is False
    assert (_totals(feedback, "kite"), _terms(storage)) == before


def _voices(storage, term: str) -> dict[tuple[str, str], int]:
    """Per (client, image): its voice."""
    rows = storage.feedback.query(f"term#{term}", prefix="voice#")
    return {(i["client"], i["image_id"]): int(i["voice"]) for i in rows}


def test_an_undo_leaves_the_client_the_voice_its_other_sessions_give(storage) -> None:
    """Two sessions behind one address vote differently; one takes its vote back: the
    address's voice is the other session's vote, as if the withdrawn one had never been cast,
    whichever of the two voted last."""
    clock = [1_000_000.0]
    feedback = Feedback(storage.feedback, half_life_days=1.0, clock=lambda: clock[0])
    image = "00000000000000aa"
    feedback.vote("moth", image, "a", 1, "nat")
    clock[0] += 43_200  # half a day: the first vote weighs 2^-0.5 by the undo
    feedback.vote("moth", image, "b", -1, "nat")
    clock[0] += 43_200
    assert feedback.withdraw("moth", image, "b") is True  # the last vote taken back
    assert _voices(storage, "moth") == {("nat", image): 1}
    [agreement] = feedback.summary("moth").images
    assert (agreement.up_clients, agreement.down_clients) == (1, 0)
    assert agreement.up == pytest.approx(0.5)  # aged by a's vote, a day old, not renewed
    assert agreement.down == pytest.approx(0.0, abs=1e-9)

    feedback.vote("moth", image, "b", -1, "nat")  # b again, and this time a takes it back
    assert feedback.withdraw("moth", image, "a") is True
    assert _voices(storage, "moth") == {("nat", image): -1}
    [agreement] = feedback.summary("moth").images
    assert (agreement.up_clients, agreement.down_clients) == (0, 1)
    assert agreement.down == pytest.approx(1.0) and agreement.up == pytest.approx(0.0, abs=1e-9)
    assert term_votes(feedback.table, "moth") == [Vote("b", image, -1, "nat")]
    assert feedback.summary("moth").votes == 1

    assert feedback.withdraw("moth", image, "b") is True  # the last one: no voice left
    assert _voices(storage, "moth") == {} and feedback.summary("moth").images == []
    assert feedback.withdraw("moth", image, "b") is False  # nothing left to take back
    assert feedback.summary("moth").votes == 0


def test_an_undo_from_another_address_takes_the_vote_back(storage) -> None:
    """A phone votes on wifi and takes the vote back on mobile data (the undo names the
    session, not the address): the vote goes, and the voice of the address it was cast from
    with it."""
    feedback = Feedback(storage.feedback)
    image = "00000000000000bb"
    feedback.vote("gnat", image, "phone", 1, "wifi")
    assert feedback.withdraw("gnat", image, "phone") is True
    assert term_votes(feedback.table, "gnat") == []
    assert _voices(storage, "gnat") == {} and feedback.summary("gnat").images == []
    assert list(storage.feedback.query("client#wifi", prefix="vote#")) == []
    assert feedback.withdraw("gnat", image, "phone") is False


def test_undos_of_one_clients_sessions_racing_leave_the_voices_right(storage) -> None:
    """Sessions of one client vote the same image, then half of them take their votes back
    concurrently: the voice is one of the remaining votes, or none if none remain."""
    feedback = Feedback(storage.feedback)
    image = "00000000000000cc"
    for number in range(8):
        feedback.vote("wasp", image, f"s{number}", 1 if number % 2 else -1, f"c{number % 2}")
        feedback.vote("wasp", image, f"t{number}", 1, "c2")

    def undo(session: str) -> None:
        feedback.withdraw("wasp", image, session)

    with ThreadPoolExecutor(max_workers=8) as pool:
        undone = [f"s{n}" for n in range(8) if n % 2 == 0] + [f"t{n}" for n in range(8)]
        list(pool.map(undo, undone))
    assert _voices(storage, "wasp") == {("c1", image): 1}
    [agreement] = feedback.summary("wasp").images
    assert (agreement.up_clients, agreement.down_clients) == (1, 0)
    assert agreement.up == pytest.approx(1.0, rel=1e-4)
    assert agreement.down == pytest.approx(0.0, abs=1e-6)
    assert feedback.summary("wasp").votes == 4


def test_only_a_quorum_of_independent_clients_teaches_others() -> None:
    def weight(up: float, down: float) -> float:
        return trust(Agreement("0" * 16, round(up), round(down), up, down))

    assert weight(1, 0) == 0 and weight(0, 1) == 0  # one client alone: nothing
    assert weight(QUORUM - 1, 0) == 0  # two addresses are often one person's (home and phone)
    assert weight(QUORUM, 0) == 1 and weight(QUORUM + 1, 0) == 2 and weight(0, QUORUM) == -1
    assert weight(QUORUM + 1, 1) == 1  # a client disagreeing takes back one voice, no more
    assert 0 < weight(QUORUM + 0.5, 0) < weight(QUORUM + 1, 0)  # aged voices weigh less


def test_one_vote_changes_the_sessions_next_page(taught_service) -> None:
    service = taught_service
    by_category = _ids_by_category(service)
    word = "zqxmadeup"
    assert service.parts.vocabulary.interpret(word).confidence == 0
    first = service.search_text(word, limit=20, session="learner").hits
    lotus = next(hit.image_id for hit in first if hit.image_id in by_category["lotus"])
    assert {hit.reason for hit in first} == {"explore"}
    service.vote(word, lotus, 1, "learner")
    after = service.search_text(word, limit=12, session="learner")
    assert after.hits[0].image_id == lotus and after.hits[0].reason == "voted"
    assert all(hit.reason == "learned" for hit in after.hits[1:5])
    in_category = sum(hit.image_id in by_category["lotus"] for hit in after.hits)
    assert in_category >= 10, in_category
    assert after.learned is not None and after.learned.votes == 1


def test_not_relevant_votes_hide_images_from_that_session_only(taught_service) -> None:
    service = taught_service
    pizza = _ids_by_category(service)["pizza"]
    service.vote("pizza", pizza[0], -1, "picky")
    mine = [hit.image_id for hit in service.search_text("pizza", session="picky").hits]
    theirs = [hit.image_id for hit in service.search_text("pizza", session="other").hits]
    assert pizza[0] not in mine and pizza[0] in theirs


def test_a_learned_term_survives_a_restart_and_serves_another_session(
    taught_service, embedder, vocabulary
) -> None:
    service = taught_service
    laptops = _ids_by_category(service)["laptop"]
    word = "zqxcomputers"
    for client in ("c1", "c2", "c3"):  # independent clients agree
        for image_id in laptops[:3]:
            service.vote(word, image_id, 1, f"teacher-{client}", client)
    restarted = make_service(service.settings.data_dir, embedder, vocabulary)
    found = restarted.search_text(word, limit=10, session="newcomer")
    assert found.learned is not None and found.learned.sessions == 3
    assert found.learned.clients == 3
    assert sum(hit.image_id in laptops for hit in found.hits) >= 9
    assert all(hit.learned for hit in found.hits[:9])
    assert word in _terms(restarted.parts.storage)


def test_a_spammer_cannot_take_over_a_term(taught_service) -> None:
    service = taught_service
    by_category = _ids_by_category(service)
    word = "zqxtrunks"
    for number in range(3):
        for image_id in by_category["elephant"][:4]:
            service.vote(word, image_id, 1, f"honest{number}", f"honest-client{number}")
    everything = [i for ids in by_category.values() for i in ids]
    for number in range(5):  # sessions are free; its address is one
        for image_id in everything:
            service.vote(word, image_id, 1, f"spammer{number}", "spam-client")
    service.parts.learner.forget(word)
    top = service.search_text(word, limit=10, session="visitor").hits
    assert sum(hit.image_id in by_category["elephant"] for hit in top) >= 9


def test_first_page_weaves_a_spread_into_weak_guesses() -> None:
    guesses = [(f"g{i}", 1.0 - i / 100) for i in range(30)]
    spread = [f"s{i}" for i in range(20)]
    confident = explore_page(guesses, spread, "high")
    assert [h.image_id for h in confident[:20]] == [f"g{i}" for i in range(20)]
    weak = explore_page(guesses, spread, "low")
    first = [h.image_id for h in weak[:20]]
    assert first[:4] == ["g0", "s0", "g1", "s1"]  # half and half, woven
    assert sum(i.startswith("g") for i in first) == 10
    # Then the remaining guesses, then the remaining picks of the spread.
    assert [h.image_id for h in weak[20:]] == [f"g{i}" for i in range(10, 30)] + [
        f"s{i}" for i in range(10, 20)
    ]
    assert {h.tier for h in weak if h.reason == "explore"} == {"explore"}
    assert {h.tier for h in weak if h.reason == "keyword"} == {"guess"}
    rejected = explore_page(guesses, spread, "low", rejected=20)
    assert sum(h.image_id.startswith("g") for h in rejected[:20]) == 5
    scores = [h.score for h in weak]
    assert scores == sorted(scores, reverse=True)
    # A word read at confidence 0.4 gets 8 guesses; below 0.3, 6 (MIN_GUESS_SHARE).
    doubtful = explore_page(guesses, spread, "low", confidence=0.4)
    assert sum(h.image_id.startswith("g") for h in doubtful[:20]) == 8
    doubtful = explore_page(guesses, spread, "low", confidence=0.1)
    assert sum(h.image_id.startswith("g") for h in doubtful[:20]) == 6
    unknown = explore_page([], spread, "none")
    assert [h.image_id for h in unknown] == spread and {h.reason for h in unknown} == {"explore"}


def test_the_vote_cache_does_not_grow_with_every_query(taught_service, monkeypatch) -> None:
    learner = taught_service.parts.learner
    monkeypatch.setattr(learner, "_summaries", Expiring(8, 5.0))  # as built, 8 at most
    for number in range(50):
        taught_service.search_text(f"word{number}", limit=5, session="curious")
    assert len(learner._summaries) == 8


def _category(service, hit) -> str:
    return service.image(hit.image_id).key.split("/")[0]


def test_confident_matches_come_first_and_are_counted(taught_service) -> None:
    found = taught_service.search_text("elephant", limit=20)
    tiers = [hit.tier for hit in found.hits]
    assert 0 < found.matches < len(tiers)
    # The matches, then the rest: never a match below a guess.
    assert tiers == ["match"] * found.matches + ["guess"] * (len(tiers) - found.matches)
    assert all(_category(taught_service, h) == "elephant" for h in found.hits[: found.matches])
    assert found.did_you_mean is None


def test_no_match_when_the_collection_holds_none_of_the_classes(taught_service) -> None:
    found = taught_service.search_text("dog", limit=20)  # elephants, pizza, lotus, laptops
    assert found.interpretation.level == "high"
    assert found.matches == 0 and {h.tier for h in found.hits} == {"guess"}


def test_a_misspelt_word_gets_the_spelling_the_vocabulary_knows(taught_service) -> None:
    found = taught_service.search_text("elefant", limit=20)
    assert found.did_you_mean == "elephant"
    assert found.matches == 0 and {h.tier for h in found.hits} == {"explore"}


def test_exploration_moves_away_from_what_was_rejected(taught_service) -> None:
    word, session = "zqxwordless", "explorer"
    first = taught_service.search_text(word, limit=20, session=session)
    shown = {_category(taught_service, h) for h in first.hits}
    assert shown == {"elephant", "pizza", "lotus", "laptop"}  # the first page covers them all
    for hit in first.hits:
        if _category(taught_service, hit) in ("elephant", "lotus"):
            taught_service.vote(word, hit.image_id, -1, session)
    second = taught_service.search_text(word, limit=20, session=session)
    categories = [_category(taught_service, h) for h in second.hits]
    # The kinds least like the rejected ones first; nothing rejected comes back.
    rejected = {
        h.image_id for h in first.hits if _category(taught_service, h) in ("elephant", "lotus")
    }
    assert not rejected & {h.image_id for h in second.hits}
    assert set(categories[:8]) <= {"pizza", "laptop"}, categories


def test_class_photos_count_what_each_class_stands_for(taught_service) -> None:
    found = taught_service.search_text("pizza", limit=20)
    pizza = found.interpretation.combined_classes()[0][0]
    assert found.class_photos[pizza] == found.matches > 0


def test_a_guessed_word_hedges_its_guesses_across_its_classes(taught_service) -> None:
    found = taught_service.search_text("lotus", limit=20)  # read by guesses: water lilies
    assert found.interpretation.level == "low"
    index = taught_service.parts.index
    weights = class_weights(found.interpretation)
    guesses = [h.image_id for h in found.hits if h.tier == "guess"]
    count = guess_count("low", found.interpretation.confidence, 0, 20)
    first, half = guesses[:count], (count + 1) // 2
    # The better half by score, then the best image of each next likeliest class.
    assert first[:half] == [i for i, _ in index.ranked_by_classes(weights, half)]
    classes = sorted(weights, key=lambda c: -weights[c])[: 2 * count]
    bests = {i for c in classes for i, _ in index.ranked_by_classes({c: 1.0}, 1)}
    assert first[half:] and set(first[half:]) <= bests


class _CountedQueries:
    """A feedback table that counts the partitions its queries read."""

    def __init__(self, table) -> None:
        self.table = table
        self.read: list[str] = []

    def query(self, pk: str, **options):
        self.read.append(pk)
        return self.table.query(pk, **options)

    def __getattr__(self, name: str):
        return getattr(self.table, name)


def test_words_one_visitor_invents_cost_the_start_view_nothing(storage) -> None:
    """Everyone's start view lists the words votes taught (`word_topics`). Only terms QUORUM
    distinct clients voted on can teach, and only they are read: a visitor voting on a
    thousand made-up words adds no read to it (each cost a query of its own before, and
    49,000 of them made one start view take 0.8 s)."""
    from imgsearch.overview import word_topics

    image = "0" * 16
    feedback = Feedback(storage.feedback)
    for n in range(40):  # one client's made-up words, one session each
        feedback.vote(f"zqx{n}", image, f"s{n}", 1, "c-one")
    for n in range(QUORUM - 1):
        feedback.vote("almost", image, f"a{n}", 1, f"c{n}")
    for n in range(QUORUM):
        feedback.vote("boat", image, f"b{n}", 1, f"c{n}")
    counted = _CountedQueries(storage.feedback)
    topics = word_topics(Feedback(counted), {image})  # type: ignore[arg-type]
    assert [(t.label, t.count, t.cover) for t in topics] == [("boat", 1, image)]
    assert counted.read == ["taught", "term#boat"]


def test_the_taught_list_holds_every_term_that_reached_a_quorum(storage) -> None:
    """Terms agreed on before the list was kept are found once; a reset takes a term off."""
    from imgsearch.feedback import TAUGHT
    from imgsearch.storage import Delete

    image = "0" * 16
    feedback = Feedback(storage.feedback)
    for term in ("boat", "kite"):
        for n in range(QUORUM):
            feedback.vote(term, image, f"{term}{n}", 1, f"c{n}")
    feedback.vote("lone", image, "l", 1, "c0")
    assert sorted(feedback.taught_terms()) == ["boat", "kite"]
    listed = [Delete(TAUGHT, item["sk"]) for item in storage.feedback.query(TAUGHT)]
    storage.feedback.transact(listed)  # as a table from before the list was kept
    reader = Feedback(storage.feedback)  # a search: reads the terms, writes nothing
    assert sorted(reader.taught_terms()) == ["boat", "kite"]
    assert list(storage.feedback.query(TAUGHT)) == []
    voter = Feedback(storage.feedback)  # a process's first vote makes the list whole
    voter.vote("lone", image, "l2", 1, "c1")
    assert sorted(item["sk"] for item in storage.feedback.query(TAUGHT)) == [
        "#listed",
        "boat",
        "kite",
    ]
    voter.reset("kite")
    assert reader.taught_terms() == ["boat"]


def test_a_term_whose_agreement_is_gone_leaves_the_taught_list(storage) -> None:
    """The list holds the terms that hold an agreed image: once the last one's agreement is
    gone (a withdrawal, a vote that changes sides, the owner dropping a client), the term
    leaves it, or every start view would go on reading it. Dropping the clients that invented
    words is the owner's remedy; their words must stop costing the start view then."""
    from imgsearch.feedback import TAUGHT

    first, second = "0" * 16, "1" * 16
    feedback = Feedback(storage.feedback)
    for n in range(QUORUM):
        feedback.vote("kite", first, f"k{n}", 1, f"c{n}")
        feedback.vote("boat", first, f"b{n}", 1, f"c{n}")
        feedback.vote("boat", second, f"b{n}", 1, f"c{n}")
        feedback.vote("moon", first, f"m{n}", 1, f"c{n}")
    assert sorted(feedback.taught_terms()) == ["boat", "kite", "moon"]
    feedback.drop_client("c0")  # kite and moon lose their one agreed image, boat its two
    assert feedback.taught_terms() == []
    for n in range(1, QUORUM):
        feedback.vote("kite", first, f"k{n}b", 1, f"c{n}")
    feedback.vote("kite", first, "k0", 1, "c0")  # agreed again: listed again
    feedback.vote("boat", first, "b0", 1, "c0")
    assert sorted(feedback.taught_terms()) == ["boat", "kite"]
    feedback.withdraw("kite", first, "k0")
    feedback.vote("boat", second, "b0", 1, "c0")
    feedback.vote("boat", first, "b0", -1, "c0")  # the other image keeps boat listed
    assert feedback.taught_terms() == ["boat"]
    assert sorted(i["sk"] for i in storage.feedback.query(TAUGHT)) == ["#listed", "boat"]


def test_a_term_agreed_on_meanwhile_stays_taught(storage) -> None:
    """The write that takes a term off the list is conditioned on the row it read: a vote
    that makes another image agreed between that read and the write keeps it listed."""
    image, other = "0" * 16, "1" * 16
    feedback = Feedback(storage.feedback)
    for n in range(QUORUM):
        feedback.vote("kite", image, f"k{n}", 1, f"c{n}")
    for n in range(QUORUM - 1):
        feedback.vote("kite", other, f"o{n}", 1, f"c{n}")
    table = storage.feedback
    meanwhile = Feedback(table)

    class Interleaved:
        """Lets the other process's vote land just before this process's first write."""

        landed = False

        def transact(self, writes):
            if not Interleaved.landed:
                Interleaved.landed = True
                meanwhile.vote("kite", other, f"o{QUORUM}", 1, f"c{QUORUM}")
            return table.transact(writes)

        def __getattr__(self, name: str):
            return getattr(table, name)

    Feedback(Interleaved()).withdraw("kite", image, "k0")  # type: ignore[arg-type]
    assert Interleaved.landed
    assert {a.image_id for a in feedback.summary("kite", agreed_only=True).images} == {other}
    assert feedback.taught_terms() == ["kite"]


class _CountedRows(_CountedQueries):
    """A feedback table that also counts the rows its queries give."""

    def __init__(self, table) -> None:
        super().__init__(table)
        self.rows = 0

    def query(self, pk: str, **options):
        for row in super().query(pk, **options):
            self.rows += 1
            yield row


def test_an_undo_reads_rows_by_the_image_not_by_the_clients_votes(storage) -> None:
    """Taking a vote back finds the client's other sessions' votes on the image: it read the
    client's every vote to find them, so an address that had voted on many words (600 a
    minute, kept for good; 50,000 made one undo take 0.35 s) made each of its undos cost
    that much. Now it reads the client's latest votes on that image for that word, a few
    rows, however many votes the client cast elsewhere or from how many sessions."""
    clock = [1_000_000.0]
    feedback = Feedback(storage.feedback, clock=lambda: clock[0])
    image = "00000000000000dd"
    for n in range(60):  # the same address on made-up words
        feedback.vote(f"zqx{n}", image, "s", 1, "nat")
    for n in range(30):  # and from many sessions on this image and word
        clock[0] += 1
        feedback.vote("moth", image, f"old{n}", -1 if n == 29 else 1, "nat")
    clock[0] += 1
    feedback.vote("moth", image, "new", 1, "nat")
    counted = _CountedRows(storage.feedback)
    assert Feedback(counted, clock=lambda: clock[0]).withdraw("moth", image, "new") is True
    assert counted.rows <= 4
    assert _voices(storage, "moth") == {("nat", image): -1}  # old29's, the latest left
    assert feedback.withdraw("moth", image, "old29") is True
    assert _voices(storage, "moth") == {("nat", image): 1}
    assert feedback.summary("moth").votes == 29


def test_an_undo_on_a_voice_from_before_cast_rows_finds_the_other_votes(storage) -> None:
    """Votes stored before `cast#` rows were kept have none, nor does their voice say
    `casts`: an undo then finds the client's other votes through its own partition, as
    before."""
    clock = [1_000_000.0]
    feedback = Feedback(storage.feedback, clock=lambda: clock[0])
    image = "00000000000000ee"
    for session, value in (("a", 1), ("b", -1)):
        clock[0] += 1
        feedback.vote("moth", image, session, value, "nat")
    table = storage.feedback
    for row in list(table.query("term#moth")):  # as the previous version left them
        if row["sk"].startswith("cast#"):
            table.delete(row["pk"], row["sk"])
        elif row["sk"].startswith(("vote#", "voice#")):
            attrs = {k: v for k, v in row.items() if k not in ("pk", "sk", "version", "cast")}
            table.put(row["pk"], row["sk"], {k: v for k, v in attrs.items() if k != "casts"})
    assert feedback.withdraw("moth", image, "b") is True
    assert _voices(storage, "moth") == {("nat", image): 1}
    assert feedback.withdraw("moth", image, "a") is True
    assert _voices(storage, "moth") == {} and feedback.summary("moth").images == []


def test_a_sessions_searches_read_a_bounded_number_of_its_votes(storage, monkeypatch) -> None:
    """Every search of a session reads its votes on the words (its own results follow them at
    once): at most MAX_SESSION_VOTES, so that a session that voted on a whole collection,
    within its rate limit over hours, does not make each of its searches cost that much."""
    import imgsearch.feedback

    monkeypatch.setattr(imgsearch.feedback, "MAX_SESSION_VOTES", 10)
    feedback = Feedback(storage.feedback)
    for n in range(15):
        feedback.vote("moth", f"{n:016x}", "busy", -1, "c")
    counted = _CountedRows(storage.feedback)
    assert len(Feedback(counted).session_votes("moth", "busy")) == 10
    assert counted.rows == 10
