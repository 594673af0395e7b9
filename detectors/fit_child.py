"""The fitting process (``python -m detectors.fit_child``): reads fit requests on stdin,
answers fitted models on stdout, until stdin closes (``detectors/fit_process.py``).

The only process of RateWatch's detection that imports scikit-learn.  A request that
cannot be fitted gets an answer saying why, and the process goes on.
"""

from __future__ import annotations

import contextlib
import sys
from typing import IO, Any

from detectors.fit_frames import Arrays, read_frame, write_frame


def answer(header: dict[str, Any], arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
    """The answer to one request: the model as arrays, or why there is none."""
    from detectors.isolation import IsolationDetector

    try:
        detector = IsolationDetector(**header["params"])
        fitted = detector.fit(arrays["rows"], trained_at_ms=int(header["trained_at_ms"]))
    except Exception as exc:  # reported to the caller, which counts and retries it
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, {}
    meta, model_arrays = fitted.model_.to_arrays()
    return {"ok": True, "model": meta}, model_arrays


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until ``requests`` ends."""
    while (request := read_frame(requests)) is not None:
        write_frame(answers, *answer(*request))


def main() -> int:
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries answers only: a stray print goes to stderr
    # a closed pipe or ^C: the detection process went away, and so does this one
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.buffer, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
