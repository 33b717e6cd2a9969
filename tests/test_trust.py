"""The trust model of votes, attacked as an abuse team would: one address inventing sessions
cannot change what others see; independent addresses agreeing teach everyone; votes age;
client identity comes from the connection, not from headers a client writes; rate-limit
counters expire. Through the HTTP API on the demo collection, on both storage adapters."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.openapi import API_KEY_HEADER
from support.services import API_KEY
from support.votes import term_votes

from imgsearch.api.app import create_app
from imgsearch.clients import (
    ClientIds,
    client_network,
    is_client_id,
    source_address,
)
from imgsearch.config import Settings
from imgsearch.feedback import QUORUM, Feedback
from imgsearch.learning import trust
from imgsearch.rate_limits import DAY, RateLimiter
from imgsearch.service import ImageSearch
from imgsearch.storage import Storage, Table
from imgsearch.storage.local import SqliteTable

FIRST_PAGE = 12
HALF_LIFE_DAYS = 30.0


def on_demo(demo_service: ImageSearch, feedback: Table, **settings: object) -> ImageSearch:
    """The demo collection with a feedback table of its own (the demo's is never changed)."""
    storage = Storage(
        demo_service.parts.storage.objects, demo_service.parts.storage.catalog, feedback
    )
    service = ImageSearch(
        demo_service.settings.model_copy(update=settings),
        storage,
        embedder=demo_service.parts.embedder,
        vocabulary=demo_service.parts.vocabulary,
        index=demo_service.parts.index,  # loaded once for the session
    )
    return service


@pytest.fixture
def voting(storage: Storage, demo_service: ImageSearch) -> ImageSearch:
    """Rate limits high enough for the attacks below (they bound votes, not what votes teach)."""
    return on_demo(demo_service, storage.feedback, votes_per_client_minute=10_000)


def from_address(service: ImageSearch, address: str, **headers: str) -> TestClient:
    """A client whose connection comes from `address`."""
    return TestClient(create_app(service), client=(address, 40_000), headers=headers)


def first_page(client: TestClient, word: str, session: str) -> list[str]:
    response = client.get(
        "/api/search", params={"q": word, "limit": FIRST_PAGE, "session": session}
    )
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def vote(client: TestClient, word: str, image_id: str, value: int, session: str) -> None:
    body = {"query": word, "image_id": image_id, "vote": value, "session": session}
    response = client.post("/api/feedback", json=body)
    assert response.status_code == 200, response.text


def category_ids(service: ImageSearch, category: str) -> list[str]:
    return [
        image_id
        for image_id in service.parts.index.image_ids(newest_first=False)
        if service.image(image_id).key.startswith(f"{category}/")
    ]


# One address, many sessions ----------------------------------------------------------------


@pytest.mark.slow  # hundreds of votes, through moto too
def test_forty_sessions_from_one_address_cannot_empty_a_word(voting) -> None:
    visitor = from_address(voting, "198.51.100.20")
    before = first_page(visitor, "elephant", "visitor-before")
    assert len(before) == FIRST_PAGE
    attacker = from_address(voting, "203.0.113.7")
    # moto copies the whole table for every transaction: there each session votes on a
    # quarter of the page, to keep the test quick; SQLite takes the whole page.
    targets = before if isinstance(voting.parts.storage.feedback, SqliteTable) else before[:3]
    for number in range(40):
        for image_id in targets:
            vote(attacker, "elephant", image_id, -1, f"attacker{number}")
    after = first_page(visitor, "elephant", "visitor-after")
    kept = len(set(before) & set(after))
    assert kept >= 10, kept
    assert kept == FIRST_PAGE  # one address alone teaches others nothing at all
    # The attacker's own sessions see their votes at once, as any user's do.
    assert not set(targets) & set(first_page(attacker, "elephant", "attacker0"))


@pytest.mark.model  # what the model sees
def test_one_address_upvoting_pizzas_keeps_elephants_for_others(voting) -> None:
    visitor = from_address(voting, "198.51.100.20")
    before = first_page(visitor, "elephant", "visitor-before")
    pizzas = category_ids(voting, "pizza")
    attacker = from_address(voting, "203.0.113.8")
    # moto copies the whole table for every transaction: fewer sessions there keep it quick
    # (one or forty, an address has one voice per image).
    sessions = 40 if isinstance(voting.parts.storage.feedback, SqliteTable) else 6
    for number in range(sessions):
        for image_id in pizzas:
            vote(attacker, "elephant", image_id, 1, f"pizzafan{number}")
        for image_id in before[:6]:
            vote(attacker, "elephant", image_id, -1, f"pizzafan{number}")
    after = first_page(visitor, "elephant", "visitor-after")
    assert len(set(before) & set(after)) >= 10
    assert not set(pizzas) & set(after)
    own = first_page(attacker, "elephant", "pizzafan3")
    assert sum(i in pizzas for i in own) >= 10  # its own page did change


# Independent addresses agreeing -------------------------------------------------------------


@pytest.mark.model  # what the model sees
def test_three_addresses_agreeing_teach_a_new_word_to_everyone(voting) -> None:
    word = "zqxblossoms"
    assert voting.parts.vocabulary.interpret(word).confidence == 0
    lotus = category_ids(voting, "lotus")
    taught = lotus[:3]
    visitor = from_address(voting, "198.51.100.20")
    assert not set(taught) <= set(first_page(visitor, word, "early"))
    for number, address in enumerate(("192.0.2.1", "192.0.2.77", "2001:db8:5::1")):
        teacher = from_address(voting, address)
        for image_id in taught:
            vote(teacher, word, image_id, 1, f"teacher{number}")
    response = visitor.get("/api/search", params={"q": word, "limit": FIRST_PAGE, "session": "new"})
    page = [r["id"] for r in response.json()["results"]]
    assert set(taught) <= set(page[:3])  # the photos voted on, first
    assert sum(i in lotus for i in page) >= 10, page  # and their look-alikes
    learned = response.json()["interpretation"]["learned"]
    assert learned["clients"] == 3 and learned["sessions"] == 3 and learned["votes"] == 9


def test_addresses_of_one_ipv6_subscriber_are_one_client(voting) -> None:
    word = "zqxpetals"
    lotus = category_ids(voting, "lotus")[:3]
    visitor = from_address(voting, "198.51.100.20")
    before = first_page(visitor, word, "v1")
    for number in range(3):  # three addresses of one /64: one subscriber
        teacher = from_address(voting, f"2001:db8:1:2::{number + 1}")
        for image_id in lotus:
            vote(teacher, word, image_id, 1, f"s{number}")
    assert first_page(visitor, word, "v2") == before


# Votes age ----------------------------------------------------------------------------------


def test_voices_decay_by_their_half_life_and_changes_take_back_exactly_their_own(storage) -> None:
    now = [1_000_000.0]
    feedback = Feedback(storage.feedback, half_life_days=HALF_LIFE_DAYS, clock=lambda: now[0])
    image = "00000000000000ab"
    for client in "abcdef":
        feedback.vote("kite", image, f"s-{client}", 1, client)
    (fresh,) = feedback.summary("kite").images
    assert (fresh.up_clients, fresh.up, trust(fresh)) == (6, pytest.approx(6.0), 4.0)
    now[0] += HALF_LIFE_DAYS * 86_400
    (aged,) = feedback.summary("kite").images
    assert aged.up_clients == 6 and aged.up == pytest.approx(3.0)
    assert trust(aged) == pytest.approx(1.0)  # agreement fades with the votes
    feedback.vote("kite", image, "s-g", 1, "g")  # a new voice weighs in full
    feedback.vote("kite", image, "s-a", -1, "a")  # a changed one takes back its aged half
    (changed,) = feedback.summary("kite").images
    assert (changed.up_clients, changed.down_clients) == (6, 1)
    assert changed.up == pytest.approx(3.0 + 1.0 - 0.5)
    assert changed.down == pytest.approx(1.0)
    assert trust(changed) == pytest.approx(0.5)
    now[0] += 10 * HALF_LIFE_DAYS * 86_400
    (faded,) = feedback.summary("kite").images
    assert trust(faded) == 0 and faded.up_clients == 6  # counted, but too old to teach


# Who a client is ----------------------------------------------------------------------------


def test_a_client_is_its_connection_unless_a_trusted_proxy_says_otherwise() -> None:
    proxies = Settings(trusted_proxies=["10.0.0.0/8", "2001:db8:ffff::/48"]).trusted_proxy_networks
    forged = ["1.2.3.4, 5.6.7.8"]
    assert source_address("203.0.113.9", forged, []) == "203.0.113.9"
    assert source_address("203.0.113.9", forged, proxies) == "203.0.113.9"  # peer not trusted
    # Behind trusted proxies: the right-most entry no trusted proxy wrote.
    assert source_address("10.0.0.2", ["1.2.3.4, 198.51.100.4, 10.1.1.1"], proxies) == (
        "198.51.100.4"
    )
    assert source_address("10.0.0.2", ["1.2.3.4", "198.51.100.4"], proxies) == "198.51.100.4"
    assert source_address("10.0.0.2", ["1.2.3.4, not-an-ip"], proxies) == "10.0.0.2"
    assert source_address("10.0.0.2", [], proxies) == "10.0.0.2"
    assert source_address(None, forged, proxies) == "unknown"
    assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_network("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_network("2002:c000:0201:7::1") == "192.0.2.1"  # 6to4
    assert client_network("2001:0:4136:e378:8000:63bf:3fff:fdd2") == "192.0.2.45"  # Teredo
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="not an address or network"):
        Settings(trusted_proxies=["proxy.example"])  # refused at start, not at the first vote
    ids = ClientIds("secret")
    assert ids.of("2001:db8:1:2::1") == ids.of("2001:db8:1:2:ffff::9") != ids.of("2001:db8::1")
    assert is_client_id(ids.of("192.0.2.1")) and "192.0.2.1" not in ids.of("192.0.2.1")
    assert ClientIds("other").of("192.0.2.1") != ids.of("192.0.2.1")


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    storage, demo_service, one_minute
) -> None:
    image_id = category_ids(demo_service, "elephant")[0]

    def accepted(service: ImageSearch, forwarded: list[str]) -> list[int]:
        client = from_address(service, "127.0.0.1")
        statuses = []
        for number, address in enumerate(forwarded):
            body = {"query": "boat", "image_id": image_id, "vote": 1, "session": f"s{number}"}
            response = client.post("/api/feedback", json=body, headers={"X-Forwarded-For": address})
            statuses.append(response.status_code)
        return statuses

    forwarded = [f"198.51.100.{n}" for n in range(5)]
    untrusting = on_demo(demo_service, storage.feedback, votes_per_client_minute=3)
    assert accepted(untrusting, forwarded) == [200, 200, 200, 429, 429]
    trusting = on_demo(
        demo_service,
        SqliteTable(Path(tempfile.mkdtemp()) / "t.sqlite3", "feedback", expiring=True),
        votes_per_client_minute=3,
        trusted_proxies=["127.0.0.1"],
    )
    assert accepted(trusting, forwarded) == [200] * 5  # each its own client now
    voters = {v.client for v in term_votes(trusting.parts.feedback.table, "boat")}
    assert voters == {trusting.parts.client_ids.of(a) for a in forwarded}


