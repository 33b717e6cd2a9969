"""retry_on_conflict: the one compare-and-swap loop every read-decide-write goes through."""

from __future__ import annotations

import pytest

from imgsearch.storage import (
    MAX_CAS_ATTEMPTS,
    NotFound,
    PreconditionFailed,
    TooMuchContention,
    retry_on_conflict,
)


def losing(times: int, value: str = "won"):
    """A step that loses `times` races, then wins; `calls` counts its attempts."""
    calls = []

    def step() -> str:
        calls.append(len(calls))
        if len(calls) <= times:
            raise PreconditionFailed("another writer got there first")
        return value

    return step, calls


def test_a_step_is_run_again_until_its_write_wins() -> None:
    step, calls = losing(3)
    assert retry_on_conflict(step, "the thing") == "won"
    assert len(calls) == 4


def test_endless_losses_are_too_much_contention_after_the_limit() -> None:
    step, calls = losing(10**6)
    with pytest.raises(TooMuchContention, match="the thing: too much contention"):
        retry_on_conflict(step, "the thing")
    assert len(calls) == MAX_CAS_ATTEMPTS
    step, calls = losing(10**6)
    with pytest.raises(RuntimeError):  # what callers catching RuntimeError still catch
        retry_on_conflict(step, "the thing", attempts=2)
    assert len(calls) == 2


def test_other_errors_are_not_retried() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise NotFound("gone")

    with pytest.raises(NotFound):
        retry_on_conflict(step, "the thing")
    assert calls == [1]
