"""The one bounded memory: by count or by weight, least recently used out first."""

from imgsearch.remembered import Remembered


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
