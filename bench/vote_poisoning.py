"""Vote poisoning through the HTTP API, on the demo collection: what one address with many
invented sessions, and what a few independent addresses, change on a fresh visitor's first
page (12 photos). Each scenario gets a feedback table of its own; clients are told apart by the
connection's address (TestClient's `client`), as the server tells them apart.

    PYTHONPATH=src .venv/bin/python bench/vote_poisoning.py [--data-dir DIR]

Prints, per scenario, the photos a fresh visitor keeps, and for teaching a new word, how many
of the voted photos and of their category reach the fresh visitor's first page.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient

from imgsearch.api.app import create_app
from imgsearch.bulk import ingest_tree
from imgsearch.config import Settings
from imgsearch.service import ImageSearch
from imgsearch.storage import Storage, open_storage
from imgsearch.storage.local import SqliteTable

REPO = Path(__file__).resolve().parents[1]
PAGE = 12
SESSIONS = 40


class Scenario:
    """The demo collection with an empty feedback table, and clients by address."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings(data_dir=data_dir, votes_per_client_minute=100_000)
        base = open_storage(settings)
        table = SqliteTable(Path(tempfile.mkdtemp()) / "feedback.sqlite3", "feedback")
        self.service = ImageSearch(settings, Storage(base.objects, base.catalog, table))
        self.app = create_app(self.service)

    def client(self, address: str) -> TestClient:
        return TestClient(self.app, client=(address, 40_000))

    def category(self, name: str) -> list[str]:
        ids = self.service.index.image_ids(newest_first=False)
        return [i for i in ids if self.service.image(i).key.startswith(f"{name}/")]


def page(client: TestClient, word: str, session: str) -> list[str]:
    params = {"q": word, "limit": PAGE, "session": session}
    return [r["id"] for r in client.get("/api/search", params=params).json()["results"]]


def vote(client: TestClient, word: str, image_id: str, value: int, session: str) -> None:
    body = {"query": word, "image_id": image_id, "vote": value, "session": session}
    response = client.post("/api/feedback", json=body)
    response.raise_for_status()


def downvote_attack(data_dir: Path) -> None:
    scene = Scenario(data_dir)
    visitor, attacker = scene.client("198.51.100.20"), scene.client("203.0.113.7")
    before = page(visitor, "elephant", "before")
    for number in range(SESSIONS):
        for image_id in before:
            vote(attacker, "elephant", image_id, -1, f"attacker{number}")
    kept = len(set(before) & set(page(visitor, "elephant", "after")))
    own = len(set(before) & set(page(attacker, "elephant", "attacker0")))
    print(
        f"1 address, {SESSIONS} sessions voting down the 12 'elephant' photos: a fresh visitor "
        f"keeps {kept}/{PAGE}; the attacker's own session keeps {own}/{PAGE}"
    )


def pizza_attack(data_dir: Path) -> None:
    scene = Scenario(data_dir)
    visitor, attacker = scene.client("198.51.100.20"), scene.client("203.0.113.8")
    before, pizzas = page(visitor, "elephant", "before"), scene.category("pizza")
    for number in range(SESSIONS):
        for image_id in pizzas:
            vote(attacker, "elephant", image_id, 1, f"attacker{number}")
        for image_id in before[:6]:
            vote(attacker, "elephant", image_id, -1, f"attacker{number}")
    after = page(visitor, "elephant", "after")
    own = page(attacker, "elephant", "attacker0")
    print(
        f"1 address, {SESSIONS} sessions voting {len(pizzas)} pizzas up and 6 elephants down "
        f"for 'elephant': a fresh visitor keeps {len(set(before) & set(after))}/{PAGE} and sees "
        f"{len(set(pizzas) & set(after))} pizzas; the attacker's own session sees "
        f"{len(set(pizzas) & set(own))}"
    )


def teaching(data_dir: Path, clients: int) -> None:
    scene = Scenario(data_dir)
    word, lotus = "zqxblossoms", scene.category("lotus")
    taught = lotus[:3]
    visitor = scene.client("198.51.100.20")
    for number in range(clients):
        teacher = scene.client(f"192.0.2.{number + 1}")
        for image_id in taught:
            vote(teacher, word, image_id, 1, f"teacher{number}")
    shown = page(visitor, word, "fresh")
    print(
        f"{clients} addresses voting 3 lotus photos for {word!r}: a fresh visitor's first "
        f"page shows {len(set(taught) & set(shown))}/3 of them ({len(set(taught) & set(shown[:3]))}"
        f" in the first 3 places) and {sum(i in lotus for i in shown)}/{PAGE} lotus photos"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a data directory holding the demo")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="vote-poisoning-")) / "data"
    service = ImageSearch(Settings(data_dir=data_dir))
    if service.count() == 0:
        ingest_tree(service, REPO / "demo")
    downvote_attack(data_dir)
    pizza_attack(data_dir)
    for clients in (1, 2, 3, 4):
        teaching(data_dir, clients)


if __name__ == "__main__":
    main()