def test_a_client_has_a_days_share_of_votes_and_votes_refused_for_the_minute_keep_it(
    storage, demo_service, one_minute, monkeypatch
) -> None:
    image_id = category_ids(demo_service, "elephant")[0]
    service = on_demo(
        demo_service, storage.feedback, votes_per_client_minute=2, votes_per_client_day=3
    )
    votes = iter(range(100))

    def vote(address: str) -> tuple[int, str, str | None]:
        body = {"query": "boat", "image_id": image_id, "vote": 1, "session": f"s{next(votes)}"}
        response = from_address(service, address).post("/api/feedback", json=body)
        return (
            response.status_code,
            response.json().get("detail", ""),
            response.headers.get("Retry-After"),
        )

    assert [vote("192.0.2.1")[0] for _ in range(2)] == [200, 200]
    status, detail, retry = vote("192.0.2.1")
    assert (status, "this minute" in detail) == (429, True)  # not counted for the day
    assert retry is not None and 1 <= int(retry) <= 60
    monkeypatch.setattr(RateLimiter, "clock", staticmethod(lambda: one_minute + 60))
    assert vote("192.0.2.1")[0] == 200  # the day's third
    status, detail, retry = vote("192.0.2.1")
    midnight = (one_minute // 86_400 + 1) * 86_400
    assert (status, "today" in detail, retry) == (429, True, str(int(midnight - one_minute - 60)))
    assert vote("192.0.2.2")[0] == 200  # another client keeps its own share
    monkeypatch.setattr(RateLimiter, "clock", staticmethod(lambda: midnight + 30))
    assert vote("192.0.2.1")[0] == 200  # a new day


def test_a_refusal_as_its_window_ends_asks_for_the_moment_left_not_a_day(storage) -> None:
    midnight = (time.time() // 86_400 + 1) * 86_400
    times = iter([midnight - 0.5, midnight - 0.0001, midnight + 0.0001])
    limiter = RateLimiter(storage.feedback, "client", 1, DAY)
    limiter.clock = lambda: next(times)  # type: ignore[method-assign]
    assert limiter.count("c0123")[0] == 1
    count, window = limiter.count("c0123")  # refused, counted just before midnight
    assert count == 2 and limiter.seconds_left(window) == 1  # read just after it


# Rate limits expire -------------------------------------------------------------------------


def test_rate_limit_counters_expire(storage, request, one_minute, monkeypatch) -> None:
    limiter = RateLimiter(storage.feedback, "client", 2)
    assert [limiter.count("c0123")[0] for _ in range(3)] == [1, 2, 3]  # the third over 2
    monkeypatch.setattr(limiter, "clock", lambda: one_minute + 60)
    assert [limiter.count("c0123")[0] for _ in range(3)] == [1, 2, 3]  # a new minute
    assert list(storage.feedback.query("rate#client#c0123"))
    if isinstance(storage.feedback, SqliteTable):

        def write_at(seconds_from_now: float) -> None:
            storage.feedback._next_purge = 0.0  # the writer's next purge is due
            now = time.time() + seconds_from_now
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("imgsearch.storage.local.time.time", lambda: now)
                storage.feedback.put("other", "row", {"x": 1})  # any write purges when due

        write_at(60)
        assert list(storage.feedback.query("rate#client#c0123"))  # not yet
        write_at(300)
        assert not list(storage.feedback.query("rate#client#c0123"))
    else:  # DynamoDB deletes them by its time to live, set from the template
        _, dynamodb = request.getfixturevalue("aws_admin")
        described = dynamodb.describe_time_to_live(TableName=storage.feedback.table_name)
        ttl = described["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


# Properties ---------------------------------------------------------------------------------

IMAGES = [f"{n:016x}" for n in range(6)]
votes_of_one_client = st.lists(
    st.tuples(st.integers(0, 39), st.sampled_from(IMAGES), st.sampled_from([1, -1])),
    max_size=40,
)
honest_votes = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(IMAGES), st.sampled_from([1, -1])), max_size=20
)


def _trusts(feedback: Feedback) -> dict[str, float]:
    return {a.image_id: trust(a) for a in feedback.summary("word").images}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(others=honest_votes, attack=votes_of_one_client)
def test_one_client_moves_any_image_by_at_most_one_voice(others, attack) -> None:
    """Whatever one client votes, with however many sessions, every image's weight for others
    moves by at most one voice; alone (or with one other), it teaches others nothing."""
    with tempfile.TemporaryDirectory() as directory:
        feedback = Feedback(SqliteTable(Path(directory) / "t.sqlite3", "feedback"))
        for client, image_id, value in others:
            feedback.vote("word", image_id, f"honest{client}", value, f"honest{client}")
        before = _trusts(feedback)
        for session, image_id, value in attack:
            feedback.vote("word", image_id, f"attacker{session}", value, "attacker")
        after = _trusts(feedback)
    for image_id in IMAGES:
        moved = abs(after.get(image_id, 0.0) - before.get(image_id, 0.0))
        assert moved <= 1.0 + 1e-6  # one voice
    if len({client for client, _, _ in others}) < 2:
        assert all(weight == 0 for weight in after.values())


@pytest.fixture(scope="module")
def page_service(model_demo_service: ImageSearch) -> ImageSearch:
    return on_demo(
        model_demo_service, SqliteTable(Path(tempfile.mkdtemp()) / "t.sqlite3", "feedback")
    )


def _fresh_feedback(service: ImageSearch) -> ImageSearch:
    return on_demo(service, SqliteTable(Path(tempfile.mkdtemp()) / "t.sqlite3", "feedback"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    sessions=st.integers(1, 40),
    teachers=st.integers(QUORUM, QUORUM + 2),
    category=st.sampled_from(["lotus", "laptop", "starfish", "umbrella"]),
)
def test_pages_others_see_follow_independent_agreement_only(
    page_service, data, sessions, teachers, category
) -> None:
    service = _fresh_feedback(page_service)
    everything = list(service.parts.index.image_ids(newest_first=False))
    before = [h.image_id for h in service.search_text("elephant", limit=FIRST_PAGE).hits]
    attack = data.draw(
        st.lists(st.tuples(st.sampled_from(everything), st.sampled_from([1, -1])), max_size=60)
    )
    for number, (image_id, value) in enumerate(attack):
        service.vote("elephant", image_id, value, f"a{number % sessions}", "attacker")
    after = [h.image_id for h in service.search_text("elephant", limit=FIRST_PAGE).hits]
    assert len(set(before) & set(after)) >= 10
    # k >= 3 independent clients agreeing on a few photos always teach a new word.
    chosen = category_ids(service, category)[:3]
    for teacher in range(teachers):
        for image_id in chosen:
            service.vote("zqxnewword", image_id, 1, f"t{teacher}", f"teacher{teacher}")
    page = [h.image_id for h in service.search_text("zqxnewword", limit=FIRST_PAGE).hits]
    assert set(chosen) <= set(page)


# The owner's controls ---------------------------------------------------------------------


def test_the_owner_sees_what_a_word_learned_drops_a_client_and_resets_the_word(voting) -> None:
    word = "zqxblooms"
    lotus, pizzas = category_ids(voting, "lotus")[:3], category_ids(voting, "pizza")[:4]
    for number, address in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3")):
        teacher = from_address(voting, address)
        for image_id in lotus:
            vote(teacher, word, image_id, 1, f"teacher{number}")
    attacker = from_address(voting, "203.0.113.9")
    for number in range(3):
        for image_id in pizzas:
            vote(attacker, word, image_id, 1, f"spam{number}")
    anonymous = from_address(voting, "198.51.100.20")
    wrong = from_address(voting, "198.51.100.20", **{API_KEY_HEADER: "wrong"})
    for method, path in (
        ("GET", f"/api/terms/{word}"),
        ("DELETE", f"/api/terms/{word}"),
        ("DELETE", "/api/clients/203.0.113.9/votes"),
    ):
        assert anonymous.request(method, path).status_code == 401
        assert wrong.request(method, path).status_code == 403
    owner = from_address(voting, "127.0.0.1", **{API_KEY_HEADER: API_KEY})

    learned = owner.get(f"/api/terms/{word.upper()}").json()
    assert (learned["term"], learned["votes"], learned["sessions"], learned["clients"]) == (
        word,
        9 + 12,
        6,
        4,
    )
    weights = {i["id"]: (i["up_clients"], i["weight"]) for i in learned["images"]}
    assert all(weights[i] == (3, 1.0) for i in lotus)
    assert all(weights[i] == (1, 0.0) for i in pizzas)  # one client: no weight for others
    assert [i["id"] for i in learned["images"][:3]] == sorted(lotus)
    attacker_id = voting.client_id("203.0.113.9")
    assert {"client": attacker_id, "up": 4, "down": 0} in learned["voters"]
    assert "203.0.113.9" not in str(learned)  # ids, never addresses

    dropped = owner.delete("/api/clients/203.0.113.9/votes").json()
    assert dropped == {"client": attacker_id, "votes_removed": 12}
    after_drop = owner.get(f"/api/terms/{word}").json()
    assert (after_drop["votes"], after_drop["sessions"], after_drop["clients"]) == (9, 3, 3)
    assert {i["id"] for i in after_drop["images"]} == set(lotus)
    assert not set(pizzas) & set(first_page(attacker, word, "spam0"))  # its sessions forget
    teacher_id = voting.client_id("192.0.2.1")
    assert owner.delete(f"/api/clients/{teacher_id}/votes").json()["votes_removed"] == 3
    lotus_weights = {i["id"]: i["weight"] for i in owner.get(f"/api/terms/{word}").json()["images"]}
    assert lotus_weights == dict.fromkeys(lotus, 0.0)  # two clients: below the quorum
    assert owner.delete("/api/clients/not-a-client/votes").status_code == 422

    reset = owner.delete(f"/api/terms/{word}").json()
    assert reset == {"term": word, "votes_removed": 6}
    fresh = anonymous.get("/api/search", params={"q": word, "session": "later"}).json()
    assert fresh["interpretation"]["learned"] is None
    assert not set(lotus) <= {r["id"] for r in fresh["results"][:3]}
    emptied = owner.get(f"/api/terms/{word}").json()
    assert (emptied["votes"], emptied["clients"], emptied["images"]) == (0, 0, [])
    assert owner.get("/api/terms/%20%20").status_code == 422


def test_the_votes_command_shows_resets_and_drops(tmp_path, capsys) -> None:
    from imgsearch.cli import main
    from imgsearch.storage import open_storage

    data = ["--data-dir", str(tmp_path / "data"), "--backend", "local"]
    settings = Settings(backend="local", data_dir=tmp_path / "data")
    feedback = Feedback(open_storage(settings).feedback)
    service = ImageSearch(settings)
    pest = service.client_id("203.0.113.5")
    for client in ("c1", "c2", "c3", pest):
        feedback.vote("kite", "00000000000000aa", f"s-{client}", 1, client)
    feedback.vote("kite", "00000000000000bb", "s-c3", -1, "c3")
    assert main(["votes", "show", "Kites", *data]) == 0
    shown = capsys.readouterr().out
    assert "kite: 5 votes from 4 sessions and 4 clients" in shown
    assert "up 4 (4.00)" in shown and "weight +2.00" in shown and f"client {pest}" in shown
    # Images and voters in the order the facade reports them (as the HTTP view lists them):
    # by weight, then agreeing clients; voters by their votes.
    report = service.learned("kite")
    listed = [line.split()[0] for line in shown.splitlines()[1:] if not line.startswith("  client")]
    assert listed == [i.agreement.image_id for i in report.images]
    assert listed == ["00000000000000aa", "00000000000000bb"]
    voters = [line.split()[1][:-1] for line in shown.splitlines() if line.startswith("  client")]
    assert voters == [c for c, _, _ in report.voters] and voters[0] == "c3"  # two votes
    assert main(["votes", "drop-client", "203.0.113.5", *data]) == 0
    assert f"client {pest}: 1 votes removed" in capsys.readouterr().out
    assert main(["votes", "reset", "kite", *data]) == 0
    assert "kite: reset, 4 votes removed" in capsys.readouterr().out
    assert feedback.summary("kite").images == []
    assert main(["votes", "drop-client", "nobody", *data]) != 0


def test_a_search_reads_only_the_images_a_quorum_of_clients_agrees_on(storage) -> None:
    """Votes that teach nobody else cost a search nothing: one client voting on many images
    adds no row to what a search reads; an image enters it at QUORUM agreeing clients and
    leaves it when they no longer agree, are dropped or the word is reset."""
    feedback = Feedback(storage.feedback)
    agreed_on = "f" * 16

    def agreed() -> list[tuple[str, int, int]]:
        images = feedback.summary("owls", agreed_only=True).images
        return [(a.image_id, a.up_clients, a.down_clients) for a in images]

    for number in range(30):
        feedback.vote("owls", f"{number:016x}", "lone-session", 1, client="c-lone")
    for client in ("a", "b"):
        feedback.vote("owls", agreed_on, f"s-{client}", 1, client=f"c-{client}")
    assert agreed() == []  # two agreeing clients teach nobody: nothing to read
    feedback.vote("owls", agreed_on, "s-c", 1, client="c-c")
    assert agreed() == [(agreed_on, 3, 0)]
    assert len(feedback.summary("owls").images) == 31  # the owner still sees every image
    feedback.vote("owls", agreed_on, "s-c", -1, client="c-c")  # one changes its mind
    assert agreed() == []
    for client in ("d", "e"):
        feedback.vote("owls", agreed_on, f"s-{client}", -1, client=f"c-{client}")
    assert agreed() == [(agreed_on, 2, 3)]
    feedback.drop_client("c-e")
    assert agreed() == []
    feedback.vote("owls", agreed_on, "s-e", -1, client="c-e")
    feedback.reset("owls")
    assert agreed() == [] and feedback.summary("owls").images == []
