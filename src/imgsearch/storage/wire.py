"""What the AWS adapters' codecs (storage/aws.py `ItemCodec`, index/s3vectors.py
`VectorCodec`) put into botocore's request bodies and take out of its answers with orjson,
where botocore would walk each value in Python. No botocore here: its hooks call these.

orjson rather than the json module because of floats, which S3 Vectors' bodies are full of:
it reads a GetVectors answer of 100 vectors of 1,280 floats in about a fifth of json's time
(16 against 83 ms on this machine), and writes a numpy float32 array directly, each value in
the shortest form that reads back the same float32, in a tenth of the time numpy took to
format them with 9 digits before (7 against 82 ms for 100 vectors)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from .ports import StorageError


class HandOff:
    """A part of a request (its items, its vectors' values) handed by the code that makes
    the request to the hook that writes it into the request's body (botocore's
    `before-call`, in the same thread), once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._local = threading.local()

    @contextmanager
    def sending(self, part: Any) -> Iterator[None]:
        """`part` for the request made in the `with` block; forgotten when the block ends,
        sent or not. A request that returns without the hook having taken it (a client
        without the codec) went out with its placeholder alone: an error, not a success."""
        self._local.part = part
        try:
            yield
            if self._local.part is not None:
                raise StorageError(f"a request went out without its {self.what} (no codec)")
        finally:
            self._local.part = None

    def take(self) -> Any:
        """The part handed over for this thread's request (None: none), taken once."""
        part = getattr(self._local, "part", None)
        self._local.part = None
        return part


def fill_body(
    params: dict[str, Any],
    fill: Callable[[dict[str, Any]], None],
    *,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """A request's JSON body, changed by `fill` and written again: the JSON botocore would
    write, not its bytes (no spaces between values, non-ASCII characters as UTF-8 where
    botocore escapes them); numpy arrays as arrays of their values; keys that are not
    strings written as strings, as json.dumps does; what orjson cannot write handed to
    `default`."""
    body = orjson.loads(params["body"])
    fill(body)
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    params["body"] = orjson.dumps(body, default=default, option=options)


def read_answer_part(
    response_dict: dict[str, Any],
    customized_response_dict: dict[str, Any],
    key: str,
    read: Callable[[Any], Any],
    default: Any = None,
) -> None:
    """`key` of a successful answer read (and `read`) before botocore parses the rest
    (`before-parse`): botocore then parses the body without it and answers with what
    `customized_response_dict` holds. Absent: `default` in its place, or left alone if None."""
    if response_dict["status_code"] >= 300 or not response_dict.get("body"):
        return
    body = orjson.loads(response_dict["body"])
    part = body.pop(key, default)
    if part is None:
        return
    customized_response_dict[key] = read(part)
    response_dict["body"] = orjson.dumps(body)
