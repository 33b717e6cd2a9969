"""What the AWS adapters' codecs (storage/aws.py `ItemCodec`, index/s3vectors.py
`VectorCodec`) put into botocore's request bodies and take out of its answers with the json
module, where botocore would walk each value in Python. No botocore here: its hooks call
these."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.dtypes import StringDType

from .ports import StorageError

# A string no request holds: where `write_arrays` writes an array (`array_mark`).
_ARRAY_MARK = "\u0000array "
_MARKED = re.compile(r'"\\u0000array (\d+)"')


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


def fill_body(params: dict[str, Any], fill: Callable[[dict[str, Any]], None], **dumps: Any) -> None:
    """A request's JSON body, changed by `fill` and written again by json.dumps (with
    botocore's separators: the bytes botocore would have sent for the same values)."""
    body = json.loads(params["body"])
    fill(body)
    params["body"] = json.dumps(body, **dumps).encode()


def read_answer_part(
    response_dict: dict[str, Any],
    customized_response_dict: dict[str, Any],
    key: str,
    read: Callable[[Any], Any],
    default: Any = None,
) -> None:
    """`key` of a successful answer read by json (and `read`) before botocore parses the
    rest (`before-parse`): botocore then parses the body without it and answers with what
    `customized_response_dict` holds. Absent: `default` in its place, or left alone if None."""
    if response_dict["status_code"] >= 300 or not response_dict.get("body"):
        return
    body = json.loads(response_dict["body"])
    part = body.pop(key, default)
    if part is None:
        return
    customized_response_dict[key] = read(part)
    response_dict["body"] = json.dumps(body).encode()


def array_mark(index: int) -> str:
    """What a request's body holds where `write_arrays` writes the `index`th array."""
    return f"{_ARRAY_MARK}{index}"


def write_arrays(params: dict[str, Any], arrays: Sequence[np.ndarray]) -> None:
    """The request's JSON body (`fill_body`'s) with each `array_mark` replaced by the
    array's values (`float32_json`), in one pass."""
    texts = [float32_json(values) for values in arrays]
    body = params["body"].decode()
    params["body"] = _MARKED.sub(lambda mark: texts[int(mark.group(1))], body).encode()


def float32_json(values: np.ndarray) -> str:
    """Finite float32 values as a JSON array of numbers, each as a 9-digit mantissa and an
    exponent, which give back the same float32 (9 significant digits always do). json.dumps
    writes the shortest repr of each value as a float64, up to 17 digits, one at a time:
    about 5 times the time (2 ms a vector of 1,280 on this machine)."""
    x = np.asarray(values, np.float32).astype(np.float64)
    exponent = np.zeros(x.shape, np.int64)
    nonzero = x != 0
    exponent[nonzero] = np.floor(np.log10(np.abs(x[nonzero]))).astype(np.int64) - 8
    mantissa = np.rint(x / np.power(10.0, exponent)).astype(np.int64)
    numbers = np.strings.add(
        np.strings.add(mantissa.astype(StringDType()), "e"), exponent.astype(StringDType())
    )
    return "[" + ",".join(numbers.tolist()) + "]"
