"""The bounded memories: by count or by weight, least recently used out first, and for a
few seconds each."""

import time

import pytest

from imgsearch.remembered import Expiring, Remembered


def test_counted_memory_drops_the_least_recently_used() -> None:
    memory: Remembered[str, int] = Remembered(2)
    memory.put("a", 1)
    memory.put("b", 2)
    assert memory.get("a") == 1  # "b" is now the least recently used
    memory.put("c", 3)
    assert memory.get_many(["a", "b", "c"]) == {"a": 1, "c": 3}
    assert len(memory) == 2


def test_weighed_memory_keeps_its_total_weight_within_size() -> None:
    memory: Remembered[str, bytes] = Remembered(10, len)
    memory.put_many({"a": b"1234", "b": b"1234"})
    memory.put("a", b"12")  # replacing a value gives its old weight back
    assert memory.weight == 6
    memory.put("c", b"123456")  # 12 > 10: the least recently used ("b") leaves
    assert memory.get_many(["a", "b", "c"]) == {"a": b"12", "c": b"123456"}
    assert memory.weight == 8
    memory.put("d", b"x" * 11)  # heavier than the whole memory: nothing stays
    assert len(memory) == 0 and memory.weight == 0


def test_a_remembered_none_is_an_answer_and_forgetting_gives_back_its_weight() -> None:
    memory: Remembered[str, bytes | None] = Remembered(10, lambda v: len(v or b""))
    memory.put_many({"gone": None, "a": b"1234"})
    assert memory.get_many(["gone", "a", "never"]) == {"gone": None, "a": b"1234"}
    assert "gone" in memory and "never" not in memory
    assert memory.items() == [("gone", None), ("a", b"1234")]  # least recently used first
    memory.forget("a")
    memory.forget("never")
    assert memory.weight == 0 and memory.items() == [("gone", None)]
    memory.put("b", b"12")
    memory.clear()
    assert len(memory) == 0 and memory.weight == 0


def test_expiring_memory_forgets_after_its_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    memory: Expiring[str, int] = Expiring(2, 5.0)
    assert memory.put("a", 1) == 1
    now[0] = 104.9
    assert memory.get("a") == 1
    memory.put("b", 2)
    now[0] = 105.0  # "a" was put 5 s ago: expired; "b" 0.1 s ago
    assert memory.get("b") == 2 and memory.get("a") is None
    assert len(memory) == 1  # asked for once expired, "a" left: it pushes no live one out
    memory.put("c", 3)
    assert len(memory) == 2 and memory.get("b") == 2 and memory.get("c") == 3
    memory.forget("b")
    assert memory.get("b") is None
    memory.clear()
    assert len(memory) == 0


def test_an_expiring_memory_of_no_seconds_finds_nothing() -> None:
    memory: Expiring[str, int] = Expiring(4, 0.0)
    memory.put("a", 1)
    assert memory.get("a") is None
