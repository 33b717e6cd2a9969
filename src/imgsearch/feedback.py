"""Votes: one per session, query term and image; the last one counts. Each vote carries the
client it came from (a keyed hash of its address, see clients.py), and each term keeps a
summary of which distinct clients agree on which images, updated with every vote, so that a
search reads one row per image that a quorum of clients agree on for its term: never the
votes themselves, nor the images that only one or two clients voted on (they teach nobody
else, so a client voting on many images cannot make the term's searches slower).

The feedback table's rows (votes, voices, summaries, the voted terms, each client's votes) are
described, with every other storage layout, in storage/layout.md.

A vote, its client's voice and the summary change in one transaction, conditioned on the
versions read before, so retries and concurrent writers never lose or double-count a voice.

Decay: a voice cast at time t weighs 2^-((now - t) / half-life). A decayed sum is stored with
the time it is valid at; it is decayed to the present when read and when updated, and a voice
that changes takes back exactly its own decayed weight (decay is linear, so this is exact).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from imgsearch.storage import (
    Delete,
    Increment,
    Item,
    PreconditionFailed,
    Put,
    Table,
    Write,
    retry_on_conflict,
)

LOCAL_CLIENT = "local"  # votes cast in-process (the CLI, the evaluation): the owner's own
QUORUM = 3  # distinct clients agreeing on an image before it teaches anyone else
SECONDS_PER_DAY = 86_400.0
MAX_WRITES = 100  # per transaction (DynamoDB's limit)
# `cast#` rows order a client's votes on an image newest first by counting microseconds down
# from here (the year 5138).
CAST_HORIZON_US = 10**17
# A session's votes on one word that its searches read (and learn from): a person votes on
# tens; a session that voted on 20,000 images of a large collection (at its rate limit, 3
# hours) made each of its searches read them all (0.5 s at 100,000 images).
MAX_SESSION_VOTES = 1000
# The terms that hold an image QUORUM clients agree on (written with each `agreed#` row),
# and the row saying the list is whole (made once from the terms before it was kept).
TAUGHT = "taught"
TAUGHT_LISTED = "#listed"


@dataclass(frozen=True)
class Agreement:
    """What distinct clients say about one image for a term, now."""

    image_id: str
    up_clients: int  # clients whose voice is "relevant"
    down_clients: int
    up: float  # the same, each voice decayed by its age
    down: float


@dataclass(frozen=True)
class TermSummary:
    """A term's learned model as stored: per image, the agreement of clients."""

    term: str
    images: list[Agreement]
    votes: int = 0
    sessions: int = 0
    clients: int = 0


def decayed(value: float, at: float, now: float, half_life_seconds: float) -> float:
    """`value`, valid at `at`, as it weighs at `now` (a clock behind `at` does not grow it)."""
    halvings = max(0.0, now - at) / half_life_seconds
    factor: float = 0.5**halvings  # (a float power is typed Any: a negative base gives complex)
    return value * factor


