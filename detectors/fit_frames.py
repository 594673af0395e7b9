"""The messages between the detection process and its fitting process: one JSON line,
then the raw bytes of the arrays it describes.  Plain arrays of numbers only, so a
message carries no code (unlike pickle)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import numpy.typing as npt

MAX_HEADER_BYTES = 1 << 20
NUMBER_KINDS = "fiub"  # floats, integers, booleans: what models and rows are made of

Arrays = dict[str, npt.NDArray[Any]]


class FrameError(OSError):
    """A message cut short or not in this format."""


def write_frame(stream: IO[bytes], header: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """Send ``header`` and ``arrays`` as one message, flushed."""
    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    described = {name: [a.dtype.str, list(a.shape)] for name, a in contiguous.items()}
    line = json.dumps({"header": dict(header), "arrays": described}).encode() + b"\n"
    stream.write(line)
    for array in contiguous.values():
        stream.write(array.tobytes())  # one copy; rows and models are a few MB at most
    stream.flush()


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], Arrays] | None:
    """The next message, or None when the other side closed its end between messages."""
    line = stream.readline(MAX_HEADER_BYTES)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise FrameError(f"a message's first line was cut short or too long ({len(line)} bytes)")
    try:
        document = json.loads(line)
        header, described = document["header"], document["arrays"]
        layouts = [
            (name, np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in described.items()
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise FrameError(f"not a message of the fitting protocol: {exc!r}") from exc
    arrays: Arrays = {}
    for name, dtype, shape in layouts:
        if dtype.kind not in NUMBER_KINDS or any(side < 0 for side in shape):
            raise FrameError(f"array {name!r} is not an array of numbers: {dtype}, {shape}")
        size = math.prod(shape) * dtype.itemsize
        data = stream.read(size)
        if len(data) != size:
            raise FrameError(f"array {name!r} was cut short: {len(data)} of {size} bytes")
        arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return header, arrays