class Feedback:
    def __init__(
        self,
        table: Table,
        *,
        half_life_days: float = 90.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.half_life = half_life_days * SECONDS_PER_DAY
        self.clock = clock  # seconds since the epoch (tests age votes with their own)
        self._taught_listed = False  # this process found the `taught` list whole

    # Voting ------------------------------------------------------------------------------

    def vote(
        self, term: str, image_id: str, session: str, value: int, client: str = LOCAL_CLIENT
    ) -> bool:
        """Record `session`'s vote, cast from `client`; returns False if it changed nothing
        (the session's vote and its client's voice already say so)."""
        if value not in (1, -1):
            raise ValueError("a vote is 1 (relevant) or -1 (not relevant)")
        self._list_taught_terms()
        pk = f"term#{term}"

        # Loses (PreconditionFailed) if another write to this vote or image landed first.
        def step() -> bool:
            current = self.table.get(pk, f"vote#{session}#{image_id}")
            voice = self.table.get(pk, f"voice#{client}#{image_id}")
            if _value(current) == value and _value(voice) == value:
                return False
            self.table.transact(
                self._vote_writes(term, image_id, session, value, client, current, voice)
            )
            return True

        return retry_on_conflict(step, "one vote")

    def withdraw(self, term: str, image_id: str, session: str) -> bool:
        """Take back `session`'s vote on the image (undo, or a second press on the same
        button), whatever address the undo comes from: the vote knows the client that cast
        it. The voice of that client becomes what its other sessions' votes on the image say,
        as if the vote had never been cast: the last of them, aged by its time, or no voice.
        Returns False if the session had no vote on the image to take back."""
        pk = f"term#{term}"

        # Loses (PreconditionFailed) if the vote, the voice or the summary changed meanwhile:
        # any vote or withdrawal of the same client on the image writes its voice row.
        def step() -> bool:
            vote = self.table.get(pk, f"vote#{session}#{image_id}")
            if vote is None:
                return False
            cast_by = str(vote.get("client", LOCAL_CLIENT))
            voice = self.table.get(pk, f"voice#{cast_by}#{image_id}")
            if voice is not None and voice.get("casts"):
                remaining = self._latest_other_cast(term, image_id, session, cast_by)
            else:  # a voice from before `cast#` rows were kept: its votes may have none
                remaining = self._last_other_vote(term, image_id, session, cast_by)
            writes: list[Write] = [
                Delete(pk, vote["sk"], expected_version=_version(vote)),
                Increment("terms", term, {"votes": -1}),
                Delete(f"client#{cast_by}", f"vote#{session}#{image_id}#{term}"),
                *_cast_deleted(vote),
            ]
            if voice is None and remaining is None:  # (a reset cut short: no voice to fix)
                self.table.transact(writes)
                return True
            now = self.clock()
            value = _value(remaining)
            at = float(remaining["at"]) if remaining is not None else now
            voice_sk = f"voice#{cast_by}#{image_id}"
            if voice is not None and _value(voice) == value and float(voice["at"]) == at:
                # The voice already says what the others do (a later session's vote made it);
                # rewritten as it is, conditioned on its version, so that a concurrent change
                # of it (another session's undo, which read this vote as remaining) loses.
                writes.append(Put(pk, voice_sk, _attrs(voice), expected_version=_version(voice)))
                self.table.transact(writes)
                return True
            summary = self.table.get(pk, f"image#{image_id}")
            weight = decayed(1.0, at, now, self.half_life)
            after = self._summary_after(summary, image_id, voice, value, now, weight)
            if remaining is None:
                writes.append(Delete(pk, voice_sk, expected_version=_version(voice)))
            else:
                attrs = {"voice": value, "client": cast_by, "image_id": image_id, "at": at}
                writes.append(
                    Put(
                        pk,
                        voice_sk,
                        attrs | _casts_kept(voice),
                        expected_version=_version(voice),
                    )
                )
            if after["up"] == 0 and after["down"] == 0:
                if summary is not None:
                    writes.append(Delete(pk, summary["sk"], expected_version=_version(summary)))
            else:
                writes.append(
                    Put(pk, f"image#{image_id}", after, expected_version=_version(summary))
                )
            writes += self._agreed_writes(term, image_id, summary, after)
            self.table.transact(writes)
            return True

        return retry_on_conflict(step, "one vote")

    def _last_other_vote(self, term: str, image_id: str, session: str, client: str) -> Item | None:
        """The latest vote `client` cast on the image for `term` from a session other than
        `session`: found through the client's partition (O(the client's votes), never the
        term's), each checked against the vote row (a pointer may outlive its vote, or the
        session may have voted again from elsewhere since)."""
        latest: Item | None = None
        for pointer in self._client_votes(client):
            if (pointer.get("term"), pointer.get("image_id")) != (term, image_id):
                continue
            if pointer.get("session") == session:
                continue
            vote = self.table.get(f"term#{term}", f"vote#{pointer['session']}#{image_id}")
            if vote is None or vote.get("client") != client:
                continue
            if latest is None or float(vote["at"]) > float(latest["at"]):
                latest = vote
        return latest

    def _latest_other_cast(
        self, term: str, image_id: str, session: str, client: str
    ) -> Item | None:
        """The latest vote `client` cast on the image for `term` from a session other than
        `session`, from the `cast#` rows, newest first: two rows at most (`session`'s own may
        be the newest), however many votes the client cast elsewhere or from how many
        sessions. Only for a voice that says its votes all have `cast#` rows (`casts`)."""
        rows = self.table.query(f"term#{term}", prefix=f"cast#{client}#{image_id}#", limit=2)
        return next((row for row in rows if row["session"] != session), None)

    def _vote_writes(
        self,
        term: str,
        image_id: str,
        session: str,
        value: int,
        client: str,
        current: Item | None,
        voice: Item | None,
    ) -> list[Write]:
        pk, now = f"term#{term}", self.clock()
        cast = _cast_key(client, image_id, now, session)
        session_marker = self.table.get(pk, f"session#{session}")
        client_marker = self.table.get(pk, f"client#{client}")
        summary = self.table.get(pk, f"image#{image_id}")
        after = self._summary_after(summary, image_id, voice, value, now)
        writes: list[Write] = [
            Put(
                pk,
                f"vote#{session}#{image_id}",
                {
                    "vote": value,
                    "session": session,
                    "image_id": image_id,
                    "client": client,
                    "at": now,
                    "cast": cast,
                },
                expected_version=_version(current),
            ),
            # The client's votes on the image, newest first, for an undo to find the latest
            # of the others; the session's previous one (from whichever client) goes.
            Put(pk, cast, {"vote": value, "session": session, "client": client, "at": now}),
            *(_cast_deleted(current) if current and current.get("cast") != cast else ()),
            # The client's voice is its sessions' last vote, and its age that vote's. A new
            # voice has every one of its votes in `cast#` rows; an older one may not.
            Put(
                pk,
                f"voice#{client}#{image_id}",
                {"voice": value, "client": client, "image_id": image_id, "at": now}
                | (_casts_kept(voice) if voice else {"casts": True}),
                expected_version=_version(voice),
            ),
            Put(
                pk,
                f"image#{image_id}",
                after,
                expected_version=_version(summary),
            ),
            *self._agreed_writes(term, image_id, summary, after),
            Increment(
                "terms",
                term,
                {
                    "votes": 0 if current else 1,
                    "sessions": 0 if session_marker else 1,
                    "clients": 0 if client_marker else 1,
                },
                {"updated_at": now},
            ),
            Put(
                f"client#{client}",
                f"vote#{session}#{image_id}#{term}",
                {"term": term, "session": session, "image_id": image_id},
            ),
        ]
        if session_marker is None:
            writes.append(Put(pk, f"session#{session}", {"client": client}, expected_version=0))
        if client_marker is None:
            writes.append(Put(pk, f"client#{client}", {"client": client}, expected_version=0))
        return writes

    def _summary_after(
        self,
        summary: Item | None,
        image_id: str,
        voice: Item | None,
        value: int,
        now: float,
        value_weight: float = 1.0,
    ) -> Item:
        """The image's summary once `voice` (the client's old one, if any) becomes `value`
        (0: the client no longer has a voice), weighing `value_weight` now (1: cast now)."""
        counts = {"up": 0, "down": 0, "up_weight": 0.0, "down_weight": 0.0}
        if summary is not None:
            counts["up"], counts["down"] = int(summary["up"]), int(summary["down"])
            for side in ("up", "down"):
                weight = float(summary.get(f"{side}_weight", 0.0))
                at = float(summary.get("at", now))
                counts[f"{side}_weight"] = decayed(weight, at, now, self.half_life)
        if voice is not None:  # (a reset cut short may have left a voice without its count)
            side = "up" if int(voice["voice"]) > 0 else "down"
            counts[side] = max(0, counts[side] - 1)
            own = decayed(1.0, float(voice["at"]), now, self.half_life)
            counts[f"{side}_weight"] = max(0.0, counts[f"{side}_weight"] - own)
        if value:
            side = "up" if value > 0 else "down"
            counts[side] += 1
            counts[f"{side}_weight"] += value_weight
        return {"image_id": image_id, **counts, "at": now}

    # Reading -----------------------------------------------------------------------------

    def summary(self, term: str, *, agreed_only: bool = False) -> TermSummary:
        """The term's agreement per image, decayed to now: one row per image voted on, or with
        `agreed_only` per image that at least QUORUM clients call the same (what can teach
        others: a search reads only these, so votes that teach nobody cost it nothing)."""
        now = self.clock()
        images = []
        prefix = "agreed#" if agreed_only else "image#"
        for item in self.table.query(f"term#{term}", prefix=prefix):
            at = float(item.get("at", now))
            images.append(
                Agreement(
                    image_id=item["image_id"],
                    up_clients=int(item["up"]),
                    down_clients=int(item["down"]),
                    up=decayed(float(item.get("up_weight", 0.0)), at, now, self.half_life),
                    down=decayed(float(item.get("down_weight", 0.0)), at, now, self.half_life),
                )
            )
        row = self.table.get("terms", term) or {}
        return TermSummary(
            term,
            images,
            votes=int(row.get("votes", 0)),
            sessions=int(row.get("sessions", 0)),
            clients=int(row.get("clients", 0)),
        )

    def taught_terms(self) -> list[str]:
        """The terms that hold an image at least QUORUM clients agree on (the
        `taught` list, one row per such term): what votes may have taught everyone. Words
        nobody else voted on are never listed, however many one visitor invents."""
        rows = [item["sk"] for item in self.table.query(TAUGHT)]
        if TAUGHT_LISTED in rows:
            return [term for term in rows if term != TAUGHT_LISTED]
        # A table from before the list was kept, until a vote lists it: read here, never
        # written (the cloud's search function may only read the table).
        return self._terms_agreed_on()

    def _terms_agreed_on(self) -> list[str]:
        """The terms QUORUM clients or more voted on whose `agreed#` rows are not empty, from
        the list of every term voted on."""
        return [
            item["sk"]
            for item in self.table.query("terms")
            if int(item.get("clients", 0)) >= QUORUM
            and any(self.table.query(f"term#{item['sk']}", prefix="agreed#", limit=1))
        ]

    def _list_taught_terms(self) -> None:
        """Make the `taught` list whole if it is not (once per table: the terms taught before
        it was kept), before this process's first vote; later votes keep it."""
        if self._taught_listed:
            return
        if self.table.get(TAUGHT, TAUGHT_LISTED) is None:
            writes: list[Write] = [Put(TAUGHT, term, {}) for term in self._terms_agreed_on()]
            writes.append(Put(TAUGHT, TAUGHT_LISTED, {}))
            for start in range(0, len(writes), MAX_WRITES):
                self.table.transact(writes[start : start + MAX_WRITES])
        self._taught_listed = True

    def session_votes(self, term: str, session: str) -> dict[str, int]:
        """The session's votes on the term's images: at most MAX_SESSION_VOTES of them (by
        image id), which every search of the session reads."""
        items = self.table.query(f"term#{term}", prefix=f"vote#{session}#", limit=MAX_SESSION_VOTES)
        return {i["image_id"]: int(i["vote"]) for i in items}

    def voters(self, term: str) -> dict[str, tuple[int, int]]:
        """Per client: how many images its voice calls relevant and not (O(voices): for the
        owner's view, never for a search)."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in self.table.query(f"term#{term}", prefix="voice#"):
            counts[item["client"]][0 if int(item["voice"]) > 0 else 1] += 1
        return {client: (up, down) for client, (up, down) in counts.items()}

    # The owner's controls ----------------------------------------------------------------

    def reset(self, term: str) -> int:
        """Forget everything votes taught about `term`; returns how many votes it had.

        The rows under the voters' client partitions stay: they point at votes that are gone,
        which `drop_client` skips."""
        row = self.table.get("terms", term)
        # What searches read goes first, so that a reset cut short already took effect (and
        # repeating it finishes the rest).
        self.table.delete("terms", term)
        self.table.delete(TAUGHT, term)
        pk = f"term#{term}"
        for prefix in ("agreed#", "image#", ""):
            rows = [Delete(pk, i["sk"]) for i in self.table.query(pk, prefix=prefix)]
            for start in range(0, len(rows), MAX_WRITES):
                self.table.transact(rows[start : start + MAX_WRITES])
        return int(row.get("votes", 0)) if row else 0

    def drop_client(self, client: str) -> int:
        """Remove every vote `client` cast, on every term, and its voices from the summaries;
        returns how many votes were removed. Found through the client's partition, not a scan."""
        dropped = 0
        voiced: set[tuple[str, str]] = set()
        sessions: set[tuple[str, str]] = set()
        for item in list(self._client_votes(client)):
            term, session, image_id = item["term"], item["session"], item["image_id"]
            dropped += self._drop_vote(term, session, image_id, client, item["sk"])
            voiced.add((term, image_id))
            sessions.add((term, session))
        for term, image_id in voiced:
            self._drop_voice(term, image_id, client)
        for term, session in sessions:
            self._drop_marker(term, f"session#{session}", client, "sessions")
        for term in {term for term, _ in voiced}:
            self._drop_marker(term, f"client#{client}", client, "clients")
        return dropped

    def _client_votes(self, client: str) -> Iterator[Item]:
        return self.table.query(f"client#{client}", prefix="vote#")

    def _drop_vote(self, term: str, session: str, image_id: str, client: str, sk: str) -> int:
        """Delete the session's vote if `client` cast it (the session may have voted again
        from elsewhere since), and the row that pointed at it."""

        def step() -> int:
            vote = self.table.get(f"term#{term}", f"vote#{session}#{image_id}")
            writes: list[Write] = [Delete(f"client#{client}", sk)]
            ours = vote is not None and vote.get("client") == client
            if ours and vote is not None:
                writes += [
                    Delete(vote["pk"], vote["sk"], expected_version=_version(vote)),
                    Increment("terms", term, {"votes": -1}),
                    *_cast_deleted(vote),
                ]
            self.table.transact(writes)
            return int(ours)

        return retry_on_conflict(step, "one vote")

    def _drop_voice(self, term: str, image_id: str, client: str) -> None:
        pk = f"term#{term}"

        def step() -> None:
            voice = self.table.get(pk, f"voice#{client}#{image_id}")
            summary = self.table.get(pk, f"image#{image_id}")
            if voice is None or summary is None:
                return
            now = self.clock()
            after = self._summary_after(summary, image_id, voice, 0, now)
            writes: list[Write] = [Delete(pk, voice["sk"], expected_version=_version(voice))]
            if after["up"] == 0 and after["down"] == 0:
                writes.append(Delete(pk, summary["sk"], expected_version=_version(summary)))
            else:
                writes.append(Put(pk, summary["sk"], after, expected_version=_version(summary)))
            writes += self._agreed_writes(term, image_id, summary, after)
            self.table.transact(writes)

        retry_on_conflict(step, "one image's summary")

    def _agreed_writes(
        self, term: str, image_id: str, before: Item | None, after: Item
    ) -> list[Write]:
        """Keep the image's `agreed#` copy of its summary while at least QUORUM clients call it
        the same, and only then, and keep the term on the `taught` list while it holds one.
        The `image#` row written in the same transaction is conditioned on its version, which
        orders concurrent writers of both."""
        pk = f"term#{term}"
        if max(after["up"], after["down"]) >= QUORUM:
            return [Put(pk, f"agreed#{image_id}", after), Put(TAUGHT, term, {})]
        if before is not None and max(int(before["up"]), int(before["down"])) >= QUORUM:
            return [Delete(pk, f"agreed#{image_id}"), *self._unlisted_writes(term, image_id)]
        return []

    def _unlisted_writes(self, term: str, image_id: str) -> list[Write]:
        """Take the term off the `taught` list if `image_id` is its last agreed image: else
        every start view would go on reading it (a client that invented words and was dropped
        would cost them for good). Conditioned on the row's version, read before the term's
        agreed rows: a vote listing the term meanwhile (each agreed write puts the row)
        makes the transaction lose and read again."""
        listed = self.table.get(TAUGHT, term)
        if listed is None:
            return []
        agreed = self.table.query(f"term#{term}", prefix="agreed#", limit=2)
        if any(item["sk"] != f"agreed#{image_id}" for item in agreed):
            return []
        return [Delete(TAUGHT, term, expected_version=_version(listed))]

    def _drop_marker(self, term: str, sk: str, client: str, counter: str) -> None:
        marker = self.table.get(f"term#{term}", sk)
        if marker is None or marker.get("client") != client:
            return
        with suppress(PreconditionFailed):  # changed meanwhile: another vote claimed it
            self.table.transact(
                [
                    Delete(marker["pk"], sk, expected_version=_version(marker)),
                    Increment("terms", term, {counter: -1}),
                ]
            )


def _cast_key(client: str, image_id: str, at: float, session: str) -> str:
    """The sort key of a `cast#` row: the client's votes on an image, newest first (the time
    in microseconds, counted down from CAST_HORIZON_US)."""
    return f"cast#{client}#{image_id}#{CAST_HORIZON_US - round(at * 1e6):017d}#{session}"


def _cast_deleted(vote: Item | None) -> list[Write]:
    """The deletion of a vote's `cast#` row (none for a vote from before they were kept)."""
    return [Delete(vote["pk"], str(vote["cast"]))] if vote and vote.get("cast") else []


def _casts_kept(voice: Item | None) -> Item:
    return {"casts": True} if voice and voice.get("casts") else {}


def _value(item: Item | None) -> int:
    if item is None:
        return 0
    return int(item["vote"] if "vote" in item else item["voice"])


def _attrs(item: Item) -> Item:
    """An item's own attributes, without the keys and version the table adds."""
    return {k: v for k, v in item.items() if k not in ("pk", "sk", "version")}


def _version(item: Item | None) -> int:
    return int(item["version"]) if item else 0
